"""ops_native.passes.fusions: graph rewrites that merge nodes, checked against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
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


def _moments_layernorm_model(axes: list[int], dims: list, keepdims: bool, clamp: bool, gamma_first: bool,
                             inv_n: float, var_output: bool) -> onnx.ModelProto:
    """A layer norm written from the raw moments, as JAX / Flax exports it through tf2onnx:
    E[x], E[x*x] - E[x]^2 [clamped at 0], 1/sqrt(var + eps), (x - E[x]) * (r * gamma) + beta.
    keepdims False: ReduceSum(keepdims=0) * inv_n, then Reshape + Expand back to a keepdims shape computed
    from Shape(x) (Magika's form); True: ReduceMean(keepdims=1), Pow(-0.5), gamma applied after."""
    rank = len(dims)
    norm = sorted(a % rank for a in axes)
    gshape = [dims[i] if i in norm else 1 for i in range(rank)]
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(np.array(axes, np.int64), "axes"),
             numpy_helper.from_array(np.array(inv_n, np.float32), "inv_n"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(np.array(-0.5, np.float32), "mhalf"),
             numpy_helper.from_array((1.0 + 0.2 * rng.standard_normal(gshape)).astype(np.float32), "gamma"),
             numpy_helper.from_array((0.1 * rng.standard_normal(gshape)).astype(np.float32), "beta")]
    mk = helper.make_node
    nodes = [mk("Mul", ["x", "x"], ["sq"])]
    if keepdims:
        nodes += [mk("ReduceMean", ["x"], ["ex"], axes=axes, keepdims=1),   # opset 17: axes an attribute
                  mk("ReduceMean", ["sq"], ["ex2"], axes=axes, keepdims=1)]
    else:
        nodes += [mk("ReduceSum", ["x", "axes"], ["s1"], keepdims=0), mk("ReduceSum", ["sq", "axes"], ["s2"], keepdims=0),
                  mk("Mul", ["s1", "inv_n"], ["ex"]), mk("Mul", ["s2", "inv_n"], ["ex2"])]
    nodes += [mk("Mul", ["ex", "ex"], ["m2"]), mk("Sub", ["ex2", "m2"], ["var"])]
    v = "var"
    if clamp:
        nodes.append(mk("Max", ["zero", v], ["varc"]))
        v = "varc"
    m = "ex"
    if not keepdims:
        # the keepdims shape from Shape(x): 1 over the normalised axes
        inits += [numpy_helper.from_array(np.array([i], np.int64), f"i{i}") for i in range(rank + 1)]
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
        nodes.append(mk("Shape", ["x"], ["xs"]))
        parts = []
        for i in range(rank):
            if i in norm:
                parts.append("one")
            else:
                nodes.append(mk("Slice", ["xs", f"i{i}", f"i{i + 1}"], [f"d{i}"]))
                parts.append(f"d{i}")
        nodes.append(mk("Concat", parts, ["kshape"], axis=0))
        nodes += [mk("Reshape", [v, "kshape"], ["var_r"]), mk("Expand", ["var_r", "kshape"], ["var_b"]),
                  mk("Reshape", ["ex", "kshape"], ["m_r"]), mk("Expand", ["m_r", "kshape"], ["m_b"])]
        v, m = "var_b", "m_b"
    nodes += [mk("Add", [v, "eps"], ["ve"])]
    if keepdims:
        nodes.append(mk("Pow", ["ve", "mhalf"], ["r"]))
    else:
        nodes += [mk("Sqrt", ["ve"], ["sd"]), mk("Reciprocal", ["sd"], ["r"])]
    nodes.append(mk("Sub", ["x", m], ["d"]))
    if gamma_first:
        nodes += [mk("Mul", ["r", "gamma"], ["rg"]), mk("Mul", ["d", "rg"], ["yn"])]
    else:
        nodes += [mk("Mul", ["d", "r"], ["dn"]), mk("Mul", ["dn", "gamma"], ["yn"])]
    nodes.append(mk("Add", ["yn", "beta"], ["y"]))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)]
    if var_output:
        outs.append(helper.make_tensor_value_info("var", TensorProto.FLOAT, [d for i, d in enumerate(dims) if i not in norm]))
    graph = helper.make_graph(nodes, "moments_ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("axes, dims, keepdims, clamp, gamma_first", [
    ([2], ["b", 6, 32], False, True, True),           # Flax over the last axis, positive axis, clamped
    ([1], ["b", 16, 24], False, True, True),          # Magika's LayerNorm_0: a middle axis
    ([-2, -1], ["b", 5, 4, 8], True, False, False),   # ReduceMean keepdims, Pow(-0.5), two axes, no clamp
    ([1, 2], ["b", 3, 4, 5], False, False, True),     # a middle block of two axes
])
def test_moments_layernorm_becomes_one_layernorm_pass(monkeypatch: pytest.MonkeyPatch, axes: list[int], dims: list,
                                                      keepdims: bool, clamp: bool, gamma_first: bool) -> None:
    """Var = E[x^2] - E[x]^2 layer norms (JAX / Flax exports) are one _MomentNorm node that takes the
    LayerNormalization kernel; outputs match ORT running the unfused graph to 1e-4."""
    from ops_native.ops import norm
    plans = []
    real = norm._moment_norm_plan
    monkeypatch.setattr(norm, "_moment_norm_plan", lambda *a: plans.append(real(*a)) or plans[-1])
    n = int(np.prod([d for i, d in enumerate(dims) if i in [a % len(dims) for a in axes]]))
    model = _moments_layernorm_model(axes, dims, keepdims, clamp, gamma_first, 1.0 / n, False)
    sess = ops_native.InferenceSession(model, threads=2)
    assert "_MomentNorm" in [nd.op_type for nd in sess._plan.nodes]
    assert not {"ReduceSum", "ReduceMean", "Sqrt", "Reciprocal", "Pow", "Max"} & {nd.op_type for nd in sess._plan.nodes}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        shape = [batch] + dims[1:]
        x = (0.5 + rng.standard_normal(shape)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    assert plans and all(p is not None for p in plans)   # the kernel ran, not the fallback


def test_moments_layernorm_with_a_wrong_count_runs_the_original_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sum scaled by something other than 1/n is not a mean: the fused node runs the graph's own nodes
    (checked at run time, since n depends on the input shape), and the result is still ORT's."""
    from ops_native.ops import norm
    plans = []
    real = norm._moment_norm_plan
    monkeypatch.setattr(norm, "_moment_norm_plan", lambda *a: plans.append(real(*a)) or plans[-1])
    model = _moments_layernorm_model([2], ["b", 6, 32], False, True, True, 1.0 / 30, False)
    sess = ops_native.InferenceSession(model, threads=1)
    assert "_MomentNorm" in [nd.op_type for nd in sess._plan.nodes]
    x = np.random.default_rng(2).standard_normal((2, 6, 32)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4)
    assert plans == [None]


def test_moments_layernorm_is_not_fused_when_the_variance_is_used_elsewhere() -> None:
    """The variance is also a graph output: it must stay, so nothing is fused (the result is still ORT's)."""
    model = _moments_layernorm_model([2], ["b", 6, 32], False, True, True, 1.0 / 32, True)
    sess = ops_native.InferenceSession(model, threads=1)
    ops = [nd.op_type for nd in sess._plan.nodes]
    assert "_MomentNorm" not in ops and "LayerNormalization" not in ops and "ReduceSum" in ops
    x = np.random.default_rng(3).standard_normal((2, 6, 32)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = sess.run(None, {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case, fused", [("mul_add", ["MaxPool", "BatchNormalization", "Relu"]),
                                         ("add_scalar", ["MaxPool", "BatchNormalization", "Relu"]),
                                         ("spatial_const", ["MaxPool", "BatchNormalization", "Mul", "Add", "Relu"]),
                                         ("bn_also_read", ["MaxPool", "BatchNormalization", "Mul", "Add", "Relu"]),
                                         ("conv1d", ["Conv", "BatchNormalization", "Relu"])])
def test_batchnorm_then_per_channel_mul_add_is_one_batchnorm(case: str, fused: list[str]) -> None:
    """Caffe2's pre-activation BatchNorm (BN -> Mul(per-channel) -> Add(per-channel) -> Relu) folds the Mul and
    Add into the BatchNorm's scale and shift. A const that varies along a spatial axis, or a BatchNorm output
    that something else reads, keeps the separate op. The BatchNorm's input rank comes from its producers."""
    rng = np.random.default_rng(5)
    c = 12
    rank = 3 if case == "conv1d" else 4
    ones = [1] * (rank - 2)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), n) for n in ("g", "v")] + \
            [numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), n) for n in ("b", "m")]
    mul_shape = [c, 1, 5] if case == "spatial_const" else [c, *ones]
    inits.append(numpy_helper.from_array(rng.standard_normal(mul_shape).astype(np.float32), "k"))
    add_c = np.array(0.25, np.float32) if case == "add_scalar" else rng.standard_normal([c, *ones]).astype(np.float32)
    inits.append(numpy_helper.from_array(add_c, "t"))
    if case == "conv1d":
        inits.append(numpy_helper.from_array(rng.standard_normal((c, 3, 3)).astype(np.float32), "w"))
        first = helper.make_node("Conv", ["x", "w"], ["p"], pads=[1, 1])
        x_shape, dims = (2, 3, 10), ["n", 3, 10]
        inner = [helper.make_node("Relu", ["p"], ["pr"])]     # (right after the Conv it would fold into it)
        bn_in = "pr"
    else:
        first = helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2])
        x_shape, dims = (2, c, 10, 10), ["n", c, 10, 10]
        inner, bn_in = [], "p"
    nodes = [first, *inner,
             helper.make_node("BatchNormalization", [bn_in, "g", "b", "m", "v"], ["bn"], epsilon=1e-3),
             helper.make_node("Mul", ["bn", "k"], ["mu"]),
             helper.make_node("Add", ["t", "mu"], ["ad"]),
             helper.make_node("Relu", ["ad"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if case == "bn_also_read":
        outs.append(helper.make_tensor_value_info("bn", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "prebn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)], outs,
                              inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]))
    model.ir_version = 8
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    sess = ops_native.InferenceSession(model, threads=1)
    kept = {"MaxPool", "Conv", "BatchNormalization", "Mul", "Add", "Relu"}
    assert [n.op_type for n in sess._plan.nodes if n.op_type in kept] == fused
    for got, w in zip(sess.run(None, feeds), want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)
