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
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import onnx
from onnx import helper, shape_inference

from models.cost import ModelCost, model_cost
from models.graph import node_inputs, tensor_types, topological_nodes, with_static_shapes
from models.shapes import ShapeChoice, shape_candidates

__all__ = [
    "PlanError",
    "DeviceSpec",
    "Stage",
    "Plan",
    "plan_pipeline",
    "extract_stage",
    "split_model",
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
        return cls(stages=stages, **rest)


# ------------------------------------------------------------------------------------ graph structure


@dataclass
class _Structure:
    """Which nodes can anchor cuts, and for every tensor where it is produced and used (anchor space)."""

    nodes: list[onnx.NodeProto]
    anchors: list[int]  # positions (in ``nodes``) of alive nodes that do not compute constants
    weights: set[str]  # initializers and constants (see _constant_subgraphs)
    const_node: dict[str, int]  # constant tensor -> position in ``nodes`` of the node computing it
    producer: dict[str, int]  # non-weight tensor -> anchor index (-1 = graph input)
    uses: dict[str, list[int]]  # non-weight tensor -> sorted anchor indices reading it
    graph_inputs: list[str]
    graph_outputs: list[str]
    anchor_reads: list[list[str]] = field(default_factory=list)
    const_deps: dict[int, tuple[int, ...]] = field(default_factory=dict)  # constant node -> chain it needs

    @property
    def n(self) -> int:
        return len(self.anchors)

    def last_use(self, t: str) -> int:
        """Last anchor needing ``t``; n for graph outputs; -2 if nothing needs it."""
        if t in self._outputs_set:
            return self.n
        u = self.uses.get(t)
        return u[-1] if u else -2

    def __post_init__(self) -> None:
        self._outputs_set = set(self.graph_outputs)


def _is_constant(node: onnx.NodeProto) -> bool:
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1


# ops whose output is not a function of their inputs: never folded into a constant
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


def _constant_subgraphs(nodes: list[onnx.NodeProto], inits: set[str]
                        ) -> tuple[dict[str, int], dict[int, tuple[int, ...]]]:
    """Nodes computing constants: Constant nodes, and deterministic default-domain nodes whose inputs are all
    initializers or constants (e.g. the ConstantOfShape weights of exported "light" models, shape arithmetic
    on initializers). Returns (constant tensor -> producing node, node -> every constant node it needs,
    itself included, in topological order). A stage clones the chain of each constant it reads, so constants
    never cross a stage boundary and never anchor a cut."""
    const_node: dict[str, int] = {}
    deps: dict[int, tuple[int, ...]] = {}
    for i, n in enumerate(nodes):
        ins = [x for x in n.input if x]
        foldable = _is_constant(n) or (
            ins and len(ins) == len(n.input) and n.domain in ("", "ai.onnx") and n.op_type not in _NONDETERMINISTIC
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)
            and all(x in inits or x in const_node for x in ins))
        if not foldable:
            continue
        need = {i}
        for x in ins:
            if x in const_node:
                need.update(deps[const_node[x]])
        deps[i] = tuple(sorted(need))
        for o in n.output:
            if o:
                const_node[o] = i
    return const_node, deps


def _structure(model: onnx.ModelProto) -> _Structure:
    g = model.graph
    nodes = topological_nodes(model)
    inits = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    const_node, const_deps = _constant_subgraphs(nodes, inits)
    weights = inits | set(const_node)
    graph_inputs = [vi.name for vi in g.input if vi.name not in inits]
    graph_outputs = [vi.name for vi in g.output]
    # Backward liveness: a node is alive if a graph output or an alive node needs one of its outputs.
    needed = set(graph_outputs)
    alive = [False] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        if any(o in needed for o in nodes[i].output if o):
            alive[i] = True
            needed.update(node_inputs(nodes[i]))
    anchors = [i for i, nd in enumerate(nodes) if alive[i] and i not in const_deps]
    producer = {t: -1 for t in graph_inputs}
    uses: dict[str, list[int]] = {}
    reads: list[list[str]] = []
    for a, pos in enumerate(anchors):
        nd = nodes[pos]
        r = list(dict.fromkeys(node_inputs(nd)))
        reads.append(r)
        for t in r:
            if t not in weights:
                uses.setdefault(t, []).append(a)
        for o in nd.output:
            if o:
                producer[o] = a
    return _Structure(nodes, anchors, weights, const_node, producer, uses, graph_inputs, graph_outputs, reads,
                      const_deps)


def _carry_at(st: _Structure, b: int) -> list[str]:
    """Non-weight tensors that must cross the boundary before anchor ``b`` (b = n: graph outputs)."""
    out = []
    for t, p in st.producer.items():  # insertion order: graph inputs, then production order
        if p < b <= st.last_use(t):
            out.append(t)
    if b == st.n:
        return list(st.graph_outputs)
    return out


def _stage_io(st: _Structure, a: int, b: int) -> tuple[list[str], list[str]]:
    ins: list[str] = []
    seen: set[str] = set()
    for j in range(a, b):
        for t in st.anchor_reads[j]:
            if t not in st.weights and st.producer.get(t, -1) < a and t not in seen:
                seen.add(t)
                ins.append(t)
    outs = []
    for j in range(a, b):
        for o in st.nodes[st.anchors[j]].output:
            if o and st.last_use(o) >= b:
                outs.append(o)
    if b == st.n:  # graph outputs that are constants are produced by the last stage itself
        outs += [t for t in st.graph_outputs if t in st.weights and t not in outs]
    return ins, outs


# --------------------------------------------------------------------------------------- cost tables


@dataclass
class _Tables:
    flops_prefix: np.ndarray  # [n+1] FLOPs of anchors < b
    carry_bytes: np.ndarray  # [n+1] bytes crossing boundary a
    weight_bytes: np.ndarray  # [n+1, n+1] unique weight bytes read by anchors [a, b)
    peak_act: np.ndarray  # [n+1, n+1] peak live activation bytes while running anchors [a, b)


def _tables(st: _Structure, cost: ModelCost) -> _Tables:
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


def _solve(mats: list[np.ndarray]) -> tuple[float, list[int]]:
    """Min-max DP over cut positions for a fixed device order; returns bottleneck and cut list."""
    n1 = mats[0].shape[0]
    best = mats[0][0].copy()  # best[b]: min bottleneck with stage 0 covering [0, b)
    args = []
    for c in mats[1:]:
        cand = np.maximum(best[:, None], c)
        arg = np.argmin(cand, axis=0)
        best = cand[arg, np.arange(n1)]
        args.append(arg)
    return float(best[-1]), _backtrack(args, n1 - 1)


def _solve_latency(mats: list[np.ndarray], limit: float) -> tuple[float, list[int]]:
    """Min sum of stage times with every stage <= ``limit`` (tie-break among min-max plans)."""
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
                bn, _ = _solve([mats[_dev_key(d)] for d in seq])
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
        lat, cuts = _solve_latency([mats[_dev_key(d)] for d in seq], limit)
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
    st = _structure(model)
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
    shapes, cost = _cost_on_representative_shapes(name, model, input_shapes, sample)
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


def _memory_error(
    name: str, st: _Structure, cost: ModelCost, tab: _Tables, devices: list[DeviceSpec], k: int, hop_ms: float
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


def _cost_on_representative_shapes(name: str, model: onnx.ModelProto, input_shapes: dict | None,
                                   sample: dict | None) -> tuple[ShapeChoice, ModelCost]:
    """Cost the model on the first representative shape it accepts (see :mod:`models.shapes`)."""
    try:
        candidates = shape_candidates(model, input_shapes, sample)
    except ValueError as exc:
        raise PlanError(f"cannot plan {name!r}: {exc}") from None
    first_error: Exception | None = None
    for choice in candidates:
        try:
            return choice, model_cost(model, choice.shapes, sample=sample)
        except ValueError as exc:   # ModelError: the model rejects this shape (a reshape, a concat...)
            first_error = first_error or exc
            if not choice.defaulted:
                break
    dyn = [n for n, s in candidates[0].sources.items() if s == "default"]
    first = candidates[0]
    try:   # shapes that depend on input values (control flow): plan on estimates rather than not at all
        if not _has_control_flow(model):
            raise ValueError("no control flow: the shapes are wrong, not value-dependent")
        cost = model_cost(model, first.shapes, strict=False)
        first.notes.append(f"some tensor shapes of {name!r} could not be determined at "
                           f"{', '.join(f'{n}={chr(120).join(map(str, s))}' for n, s in first.shapes.items())} "
                           f"({str(first_error)[:200]}); the plan's costs are estimates"
                           + ": a sample input (--sample-input) makes them exact")
        return first, cost
    except ValueError:
        pass
    if not dyn:
        raise PlanError(f"cannot plan {name!r}: {first_error}") from None
    tried = "; ".join(", ".join(f"{n}={'x'.join(map(str, c.shapes[n]))}" for n in dyn) for c in candidates)
    raise PlanError(f"cannot plan {name!r}: its dynamic input(s) {dyn} need a shape the model accepts and none "
                    f"of the defaults works (tried {tried}; first error: {str(first_error)[:300]}). Pass one: "
                    + " ".join(f"--input-shape {n}=..." for n in dyn) + " (Python: input_shapes={...}) or "
                    "--sample-input FILE.npz") from None


def _has_control_flow(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("If", "Loop", "Scan") for n in model.graph.node)


def _with_shapes(plan: Plan, shapes: ShapeChoice) -> Plan:
    plan.input_shapes = dict(shapes.shapes)
    plan.notes = list(shapes.notes)
    return plan


def _make_plan(
    name: str, st: _Structure, cost: ModelCost, tab: _Tables, choice: _Choice, hop_ms: float, note: str
) -> Plan:
    n_nodes = len(st.nodes)
    out: list[Stage] = []
    k = len(choice.seq)
    for i, (a, b) in enumerate(itertools.pairwise(choice.cuts)):
        d = choice.seq[i]
        ins, outs = _stage_io(st, a, b)
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
                carry=_carry_at(st, b),
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


# ----------------------------------------------------------------------------------------- extraction


class _Extractor:
    """Builds standalone stage models; caches graph structure and symbolic shapes across stages."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.st = _structure(model)
        try:
            sym = shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # inference is a nicety here; fall back to declared types
            sym = model
        self.types = tensor_types(sym)
        self._static_types: dict | None = None
        self.inits = {t.name: t for t in model.graph.initializer}
        self.sparse = {t.values.name: t for t in model.graph.sparse_initializer}

    def _value_info(self, name: str) -> onnx.ValueInfoProto:
        t = self.types.get(name)
        if t is None or t[1] is None:
            if self._static_types is None:
                self._static_types = tensor_types(with_static_shapes(self.model, strict=False))
            s = self._static_types.get(name)
            if s is None and t is None:
                raise PlanError(f"cannot determine the type of tensor {name!r} crossing a stage boundary")
            dtype = t[0] if t is not None else s[0]
            shape: list | None = [None] * len(s[1]) if s is not None and s[1] is not None else None
        else:
            dtype, shape = t[0], list(t[1])
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape)

    def extract(self, plan: Plan, index: int, check: bool = True) -> onnx.ModelProto:
        st = self.st
        if not 0 <= index < len(plan.stages):
            raise PlanError(f"stage index {index} out of range: plan has {len(plan.stages)} stages")
        if plan.node_count and plan.node_count != len(st.nodes):
            raise PlanError(
                f"plan for {plan.model_name!r} was made for {plan.node_count} nodes, this model has {len(st.nodes)}"
            )
        stage = plan.stages[index]
        members = [j for j, pos in enumerate(st.anchors) if stage.node_start <= pos < stage.node_end]
        if not members:
            raise PlanError(f"stage {index} [{stage.node_start}, {stage.node_end}) holds no compute nodes")
        a, b = members[0], members[-1] + 1
        if index == len(plan.stages) - 1:
            b = st.n
        ins, outs = _stage_io(st, a, b)
        if set(ins) != set(stage.inputs) or set(outs) != set(stage.outputs):
            raise PlanError(
                f"plan stage {index} does not match model {plan.model_name!r}: expected inputs {ins} "
                f"outputs {outs}, plan says inputs {stage.inputs} outputs {stage.outputs}"
            )
        anchor_nodes = [st.nodes[st.anchors[j]] for j in range(a, b)]
        read: dict[str, None] = {}
        for j in range(a, b):
            read.update(dict.fromkeys(st.anchor_reads[j]))
        read.update(dict.fromkeys(t for t in stage.outputs if t in st.weights))
        consts = sorted({p for t in read if t in st.const_node for p in st.const_deps[st.const_node[t]]})
        for p in consts:   # initializers the constant chains read
            read.update(dict.fromkeys(x for x in st.nodes[p].input if x))
        nodes = [st.nodes[p] for p in consts] + anchor_nodes
        inits = [self.inits[t] for t in read if t in self.inits]
        inputs = [self._value_info(t) for t in stage.inputs]
        if self.model.ir_version < 4:
            # IR 3 requires every initializer to be listed as a graph input too (an overridable default);
            # the stage keeps the model's IR version, so its initializers are listed, after the real inputs
            inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
        g = helper.make_graph(
            nodes,
            f"{self.model.graph.name or 'model'}_stage{index}",
            inputs,
            [self._value_info(t) for t in stage.outputs],
            initializer=inits,
            sparse_initializer=[self.sparse[t] for t in read if t in self.sparse],
        )
        m = onnx.ModelProto()
        m.ir_version = self.model.ir_version
        m.opset_import.extend(self.model.opset_import)
        m.producer_name = self.model.producer_name or "edge-agent"
        m.producer_version = self.model.producer_version
        m.domain = self.model.domain
        m.model_version = self.model.model_version
        m.functions.extend(self.model.functions)
        m.metadata_props.extend(self.model.metadata_props)
        for key, value in (
            ("edge_agent.stage", f"{index}/{len(plan.stages)}"),
            ("edge_agent.model", plan.model_name),
        ):
            p = m.metadata_props.add()
            p.key, p.value = key, value
        m.graph.CopyFrom(g)
        if check:
            try:
                onnx.checker.check_model(m)
            except Exception as exc:
                raise PlanError(
                    f"stage {index} of {plan.model_name!r} is not a valid ONNX model: {exc}"
                ) from exc
        return m


def extract_stage(model: onnx.ModelProto, plan: Plan, index: int) -> onnx.ModelProto:
    """Stage ``index`` of ``plan`` as a standalone ONNX model.

    Its graph inputs are ``stage.inputs`` and its graph outputs ``stage.outputs`` (typed, dynamic dims
    kept symbolic); it holds its compute nodes, clones of the Constant nodes they read and copies of
    the initializers they use, with the original opset and IR version.
    """
    return _Extractor(model).extract(plan, index)


def split_model(model: onnx.ModelProto, plan: Plan) -> list[onnx.ModelProto]:
    """All stages of ``plan`` as standalone ONNX models (see :func:`extract_stage`)."""
    ex = _Extractor(model)
    return [ex.extract(plan, i) for i in range(len(plan.stages))]
