"""What an operator process measures while it runs: its own requests, and the fleet's per-stage rates.

- :class:`RequestLog`: every request this client finished (per model: counts, errors by code, latency
  buckets for Prometheus; the last completions for live charts; the last errors with their context).
- :class:`StageRates`: served/error rates and run time per (model, version, stage) over the whole fleet,
  from the cumulative counters agents put in their load reports (so it sees every client's requests and
  streams, not only this one's). Rates are differences of counters over a window, so a lost QoS 0 report
  costs precision, never correctness, and an agent restart (counters back to 0) is not a negative rate.

Both are plain data structures with an injectable clock: the dashboard and the metrics exporter read them,
the tests fill them by hand.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# latency buckets (seconds) of this client's end-to-end requests: 1 ms .. 30 s
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

StageKey = tuple[str, int, int]


@dataclass
class Completion:
    """One finished request of this client."""

    ts: float            # wall clock (epoch s) when it finished
    model: str
    latency_ms: float
    ok: bool
    code: str = ""


@dataclass
class ErrorEvent:
    """A failed request (or a device's rejection), with the context an operator needs to act on it."""

    ts: float
    source: str          # "client" (this operator's request) or "device" (a device's state reported it)
    model: str
    code: str
    message: str
    device: str | None = None
    stage: int | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ModelTotals:
    """Cumulative counts of one model's requests from this client (never reset: Prometheus counters)."""

    requests: int = 0
    errors: Counter = field(default_factory=Counter)   # by error code
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))   # not cumulative; +Inf = requests
    sum_s: float = 0.0


class RequestLog:
    """This client's finished requests (thread-safe; the request table records, readers copy)."""

    def __init__(self, keep: int = 4096, keep_errors: int = 100, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, ModelTotals] = {}
        self._recent: deque[Completion] = deque(maxlen=keep)
        self._errors: deque[ErrorEvent] = deque(maxlen=keep_errors)
        self.clock = clock
        self.first_ts: float | None = None     # when the first request finished (rates over a young log)

    def record(self, model: str, latency_s: float, ok: bool, code: str = "", message: str = "",
               device: str | None = None, stage: int | None = None) -> None:
        now = self.clock()
        with self._lock:
            if self.first_ts is None:
                self.first_ts = now
            t = self._totals.setdefault(model, ModelTotals())
            t.requests += 1
            t.sum_s += latency_s
            i = bisect.bisect_left(BUCKETS, latency_s)
            if i < len(BUCKETS):
                t.buckets[i] += 1
            self._recent.append(Completion(now, model, latency_s * 1e3, ok, code))
            if not ok:
                t.errors[code or "error"] += 1
                self._errors.append(ErrorEvent(now, "client", model, code or "error", message[:500], device, stage))

    def totals(self) -> dict[str, ModelTotals]:
        with self._lock:
            return {m: ModelTotals(t.requests, Counter(t.errors), list(t.buckets), t.sum_s)
                    for m, t in self._totals.items()}

    def recent(self, since: float) -> list[Completion]:
        """Completions that finished at or after ``since`` (epoch s), oldest first."""
        with self._lock:
            return [c for c in self._recent if c.ts >= since]

    def errors(self) -> list[ErrorEvent]:
        with self._lock:
            return list(self._errors)


@dataclass
class StageRate:
    """Fleet-wide figures of one stage over the rate window."""

    served_per_s: float
    errors_per_s: float
    run_ms: float | None        # mean of the devices' EWMA run times (None: never ran)
    devices: int                # devices that have run it
    served: int                 # cumulative, summed over the devices reporting now


class StageRates:
    """Per-stage served/error rates over the fleet, from the agents' cumulative load-report counters."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        # device -> samples (t, {key: (served, errors, run_ms)}), oldest first, spanning ~2 windows
        self._samples: dict[str, deque[tuple[float, dict[StageKey, tuple[int, int, float]]]]] = {}

    def observe(self, device: str, entries: Iterable[tuple[str, int, int, int, int, float]]) -> None:
        now = self.clock()
        snap = {(m, v, s): (served, errors, run_ms) for m, v, s, served, errors, run_ms in entries}
        with self._lock:
            q = self._samples.setdefault(device, deque())
            q.append((now, snap))
            while len(q) > 2 and now - q[1][0] > 2 * self.window_s:
                q.popleft()

    def forget(self, device: str) -> None:
        with self._lock:
            self._samples.pop(device, None)

    def latest(self) -> list[tuple[StageKey, str, tuple[int, int, float]]]:
        """Each device's last reported (served, errors, run_ms) per stage: the counters as the devices hold them."""
        with self._lock:
            return sorted((key, device, vals) for device, q in self._samples.items() if q
                          for key, vals in q[-1][1].items())

    def rates(self) -> dict[StageKey, StageRate]:
        """Rates over the last ``window_s`` (devices silent for longer than the window contribute nothing)."""
        now = self.clock()
        acc: dict[StageKey, list[float]] = {}
        with self._lock:
            for q in self._samples.values():
                if not q or now - q[-1][0] > self.window_s:
                    continue
                t1, last = q[-1]
                # the oldest sample still inside the window (or the one just before it) is the baseline
                base = next(((t, s) for t, s in q if now - t <= self.window_s), q[0])
                if base[0] == t1 and len(q) > 1:
                    base = q[-2]
                t0, first = base
                dt = t1 - t0
                for key, (served, errors, run_ms) in last.items():
                    a = acc.setdefault(key, [0.0, 0.0, 0.0, 0.0, 0.0])   # served/s, errors/s, run sum, n, served
                    if dt > 0:
                        # a stage missing from the baseline had not run yet on that device: its counts were 0
                        s0, e0, _ = first.get(key, (0, 0, 0.0))
                        # a counter that went down is an agent restart: count from 0
                        a[0] += (served - s0 if served >= s0 else served) / dt
                        a[1] += (errors - e0 if errors >= e0 else errors) / dt
                    if served:
                        a[2] += run_ms
                        a[3] += 1
                    a[4] += served
        return {k: StageRate(a[0], a[1], a[2] / a[3] if a[3] else None, int(a[3]), int(a[4]))
                for k, a in acc.items()}


def latency_window(completions: Iterable[Completion]) -> dict[str, float | None]:
    """Latency percentiles and mean (ms) of the successful completions, and how many there were and failed."""
    from edge_agent.operator.stats import latency_summary
    items = list(completions)
    out = latency_summary(c.latency_ms for c in items if c.ok)
    out["errors"] = float(sum(1 for c in items if not c.ok))
    out["count"] = float(len(items))
    return out


class LearnedEfficiency:
    """Per (model content, device): the share of the device's GEMM speed a model's stages reach, learned from
    the run times agents report, so the next plan of the same model predicts its compute from what the
    device measured running it rather than from the calibration's assumed efficiency (docs/planner.md).

    A stage of ``flops`` that a device runs in ``run_ms`` (its load report's median run time at full speed:
    :func:`edge_agent.agent.server.full_speed_ms`, the wall time of runs that had the CPU throughout or
    the CPU time of those a CPU quota's period cut) at its burst speed ``peak`` GFLOP/s (its sustained speed
    without a quota) reached ``flops / (run_ms * peak)``. An agent older than that median reports only the
    run time's EWMA (``full_speed`` False), which includes quota waits: it is used only when shorter than a
    quota period's budget (``sustained / peak`` of ``period_ms``), which a run cut by the period's end never
    is. Several stages of one model on one device are summed (FLOPs over time); the value is an EWMA over
    reports, and kept after the deployment is gone."""

    def __init__(self, alpha: float = 0.5, period_ms: float = 100.0):
        self.alpha, self.period_ms = alpha, period_ms
        self._lock = threading.Lock()
        self._eff: dict[tuple[str, str], float] = {}   # (model sha, device) -> efficiency

    def observe(self, model_sha: str, device: str, stages: Iterable[tuple[float, float, bool]], sustained: float,
                peak: float | None) -> float | None:
        """``stages``: (flops, run_ms, full_speed) of each stage of the model the device reported, ``full_speed``
        telling a median at full speed from an EWMA. Returns the learned efficiency, or None when nothing could
        be learned from this report."""
        peak = peak if peak and peak > sustained else sustained
        if not model_sha or sustained <= 0 or peak <= 0:
            return None
        budget_ms = self.period_ms * sustained / peak if peak > sustained else float("inf")
        flops = ms = 0.0
        for f, run_ms, full_speed in stages:
            if f and f > 0 and run_ms and 0 < run_ms and (full_speed or run_ms < budget_ms):
                flops += float(f)
                ms += float(run_ms)
        if flops <= 0 or ms <= 0:
            return None
        eff = flops / (ms * 1e-3 * peak * 1e9)
        key = (model_sha, device)
        with self._lock:
            old = self._eff.get(key)
            if old is not None:
                eff = (1 - self.alpha) * old + self.alpha * eff
            self._eff[key] = eff
        return eff

    def for_model(self, model_sha: str) -> dict[str, float]:
        """{device: learned efficiency} for the model with this content hash (empty when never run)."""
        with self._lock:
            return {dev: e for (sha, dev), e in self._eff.items() if sha == model_sha}
