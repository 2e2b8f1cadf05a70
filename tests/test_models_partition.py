"""Pipeline partitioner: stage models chained in ONNX Runtime equal the whole model; placement follows
measured device capability and memory."""

from __future__ import annotations

import functools
import json

import msgpack
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import ppocr, zoo
from models.cost import model_cost
from models.extract import extract_stage, split_model
from models.partition import DeviceSpec, Plan, PlanError, plan_pipeline

FAST_LINK = 1e12  # make transfers negligible where a test is about compute balance


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run_whole(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = _session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def _run_pipeline(model: onnx.ModelProto, plan: Plan, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the stages one after the other, forwarding only each stage's carry (as the runtime does)."""
    env = dict(feeds)
    for stage, part in zip(plan.stages, split_model(model, plan), strict=True):
        onnx.checker.check_model(part, full_check=True)
        assert [i.name for i in part.graph.input] == stage.inputs
        assert [o.name for o in part.graph.output] == stage.outputs
        sess = _session(part)
        env.update(
            zip(stage.outputs, sess.run(stage.outputs, {k: env[k] for k in stage.inputs}), strict=True)
        )
        env = {k: env[k] for k in stage.carry}
    return env


def _equal_devices(k: int, gflops: float = 10.0) -> list[DeviceSpec]:
    return [DeviceSpec(f"dev{i}", gflops, link_bytes_per_s=FAST_LINK) for i in range(k)]


def _assert_pipeline_matches(model, plan, feeds) -> None:
    want = _run_whole(model, feeds)
    got = _run_pipeline(model, plan, feeds)
    assert set(got) == set(want) == set(plan.stages[-1].carry)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4, err_msg=name)


def _tricky_model() -> onnx.ModelProto:
    """A graph input read only at the end, an early graph output, a Constant and an initializer shared by
    several stages, a tensor read by several later stages, and a dead node."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    early = helper.make_tensor_value_info("early", TensorProto.FLOAT, ["N", 8])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8])
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array((rng.standard_normal((8, 8)) / 3).astype(np.float32), "W")
    k = numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32))
    nodes = [
        helper.make_node("Constant", [], ["K"], name="k_const", value=k),
        helper.make_node("MatMul", ["x", "W"], ["a"], name="mm1"),
        helper.make_node("Relu", ["a"], ["early"], name="relu"),
        helper.make_node("Add", ["a", "K"], ["b"], name="add_k"),
        helper.make_node("MatMul", ["b", "W"], ["c"], name="mm2"),
        helper.make_node("Mul", ["c", "K"], ["d"], name="mul_k"),
        helper.make_node("Add", ["d", "a"], ["e"], name="add_a"),
        helper.make_node("Neg", ["x"], ["dead"], name="dead_neg"),
        helper.make_node("Add", ["e", "y"], ["f"], name="add_y"),
        helper.make_node("Tanh", ["f"], ["out"], name="tanh"),
    ]
    g = helper.make_graph(nodes, "tricky", [x, y], [early, out], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    return m


# ------------------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("k", range(1, 9))
def test_tricky_graph_pipeline_equals_whole_model_for_every_stage_count(k: int) -> None:
    m = _tricky_model()
    plan = plan_pipeline(m, _equal_devices(8), stages=k, hop_overhead_ms=0.0)
    assert len(plan.stages) == k
    feeds = {"x": np.arange(24, dtype=np.float32).reshape(3, 8) / 10, "y": np.ones((3, 8), np.float32)}
    _assert_pipeline_matches(m, plan, feeds)
    assert plan.stages[-1].carry == ["early", "out"]
    if k == 8:  # one compute node per stage: every awkward crossing is exercised
        assert all("y" in s.carry for s in plan.stages[:6])  # graph input carried to its late reader
        assert all("early" in s.carry for s in plan.stages[1:])  # early graph output carried to the end
        parts = split_model(m, plan)
        users_of_w = [p for p in parts if any(t.name == "W" for t in p.graph.initializer)]
        users_of_k = [p for p in parts if any(n.op_type == "Constant" for n in p.graph.node)]
        assert len(users_of_w) == 2 and len(users_of_k) == 2  # copied into each reading stage
        assert all("dead_neg" not in [n.name for n in p.graph.node] for p in parts)


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.parametrize("k", [1, 2, 3])
def test_zoo_pipeline_equals_whole_model(name: str, k: int, request) -> None:
    m = _zoo(request, name)
    devices = [DeviceSpec(f"d{i}", 10.0 * (i + 1), link_bytes_per_s=1e9) for i in range(3)]
    plan = plan_pipeline(m, devices, stages=k)
    # planned at batch 1, run at batch 2: stage models keep the batch dim symbolic
    _assert_pipeline_matches(m, plan, zoo.sample_inputs(m, seed=7, batch=2))


@functools.cache
def _built(name: str) -> onnx.ModelProto:
    return zoo.build(name)


def _zoo(request, name: str) -> onnx.ModelProto:
    return _built(name)


@pytest.fixture(scope="module")
def det() -> onnx.ModelProto:
    return ppocr.load_det_model()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_ppocr_det_pipeline_equals_whole_model_at_320(det: onnx.ModelProto, k: int) -> None:
    plan = plan_pipeline(det, _equal_devices(3), stages=k, input_shapes={"x": ppocr.DET_INPUT_SHAPE})
    assert len(plan.stages) == k
    if k > 1:
        assert any(len(s.carry) > 1 for s in plan.stages[:-1])  # FPN skip tensors cross stages
    feeds = zoo.sample_inputs(det, seed=2, shapes={"x": (1, 3, 320, 320)})
    _assert_pipeline_matches(det, plan, feeds)


def test_ppocr_det_two_stage_pipeline_equals_whole_model_at_640(det: onnx.ModelProto) -> None:
    plan = plan_pipeline(det, _equal_devices(2), stages=2, input_shapes={"x": ppocr.DET_INPUT_SHAPE})
    feeds = zoo.sample_inputs(det, seed=3, shapes={"x": ppocr.DET_INPUT_SHAPE})
    _assert_pipeline_matches(det, plan, feeds)


def test_stage_models_keep_symbolic_batch_dim_and_opset(request) -> None:
    m = _zoo(request, "mobilenetv2")
    plan = plan_pipeline(m, _equal_devices(2), stages=2)
    part = extract_stage(m, plan, 1)
    first_dim = part.graph.input[0].type.tensor_type.shape.dim[0]
    assert first_dim.HasField("dim_param") and not first_dim.HasField("dim_value")
    assert part.ir_version == m.ir_version and list(part.opset_import) == list(m.opset_import)
    assert part.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT


# -------------------------------------------------------------------------------------- placement


def test_faster_device_gets_about_double_the_flops(request) -> None:
    m = _zoo(request, "mobilenetv2")
    devices = [
        DeviceSpec("slow-a", 10.0, link_bytes_per_s=FAST_LINK),
        DeviceSpec("slow-b", 10.0, link_bytes_per_s=FAST_LINK),
        DeviceSpec("fast", 20.0, link_bytes_per_s=FAST_LINK),
    ]
    plan = plan_pipeline(m, devices, stages=3, hop_overhead_ms=0.0)
    by_dev = {s.device_id: s.flops for s in plan.stages}
    assert set(by_dev) == {"slow-a", "slow-b", "fast"}
    slow_mean = (by_dev["slow-a"] + by_dev["slow-b"]) / 2
    assert 1.6 < by_dev["fast"] / slow_mean < 2.5
    assert 0.7 < by_dev["slow-a"] / by_dev["slow-b"] < 1.4
    assert sum(by_dev.values()) == sum(s.flops for s in plan.stages)
    assert plan.bottleneck_ms == max(s.est_ms for s in plan.stages)


def test_equal_devices_get_equal_flops_up_to_one_node(det: onnx.ModelProto, request) -> None:
    # Contiguous cuts cannot split a node, so the best split is within one node of an equal share.
    for m, shapes in ((det, {"x": ppocr.DET_INPUT_SHAPE}), (_zoo(request, "mobilenetv2"), None)):
        plan = plan_pipeline(m, _equal_devices(3), stages=3, input_shapes=shapes, hop_overhead_ms=0.0)
        nodes = model_cost(m, shapes).nodes
        flops = [s.flops for s in plan.stages]
        assert max(flops) <= sum(flops) / 3 + max(n.flops for n in nodes)
    assert max(flops) / min(flops) < 1.3  # mobilenetv2 is fine-grained enough to balance closely


def test_auto_stage_count_keeps_one_stage_when_others_are_much_slower(request) -> None:
    m = _zoo(request, "mobilenetv2")
    devices = [DeviceSpec("big", 100.0), DeviceSpec("tiny-a", 1.0), DeviceSpec("tiny-b", 1.0)]
    plan = plan_pipeline(m, devices)
    assert [s.device_id for s in plan.stages] == ["big"]
    assert "automatically" in plan.reason


def test_auto_stage_count_uses_all_equal_devices_when_it_pays(request) -> None:
    m = _zoo(request, "mobilenetv2")
    plan = plan_pipeline(m, _equal_devices(3), hop_overhead_ms=0.0)
    assert len(plan.stages) == 3


def test_hop_overhead_makes_tiny_models_stay_on_one_device(request) -> None:
    plan = plan_pipeline(_zoo(request, "mlp"), _equal_devices(3), hop_overhead_ms=1.0)
    assert len(plan.stages) == 1


def test_memory_limit_forces_weights_off_the_small_device(request) -> None:
    m = _zoo(request, "mobilenetv2")  # ~24 MB of weights, mostly in the late layers
    devices = [
        DeviceSpec("small", 50.0, ram_bytes=12_000_000, link_bytes_per_s=FAST_LINK),
        DeviceSpec("roomy", 10.0, ram_bytes=2**32, link_bytes_per_s=FAST_LINK),
    ]
    plan = plan_pipeline(m, devices, stages=2, hop_overhead_ms=0.0)
    ram = {d.id: d.ram_bytes for d in devices}
    assert all(s.mem_bytes <= ram[s.device_id] for s in plan.stages)
    _assert_pipeline_matches(m, plan, zoo.sample_inputs(m))


def test_unsatisfiable_memory_raises_plan_error_naming_device(request) -> None:
    m = _zoo(request, "mobilenetv2")
    devices = [
        DeviceSpec("pi-zero", 10.0, ram_bytes=4_000_000),
        DeviceSpec("pi-one", 10.0, ram_bytes=4_000_000),
    ]
    with pytest.raises(PlanError, match="pi-(zero|one).*RAM"):
        plan_pipeline(m, devices, stages=2)
    with pytest.raises(PlanError, match="does not fit"):
        plan_pipeline(m, devices)


def test_too_many_stages_raise_plan_error(request) -> None:
    m = _tricky_model()
    with pytest.raises(PlanError, match="only 8 compute nodes"):
        plan_pipeline(m, _equal_devices(9), stages=9)
    with pytest.raises(PlanError, match="3 stages on 2 devices"):
        plan_pipeline(m, _equal_devices(2), stages=3)
    with pytest.raises(PlanError, match="no devices"):
        plan_pipeline(m, [])
    with pytest.raises(PlanError, match=">= 1"):
        plan_pipeline(m, _equal_devices(2), stages=0)


def test_plan_round_trips_through_json_and_msgpack(det: onnx.ModelProto) -> None:
    plan = plan_pipeline(det, _equal_devices(3), stages=3, input_shapes={"x": ppocr.DET_INPUT_SHAPE})
    d = plan.to_dict()
    assert Plan.from_dict(json.loads(json.dumps(d))) == plan
    assert Plan.from_dict(msgpack.unpackb(msgpack.packb(d))) == plan
    assert plan.reason and plan.stages[0].node_start == 0 and plan.stages[-1].node_end == len(det.graph.node)
    for a, b in zip(plan.stages, plan.stages[1:], strict=False):
        assert a.node_end == b.node_start
        assert set(b.inputs) <= set(a.carry)


def test_extract_rejects_plan_for_another_model(request) -> None:
    plan = plan_pipeline(_zoo(request, "transformer"), _equal_devices(2), stages=2)
    with pytest.raises(PlanError):
        extract_stage(_zoo(request, "mobilenetv2"), plan, 1)


def _outputs_edge_model() -> onnx.ModelProto:
    """Graph outputs that are a Constant, an initializer and a graph input; an If whose branches read
    outer-scope tensors produced in earlier stages."""
    vi = helper.make_tensor_value_info
    x = vi("x", TensorProto.FLOAT, ["N", 4])
    branch_out = [vi(n, TensorProto.FLOAT, ["N", 4]) for n in ("t_out", "e_out")]
    then_g = helper.make_graph([helper.make_node("Neg", ["s"], ["t_out"])], "then", [], [branch_out[0]])
    else_g = helper.make_graph([helper.make_node("Abs", ["r"], ["e_out"])], "else", [], [branch_out[1]])
    nodes = [
        helper.make_node("Constant", [], ["K"], value=numpy_helper.from_array(np.ones(4, np.float32))),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Add", ["r", "W"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["y"]),
        helper.make_node("ReduceSum", ["x"], ["sx"], keepdims=0),
        helper.make_node("Greater", ["sx", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["z"], then_branch=then_g, else_branch=else_g),
    ]
    outs = [
        vi("y", TensorProto.FLOAT, ["N", 4]),
        vi("K", TensorProto.FLOAT, [4]),
        vi("W", TensorProto.FLOAT, [4]),
    ]
    outs += [vi("x", TensorProto.FLOAT, ["N", 4]), vi("z", TensorProto.FLOAT, ["N", 4])]
    inits = [
        numpy_helper.from_array(np.full(4, 0.5, np.float32), "W"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
    ]
    m = helper.make_model(
        helper.make_graph(nodes, "edges", [x], outs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("k", range(1, 7))
def test_constant_initializer_and_input_graph_outputs_and_subgraph_reads_survive_splitting(k: int) -> None:
    m = _outputs_edge_model()
    plan = plan_pipeline(m, _equal_devices(6), stages=k, hop_overhead_ms=0.0)
    for x in (np.array([[1, -2, 3, -4]], np.float32), np.array([[1, 2, 3, -4], [0, 0, 0, -1]], np.float32)):
        _assert_pipeline_matches(m, plan, {"x": x})  # both If branches
    assert plan.stages[-1].carry == ["y", "K", "W", "x", "z"]


def test_device_behind_a_slow_link_is_avoided(request) -> None:
    m = _zoo(request, "mobilenetv2")
    devices = [
        DeviceSpec("fast-but-remote", 100.0, link_bytes_per_s=1e5),
        DeviceSpec("local", 10.0, link_bytes_per_s=1e9),
    ]
    plan = plan_pipeline(m, devices)
    assert [s.device_id for s in plan.stages] == ["local"]
    assert plan.stages[0].in_bytes == 3 * 128 * 128 * 4
