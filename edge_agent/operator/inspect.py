"""``edge-agent inspect MODEL``: what deploying a model would do, before doing it.

Opset and IR version, inputs with their dynamic dimensions and the representative shape deploy would plan on,
FLOPs, parameters, peak activation memory, each op type native or ONNX Runtime fallback (and why), and the
plan deploy would make on the given devices.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.operator.manifests import device_spec
from models.partition import DeviceSpec


def parse_devices(spec: str) -> list[DeviceSpec]:
    """``"a:20,b:50:2048"`` (id:GFLOP/s[:RAM MiB]) or ``"3x40"`` (three devices of 40 GFLOP/s) -> specs."""
    out: list[DeviceSpec] = []
    for i, item in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        if "x" in item and ":" not in item:
            n, g = item.split("x", 1)
            out += [DeviceSpec(f"dev{len(out) + j}", float(g)) for j in range(int(n))]
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--devices {item!r}: use ID:GFLOPS[:RAM_MB] or NxGFLOPS")
        ram = int(parts[2]) << 20 if len(parts) == 3 else 2**34
        out.append(DeviceSpec(parts[0] or f"dev{i}", float(parts[1]), ram_bytes=ram))
    if not out:
        raise ValueError("--devices: no device given")
    return out


def inspect_model(model: Any, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
                  sample: Mapping[str, np.ndarray] | None = None, devices: Sequence[Any] | None = None,
                  stages: int | None = None) -> dict:
    """The report as plain data (see the module docstring). ``devices``: DeviceSpecs, or objects with
    ``device_id``, ``gflops`` and ``ram_mb`` (a live fleet's devices); without them there is no plan."""
    import ops_native
    from models.cost import model_cost, peak_activation_bytes
    from models.graph import input_specs, load_model, output_specs
    from models.partition import PlanError, plan_pipeline
    from models.shapes import shape_candidates

    proto = load_model(model)
    report: dict[str, Any] = {
        "ir_version": proto.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "nodes": len(proto.graph.node),
    }
    choice, cost, error = None, None, ""
    try:
        for cand in shape_candidates(proto, input_shapes, sample):
            try:
                cost, choice = model_cost(proto, cand.shapes), cand
                break
            except ValueError as exc:
                error = error or str(exc)
    except ValueError as exc:
        error = str(exc)
    report["inputs"] = [{"name": s.name, "dtype": np.dtype(s.dtype).name, "shape": list(s.shape),
                         "dynamic": any(not isinstance(d, int) for d in s.shape),
                         "planned_shape": list(choice.shapes[s.name]) if choice else None,
                         "shape_source": choice.sources.get(s.name) if choice else None}
                        for s in input_specs(proto)]
    report["outputs"] = [{"name": s.name, "dtype": np.dtype(s.dtype).name, "shape": list(s.shape)}
                         for s in output_specs(proto)]
    report["notes"] = list(choice.notes) if choice else [f"no representative shape works: {error}"]
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    report["parameters"] = params
    if cost is not None:
        report.update(flops=cost.total_flops, weight_bytes=cost.total_weight_bytes,
                      peak_activation_bytes=peak_activation_bytes(cost))
    missing = set(ops_native.unsupported_ops(proto))
    counts = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in proto.graph.node)
    report["ops"] = [{"op": op, "count": c, "native": op not in missing,
                      "why": "" if op not in missing else "no native kernel: runs on ONNX Runtime"}
                     for op, c in sorted(counts.items())]
    report["backend"] = "ops_native" if not missing else "onnxruntime"
    report["backend_reason"] = ("the native core runs every op" if not missing else
                                f"the native core lacks {', '.join(sorted(missing))}")
    if devices:
        specs = [d if isinstance(d, DeviceSpec) else device_spec(d) for d in devices]
        try:
            plan = plan_pipeline(proto, specs, stages=stages, input_shapes=dict(input_shapes or {}) or None,
                                 sample=dict(sample) if sample else None, model_name="inspect")
            report["plan"] = {"bottleneck_ms": round(plan.bottleneck_ms, 3), "total_ms": round(plan.total_ms, 3),
                              "reason": plan.reason,
                              "stages": [{"index": s.index, "device": s.device_id, "nodes": s.node_end - s.node_start,
                                          "flops": int(s.flops), "est_ms": round(float(s.est_ms), 3),
                                          "in_bytes": int(s.in_bytes)} for s in plan.stages]}
        except PlanError as exc:
            report["plan"] = {"error": str(exc)}
    return report
