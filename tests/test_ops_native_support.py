"""ops_native.ops: the one support check, and internal ops (``_Affine``...) kept out of everything users see."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ops_native
from ops_native import ops
from ops_native.compiler import compile_model
from ops_native.loader import convert_nodes


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto] = (), domains: tuple = ()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)] +
                             [helper.make_opsetid(d, 1) for d in domains])


def _scalar(name: str, v: float) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [], [v])


def _affine_model() -> onnx.ModelProto:
    """Mul(x, 2) -> Add(., 1): fuse_affine turns it into the internal _Affine op."""
    return _model([helper.make_node("Mul", ["x", "a"], ["m"], name="mul"),
                   helper.make_node("Add", ["m", "b"], ["y"], name="add")], [_scalar("a", 2.0), _scalar("b", 1.0)])


def test_internal_ops_are_registered_but_never_listed_as_supported() -> None:
    assert "_Affine" in ops.REGISTRY
    listed = ops_native.supported_ops()
    assert listed == ops.supported_ops() == sorted(listed)
    assert not [op for op in listed if op.startswith("_")]


def test_unsupported_op_error_lists_no_internal_op() -> None:
    m = _model([helper.make_node("Unique", ["x"], ["y"], name="unique")])
    with pytest.raises(ops_native.UnsupportedOpError) as e:
        ops_native.InferenceSession(m)
    supported = str(e.value).split("supported ops: ", 1)[1].split(", ")
    assert supported == ops_native.supported_ops() and "_Affine" not in str(e.value)


def test_a_model_naming_an_internal_op_is_refused_not_run() -> None:
    m = _model([helper.make_node("_Affine", ["x"], ["y"], name="sneaky", alpha=2.0, beta=1.0)])
    assert ops_native.unsupported_ops(m) == ["_Affine"]
    with pytest.raises(ops_native.OpsNativeError):   # onnx.checker refuses it first
        ops_native.InferenceSession(m)
    with pytest.raises(ops_native.UnsupportedOpError, match="node 'sneaky' \\(op _Affine\\) is not supported"):
        compile_model(m, threads=1)                   # and the compiler without the checker


def test_support_check_agrees_for_every_caller() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                helper.make_node("FusedConv", ["r"], ["f"], name="fc", domain="com.microsoft"),
                helper.make_node("Unique", ["f"], ["y"], name="unique")], domains=("com.microsoft",))
    nodes = convert_nodes(m.graph)
    assert [ops.is_supported(n) for n in nodes] == [True, False, False]
    assert ops.unsupported_ops(nodes) == ops_native.unsupported_ops(m) == ["com.microsoft.FusedConv",
                                                                           "Unique"]


def test_fused_affine_shows_as_the_ops_it_replaced() -> None:
    sess = ops_native.InferenceSession(_affine_model())
    assert [n.op_type for n in sess._plan.nodes] == ["_Affine"]
    sess.enable_profiling()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y, = sess.run(None, {"x": x})
    np.testing.assert_array_equal(y, x * 2 + 1)
    assert list(sess.profile()) == ["Mul+Add"]
    assert ops.display_op("_Affine") == "Mul+Add" and ops.display_op("Conv") == "Conv"


def test_failure_in_a_fused_affine_names_the_public_ops() -> None:
    sess = ops_native.InferenceSession(_affine_model())

    def boom(args: list) -> list:
        raise ValueError("bad input")

    sess._plan.steps[0] = sess._plan.steps[0]._replace(fn=boom)
    with pytest.raises(ops_native.OpsNativeError, match="node 'add_affine' \\(op Mul\\+Add\\) failed") as e:
        sess.run(None, {"x": np.zeros((2, 3), np.float32)})
    assert "_Affine" not in str(e.value)


def test_unsupported_op_error_names_node_op_and_supported_list() -> None:
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu_1"),
         helper.make_node("Unique", ["r"], ["y"], name="Conv_17")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["k", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert ops_native.unsupported_ops(m) == ["Unique"]
    with pytest.raises(ops_native.UnsupportedOpError) as e:
        ops_native.InferenceSession(m)
    msg = str(e.value)
    assert msg.startswith("node 'Conv_17' (op Unique) is not supported; supported ops: ")
    assert "Conv" in msg and "Relu" in msg


def test_custom_domain_op_is_unsupported() -> None:
    g = helper.make_graph([helper.make_node("FusedConv", ["x"], ["y"], name="fc", domain="com.microsoft")],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    assert ops_native.unsupported_ops(m) == ["com.microsoft.FusedConv"]
    with pytest.raises(ops_native.UnsupportedOpError, match="node 'fc' \\(op FusedConv domain 'com.microsoft'\\)"):
        ops_native.InferenceSession(m)


def test_supported_ops_cover_the_common_cnn_and_transformer_ops() -> None:
    ops = set(ops_native.supported_ops())
    assert {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Relu", "Softmax", "LayerNormalization",
            "MaxPool", "Resize", "Transpose", "Concat", "Gather", "Reshape", "Erf"} <= ops
    assert ops_native.isa() in ("avx512f", "avx2-fma", "neon", "scalar")
