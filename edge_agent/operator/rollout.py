"""Staged rollout: run a new version on a few canary devices, measure it against gates, then promote it
to the whole fleet or withdraw it (the fleet never left the previous version) and record why.

Gates are conditions on measured metrics, e.g. ``p95_ms<=120,error_rate<=0.01,max_abs_diff<=1e-3``:

- ``p50_ms``, ``p95_ms``, ``p99_ms``, ``mean_ms``: end-to-end latency of the check requests on the canary
- ``error_rate``: failed check requests / all check requests
- ``max_abs_diff``: largest absolute difference of the canary's outputs from the reference outputs
  (expected arrays in the check data, ``expected:<output>``; else ONNX Runtime on the whole new model)
- ``mismatch_rate``: fraction of samples whose outputs are not allclose(atol=1e-4, rtol=1e-4) to the reference
"""

from __future__ import annotations

import operator
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.protocol.errors import DeployError, EdgeAgentError

if TYPE_CHECKING:
    from edge_agent.operator.fleet import Fleet

_GATE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>|==)\s*([-+0-9.eE]+)\s*$")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
METRICS = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "error_rate", "max_abs_diff", "mismatch_rate")
DEFAULT_SAMPLES = 16


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


def load_check_data(check_data: Any, input_specs: list[dict]) -> tuple[list[dict], list[dict] | None]:
    """Samples (one input dict each) and, when given as ``expected:<output>``, the expected outputs."""
    if check_data is None:
        rng = np.random.default_rng(0)
        samples = []
        for _ in range(DEFAULT_SAMPLES):
            sample = {}
            for spec in input_specs:
                shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]]
                dt = np.dtype(spec["dtype"])
                sample[spec["name"]] = (rng.standard_normal(shape).astype(dt) if dt.kind == "f"
                                        else np.zeros(shape, dtype=dt))
            samples.append(sample)
        return samples, None
    if isinstance(check_data, (str, Path)):
        with np.load(Path(check_data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        arrays = dict(check_data)
    inputs = {s["name"]: s for s in input_specs}
    missing = [n for n in inputs if n not in arrays]
    if missing:
        raise ValueError(f"check data lacks input(s) {missing} (has {sorted(arrays)})")
    counts = set()
    for name, spec in inputs.items():
        arr = arrays[name]
        counts.add(arr.shape[0] if arr.ndim == len(spec["shape"]) + 1 else 0)
    if len(counts) != 1:
        raise ValueError("check data inputs disagree on the number of samples")
    n = counts.pop()
    if n == 0:  # a single sample shaped exactly like the inputs
        samples = [{k: arrays[k] for k in inputs}]
        exp = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("expected:")}
        return samples, ([exp] if exp else None)
    samples = [{k: np.asarray(arrays[k][i], order="C") for k in inputs} for i in range(n)]
    exp_keys = [k for k in arrays if k.startswith("expected:")]
    expected = [{k.split(":", 1)[1]: arrays[k][i] for k in exp_keys} for i in range(n)] if exp_keys else None
    return samples, expected


def measure(fleet: Fleet, name: str, samples: list[dict], expected: list[dict] | None, model: Any,
            channel: str, timeout: float = 60.0) -> dict:
    """Send every sample once through ``channel``; latency, error rate and agreement with the reference."""
    if expected is None:
        import onnxruntime as ort

        from models.graph import load_model
        proto = load_model(model)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        expected = [dict(zip(names, sess.run(None, s))) for s in samples]
    lat, errors, diffs, mismatches = [], [], [], 0
    for sample, want in zip(samples, expected):
        t0 = time.perf_counter()
        try:
            got, _ = fleet.submit(name, sample, timeout=timeout, channel=channel).result(timeout + 5)
        except (EdgeAgentError, TimeoutError) as exc:
            errors.append(str(exc))
            continue
        lat.append((time.perf_counter() - t0) * 1e3)
        worst, ok = 0.0, True
        for out, ref in want.items():
            if out not in got or got[out].shape != np.shape(ref):
                ok, worst = False, float("inf")
                continue
            worst = max(worst, float(np.max(np.abs(got[out].astype(np.float64) - ref))) if got[out].size else 0.0)
            ok = ok and bool(np.allclose(got[out], ref, atol=1e-4, rtol=1e-4))
        diffs.append(worst)
        mismatches += 0 if ok else 1
    lat.sort()

    def pct(q: float) -> float | None:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

    n = len(samples)
    return {"samples": n, "errors": len(errors), "error_rate": len(errors) / max(n, 1),
            "p50_ms": pct(0.5), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            "mean_ms": float(np.mean(lat)) if lat else None,
            "max_abs_diff": max(diffs) if diffs else None, "mismatch_rate": mismatches / max(len(diffs), 1),
            "first_error": errors[0] if errors else ""}


def run_canary(fleet: Fleet, model: Any, name: str, *, canary: int | str, gates: Any, check_data: Any,
               stages: int | None, version: int | None, timeout: float, progress: Any = None,
               **plan_kw: Any) -> dict:
    """Deploy ``model`` on canary devices, gate it, withdraw it. Returns the metrics (with ``version``)
    when every gate passes; raises DeployError naming the failed gates otherwise."""
    gate_list = parse_gates(gates)
    live = fleet.devices()
    if not live:
        raise DeployError(f"cannot deploy '{name}': no device is online")
    n = canary_count(canary, len(live))
    # canaries: the fastest devices, so a gate failure means the version, not a weak device
    chosen = [d.device_id for d in sorted(live, key=lambda d: (-d.gflops, d.device_id))[:n]]
    k = min(stages or n, n)
    plan_kw = {**plan_kw, "replicas": 1}
    m, _ = fleet.build_manifest(model, name, stages=k, devices=chosen, version=version, channel="canary",
                                **plan_kw)
    fleet.publish_manifest(m)
    fleet.record_rollout(name, m.version, "canary", "started", f"canary on {', '.join(chosen)}")
    try:
        fleet._wait_ready(m, timeout, progress)
        samples, expected = load_check_data(check_data, m.inputs)
        metrics = measure(fleet, name, samples, expected, model, channel="canary")
    except (EdgeAgentError, ValueError) as exc:
        fleet._clear_canary(name)
        fleet.record_rollout(name, m.version, "canary", "failed", f"canary did not run: {exc}")
        raise DeployError(f"deployment {name} v{m.version}: canary on {', '.join(chosen)} failed: {exc}; "
                          "the fleet stays on its current version") from None
    failed = check_gates(gate_list, metrics)
    if metrics["errors"] and not any(g[0] == "error_rate" for g in gate_list):
        failed.append(f"{metrics['errors']} check request(s) failed: {metrics['first_error']}")
    fleet._clear_canary(name)
    if failed:
        reason = "; ".join(failed)
        fleet.record_rollout(name, m.version, "canary", "rolled_back", reason, metrics=metrics)
        current = fleet._manifests.get(name)
        stays = f"v{current.version}" if current else "nothing (no previous version)"
        raise DeployError(f"deployment {name} v{m.version}: canary gate failed ({reason}); rolled back, the "
                          f"fleet stays on {stays}")
    fleet.record_rollout(name, m.version, "canary", "passed", "all gates passed", metrics=metrics)
    return {**metrics, "version": m.version}
