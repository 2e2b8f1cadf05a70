"""Latency summaries, one definition for every report (bench, canary gates, demo, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank; None when empty."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def latency_summary(values_ms: Iterable[float]) -> dict[str, float | None]:
    """``p50_ms``, ``p95_ms``, ``p99_ms`` and ``mean_ms`` of latencies in milliseconds (None when empty)."""
    lat = sorted(values_ms)
    return {"p50_ms": percentile(lat, 0.5), "p95_ms": percentile(lat, 0.95), "p99_ms": percentile(lat, 0.99),
            "mean_ms": sum(lat) / len(lat) if lat else None}
