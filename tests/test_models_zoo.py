"""Zoo models and the PP-OCR locator: valid ONNX, run in ONNX Runtime, finite, deterministic."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import ppocr, zoo
from models.graph import input_specs, output_specs


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.fixture(scope="module")
def built() -> dict[str, onnx.ModelProto]:
    return {name: zoo.build(name) for name in zoo.names()}


def test_zoo_names_include_the_three_reference_models() -> None:
    assert {"mlp", "mobilenetv2", "transformer"} <= set(zoo.names())


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_model_passes_full_checker_with_opset17_ir9(built: dict, name: str) -> None:
    m = built[name]
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version == 9
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 17)]
    spec = input_specs(m)[0]
    assert spec.name == "input" and spec.shape[0] == "N" and spec.dtype == np.float32


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.parametrize("batch", [1, 3])
def test_zoo_model_runs_in_ort_with_finite_order_one_outputs(built: dict, name: str, batch: int) -> None:
    m = built[name]
    feeds = zoo.sample_inputs(m, seed=1, batch=batch)
    (out,) = _run(m, feeds)
    assert out.shape[0] == batch
    assert np.isfinite(out).all()
    assert 1e-3 < float(np.abs(out).mean()) < 100.0


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_build_is_deterministic_per_seed_and_differs_across_seeds(built: dict, name: str) -> None:
    again = zoo.build(name, seed=0)
    assert again.SerializeToString() == built[name].SerializeToString()
    other = zoo.build(name, seed=1)
    assert other.SerializeToString() != built[name].SerializeToString()
    feeds = zoo.sample_inputs(name, seed=5)
    np.testing.assert_array_equal(feeds["input"], zoo.sample_inputs(name, seed=5)["input"])
    assert not np.array_equal(_run(built[name], feeds)[0], _run(other, feeds)[0])


def test_zoo_shapes_match_the_documented_io(built: dict) -> None:
    expected = {
        "mlp": (("N", 256), ("N", 10)),
        "mobilenetv2": (("N", 3, 128, 128), ("N", 1000)),
        "transformer": (("N", 64, 128), ("N", 64, 128)),
    }
    for name, (ins, outs) in expected.items():
        assert input_specs(built[name])[0].shape == ins
        assert output_specs(built[name])[0].shape == outs
    assert output_specs(built["transformer"])[0].name == "output"


def test_mobilenetv2_has_bn_depthwise_relu6_and_residuals(built: dict) -> None:
    m = built["mobilenetv2"]
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops["BatchNormalization"] >= 1 and ops["Clip"] >= 10 and ops["Add"] >= 5
    assert ops["GlobalAveragePool"] == 1 and ops["Flatten"] == 1 and ops["Gemm"] == 1
    groups = [a.i for n in m.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert sum(g > 1 for g in groups) >= 10  # one depthwise conv per inverted residual block


def test_transformer_uses_attention_layernorm_and_erf_gelu(built: dict) -> None:
    ops = Counter(n.op_type for n in built["transformer"].graph.node)
    assert ops["Softmax"] == 2 and ops["LayerNormalization"] == 4 and ops["Erf"] == 2
    assert ops["MatMul"] >= 2 * 8 and ops["Transpose"] >= 2 * 4 and ops["Constant"] == 1


def test_sample_inputs_respects_batch_and_explicit_shapes() -> None:
    m = ppocr.load_det_model()
    feeds = zoo.sample_inputs(m, shapes={"x": (1, 3, 96, 64)})
    assert feeds["x"].shape == (1, 3, 96, 64) and feeds["x"].dtype == np.float32
    assert zoo.sample_inputs("mlp", batch=4)["input"].shape == (4, 256)


def test_unknown_zoo_name_raises_with_known_names() -> None:
    with pytest.raises(ValueError, match="mobilenetv2"):
        zoo.build("resnet9000")


def test_ppocr_det_model_is_found_without_importing_rapidocr() -> None:
    import sys

    path = ppocr.det_model_path()
    assert path.name == "ch_PP-OCRv4_det_infer.onnx" and path.is_file()
    assert "rapidocr_onnxruntime" not in sys.modules
    m = ppocr.load_det_model()
    assert len(m.graph.node) > 300
    assert ppocr.DET_INPUT_SHAPE == (1, 3, 640, 640)
