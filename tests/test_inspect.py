"""``edge-agent inspect``: shapes, cost, native-op support and the plan, before anything is deployed."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import onnx
import pytest

from edge_agent.operator.inspect import inspect_model, parse_devices
from models import zoo_extra
from ops_native.ops import registry

LIGHT = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def test_inspect_reports_dynamic_inputs_planned_shape_cost_and_plan(tmp_path) -> None:
    path = tmp_path / "yolo.onnx"
    onnx.save(zoo_extra.build("yolo_silu"), path)
    out = subprocess.run([sys.executable, "-m", "edge_agent.cli", "inspect", str(path), "--devices", "a:20,b:40",
                          "--stages", "2", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    (x,) = r["inputs"]
    assert x["dynamic"] and x["shape_source"] == "default" and x["planned_shape"] == [1, 3, 224, 224]
    assert r["notes"] and "--input-shape" in r["notes"][0]
    assert r["flops"] > 1e8 and r["parameters"] > 1e5 and r["peak_activation_bytes"] > 0
    assert r["backend"] == "ops_native" and all(o["native"] for o in r["ops"])
    assert [s["device"] for s in r["plan"]["stages"]] and len(r["plan"]["stages"]) == 2


def test_inspect_names_ops_that_fall_back_and_uses_given_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(registry.REGISTRY, "LRN")   # AlexNet's LRN stands for an op the native core lacks
    r = inspect_model(LIGHT / "light_bvlc_alexnet.onnx", devices=parse_devices("2x30"))
    lrn = next(o for o in r["ops"] if o["op"] == "LRN")
    assert not lrn["native"] and "ONNX Runtime" in lrn["why"]
    assert r["backend"] == "onnxruntime" and "LRN" in r["backend_reason"]
    assert r["inputs"][0]["shape_source"] == "declared" and not r["notes"]
    r = inspect_model(zoo_extra.build("unet"), input_shapes={"image": (2, 3, 96, 160)})
    assert r["inputs"][0]["planned_shape"] == [2, 3, 96, 160] and r["inputs"][0]["shape_source"] == "given"
    assert "plan" not in r


@pytest.mark.parametrize("spec, ids", [("3x40", ["dev0", "dev1", "dev2"]), ("a:20,b:50:2048", ["a", "b"])])
def test_device_profiles_parse(spec: str, ids: list[str]) -> None:
    assert [d.id for d in parse_devices(spec)] == ids
    with pytest.raises(ValueError, match="ID:GFLOPS"):
        parse_devices("a")
