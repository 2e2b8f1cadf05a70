"""``edge-agent bench``: drive a deployment with a bounded number of requests, many in flight, and count
what the caller saw: latency percentiles, throughput, lost (no result by the deadline), duplicated
(results delivered twice to the API: must be 0), retried and failed-over requests."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from edge_agent.operator.rollout import load_check_data
from edge_agent.operator.stats import latency_summary
from edge_agent.protocol.errors import EdgeAgentError


def run_bench(fleet: Any, name: str, requests: int = 200, concurrency: int = 8, timeout: float = 30.0,
              inputs: dict | None = None, on_result: Any = None) -> dict:
    """Returns p50/p95/p99 latency (ms), throughput (req/s), ok, lost, duplicated, retried, failovers."""
    m = fleet.manifest(name)
    samples = [inputs] if inputs else load_check_data(None, m.inputs)[0][:4]
    before = dict(fleet.stats)
    lat: list[float] = []
    errors: list[str] = []
    seen: set[str] = set()
    duplicated = 0
    inflight: deque = deque()
    t0 = time.perf_counter()
    sent = 0
    while sent < requests or inflight:
        while sent < requests and len(inflight) < concurrency:
            inflight.append((time.perf_counter(), sent, fleet.submit(name, samples[sent % len(samples)],
                                                                     timeout=timeout)))
            sent += 1
        ts, i, fut = inflight.popleft()
        try:
            outputs, timings = fut.result(timeout + 10)
            lat.append((time.perf_counter() - ts) * 1e3)
            key = f"{i}"
            duplicated += key in seen
            seen.add(key)
            if on_result is not None:
                on_result(i, outputs, timings)
        except (EdgeAgentError, TimeoutError) as exc:
            errors.append(str(exc))
    wall = time.perf_counter() - t0
    summary = {k: float("nan") if v is None else float(v) for k, v in latency_summary(lat).items()}
    return {"requests": requests, "concurrency": concurrency, "ok": len(lat), "lost": len(errors),
            "duplicated": duplicated, "retried": fleet.stats["retries"] - before["retries"],
            "failovers": fleet.stats["failovers"] - before["failovers"],
            "late_duplicates_dropped": fleet.stats["duplicates"] - before["duplicates"],
            **summary, "throughput_rps": len(lat) / wall,
            "seconds": wall, "errors": errors[:5]}
