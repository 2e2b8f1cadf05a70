"""Rollout gates: conditions on measured metrics that a canary must meet before promotion (pure functions).

``"p95_ms<=120,error_rate<=0.01,max_abs_diff<=1e-3"``: latency percentiles and mean of the check requests,
their error rate, and agreement of the outputs with the reference (see :mod:`.rollout`).
"""

from __future__ import annotations

import operator
import re

_GATE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>|==)\s*([-+0-9.eE]+)\s*$")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
METRICS = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "error_rate", "max_abs_diff", "mismatch_rate")


def parse_gates(spec: str | dict | None) -> list[tuple[str, str, float]]:
    """``"p95_ms<=120,error_rate<=0.01"`` -> [("p95_ms", "<=", 120.0), ...]; unknown metrics are errors."""
    if not spec:
        return []
    if isinstance(spec, dict):
        items = [f"{k}{v}" if isinstance(v, str) and v[:1] in "<>=" else f"{k}<={v}" for k, v in spec.items()]
    else:
        items = [p for p in spec.split(",") if p.strip()]
    gates = []
    for item in items:
        m = _GATE.match(item)
        if not m:
            raise ValueError(f"gate {item!r}: use METRIC<=VALUE (metrics: {', '.join(METRICS)})")
        if m.group(1) not in METRICS:
            raise ValueError(f"gate {item!r}: unknown metric {m.group(1)!r} (known: {', '.join(METRICS)})")
        gates.append((m.group(1), m.group(2), float(m.group(3))))
    return gates


def check_gates(gates: list[tuple[str, str, float]], metrics: dict) -> list[str]:
    """The failed gates, each as a sentence with the measured value."""
    failed = []
    for name, op, limit in gates:
        value = metrics.get(name)
        if value is None or not _OPS[op](value, limit):
            failed.append(f"{name} = {value if value is None else round(value, 6)} violates {name}{op}{limit:g}")
    return failed


def canary_count(spec: int | str, n_devices: int) -> int:
    """``3`` or ``"25%"`` of the online devices, at least one."""
    if isinstance(spec, str) and spec.strip().endswith("%"):
        pct = float(spec.strip()[:-1])
        if not 0 < pct <= 100:
            raise ValueError(f"canary {spec!r}: percentage must be in (0, 100]")
        return max(1, min(n_devices, round(n_devices * pct / 100)))
    n = int(spec)
    if n < 1:
        raise ValueError(f"canary {spec!r}: at least one device")
    return min(n, n_devices)
