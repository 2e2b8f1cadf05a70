"""Elementwise ops (ops/elementwise.py) on their load-time-specialised paths, against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native


@pytest.mark.parametrize("exponent,dtype", [(2.0, np.float32), (2.0, np.int64), (3.0, np.float32), (0.5, np.float32)])
def test_pow_by_a_constant_matches_onnxruntime_squares_as_products(exponent: float, dtype: type) -> None:
    """Pow(x, 2) runs as x * x (float32), every other exponent or type through the general power."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    e = np.array(exponent, np.float32 if dtype == np.float32 else dtype)
    g = helper.make_graph([helper.make_node("Pow", ["x", "e"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", elem, ["A", "B"])],
                          [helper.make_tensor_value_info("y", elem, ["A", "B"])], [numpy_helper.from_array(e, "e")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(5)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in ((3, 7), (2, 300)):
        x = (rng.standard_normal(shape) * 10).astype(dtype)
        if exponent == 0.5:
            x = np.abs(x)
        for threads in (1, 2):
            got = ops_native.InferenceSession(model, threads=threads).run(None, {"x": x})[0]
            want = ref.run(None, {"x": x})[0]
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-6)


def _activation_chain(opset: int = 17) -> onnx.ModelProto:
    """x -> Relu -> Sigmoid -> Clip(const -0.25, 0.75) -> Mul(2) -> Add(0.5) (fused to one affine) -> Tanh."""
    inits = [numpy_helper.from_array(np.array(v, np.float32), n)
             for n, v in (("lo", -0.25), ("hi", 0.75), ("two", 2.0), ("half", 0.5))]
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["b"]),
             helper.make_node("Clip", ["b", "lo", "hi"], ["c"]), helper.make_node("Mul", ["c", "two"], ["d"]),
             helper.make_node("Add", ["d", "half"], ["e"]), helper.make_node("Tanh", ["e"], ["y"])]
    g = helper.make_graph(nodes, "acts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 7])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_activations_run_as_native_steps_and_fall_back_for_views() -> None:
    """Unary activations, a constant-bound Clip and the fused affine are native steps (no Python frame); a
    strided view still gives ORT's answer through the Python step they wrap."""
    from ops_native import _core

    m = _activation_chain()
    x = np.random.default_rng(5).standard_normal((5, 7)).astype(np.float32) * 3
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for threads in (1, 2):
        sess = ops_native.InferenceSession(m, threads=threads)
        kinds = {n.op_type: type(s.fn).__name__ for n, s in zip(sess._plan.nodes, sess._plan.steps)}
        assert {k: v for k, v in kinds.items() if isinstance(getattr(_core, v, None), type)
                and issubclass(getattr(_core, v), _core.NativeStep)} == \
            {"Relu": "UnaryStep", "Sigmoid": "UnaryStep", "Clip": "UnaryStep", "_Affine": "UnaryStep",
             "Tanh": "UnaryStep"}
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-6)
        view = np.repeat(x, 2, axis=0)[::2]                     # not C-contiguous: the fallback path
        np.testing.assert_allclose(sess.run(None, {"x": view})[0], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sess.run(None, {"x": x[:0]})[0], ref[:0])   # empty batch


def test_clip_with_run_time_bounds_stays_a_python_step_and_matches() -> None:
    g = helper.make_graph([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], "clip",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
                           helper.make_tensor_value_info("lo", TensorProto.FLOAT, []),
                           helper.make_tensor_value_info("hi", TensorProto.FLOAT, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    sess = ops_native.InferenceSession(m)
    assert type(sess._plan.steps[0].fn).__name__ != "UnaryStep"
    x = np.array([-2, -0.5, 0.5, 2], np.float32)
    for lo, hi in ((-1.0, 1.0), (0.0, 0.25)):
        got = sess.run(None, {"x": x, "lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)})[0]
        np.testing.assert_array_equal(got, np.clip(x, lo, hi))
