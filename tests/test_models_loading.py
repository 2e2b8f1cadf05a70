"""Models as users bring them: old IR versions, constant subgraphs, exporters' "-1" dims and dynamic shapes
planned on a representative shape. Each stage the partitioner extracts passes the checker and, chained,
equals the whole model in ONNX Runtime at more than one input shape."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.extract import split_model
from models.graph import input_specs
from models.partition import DeviceSpec, PlanError, plan_pipeline
from models.shapes import representative_shapes

LIGHT = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _devices(k: int) -> list[DeviceSpec]:
    return [DeviceSpec(f"d{i}", gflops=10.0, link_bytes_per_s=1e12) for i in range(k)]


def _run(model: onnx.ModelProto, feeds: dict) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _chain(stages: list[onnx.ModelProto], feeds: dict) -> dict:
    env = dict(feeds)
    for part in stages:
        onnx.checker.check_model(part, full_check=True)
        sess = ort.InferenceSession(part.SerializeToString(), providers=["CPUExecutionProvider"])
        env.update(zip([o.name for o in sess.get_outputs()],
                       sess.run(None, {i.name: env[i.name] for i in sess.get_inputs()})))
    return env


def _assert_split_matches(model: onnx.ModelProto, k: int, feeds_list: list[dict], **plan_kw) -> None:
    plan = plan_pipeline(model, _devices(k), stages=k, model_name="m", **plan_kw)
    stages = split_model(model, plan)
    assert len(stages) == k and all(s.ir_version == model.ir_version for s in stages)
    for feeds in feeds_list:
        want = _run(model, feeds)
        got = _chain(stages, feeds)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=f"{name} K={k}")


@pytest.mark.parametrize("k", [1, 2, 3])
def test_ir3_model_with_initializers_listed_as_inputs_splits_into_valid_stages(k: int) -> None:
    model = onnx.load(LIGHT / "light_squeezenet.onnx")
    assert model.ir_version == 3 and len(model.graph.input) > 1   # weights listed as inputs too
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32) * 1e-3
    _assert_split_matches(model, k, [{"data_0": x}])


def test_constant_subgraphs_are_cloned_into_stages_not_cut_or_carried() -> None:
    # weights produced by ConstantOfShape (as the "light" zoo models do) and shape arithmetic on constants
    model = onnx.load(LIGHT / "light_resnet50.onnx")
    plan = plan_pipeline(model, _devices(3), stages=3, model_name="r50")
    const_outputs = {o for n in model.graph.node if n.op_type == "ConstantOfShape" for o in n.output}
    for st in plan.stages:
        assert not const_outputs & set(st.inputs + st.carry), "a constant crossed a stage boundary"
    sizes = [st.node_end - st.node_start for st in plan.stages]
    assert min(sizes) > 20, f"constant nodes skewed the cut: {sizes}"


def _dynamic_cnn(dims: list) -> onnx.ModelProto:
    """Conv (stride 2) -> Relu -> GlobalAveragePool -> Flatten -> Gemm; input dims as given."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.1, "w")
    fc = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "dyn", [x], [y], [w, fc])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _with_minus_one(model: onnx.ModelProto) -> onnx.ModelProto:
    for d in model.graph.input[0].type.tensor_type.shape.dim:
        if not d.HasField("dim_value") and not d.HasField("dim_param"):
            d.dim_value = -1
    return model


@pytest.mark.parametrize("k", [1, 2, 3])
def test_minus_one_and_symbolic_dims_plan_on_a_default_and_serve_any_shape(k: int) -> None:
    model = _with_minus_one(_dynamic_cnn([None, 3, "h", "w"]))
    plan = plan_pipeline(model, _devices(k), stages=k, model_name="m")
    assert plan.input_shapes == {"x": (1, 3, 224, 224)}
    assert plan.notes and "--input-shape x=" in plan.notes[0]
    assert input_specs(model)[0].shape == (None, 3, "h", "w")
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal(s).astype(np.float32)} for s in ((1, 3, 64, 96), (2, 3, 33, 17))]
    _assert_split_matches(model, k, feeds)


def test_given_shapes_win_over_minus_one_dims_and_fixed_dims_are_checked() -> None:
    model = _with_minus_one(_dynamic_cnn([None, 3, None, None]))
    plan = plan_pipeline(model, _devices(1), stages=1, input_shapes={"x": (8, 3, 48, 192)})
    assert plan.input_shapes == {"x": (8, 3, 48, 192)} and not plan.notes
    with pytest.raises(PlanError, match="dim 1 is fixed to 3 but input_shapes gives 4"):
        plan_pipeline(model, _devices(1), stages=1, input_shapes={"x": (8, 4, 48, 192)})


def test_a_sample_input_sets_the_planning_shape() -> None:
    model = _dynamic_cnn(["batch", 3, "h", "w"])
    choice = representative_shapes(model, sample={"x": np.zeros((2, 3, 40, 60), np.float32)})
    assert choice.shapes == {"x": (2, 3, 40, 60)} and choice.sources == {"x": "sample"} and not choice.notes


def test_defaults_by_role_share_named_dims_and_treat_anonymous_ones_apart() -> None:
    x = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])
    m = helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, [-1, 3, "?", "?"])
    g = helper.make_graph([], "g", [x, m, img], [])
    choice = representative_shapes(helper.make_model(g))
    assert choice.shapes == {"ids": (1, 64), "mask": (1, 64), "img": (1, 3, 224, 224)}
    assert len(choice.notes) == 3


def test_a_model_that_rejects_the_default_shape_is_planned_on_a_fallback() -> None:
    # a text-recognizer-like head: Reshape to a fixed 64-feature sequence needs height 48 after stride 1
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, 4 * 48, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["y"])]
    g = helper.make_graph(nodes, "rec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, shape])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    plan = plan_pipeline(model, _devices(1), stages=1)
    assert plan.input_shapes["x"][2] == 48, plan.input_shapes


def test_planning_that_cannot_proceed_names_the_hint_to_pass() -> None:
    # flatten then a fixed 280-row weight: only inputs with 4 x H x W = 280 work, which no default has
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((280, 5)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["y"])]
    g = helper.make_graph(nodes, "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, fc])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(PlanError, match=r"--input-shape x=\.\.\..*--sample-input"):
        plan_pipeline(model, _devices(1), stages=1)
    plan = plan_pipeline(model, _devices(1), stages=1, input_shapes={"x": (1, 3, 7, 10)})
    assert plan.input_shapes == {"x": (1, 3, 7, 10)}


def test_value_dependent_control_flow_plans_on_estimates_and_exactly_with_a_sample() -> None:
    from models import corpus
    entry = corpus.get("silero_vad_v5")   # an If on the sample rate picks the branch; zeros fail in it
    model = corpus.load(entry)
    plan = plan_pipeline(model, _devices(2), stages=2)
    assert any("estimates" in n and "--sample-input" in n for n in plan.notes), plan.notes
    sample = corpus.sample_inputs(entry, 0)
    exact = plan_pipeline(model, _devices(2), stages=2, sample=sample)
    assert exact.notes == [] and exact.input_shapes["input"] == sample["input"].shape
