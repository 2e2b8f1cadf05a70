"""Measured throughput and latency over a sliding window: one definition for the operator (its own requests)
and the agents (the requests their stages finish), so ``status`` can set them beside the planner's prediction.

Throughput is completions over the time they spanned ((n - 1) / (last - first)): a window that is only
partly busy is not diluted by the idle part before the first completion. Latency is the median.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

WINDOW_S = 30.0
MAX_SAMPLES = 2000


@dataclass(frozen=True)
class Measured:
    """What a window saw: completions per second, median latency (ms), how many and over how long."""

    throughput_rps: float | None
    latency_ms: float | None
    requests: int
    span_s: float

    def to_dict(self) -> dict:
        return {"throughput_rps": None if self.throughput_rps is None else round(self.throughput_rps, 3),
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
                "requests": self.requests, "span_s": round(self.span_s, 3)}


class Meter:
    """Completions by key (a model version, a stage): ``record(key, latency_ms)``, ``measured(key)``."""

    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._done: dict[Hashable, deque[tuple[float, float]]] = {}

    def record(self, key: Hashable, latency_ms: float) -> None:
        with self._lock:
            q = self._done.setdefault(key, deque(maxlen=MAX_SAMPLES))
            q.append((self.clock(), float(latency_ms)))

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._done)

    def measured(self, key: Hashable) -> Measured:
        """The last ``window_s`` of ``key`` (no completions: all None)."""
        now = self.clock()
        with self._lock:
            q = self._done.get(key)
            recent = [x for x in q if now - x[0] <= self.window_s] if q else []
        if not recent:
            return Measured(None, None, 0, 0.0)
        span = recent[-1][0] - recent[0][0]
        rate = (len(recent) - 1) / span if len(recent) > 1 and span > 0 else None
        return Measured(rate, statistics.median(x[1] for x in recent), len(recent), span)
