"""Pipeline partitioner: cut a model into contiguous stages and place them on devices.

The nodes are taken in topological order. Constant nodes and dead nodes never anchor a cut: a stage
clones the Constant nodes it reads (like initializers, which are copied into every stage that uses
them), so constants never travel between devices. Only "compute" nodes (alive, non-Constant) are
split, and a stage is a contiguous run of them.

Stage time on device d = stage FLOPs / (d.gflops * 1e9) + bytes forwarded into the stage (its carry:
everything produced earlier and still needed) / d.link_bytes_per_s + hop overhead. The plan minimises
the slowest stage (pipeline throughput) with an exact dynamic programme over cut positions, then,
among plans with that bottleneck, the sum of stage times (latency). Memory: a stage's weights plus its
peak live activations must fit in the device's RAM.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import onnx

from models.cost import ModelCost
from models.shapes import ShapeChoice, cost_on_representative_shape
from models.structure import Structure, carry_at, stage_io, structure

__all__ = [
    "PlanError",
    "DeviceSpec",
    "Stage",
    "Plan",
    "plan_pipeline",
    "CostProfile",
    "profile_model",
    "plan_from_cuts",
]

_PERMUTE_MAX_STAGES = 4
_DP_LAYER_BUDGET = 600  # full DP layers per stage count before the device pool is narrowed
_AUTO_K_MIN_GAIN = 0.10


class PlanError(ValueError):
    """No valid pipeline plan exists for the request (too many stages, memory, bad devices)."""


@dataclass
class DeviceSpec:
    """A device as the planner sees it: measured throughput, memory and link speed."""

    id: str
    gflops: float
    ram_bytes: int = 2**34
    link_bytes_per_s: float = 100e6


@dataclass
class Stage:
    """One pipeline stage: a contiguous node range ``[node_start, node_end)`` placed on one device.

    ``inputs``: tensors the stage reads from the request's tensor env (graph inputs or outputs of
    earlier stages). ``outputs``: tensors it produces that later stages or the caller need.
    ``carry``: tensors to forward to the next stage (produced here or earlier, needed later or as
    graph outputs); for the last stage exactly the graph outputs. ``in_bytes`` is the size of the
    carry forwarded *into* this stage (for stage 0: the request's inputs).
    """

    index: int
    device_id: str
    node_start: int
    node_end: int
    inputs: list[str]
    outputs: list[str]
    carry: list[str]
    flops: int
    weight_bytes: int
    in_bytes: int
    compute_ms: float
    transfer_ms: float
    est_ms: float
    op_counts: dict[str, int]
    first_node: str
    last_node: str
    mem_bytes: int = 0


@dataclass
class Plan:
    """Stages in pipeline order plus the estimated bottleneck and end-to-end time."""

    model_name: str
    stages: list[Stage]
    bottleneck_ms: float
    total_ms: float
    reason: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)   # the shapes the plan was costed on
    notes: list[str] = field(default_factory=list)   # e.g. which representative shape a dynamic input got
    node_count: int = 0
    replicas: list[list[str]] = field(default_factory=list)   # every device of each stage (empty: the stage's own)
    weights: list[list[float]] = field(default_factory=list)  # share of a stage's requests per replica (planner)
    prediction: dict = field(default_factory=dict)            # models.planner: objective, req/s, latency, table

    def to_dict(self) -> dict:
        """Plain dict of built-in types (JSON / msgpack friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        stage_keys = {f.name for f in fields(Stage)}
        plan_keys = {f.name for f in fields(cls)}
        stages = [Stage(**{k: v for k, v in s.items() if k in stage_keys}) for s in d["stages"]]
        for s in stages:
            s.inputs, s.outputs, s.carry = list(s.inputs), list(s.outputs), list(s.carry)
            s.op_counts = dict(s.op_counts)
        rest = {k: v for k, v in d.items() if k in plan_keys and k != "stages"}
        rest["input_shapes"] = {k: tuple(v) for k, v in rest.get("input_shapes", {}).items()}
        rest["notes"] = list(rest.get("notes", []))
        rest["replicas"] = [list(r) for r in rest.get("replicas", [])]
        rest["weights"] = [list(w) for w in rest.get("weights", [])]
        rest["prediction"] = dict(rest.get("prediction", {}))
        return cls(stages=stages, **rest)


# --------------------------------------------------------------------------------------- cost tables


@dataclass
class _Tables:
    flops_prefix: np.ndarray  # [n+1] FLOPs of anchors < b
    carry_bytes: np.ndarray  # [n+1] bytes crossing boundary a
    weight_bytes: np.ndarray  # [n+1, n+1] unique weight bytes read by anchors [a, b)
    peak_act: np.ndarray  # [n+1, n+1] peak live activation bytes while running anchors [a, b)


def _tables(st: Structure, cost: ModelCost) -> _Tables:
    n = st.n
    tb = cost.tensor_bytes
    flops = np.array([cost.nodes[p].flops for p in st.anchors], dtype=np.float64)
    flops_prefix = np.concatenate([[0.0], np.cumsum(flops)])

    # A tensor produced at p and last needed at L crosses every boundary a with p < a <= L.
    diff = np.zeros(n + 2)
    for t, p in st.producer.items():
        last = st.last_use(t)
        if last >= p + 1:
            diff[p + 1] += tb.get(t, 0)
            diff[last + 1] -= tb.get(t, 0)
    carry_bytes = np.cumsum(diff)[: n + 1]

    # Unique weight bytes of [a, b): for each start a, a weight counts from its first reader >= a.
    first = np.zeros((n + 2, n + 1))
    w_uses: dict[str, list[int]] = {}
    for j, r in enumerate(st.anchor_reads):
        for t in r:
            if t in st.weights:
                w_uses.setdefault(t, []).append(j)
    for t, us in w_uses.items():
        size = cost.weights.get(t, tb.get(t, 0))
        lo = 0
        for u in us:  # starts a in [lo, u] see u as first reader
            first[lo, u] += size
            first[u + 1, u] -= size
            lo = u + 1
    first = np.cumsum(first, axis=0)[: n + 1]
    weight_bytes = np.zeros((n + 1, n + 1))
    weight_bytes[:, 1:] = np.cumsum(first, axis=1)[:, :n]

    out_bytes = np.array([cost.nodes[p].out_bytes for p in st.anchors], dtype=np.float64)
    act = carry_bytes[:n] + out_bytes
    m = np.where(np.arange(n)[None, :] >= np.arange(n + 1)[:, None], act[None, :], 0.0)
    peak_act = np.zeros((n + 1, n + 1))
    peak_act[:, 1:] = np.maximum.accumulate(m, axis=1)
    return _Tables(flops_prefix, carry_bytes, weight_bytes, peak_act)


def _stage_cost_matrix(tab: _Tables, dev: DeviceSpec, hop_ms: float, memory: bool) -> np.ndarray:
    """ms of running anchors [a, b) on ``dev`` (inf where a >= b or it does not fit in RAM)."""
    n1 = len(tab.flops_prefix)
    fp = tab.flops_prefix
    compute = (fp[None, :] - fp[:, None]) / (dev.gflops * 1e9) * 1e3
    transfer = tab.carry_bytes[:, None] / dev.link_bytes_per_s * 1e3
    c = compute + transfer + hop_ms
    valid = np.arange(n1)[None, :] > np.arange(n1)[:, None]
    if memory:
        valid &= (tab.weight_bytes + tab.peak_act) <= dev.ram_bytes
    return np.where(valid, c, np.inf)


# ------------------------------------------------------------------------------------------------ DP


def _dev_key(d: DeviceSpec) -> tuple:
    return (float(d.gflops), int(d.ram_bytes), float(d.link_bytes_per_s))


def _pool_size(n_devices: int, k: int) -> int:
    """Largest device pool whose order search stays within the DP layer budget."""
    p = n_devices
    while p > k and sum(math.perm(p, j) for j in range(1, k)) > _DP_LAYER_BUDGET:
        p -= 1
    return p


def _search_orders(mats: dict[tuple, np.ndarray], pool: list[DeviceSpec], k: int) -> list[tuple[float, list]]:
    """Min-max bottleneck of every distinct order of ``k`` devices from ``pool``.

    Depth-first over orders so that prefixes share DP layers; identical devices are interchangeable,
    and the last layer only needs the column that ends at the final node.
    """
    results: list[tuple[float, list[DeviceSpec]]] = []
    found = [math.inf]

    def rec(prefix: list[DeviceSpec], best: np.ndarray | None, left: list[DeviceSpec]) -> None:
        seen: set[tuple] = set()
        for i, d in enumerate(left):
            key = _dev_key(d)
            if key in seen:
                continue
            seen.add(key)
            c = mats[key]
            if len(prefix) == k - 1:
                bn = float(c[0, -1]) if best is None else float(np.min(np.maximum(best, c[:, -1])))
                if math.isfinite(bn):
                    results.append((bn, [*prefix, d]))
                    found[0] = min(found[0], bn)
                continue
            nb = c[0].copy() if best is None else np.min(np.maximum(best[:, None], c), axis=0)
            if not np.min(nb) <= found[0] * (1 + 1e-9):  # every completion is already worse (or infeasible)
                continue
            rec([*prefix, d], nb, left[:i] + left[i + 1 :])

    rec([], None, list(pool))
    return results


def minmax_cuts(mats: list[np.ndarray]) -> tuple[float, list[int]]:
    """Min-max DP over cut positions for a fixed device order; returns bottleneck and cut list (also the
    throughput search of :mod:`models.planner`)."""
    n1 = mats[0].shape[0]
    best = mats[0][0].copy()  # best[b]: min bottleneck with stage 0 covering [0, b)
    args = []
    for c in mats[1:]:
        cand = np.maximum(best[:, None], c)
        arg = np.argmin(cand, axis=0)
        best = cand[arg, np.arange(n1)]
        args.append(arg)
    return float(best[-1]), _backtrack(args, n1 - 1)


def minsum_cuts(mats: list[np.ndarray], limit: float = np.inf) -> tuple[float, list[int]]:
    """Min sum of stage times with every stage <= ``limit`` (tie-break among min-max plans; unbounded, the
    latency search of :mod:`models.planner`)."""
    n1 = mats[0].shape[0]
    capped = [np.where(c <= limit, c, np.inf) for c in mats]
    best = capped[0][0].copy()
    args = []
    for c in capped[1:]:
        cand = best[:, None] + c
        arg = np.argmin(cand, axis=0)
        best = cand[arg, np.arange(n1)]
        args.append(arg)
    return float(best[-1]), _backtrack(args, n1 - 1)


def _backtrack(args: list[np.ndarray], end: int) -> list[int]:
    cuts = [end]
    b = end
    for arg in reversed(args):
        b = int(arg[b])
        cuts.append(b)
    cuts.append(0)
    return cuts[::-1]  # [0, c1, ..., n]


@dataclass
class _Choice:
    bottleneck: float
    latency: float
    seq: list[DeviceSpec]
    cuts: list[int]


def _best_for_k(
    tab: _Tables, devices: list[DeviceSpec], k: int, hop_ms: float, memory: bool
) -> _Choice | None:
    """Best cuts and device order for exactly ``k`` stages (None if nothing fits in memory)."""
    mats: dict[tuple, np.ndarray] = {}
    for d in devices:
        if _dev_key(d) not in mats:
            mats[_dev_key(d)] = _stage_cost_matrix(tab, d, hop_ms, memory)
    by_speed = sorted(devices, key=lambda d: (-d.gflops, -d.ram_bytes, -d.link_bytes_per_s))
    by_ram = sorted(devices, key=lambda d: (-d.ram_bytes, -d.gflops, -d.link_bytes_per_s))
    results: list[tuple[float, list[DeviceSpec]]] = []
    if k <= _PERMUTE_MAX_STAGES:
        p = _pool_size(len(devices), k)
        for pool in (by_speed[:p], by_ram[:p]):  # the RAM-ordered pool only matters when memory binds
            results = _search_orders(mats, pool, k)
            if results or p == len(devices):
                break
    else:
        for pool in (by_speed[:k], by_ram[:k]):
            for seq in (pool, pool[::-1]):
                bn, _ = minmax_cuts([mats[_dev_key(d)] for d in seq])
                if math.isfinite(bn):
                    results.append((bn, seq))
            if results:
                break
    if not results:
        return None
    best_bn = min(r[0] for r in results)
    limit = best_bn * (1 + 1e-9) + 1e-12
    choice = None
    for bn, seq in results:
        if bn > limit:
            continue
        lat, cuts = minsum_cuts([mats[_dev_key(d)] for d in seq], limit)
        if math.isfinite(lat) and (choice is None or lat < choice.latency - 1e-12):
            choice = _Choice(bn, lat, seq, cuts)
    return choice


# -------------------------------------------------------------------------------------------- public


def plan_pipeline(
    model: onnx.ModelProto,
    devices: list[DeviceSpec],
    stages: int | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    hop_overhead_ms: float = 1.0,
    model_name: str | None = None,
    sample: dict[str, np.ndarray] | None = None,
) -> Plan:
    """Cut ``model`` into contiguous stages and place them on ``devices`` (see module docstring).

    ``stages=None`` tries 1..len(devices) stages and keeps the fewest whose throughput is within 10%
    of any larger count. Dynamic input dims are costed on a representative shape: ``input_shapes``, else
    the shapes of ``sample``, else defaults by role (:func:`models.shapes.representative_shapes`; the plan's
    ``notes`` say which). Raises :class:`PlanError` when the stage count is impossible, no placement fits
    the devices' memory, or a given shape contradicts the model.
    """
    name = model_name or model.graph.name or "model"
    if not devices:
        raise PlanError(f"cannot plan {name!r}: no devices given")
    ids = [d.id for d in devices]
    if len(set(ids)) != len(ids):
        raise PlanError(f"cannot plan {name!r}: duplicate device ids in {ids}")
    for d in devices:
        if not (d.gflops > 0 and d.link_bytes_per_s > 0 and d.ram_bytes > 0):
            raise PlanError(f"device {d.id!r} has non-positive gflops/link/ram: {d}")
    st = structure(model)
    if st.n == 0:
        raise PlanError(f"model {name!r} has no compute nodes to place")
    if stages is not None:
        if stages < 1:
            raise PlanError(f"stages must be >= 1, got {stages}")
        if stages > len(devices):
            raise PlanError(
                f"cannot cut {name!r} into {stages} stages on {len(devices)} devices (one stage per device)"
            )
        if stages > st.n:
            raise PlanError(f"cannot cut {name!r} into {stages} stages: it has only {st.n} compute nodes")
    try:
        shapes, cost = cost_on_representative_shape(model, input_shapes, sample)
    except ValueError as exc:
        raise PlanError(f"cannot plan {name!r}: {exc}") from None
    tab = _tables(st, cost)

    if stages is not None:
        choice = _best_for_k(tab, devices, stages, hop_overhead_ms, memory=True)
        if choice is None:
            raise _memory_error(name, st, cost, tab, devices, stages, hop_overhead_ms)
        return _with_shapes(_make_plan(name, st, cost, tab, choice, hop_overhead_ms, note=""), shapes)

    chosen: _Choice | None = None
    tried: list[tuple[int, float]] = []
    for k in range(1, min(len(devices), st.n) + 1):
        c = _best_for_k(tab, devices, k, hop_overhead_ms, memory=True)
        if c is None:
            continue
        tried.append((k, c.bottleneck))
        if chosen is None or c.bottleneck * (1 + _AUTO_K_MIN_GAIN) < chosen.bottleneck:
            chosen = c
    if chosen is None:
        k = min(len(devices), st.n)
        raise _memory_error(name, st, cost, tab, devices, k, hop_overhead_ms)
    k = len(chosen.seq)
    others = ", ".join(f"{kk}: {bn:.2f} ms" for kk, bn in tried if kk != k)
    note = f" Chose {k} stage(s) automatically (bottleneck for other counts: {others or 'none feasible'})."
    return _with_shapes(_make_plan(name, st, cost, tab, chosen, hop_overhead_ms, note=note), shapes)


@dataclass
class CostProfile:
    """A model costed for planning: per anchor boundary the FLOPs before it and the bytes crossing it, and per
    anchor range the memory a stage needs. ``flops_prefix[b] - flops_prefix[a]`` is the work of anchors
    ``[a, b)``; ``carry_bytes[0]`` is the request's input and ``carry_bytes[n]`` the answer."""

    name: str
    n: int
    flops_prefix: np.ndarray
    carry_bytes: np.ndarray
    mem_bytes: np.ndarray          # [n+1, n+1] weights + peak activations of anchors [a, b)
    # what cutting the model needs (None in a synthetic profile, e.g. a unit test of the model alone)
    shapes: ShapeChoice | None = None
    structure: Structure | None = None
    cost: ModelCost | None = None
    tables: _Tables | None = None

    @classmethod
    def synthetic(cls, flops: Sequence[float], carry_bytes: Sequence[float], name: str = "synthetic") -> CostProfile:
        """A chain of ``len(flops)`` nodes: node i does ``flops[i]``; ``carry_bytes[b]`` cross boundary b
        (``[0]`` the input, ``[-1]`` the answer); memory never binds."""
        if len(carry_bytes) != len(flops) + 1:
            raise ValueError("carry_bytes needs one entry per boundary: len(flops) + 1")
        n = len(flops)
        return cls(name, n, np.concatenate([[0.0], np.cumsum(flops)]), np.asarray(carry_bytes, dtype=np.float64),
                   np.zeros((n + 1, n + 1)))


def profile_model(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
                  sample: dict[str, np.ndarray] | None = None, model_name: str | None = None) -> CostProfile:
    """Cost ``model`` once for :mod:`models.planner` (dynamic dims as in :func:`plan_pipeline`)."""
    name = model_name or model.graph.name or "model"
    st = structure(model)
    if st.n == 0:
        raise PlanError(f"model {name!r} has no compute nodes to place")
    try:
        shapes, cost = cost_on_representative_shape(model, input_shapes, sample)
    except ValueError as exc:
        raise PlanError(f"cannot plan {name!r}: {exc}") from None
    tab = _tables(st, cost)
    return CostProfile(name, st.n, tab.flops_prefix, tab.carry_bytes, tab.weight_bytes + tab.peak_act, shapes,
                       st, cost, tab)


def plan_from_cuts(profile: CostProfile, cuts: list[int], devices: list[DeviceSpec], reason: str,
                   hop_overhead_ms: float = 1.0) -> Plan:
    """The :class:`Plan` of given cut positions (anchor boundaries ``[0, c1, ..., n]``), stage i on
    ``devices[i]`` (its first replica); ``reason`` replaces the min-max planner's sentence."""
    if profile.structure is None or profile.cost is None or profile.tables is None:
        raise PlanError(f"profile {profile.name!r} is synthetic: there is no model to cut")
    if len(cuts) != len(devices) + 1 or cuts[0] != 0 or cuts[-1] != profile.n:
        raise PlanError(f"cuts {cuts} do not cover {profile.n} nodes in {len(devices)} stages")
    choice = _Choice(0.0, 0.0, list(devices), list(cuts))
    plan = _make_plan(profile.name, profile.structure, profile.cost, profile.tables, choice, hop_overhead_ms, "")
    plan.reason = reason
    return _with_shapes(plan, profile.shapes) if profile.shapes is not None else plan


def _memory_error(
    name: str, st: Structure, cost: ModelCost, tab: _Tables, devices: list[DeviceSpec], k: int, hop_ms: float
) -> PlanError:
    free = _best_for_k(tab, devices, k, hop_ms, memory=False)
    assert free is not None
    problems = []
    for i, (a, b) in enumerate(itertools.pairwise(free.cuts)):
        d = free.seq[i]
        w, act = tab.weight_bytes[a, b], tab.peak_act[a, b]
        if w + act > d.ram_bytes:
            problems.append(
                f"stage {i} (nodes {cost.nodes[st.anchors[a]].name!r}..{cost.nodes[st.anchors[b - 1]].name!r}) "
                f"on device {d.id!r} needs {(w + act) / 1e6:.1f} MB (weights {w / 1e6:.1f} MB + activations "
                f"{act / 1e6:.1f} MB) but it has {d.ram_bytes / 1e6:.1f} MB RAM"
            )
    return PlanError(
        f"model {name!r} does not fit in {k} stage(s) on devices {[d.id for d in devices]}: "
        + ("; ".join(problems) or "no cut satisfies every device's RAM")
    )


def _with_shapes(plan: Plan, shapes: ShapeChoice) -> Plan:
    plan.input_shapes = dict(shapes.shapes)
    plan.notes = list(shapes.notes)
    return plan


def _make_plan(
    name: str, st: Structure, cost: ModelCost, tab: _Tables, choice: _Choice, hop_ms: float, note: str
) -> Plan:
    n_nodes = len(st.nodes)
    out: list[Stage] = []
    k = len(choice.seq)
    for i, (a, b) in enumerate(itertools.pairwise(choice.cuts)):
        d = choice.seq[i]
        ins, outs = stage_io(st, a, b)
        flops = int(tab.flops_prefix[b] - tab.flops_prefix[a])
        compute_ms = flops / (d.gflops * 1e9) * 1e3
        in_bytes = int(tab.carry_bytes[a])
        transfer_ms = in_bytes / d.link_bytes_per_s * 1e3
        ops = Counter(st.nodes[st.anchors[j]].op_type for j in range(a, b))
        out.append(
            Stage(
                index=i,
                device_id=d.id,
                node_start=0 if a == 0 else int(st.anchors[a]),
                node_end=n_nodes if b == st.n else int(st.anchors[b]),
                inputs=ins,
                outputs=outs,
                carry=carry_at(st, b),
                flops=flops,
                weight_bytes=int(tab.weight_bytes[a, b]),
                in_bytes=in_bytes,
                compute_ms=float(compute_ms),
                transfer_ms=float(transfer_ms),
                est_ms=float(compute_ms + transfer_ms + hop_ms),
                op_counts=dict(sorted(ops.items())),
                first_node=cost.nodes[st.anchors[a]].name,
                last_node=cost.nodes[st.anchors[b - 1]].name,
                mem_bytes=int(tab.weight_bytes[a, b] + tab.peak_act[a, b]),
            )
        )
    bottleneck = max(s.est_ms for s in out)
    slow = max(out, key=lambda s: s.est_ms)
    total_flops = max(1, sum(s.flops for s in out))
    if k == 1:
        reason = (
            f"Whole model on {slow.device_id!r} ({slow.est_ms:.2f} ms est.): one stage has no transfer or hop "
            "cost and splitting would not raise throughput enough."
        )
    else:
        shares = ", ".join(
            f"{s.device_id} {100 * s.flops / total_flops:.0f}% @ {choice.seq[s.index].gflops:g} GFLOP/s"
            for s in out
        )
        cuts = ", ".join(repr(s.last_node) for s in out[:-1])
        reason = (
            f"Cut after {cuts} to minimise the slowest stage; FLOPs per device: {shares}. "
            f"Slowest is stage {slow.index} on {slow.device_id!r} at {slow.est_ms:.2f} ms "
            f"(compute {slow.compute_ms:.2f} + transfer {slow.transfer_ms:.2f} + hop {hop_ms:.2f})."
        )
    return Plan(
        model_name=name,
        stages=out,
        bottleneck_ms=float(bottleneck),
        total_ms=float(sum(s.est_ms for s in out)),
        reason=reason + note,
        node_count=n_nodes,
    )
