"""LRN, PRelu, InstanceNormalization and GroupNormalization (ops_native/ops/channel.py) against ONNX Runtime on
random shapes and attributes, with the kernels of every ISA this CPU has (the `isa` fixture of conftest.py),
at 1 and 2 threads."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native


def _model(node: onnx.NodeProto, x_shape: list, inits: dict, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, x_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _both(model: onnx.ModelProto, x: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    want = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    got = ops_native.InferenceSession(model, threads=threads).run(None, {"x": x})[0]
    return got, want


def _lrn_definition(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """ONNX LRN in float64, for what ONNX Runtime refuses (even sizes, ranks other than 4, float64)."""
    xs = x.astype(np.float64)
    c, lo = x.shape[1], (size - 1) // 2
    hi = size - 1 - lo
    s = np.stack([(xs[:, max(0, ch - lo):ch + hi + 1] ** 2).sum(axis=1) for ch in range(c)], axis=1)
    return xs / (bias + alpha / size * s) ** beta


LRN_SHAPES = [(1, 3, 5, 5), (2, 17, 9, 11), (1, 96, 27, 27), (1, 64, 56, 56), (3, 8, 300), (1, 5, 2, 3, 7)]
LRN_ATTRS = [(5, 1e-4, 0.75, 1.0), (5, 5e-4, 0.75, 2.0), (3, 0.1, 0.5, 1.0), (4, 0.02, 1.0, 0.5), (1, 0.3, 0.6, 1.0),
             (7, 0.01, 0.9, 3.0)]


@pytest.mark.parametrize("shape", LRN_SHAPES, ids=[str(s) for s in LRN_SHAPES])
@pytest.mark.parametrize("threads", [1, 2])
def test_lrn_matches_onnxruntime_on_random_shapes_and_attributes(isa: str, shape: tuple, threads: int) -> None:
    """ONNX Runtime where it runs LRN (4-D, odd size), the float64 definition elsewhere."""
    rng = np.random.default_rng(sum(shape))
    for size, alpha, beta, bias in LRN_ATTRS:
        node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
        x = (rng.standard_normal(shape) * 10).astype(np.float32)
        model = _model(node, list(shape), {})
        if len(shape) == 4 and size % 2:
            got, want = _both(model, x, threads)
        else:
            got = ops_native.InferenceSession(model, threads=threads).run(None, {"x": x})[0]
            want = _lrn_definition(x, size, alpha, beta, bias)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                                   err_msg=f"LRN size {size} alpha {alpha} beta {beta} bias {bias} on {isa}")


PRELU_CASES = [
    ((1, 10, 119, 159), (10, 1, 1)),     # MTCNN P-Net: per channel, NCHW
    ((4, 32, 3, 3), (1, 32, 1, 1)),
    ((8, 256), (256,)),                   # after a dense layer
    ((2, 3, 4, 5), (2, 3, 4, 5)),         # full shape
    ((3, 7, 33), (1,)),                   # one slope
    ((2, 6, 17, 19), (17, 19)),           # per pixel
    ((2, 5, 64, 64), (5, 1, 1)),          # large enough to split over threads
]


@pytest.mark.parametrize("x_shape,s_shape", PRELU_CASES, ids=[f"{a}-{b}" for a, b in PRELU_CASES])
@pytest.mark.parametrize("threads", [1, 2])
def test_prelu_matches_onnxruntime_for_every_slope_broadcast(isa: str, x_shape: tuple, s_shape: tuple,
                                                            threads: int) -> None:
    rng = np.random.default_rng(len(x_shape) * 100 + len(s_shape))
    slope = rng.uniform(-0.5, 0.5, s_shape).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    x.reshape(-1)[:3] = [0.0, -0.0, np.nan]
    got, want = _both(_model(helper.make_node("PRelu", ["x", "s"], ["y"]), list(x_shape), {"s": slope}), x,
                      threads)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("threads", [1, 2])
def test_instance_and_group_normalization_match_onnxruntime(isa: str, threads: int) -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((2, 6, 9, 13)) * 3 + 1).astype(np.float32)
    scale, bias = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-3)
    got, want = _both(_model(node, [2, 6, 9, 13], {"s": scale, "b": bias}), x, threads)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for groups in (1, 2, 3, 6):
        node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=groups, epsilon=1e-4)
        got, want = _both(_model(node, [2, 6, 9, 13], {"s": scale, "b": bias}, opset=21), x, threads)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{groups} groups")


def test_lrn_on_float64_uses_the_numpy_path_and_matches_the_definition() -> None:
    node = helper.make_node("LRN", ["x"], ["y"], size=3, alpha=0.01, beta=0.75, bias=1.0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 4, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 4, 3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(0).standard_normal((1, 4, 3, 3)) * 5
    got = ops_native.InferenceSession(model).run(None, {"x": x})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _lrn_definition(x, 3, 0.01, 0.75, 1.0), rtol=1e-6)  # alpha is a float32 attribute


def test_uniform_slope_prelu_after_conv_is_fused_into_the_conv_epilogue() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["c", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 10, 10])],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(np.full((8, 1, 1), 0.25, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ops_native.InferenceSession(model)
    assert [(n.op_type, n.attrs.get("_act")) for n in sess._plan.nodes] == [("Conv", "leaky_relu")]
    x = rng.standard_normal((1, 3, 10, 10)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-5)


def test_prelu_refuses_a_slope_that_does_not_broadcast_to_x() -> None:
    model = _model(helper.make_node("PRelu", ["x", "s"], ["y"]), [1, 4, 3, 3], {"s": np.ones((3, 1, 1), np.float32)})
    with pytest.raises(ops_native.OpsNativeError, match="broadcast"):
        ops_native.InferenceSession(model, threads=1).run(None, {"x": np.ones((1, 4, 3, 3), np.float32)})
