"""Steady-state performance model of a deployment, and the search for the best shape (pure, no I/O).

A *shape* is a list of stages (contiguous node ranges, cut at anchor boundaries ``[0, c1, ..., n]``), each
served by a group of replica devices that split the stage's requests by ``weights``. This covers one device,
data-parallel replicas (1 stage, many devices), pipelines (many stages, one device each) and hybrids
(``2 stages x 2 replicas``, a fast device beside replicated slow ones, ...). See docs/planner.md.

Per request, every *resource* is busy for some time (ms):

- ``cpu:<dev>``: sum over the stages it serves of weight x (stage FLOPs / (GFLOP/s x efficiency)
  + per-hop agent CPU + bytes in and out x per-byte agent CPU); the agent CPU constants are for one full
  reference core and scale with the device's share of one (its GFLOP/s over the reference core's);
- ``in:<dev>`` / ``out:<dev>``: weight x bytes received / sent over the device's measured link rate (a
  full-duplex link; transfers overlap compute because a stage receives the next request while it computes);
- ``broker``: every message crosses the broker twice (in and out): 2 x bytes / its rate + 2 x a per-message
  cost, for the request, every stage boundary and the answer;
- ``client``: the caller's per-request CPU (send and receive) and bytes.

Throughput = 1 / max over resources of busy time; latency (one request alone) = the sum along the path
(expected over the replica weights): each hop's round trip halves, bytes over both links and the broker,
each stage's CPU time on the idle device (:meth:`Device.alone_ms`: under a CPU quota, at full speed while
the period's quota lasts, then waiting for the next period).

A device's link rate is measured by its agent with a burst echoed through the broker, so the burst's time
includes the agent's own CPU to send and receive every byte and the broker's to pass them on, which the
model already counts under ``cpu:<dev>`` and ``broker``; the link's time is what remains
(:meth:`Device.wire_ms`): ~0 on loopback, nearly all of it on a slow network. The caller's link likewise,
when the operator measured it (``Calibration.client_link_bytes_per_s``).
:func:`fit_agent_costs` fits the per-hop and per-byte agent costs from measured runs (docs/planner.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from models.partition import CostProfile, minmax_cuts, minsum_cuts

__all__ = ["Calibration", "Device", "Shape", "Prediction", "Candidate", "Search", "evaluate", "search",
           "OBJECTIVES", "Observation", "fit_agent_costs", "link_excess_ms", "client_wire_ms"]

OBJECTIVES = ("throughput", "latency")
_ENUM_BUDGET = 4000      # groupings tried per stage count (beyond it that count is skipped, and said so)
_MAX_STAGES = 4
_CLASS_TOL = 0.08        # devices within 8 % of each other (GFLOP/s, link) are interchangeable in the search
_TIE = 0.01              # predictions within 1 % count as equal; the other objective breaks the tie
_PHASES = 32             # arrival phases within a CPU-quota period averaged over (Device.alone_ms)


@dataclass(frozen=True)
class Calibration:
    """Constants of the model that are not measured per device (docs/planner.md says how each was found).

    The agent CPU costs are for one full core of the reference machine (``ref_core_gflops``); a device
    measuring a fraction of that GFLOP/s (a CPU quota, a slower board) pays them divided by that fraction."""

    efficiency: float = 0.63          # model FLOP/s over the GEMM probe's: measured 0.58-0.65 CNNs, 0.62-0.88 GEMMs
    hop_ms: float = 0.6               # agent CPU per request per hop (decode, check, encode, publish): fitted
    byte_ms_per_mb: float = 1.1       # agent CPU per MB received plus sent (copies, socket): bench_bytes
    ref_core_gflops: float = 93.0     # GFLOP/s of one reference core (the quota reference of lab profiles)
    broker_bytes_per_s: float = 1.25e9  # bytes/s the broker receives plus sends (its CPU): bench_bytes
    broker_msg_ms: float = 0.05       # broker time per message crossing (in or out)
    client_hop_ms: float = 0.5        # caller's CPU per request (send + receive), one full core
    client_byte_ms_per_mb: float = 1.1  # caller's CPU per MB sent plus received: bench_bytes
    client_rtt_ms: float = 0.5        # caller's round trip to the broker (the operator measures its own)
    client_link_bytes_per_s: float | None = None   # caller's burst echo rate; None: not measured, no wire time
    echo_ms_per_mb: float = 8.0       # what a link probe's echo reads on loopback, one full core (3.5-8 ms/MB)
    quota_period_ms: float = 100.0    # a CPU quota's period (the CFS default): see Device.alone_ms


@dataclass(frozen=True)
class Device:
    """A device as the model sees it: measured GFLOP/s, link rate (bytes/s each way) and round trip."""

    id: str
    gflops: float
    link_bytes_per_s: float = 100e6
    rtt_ms: float = 1.0
    ram_bytes: int = 2**34
    hop_ms: float | None = None       # measured agent CPU per hop on this device; None: from the calibration
    efficiency: float | None = None   # measured model FLOP/s over this device's GFLOP/s; None: the calibration's
    peak_gflops: float | None = None  # speed of one run on the idle device (a CPU quota's full speed); None: gflops

    def at_peak(self) -> Device:
        """The device running at its burst speed (without a quota: the device itself)."""
        if self.peak_gflops is None or self.peak_gflops <= self.gflops:
            return self
        return dataclasses.replace(self, gflops=self.peak_gflops, peak_gflops=None)

    def alone_ms(self, flops: Any, nbytes: Any, cal: Calibration) -> Any:
        """CPU time of one request alone on the idle device (arrays broadcast). Without a quota, its CPU
        time. Under a quota (``q`` = sustained / burst of each ``quota_period_ms`` ``P``) it runs at the burst
        speed until the period's ``q P`` is spent, waits for the next period, and so on; a request arrives at
        a random point of a period, so this is the mean over arrival phases (a grid of 32)."""
        p = self.at_peak()
        c = np.asarray(p.compute_ms(flops, cal) + p.hop_cost_ms(cal) + nbytes * p.byte_cost_ms(cal), np.float64)
        if p is self:
            return c
        q, period = self.gflops / p.gflops, cal.quota_period_ms
        budget = q * period
        phase = (np.arange(_PHASES) + 0.5) / _PHASES * period           # time into the period at arrival
        cc = c[..., None]
        first = np.minimum(budget, period - phase)                        # what the current period still allows
        rest = np.maximum(cc - first, 0.0)
        more = np.maximum(np.ceil(rest / budget) - 1, 0)                  # further periods it waits through
        t = np.where(cc <= first, cc, (period - phase) + more * period + (rest - more * budget))
        return t.mean(axis=-1)

    def cpu_share(self, cal: Calibration) -> float:
        return min(1.0, self.gflops / cal.ref_core_gflops)

    def compute_ms(self, flops: float, cal: Calibration) -> float:
        eff = self.efficiency if self.efficiency is not None else cal.efficiency
        return flops / (self.gflops * eff * 1e9) * 1e3

    def wire_ms(self, nbytes: float, cal: Calibration) -> float:
        """Time ``nbytes`` spend on the device's link beyond the CPU that moves them (:func:`link_excess_ms`:
        the probe's echo went through this agent both ways and through the broker, whose CPU the model counts
        under ``cpu:<dev>`` and ``broker``). About 0 on loopback or a fast LAN; nearly all of the burst's time
        on a slow network."""
        return link_excess_ms(nbytes, self.link_bytes_per_s, 2 * self.byte_cost_ms(cal), cal, self.cpu_share(cal))

    def hop_cost_ms(self, cal: Calibration) -> float:
        return self.hop_ms if self.hop_ms is not None else cal.hop_ms / self.cpu_share(cal)

    def byte_cost_ms(self, cal: Calibration) -> float:
        """Agent CPU ms per byte received or sent."""
        return cal.byte_ms_per_mb / 1e6 / self.cpu_share(cal)


def link_excess_ms(nbytes: Any, rate: float, cpu_ms_per_byte: float, cal: Calibration, share: float = 1.0) -> Any:
    """Link time of ``nbytes`` beyond the CPU that moved them, from a burst echo (client -> broker -> client)
    measured at ``rate`` bytes/s: the echo's time less what the echo costs where only CPU limits it, never
    below 0. That is the larger of the endpoint's CPU to send and receive each byte (``cpu_ms_per_byte``)
    plus the broker's, and ``cal.echo_ms_per_mb`` over the endpoint's CPU ``share``: the echo's own
    per-message work (QoS 1 acknowledgements, one paho thread both sending and receiving) makes a loopback
    echo read 3.5-8 ms/MB where a request's crossing costs ~5. A slow network leaves nearly all of it."""
    probe = nbytes / rate * 1e3
    floor = max(cpu_ms_per_byte + 2e3 / cal.broker_bytes_per_s, cal.echo_ms_per_mb / 1e6 / max(share, 1e-6))
    return np.maximum(probe - nbytes * floor, 0.0)


@dataclass(frozen=True)
class Shape:
    """Stages ``[cuts[i], cuts[i+1])`` served by ``groups[i]`` with request shares ``weights[i]`` (sum 1)."""

    cuts: tuple[int, ...]
    groups: tuple[tuple[str, ...], ...]
    weights: tuple[tuple[float, ...], ...]

    @property
    def kind(self) -> str:
        k, widest = len(self.groups), max(len(g) for g in self.groups)
        if k == 1:
            return "single" if widest == 1 else "replicas"
        return "pipeline" if widest == 1 else "hybrid"

    @property
    def devices(self) -> list[str]:
        return sorted({d for g in self.groups for d in g})

    def label(self) -> str:
        """``a`` (one device), ``a+b+c`` (replicas), ``a > b`` (stages), ``a > b+c`` (hybrid)."""
        return " > ".join("+".join(g) for g in self.groups)


@dataclass
class Prediction:
    throughput_rps: float
    latency_ms: float
    bottleneck: str
    busy_ms: dict[str, float] = field(default_factory=dict)   # per resource, per request
    run_ms: float = 0.0   # the part of latency_ms that is the stages' model runs alone (the rest is the path)


@dataclass
class Candidate:
    shape: Shape
    prediction: Prediction

    def row(self) -> dict:
        """A table row: shape, kind, predicted req/s and latency, bottleneck resource."""
        p = self.prediction
        return {"shape": self.shape.label(), "kind": self.shape.kind, "stages": len(self.shape.groups),
                "devices": len(self.shape.devices), "throughput_rps": round(p.throughput_rps, 2),
                "latency_ms": round(p.latency_ms, 2), "bottleneck": p.bottleneck}


@dataclass
class Search:
    """Every candidate evaluated, best first for ``objective``; ``notes``: what the search skipped."""

    objective: str
    ranked: list[Candidate]
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Candidate:
        return self.ranked[0]

    def alternatives(self, limit: int = 5) -> list[Candidate]:
        """The chosen shape, the best of each other kind, then the next best: distinct labels."""
        out, seen = [self.best], {self.best.shape.label()}
        kinds = {self.best.shape.kind}
        for c in self.ranked:
            if c.shape.kind not in kinds and c.shape.label() not in seen:
                out.append(c)
                seen.add(c.shape.label())
                kinds.add(c.shape.kind)
        for c in self.ranked:
            if len(out) >= limit:
                break
            if c.shape.label() not in seen:
                out.append(c)
                seen.add(c.shape.label())
        return sorted(out[:limit], key=lambda c: _rank_key(c, self.objective))

    def why(self) -> str:
        """One sentence: why the best beat the runner-up."""
        b = self.best
        pb = b.prediction
        others = [c for c in self.ranked if c.shape.label() != b.shape.label()]
        head = (f"{b.shape.kind} {b.shape.label()!r}: {pb.throughput_rps:.1f} req/s, {pb.latency_ms:.1f} ms "
                f"alone, bound by {pb.bottleneck}")
        if not others:
            return head + " (the only shape that fits)."
        r = others[0]
        pr = r.prediction
        if self.objective == "throughput":
            return (head + f"; the next best, {r.shape.kind} {r.shape.label()!r}, gives {pr.throughput_rps:.1f} "
                    f"req/s (bound by {pr.bottleneck}).")
        return (head + f"; the next best, {r.shape.kind} {r.shape.label()!r}, takes {pr.latency_ms:.1f} ms.")


# ------------------------------------------------------------------------------------------- evaluation


def evaluate(prof: CostProfile, devices: dict[str, Device], shape: Shape, cal: Calibration) -> Prediction:
    """Throughput, latency and busy time per resource of ``shape`` (see the module docstring)."""
    cb, fp = prof.carry_bytes, prof.flops_prefix
    busy: dict[str, float] = {}
    latency = run = 0.0

    def add(res: str, ms: float) -> None:
        busy[res] = busy.get(res, 0.0) + ms

    cuts = shape.cuts
    for k, (group, weights) in enumerate(zip(shape.groups, shape.weights)):
        a, b = cuts[k], cuts[k + 1]
        flops = float(fp[b] - fp[a])
        b_in, b_out = float(cb[a]), float(cb[b])
        for dev_id, w in zip(group, weights):
            d = devices[dev_id]
            cpu = d.compute_ms(flops, cal) + d.hop_cost_ms(cal) + (b_in + b_out) * d.byte_cost_ms(cal)
            t_in, t_out = d.wire_ms(b_in, cal), d.wire_ms(b_out, cal)
            add(f"cpu:{dev_id}", w * cpu)
            add(f"in:{dev_id}", w * t_in)
            add(f"out:{dev_id}", w * t_out)
            cpu_alone = float(d.alone_ms(flops, b_in + b_out, cal))
            latency += w * (cpu_alone + t_in + t_out + d.rtt_ms)   # half a round trip to receive, half to send
            run += w * float(d.alone_ms(flops, 0.0, cal) - d.alone_ms(0.0, 0.0, cal))
    boundary_bytes = [float(cb[c]) for c in cuts]            # request, each stage boundary, answer
    broker = sum(2 * x / cal.broker_bytes_per_s * 1e3 + 2 * cal.broker_msg_ms for x in boundary_bytes)
    add("broker", broker)
    client_bytes = boundary_bytes[0] + boundary_bytes[-1]
    client = cal.client_hop_ms + client_bytes * cal.client_byte_ms_per_mb / 1e6
    add("client", client)
    latency += broker + client + client_wire_ms(client_bytes, cal) + cal.client_rtt_ms
    res, worst = max(busy.items(), key=lambda kv: kv[1])
    return Prediction(1e3 / worst if worst > 0 else math.inf, latency, res, busy, run)


def client_wire_ms(nbytes: float, cal: Calibration) -> float:
    """The caller's link time for ``nbytes`` beyond its CPU (:func:`link_excess_ms`); 0 when its link was not
    measured."""
    if not cal.client_link_bytes_per_s:
        return 0.0
    return float(link_excess_ms(nbytes, cal.client_link_bytes_per_s, 2 * cal.client_byte_ms_per_mb / 1e6, cal))


# ------------------------------------------------------------------------------------------- search


def _device_time(prof: CostProfile, d: Device, cal: Calibration) -> np.ndarray:
    """[n+1, n+1]: busiest of (CPU, link in, link out) of ``d`` per request for anchors [a, b); inf where
    a >= b or the range does not fit in its RAM."""
    fp, cb = prof.flops_prefix, prof.carry_bytes
    n1 = len(fp)
    cpu = (d.compute_ms(fp[None, :] - fp[:, None], cal) + d.hop_cost_ms(cal)
           + (cb[:, None] + cb[None, :]) * d.byte_cost_ms(cal))
    link = d.wire_ms(np.maximum(cb[:, None], cb[None, :]), cal)
    t = np.maximum(cpu, link)
    valid = (np.arange(n1)[None, :] > np.arange(n1)[:, None]) & (prof.mem_bytes <= d.ram_bytes)
    return np.where(valid, t, np.inf)


def _device_latency(prof: CostProfile, d: Device, cal: Calibration) -> np.ndarray:
    """[n+1, n+1]: one request's time on ``d`` for anchors [a, b): CPU, both transfers, a round trip, and
    the broker's store-and-forward of the stage's input."""
    fp, cb = prof.flops_prefix, prof.carry_bytes
    n1 = len(fp)
    cpu = d.alone_ms(fp[None, :] - fp[:, None], cb[:, None] + cb[None, :], cal)
    t = (cpu + d.wire_ms(cb[:, None], cal) + d.wire_ms(cb[None, :], cal) + d.rtt_ms
         + (2 * cb[:, None] / cal.broker_bytes_per_s * 1e3 + 2 * cal.broker_msg_ms))
    valid = (np.arange(n1)[None, :] > np.arange(n1)[:, None]) & (prof.mem_bytes <= d.ram_bytes)
    return np.where(valid, t, np.inf)


def _classes(devices: Sequence[Device]) -> list[list[Device]]:
    """Devices grouped by near-equal capability (fastest first within and across classes): the search
    enumerates how many of each class a stage gets, not which ones (measured GFLOP/s are never equal)."""
    out: list[list[Device]] = []
    for d in sorted(devices, key=lambda d: (-d.gflops, -d.link_bytes_per_s, d.id)):
        for cls in out:
            r = cls[0]
            if (abs(d.gflops - r.gflops) <= _CLASS_TOL * r.gflops
                    and abs(d.link_bytes_per_s - r.link_bytes_per_s) <= _CLASS_TOL * r.link_bytes_per_s
                    and d.ram_bytes == r.ram_bytes):
                cls.append(d)
                break
        else:
            out.append([d])
    return out


def _compositions(count: int, bins: int) -> Iterable[tuple[int, ...]]:
    """Every way to put ``count`` identical items into ``bins`` ordered bins."""
    for bars in itertools.combinations(range(count + bins - 1), bins - 1):
        prev, parts = -1, []
        for b in (*bars, count + bins - 1):
            parts.append(b - prev - 1)
            prev = b
        yield tuple(parts)


def _groupings(classes: list[list[Device]], k: int) -> Iterable[list[list[Device]]]:
    """Ordered groups of devices for ``k`` stages (the last bin of each class is "unused")."""
    per_class = [list(_compositions(len(c), k + 1)) for c in classes]
    for combo in itertools.product(*per_class):
        groups: list[list[Device]] = [[] for _ in range(k)]
        for cls, parts in zip(classes, combo):
            i = 0
            for stage, m in enumerate(parts[:k]):
                groups[stage].extend(cls[i:i + m])
                i += m
        if all(groups):
            yield groups


def _n_groupings(classes: list[list[Device]], k: int) -> int:
    return math.prod(math.comb(len(c) + k, k) for c in classes)


def _rate_weights(times: list[float]) -> tuple[float, ...]:
    """Request shares proportional to each replica's rate (1 / its time per request)."""
    rates = [1.0 / t if t > 0 and math.isfinite(t) else 0.0 for t in times]
    total = sum(rates)
    return tuple(round(r / total, 4) for r in rates) if total > 0 else tuple(1 / len(times) for _ in times)


def _rank_key(c: Candidate, objective: str) -> tuple:
    p = c.prediction
    tp = -math.floor(math.log(max(p.throughput_rps, 1e-9)) / math.log1p(_TIE))
    lat = math.floor(math.log(max(p.latency_ms, 1e-9)) / math.log1p(_TIE))
    n_dev = len(c.shape.devices)
    # within one bucket (1 %) the exact figures still order the candidates, before the label does
    if objective == "throughput":
        return (tp, lat, n_dev, -p.throughput_rps, p.latency_ms, c.shape.label())
    return (lat, tp, n_dev, p.latency_ms, -p.throughput_rps, c.shape.label())


def search(prof: CostProfile, devices: Sequence[Device], cal: Calibration | None = None,
           objective: str = "throughput", max_stages: int = _MAX_STAGES) -> Search:
    """Evaluate replicas, pipelines and hybrids of ``devices`` for ``prof`` and rank them for ``objective``.

    Throughput candidates: for each stage count and each way of giving every stage a group of devices
    (by capability class, unused devices allowed), the cuts that minimise the slowest group, where a
    group's time is 1 / the sum of its members' rates. Latency candidates: for each ordered choice of one
    device per stage, the cuts that minimise the sum; then the same with equal devices added as replicas.
    Every candidate is then evaluated with the full model (:func:`evaluate`: broker and client included)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not devices:
        raise ValueError(f"cannot plan {prof.name!r}: no devices")
    cal = cal or Calibration()
    by_id = {d.id: d for d in devices}
    if len(by_id) != len(devices):
        raise ValueError(f"duplicate device ids in {[d.id for d in devices]}")
    for d in devices:
        if not (d.gflops > 0 and d.link_bytes_per_s > 0 and d.ram_bytes > 0 and d.rtt_ms >= 0):
            raise ValueError(f"device {d.id!r} has non-positive gflops/link/ram or a negative round trip: {d}")
    classes = _classes(devices)
    k_max = min(max_stages, len(devices), prof.n)
    notes: list[str] = []
    t_cache: dict[str, np.ndarray] = {}
    l_cache: dict[str, np.ndarray] = {}
    g_cache: dict[tuple[str, ...], np.ndarray] = {}

    def dev_time(d: Device) -> np.ndarray:
        if d.id not in t_cache:
            t_cache[d.id] = _device_time(prof, d, cal)
        return t_cache[d.id]

    def group_time(group: list[Device]) -> np.ndarray:
        key = tuple(d.id for d in group)
        if key not in g_cache:
            with np.errstate(divide="ignore"):
                rate = sum(1.0 / dev_time(d) for d in group)
                g_cache[key] = np.where(rate > 0, 1.0 / np.where(rate > 0, rate, 1.0), np.inf)
        return g_cache[key]

    shapes: dict[tuple, Shape] = {}

    def add(cuts: list[int], groups: list[list[Device]]) -> None:
        weights = []
        for i, g in enumerate(groups):
            a, b = cuts[i], cuts[i + 1]
            weights.append(_rate_weights([float(dev_time(d)[a, b]) for d in g]))
        s = Shape(tuple(cuts), tuple(tuple(d.id for d in g) for g in groups), tuple(weights))
        shapes.setdefault((s.cuts, s.groups), s)

    for k in range(1, k_max + 1):
        if _n_groupings(classes, k) > _ENUM_BUDGET:
            notes.append(f"{k} stages: {_n_groupings(classes, k)} groupings exceed the search budget; skipped")
            continue
        for groups in _groupings(classes, k):
            bn, cuts = minmax_cuts([group_time(g) for g in groups])
            if math.isfinite(bn):
                add(cuts, groups)
    # latency-first paths: one device per stage (distinct classes' representatives, every order)
    reps = [c[0] for c in classes]
    for k in range(1, min(k_max, len(reps)) + 1):
        if math.perm(len(reps), k) > _ENUM_BUDGET:
            break
        for seq in itertools.permutations(reps, k):
            mats = []
            for d in seq:
                if d.id not in l_cache:
                    l_cache[d.id] = _device_latency(prof, d, cal)
                mats.append(l_cache[d.id])
            total, cuts = minsum_cuts(mats)
            if not math.isfinite(total):
                continue
            add(cuts, [[d] for d in seq])
            # the same path, each stage widened by the other devices of its class (no slower replica)
            widened = [[d] + [o for o in next(c for c in classes if c[0] is d)[1:]] for d in seq]
            if any(len(g) > 1 for g in widened):
                add(cuts, widened)
    if not shapes:
        raise ValueError(f"model {prof.name!r} fits no device's memory in any shape "
                         f"(devices: {[d.id for d in devices]})")
    cands = [Candidate(s, evaluate(prof, by_id, s, cal)) for s in shapes.values()]
    cands.sort(key=lambda c: _rank_key(c, objective))
    return Search(objective, cands, notes)


# ------------------------------------------------------------------------------------------- calibration


class Observation(NamedTuple):
    """One measured deployment stage on one device, for :func:`fit_agent_costs`.

    ``cpu_ms``: the device's CPU per request in ms of one full reference core (its CPU time over the
    requests it served, at saturation); ``run_ms``: the backend's run of the stage per request on one full
    core (the model run alone, without the agent); ``nbytes``: bytes it received plus sent per request."""

    cpu_ms: float
    run_ms: float
    nbytes: float


def fit_agent_costs(obs: Sequence[Observation], base: Calibration | None = None) -> Calibration:
    """``base`` with ``hop_ms`` and ``byte_ms_per_mb`` fitted to measured runs: the agent's overhead per
    request (``cpu_ms - run_ms``) = hop + bytes x per-byte cost, least squares, both kept >= 0. With fewer
    than two distinct byte counts only the per-hop cost is fitted (the per-byte one keeps ``base``'s)."""
    base = base or Calibration()
    if not obs:
        raise ValueError("fit_agent_costs: no observations")
    for o in obs:
        if not (o.cpu_ms > 0 and o.run_ms >= 0 and o.nbytes >= 0):
            raise ValueError(f"fit_agent_costs: an observation needs cpu_ms > 0, run_ms >= 0, nbytes >= 0: {o}")
    over = np.array([o.cpu_ms - o.run_ms for o in obs], np.float64)
    mb = np.array([o.nbytes / 1e6 for o in obs], np.float64)
    if len(set(np.round(mb, 6))) < 2:
        hop, per_mb = float(np.mean(over - mb * base.byte_ms_per_mb)), base.byte_ms_per_mb
    else:
        per_mb, hop = (float(v) for v in np.polyfit(mb, over, 1))
        if per_mb < 0:   # noise: the overhead does not grow with bytes here; a constant fits best
            hop, per_mb = float(np.mean(over)), 0.0
        elif hop < 0:    # the line through zero
            hop, per_mb = 0.0, float(np.dot(mb, over) / np.dot(mb, mb))
    return Calibration(**{**base.__dict__, "hop_ms": max(hop, 0.0), "byte_ms_per_mb": max(per_mb, 0.0)})
