"""ops_native.passes.fusions: graph rewrites that merge nodes, checked against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native


@pytest.mark.parametrize("op, scale_first, fused", [("Div", False, True), ("Mul", False, True),
                                                     ("Mul", True, True), ("Div", True, False)])
def test_scaled_attention_scores_fold_the_scale_into_the_matmul(op: str, scale_first: bool, fused: bool) -> None:
    """Q.K^T / s (or * s, either side) becomes one batched GEMM with alpha; s / (Q.K^T) does not."""
    rng = np.random.default_rng(3)
    s = numpy_helper.from_array(np.array(np.sqrt(16.0), np.float32), "s")
    mm = helper.make_node("MatMul", ["q", "kt"], ["scores"])
    scale = helper.make_node(op, ["s", "scores"] if scale_first else ["scores", "s"], ["scaled"])
    sm = helper.make_node("Softmax", ["scaled"], ["p"], axis=-1)
    dims = ["b", 4, "t", 16]
    graph = helper.make_graph([mm, scale, sm], "attn",
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, dims),
                               helper.make_tensor_value_info("kt", TensorProto.FLOAT, ["b", 4, 16, "t"])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["b", 4, "t", "t"])], [s])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"q": rng.standard_normal((2, 4, 9, 16)).astype(np.float32),
             "kt": rng.standard_normal((2, 4, 16, 9)).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    sess = ops_native.InferenceSession(model, threads=2)
    assert [n.op_type for n in sess._plan.nodes] == (["MatMul", "Softmax"] if fused else ["MatMul", op, "Softmax"])
    np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("extra", ["none", "k_also_to_relu", "q_is_an_output"])
def test_head_split_transposes_feeding_matmuls_become_views(extra: str) -> None:
    """Attention's Q / K^T / V Transposes are views the batched GEMM reads in place, unless something
    else reads them (a non-MatMul consumer, a graph output): those keep their copy."""
    nodes = [helper.make_node("Transpose", ["x"], ["q"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["x"], ["kt"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "q"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, 9, 8])]
    if extra == "k_also_to_relu":
        nodes.append(helper.make_node("Relu", ["kt"], ["r"]))
        outs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["b", 3, 8, 9]))
    if extra == "q_is_an_output":
        outs.append(helper.make_tensor_value_info("q", TensorProto.FLOAT, ["b", 3, 9, 8]))
    graph = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 9, 3, 8])],
                              outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ops_native.InferenceSession(model, threads=2)
    views = {n.outputs[0]: bool(n.attrs.get("_view")) for n in sess._plan.nodes if n.op_type == "Transpose"}
    assert views == {"q": extra != "q_is_an_output", "kt": extra != "k_also_to_relu"}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 2):   # batch 2: two batch axes, the outer one walked by offsets
        feeds = {"x": np.random.default_rng(batch).standard_normal((batch, 9, 3, 8)).astype(np.float32)}
        for got, want in zip(sess.run(None, feeds), ref.run(None, feeds)):
            assert got.flags.c_contiguous
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _run_both(model, feeds: dict, threads: int = 2) -> tuple[ops_native.InferenceSession, list, list]:  # noqa: ANN001
    model.ir_version = 8
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    sess = ops_native.InferenceSession(model, threads=threads)
    return sess, sess.run(None, feeds), want


@pytest.mark.parametrize("producer", ["conv3x3", "conv1x1", "conv_dw", "matmul", "gemm"])
@pytest.mark.parametrize("mul_order", ["y_first", "sig_first"])
def test_silu_after_a_product_is_fused_into_its_epilogue(producer: str, mul_order: str) -> None:
    """Conv / MatMul / Gemm -> y, Sigmoid(y) -> s, Mul(y, s) (either operand order) is one step with a
    SiLU epilogue, and matches ORT at 1 and 2 threads on every layout."""
    rng = np.random.default_rng(5)
    inits, nodes = [], []
    if producer.startswith("conv"):
        c, k, g = (16, 3, 16) if producer == "conv_dw" else (12, 3 if producer == "conv3x3" else 1, 1)
        oc = 16 if producer == "conv_dw" else 24
        inits += [numpy_helper.from_array(rng.standard_normal((oc, c // g, k, k)).astype(np.float32) * 0.3, "w"),
                  numpy_helper.from_array(rng.standard_normal(oc).astype(np.float32), "b")]
        nodes.append(helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[k // 2] * 4, group=g))
        x_shape, y_shape = [1, c, 13, 11], [1, oc, 13, 11]
        # a second Conv reads the SiLU output, so the blocked layout is exercised between the two
        inits.append(numpy_helper.from_array(rng.standard_normal((8, oc, 3, 3)).astype(np.float32) * 0.2, "w2"))
        tail = [helper.make_node("Conv", ["z", "w2"], ["out"], pads=[1, 1, 1, 1])]
        out_shape = [1, 8, 13, 11]
    else:
        inits += [numpy_helper.from_array(rng.standard_normal((40, 33)).astype(np.float32) * 0.3, "w"),
                  numpy_helper.from_array(rng.standard_normal(33).astype(np.float32), "b")]
        if producer == "matmul":
            nodes += [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])]
        else:
            nodes.append(helper.make_node("Gemm", ["x", "w", "b"], ["y"]))
        x_shape, y_shape = [7, 40], [7, 33]
        tail = [helper.make_node("Relu", ["z"], ["out"])]
        out_shape = y_shape
    nodes.append(helper.make_node("Sigmoid", ["y"], ["s"]))
    nodes.append(helper.make_node("Mul", ["y", "s"] if mul_order == "y_first" else ["s", "y"], ["z"]))
    graph = helper.make_graph(nodes + tail, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32) * 3}
    for threads in (1, 2):
        sess, got, want = _run_both(model, feeds, threads)
        ops = [n.op_type for n in sess._plan.nodes]
        assert "Sigmoid" not in ops and "Mul" not in ops, ops
        assert any(n.attrs.get("_act") == "silu" for n in sess._plan.nodes)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)


def test_silu_is_not_fused_when_the_product_output_has_another_reader() -> None:
    """y also read by a third node (or being a graph output) keeps Sigmoid and Mul separate."""
    rng = np.random.default_rng(6)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["y"], ["s"]), helper.make_node("Mul", ["y", "s"], ["z"]),
             helper.make_node("Relu", ["y"], ["r"])]
    graph = helper.make_graph(nodes, "silu2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 9, 9]),
                               helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 8, 9, 9])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess, got, want = _run_both(model, {"x": rng.standard_normal((1, 4, 9, 9)).astype(np.float32)})
    assert sorted(n.op_type for n in sess._plan.nodes) == ["Conv", "Mul", "Relu", "Sigmoid"]
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_after_matmul_bias_is_fused_into_the_epilogue(approximate: str) -> None:
    """MatMul + bias -> Gelu (erf form; opset 20 node) is one GEMM with a GELU epilogue; the tanh form stays
    a separate op."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 96)).astype(np.float32) * 0.2, "w"),
             numpy_helper.from_array(rng.standard_normal(96).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"]),
             helper.make_node("Gelu", ["y"], ["out"], approximate=approximate)]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10, 64])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10, 96])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    sess, got, want = _run_both(model, {"x": rng.standard_normal((1, 10, 64)).astype(np.float32)})
    assert [n.op_type for n in sess._plan.nodes] == (["MatMul"] if approximate == "none" else ["MatMul", "Gelu"])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
