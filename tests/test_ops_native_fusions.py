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
