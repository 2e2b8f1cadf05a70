"""Time series behind the live charts: the last few minutes of each deployment's and stream's figures.

The server appends one point per snapshot (one a second); a page that opens later gets the whole window at
once, then the new points as they come. Bounded: ``max_points`` per series, and a series whose deployment or
stream is gone is dropped with it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

# the figures a stream's charts plot (a deployment's: throughput_rps, client_rps, p50_ms, p95_ms)
STREAM_FIGURES = ("fps_in", "fps_out", "p50_ms", "p99_ms", "dropped")


class History:
    """Per-deployment and per-stream series of the figures above, ``max_points`` points each."""

    def __init__(self, max_points: int = 300) -> None:
        self.max_points = max_points
        self._series: dict[tuple[str, str], dict[str, deque]] = {}

    def _append(self, kind: str, name: str, ts: float, values: dict[str, Any]) -> None:
        series = self._series.get((kind, name))
        if series is None:
            series = self._series[(kind, name)] = {k: deque(maxlen=self.max_points) for k in ("t", *values)}
        series["t"].append(ts)
        for k, v in values.items():
            series[k].append(v)

    def add(self, snapshot: dict) -> None:
        """Record the figures of one snapshot (see :func:`edge_agent.dashboard.snapshot.build_snapshot`)."""
        ts = snapshot["ts"]
        live = set()
        for d in snapshot["deployments"]:
            live.add(("deployment", d["name"]))
            c = d["client"]
            self._append("deployment", d["name"], ts, {"throughput_rps": d["throughput_rps"],
                                                       "client_rps": c["rps"], "p50_ms": c["p50_ms"],
                                                       "p95_ms": c["p95_ms"]})
        for s in snapshot["streams"]:
            live.add(("stream", s["name"]))
            self._append("stream", s["name"], ts, {k: s.get(k) for k in STREAM_FIGURES})
        for key in [k for k in self._series if k not in live]:
            del self._series[key]

    def export(self) -> dict[str, dict[str, dict[str, list]]]:
        """``{"deployments": {name: {"t": [...], figure: [...]}}, "streams": {...}}`` for the page."""
        out: dict[str, dict[str, dict[str, list]]] = {"deployments": {}, "streams": {}}
        for (kind, name), series in self._series.items():
            out[f"{kind}s"][name] = {k: list(v) for k, v in series.items()}
        return out
