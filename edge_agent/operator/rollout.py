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

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.operator.gates import canary_count, check_gates, parse_gates
from edge_agent.operator.stats import latency_summary
from edge_agent.protocol.errors import DeployError, EdgeAgentError
from edge_agent.protocol.messages import Manifest

if TYPE_CHECKING:
    from edge_agent.operator.fleet import Fleet

log = logging.getLogger("edge_agent.fleet")

DEFAULT_SAMPLES = 16


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
    n = len(samples)
    return {"samples": n, "errors": len(errors), "error_rate": len(errors) / max(n, 1), **latency_summary(lat),
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
        fleet.wait_ready(m, timeout, progress)
        samples, expected = load_check_data(check_data, m.inputs)
        metrics = measure(fleet, name, samples, expected, model, channel="canary")
    except (EdgeAgentError, ValueError) as exc:
        fleet.clear_canary(name)
        fleet.record_rollout(name, m.version, "canary", "failed", f"canary did not run: {exc}")
        raise DeployError(f"deployment {name} v{m.version}: canary on {', '.join(chosen)} failed: {exc}; "
                          "the fleet stays on its current version") from None
    failed = check_gates(gate_list, metrics)
    if metrics["errors"] and not any(g[0] == "error_rate" for g in gate_list):
        failed.append(f"{metrics['errors']} check request(s) failed: {metrics['first_error']}")
    fleet.clear_canary(name)
    if failed:
        reason = "; ".join(failed)
        fleet.record_rollout(name, m.version, "canary", "rolled_back", reason, metrics=metrics)
        current = fleet.current(name)
        stays = f"v{current.version}" if current else "nothing (no previous version)"
        raise DeployError(f"deployment {name} v{m.version}: canary gate failed ({reason}); rolled back, the "
                          f"fleet stays on {stays}")
    fleet.record_rollout(name, m.version, "canary", "passed", "all gates passed", metrics=metrics)
    return {**metrics, "version": m.version}


def rollback(fleet: Fleet, name: str, to_version: int | None, timeout: float,
             progress: Any = None) -> tuple[Manifest, list[dict]]:
    """Publish the content of the previous good version of ``name`` (or ``to_version``) as a new version,
    wait until it is ready and record it. Returns the new manifest and its status rows."""
    current = fleet.manifest(name)
    rec = fleet.rollouts(name)
    goods = [g for g in (rec.good if rec else []) if g.get("version", 0) < current.version and
             g.get("model_sha256") != current.model_sha256 or (to_version and g.get("version") == to_version)]
    goods = [g for g in goods if _authentic(fleet, g, name)]
    if to_version is not None:
        goods = [g for g in goods if g.get("version") == to_version]
    if not goods:
        raise DeployError(f"cannot roll back '{name}': no earlier good version recorded"
                          + (f" with version {to_version}" if to_version else ""))
    target = dict(goods[-1])
    target.pop("sig", None)
    old_version = target["version"]
    target.update(version=fleet.next_version(name), created=time.time(), rollback=True, channel="stable",
                  sources=list(dict.fromkeys([fleet.endpoint] + list(target.get("sources", [])))),
                  operator=fleet.client_id,
                  expires=(time.time() + fleet.manifest_ttl_s) if fleet.keys is not None else 0.0)
    target["plan"] = {**target.get("plan", {}), "rollback_of": current.version, "restores": old_version}
    m = Manifest(**target)
    fleet.publish_manifest(m)
    try:
        rows = fleet.wait_ready(m, timeout, progress)
    except DeployError as exc:
        fleet.record_rollout(name, m.version, "stable", "failed", f"rollback to v{old_version}: {exc}")
        raise
    fleet.record_rollout(name, m.version, "stable", "rolled_back",
                         f"restored the content of v{old_version} (replacing v{current.version})", good=m)
    return m, rows


def _authentic(fleet: Fleet, entry: dict, name: str) -> bool:
    """Whether a "good" manifest of the (retained, broker-held) rollout record was signed by a fleet key this
    operator trusts, for this fleet and model: the record itself is not signed, so rollback re-signs only
    what it can verify (its signature at the time it was made; expiry does not matter for a copy that is
    re-signed). Without a key (development mode) nothing can be verified and nothing is signed."""
    if fleet.keys is None:
        return True
    from edge_agent.security.keys import SignatureError, verify_document
    try:
        verify_document(entry, fleet.desired.gate.trust, now=float(entry.get("created", 0.0)))
    except (SignatureError, TypeError, ValueError) as exc:
        log.warning("rollback of %s: ignoring recorded v%s: %s", name, entry.get("version"), exc)
        return False
    return entry.get("fleet") == fleet.fleet and entry.get("name") == name
