"""Transformer-graph rewrites checked against ONNX Runtime: layer normalisation written out as reductions
(passes.fusions.fuse_layernorm) and shape subgraphs run once per input shape (passes.shapes)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native

RTOL, ATOL = 1e-4, 1e-5   # float32: our LayerNormalization vs ORT's step-by-step reductions


def _model(nodes: list, inputs: list, outputs: list, inits: list, opset: int):  # noqa: ANN202
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _ort(model) -> ort.InferenceSession:  # noqa: ANN001
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _decomposed_ln(k: int, square: str, inverse: str, affine: str, opset: int, d: int = 48) -> tuple:
    """y = (x - mean) / sqrt(var + eps) [* gamma + beta] over the last k axes, as an exporter writes it."""
    rng = np.random.default_rng(k * 7 + len(square) + len(inverse))
    axes = list(range(-k, 0))
    inits = [numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]
    nodes = []

    def mean(src: str, dst: str) -> None:
        if opset >= 18:
            nodes.append(helper.make_node("ReduceMean", [src, "axes"], [dst], keepdims=1))
        else:
            nodes.append(helper.make_node("ReduceMean", [src], [dst], axes=axes, keepdims=1))

    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
    mean("x", "m")
    nodes.append(helper.make_node("Sub", ["x", "m"], ["d"]))
    if square == "pow":
        inits.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
        nodes.append(helper.make_node("Pow", ["d", "two"], ["sq"]))
    else:
        nodes.append(helper.make_node("Mul", ["d", "d"], ["sq"]))
    mean("sq", "v")
    nodes.append(helper.make_node("Add", ["v", "eps"] if inverse != "pow" else ["eps", "v"], ["ve"]))
    if inverse == "div":
        nodes += [helper.make_node("Sqrt", ["ve"], ["s"]), helper.make_node("Div", ["d", "s"], ["n"])]
    elif inverse == "reciprocal":
        nodes += [helper.make_node("Sqrt", ["ve"], ["s"]), helper.make_node("Reciprocal", ["s"], ["r"]),
                  helper.make_node("Mul", ["r", "d"], ["n"])]
    else:
        inits.append(numpy_helper.from_array(np.array(-0.5, np.float32), "mhalf"))
        nodes += [helper.make_node("Pow", ["ve", "mhalf"], ["r"]), helper.make_node("Mul", ["d", "r"], ["n"])]
    norm_shape = [6, d][-k:] if k <= 2 else None
    out = "n"
    if affine in ("gamma", "gamma_beta"):
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, norm_shape).astype(np.float32), "gamma"))
        nodes.append(helper.make_node("Mul", ["gamma", out], ["g"]))
        out = "g"
    if affine == "gamma_beta":
        inits.append(numpy_helper.from_array(rng.standard_normal(norm_shape).astype(np.float32), "beta"))
        nodes.append(helper.make_node("Add", [out, "beta"], ["y"]))
        out = "y"
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 6, d])],
                   [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["b", 6, d])], inits, opset)
    return model, rng


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("square, inverse, affine, opset", [
    ("pow", "div", "gamma_beta", 13),          # PyTorch before opset 17
    ("mul", "reciprocal", "gamma_beta", 18),   # TF / Keras (Rsqrt), axes as an input
    ("pow", "pow", "gamma", 13),
    ("mul", "div", "none", 18),
])
def test_written_out_layer_norm_becomes_one_layernormalization(k: int, square: str, inverse: str, affine: str,
                                                               opset: int) -> None:
    model, rng = _decomposed_ln(k, square, inverse, affine, opset)
    sess = ops_native.InferenceSession(model, threads=2)
    ops = [n.op_type for n in sess._plan.nodes]
    assert ops == ["LayerNormalization"], ops
    ln = sess._plan.nodes[0]
    assert ln.attrs["axis"] == -k and ln.attrs["epsilon"] == pytest.approx(1e-5)
    ref = _ort(model)
    for b in (1, 3):
        x = (rng.standard_normal((b, 6, 48)) * 3 + 1.5).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], rtol=RTOL, atol=ATOL)


def test_layer_norm_pattern_over_a_leading_axis_or_with_a_shared_difference_is_left_alone() -> None:
    """Means over axis 1 (not the last axes), or x - mean also read elsewhere: nothing is fused, the result
    is still ORT's."""
    model, rng = _decomposed_ln(1, "pow", "div", "gamma_beta", 13)
    for n in model.graph.node:
        if n.op_type == "ReduceMean":
            del n.attribute[:]
            n.attribute.extend([helper.make_attribute("axes", [1]), helper.make_attribute("keepdims", 1)])
    model.graph.output[0].type.tensor_type.shape.Clear()
    x = rng.standard_normal((2, 6, 48)).astype(np.float32)
    sess = ops_native.InferenceSession(model, threads=1)
    assert "LayerNormalization" not in [n.op_type for n in sess._plan.nodes]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], _ort(model).run(None, {"x": x})[0], rtol=RTOL, atol=ATOL)

    model, rng = _decomposed_ln(1, "pow", "div", "gamma_beta", 13)
    model.graph.output.append(helper.make_tensor_value_info("d", TensorProto.FLOAT, ["b", 6, 48]))
    sess = ops_native.InferenceSession(model, threads=1)
    assert "LayerNormalization" not in [n.op_type for n in sess._plan.nodes]
    for got, want in zip(sess.run(None, {"x": x}), _ort(model).run(None, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def _reshape_by_shape_model() -> object:
    """Split the last axis into heads with a target computed from the input's shape, the way PyTorch's
    exporter writes view(b, t, h, -1): Shape -> Gather -> Unsqueeze -> Concat -> Reshape; plus the
    sequence length as a float (Shape -> Gather -> Cast), which scales the output."""
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [c("i0", 0), c("i1", 1), c("heads", [4]), c("rest", [-1]), c("ax0", [0])]
    nodes = [helper.make_node("Shape", ["x"], ["shp"]),
             helper.make_node("Gather", ["shp", "i0"], ["b"], axis=0),
             helper.make_node("Gather", ["shp", "i1"], ["t"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
             helper.make_node("Unsqueeze", ["t", "ax0"], ["t1"]),
             helper.make_node("Concat", ["b1", "t1", "heads", "rest"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["xr"]),
             helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xr", "tf"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 32])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 4, 8])], inits, 17)


def test_shape_subgraph_runs_as_one_memoized_step_and_follows_the_input_shape() -> None:
    """The seven shape nodes become one _ShapeMemo step; alternating input shapes (each seen before or
    not) give ORT's results, so the cache is keyed by the shapes it read."""
    model = _reshape_by_shape_model()
    sess = ops_native.InferenceSession(model, threads=1)
    assert [n.op_type for n in sess._plan.nodes] == ["_ShapeMemo", "Reshape", "Mul"]
    ref = _ort(model)
    rng = np.random.default_rng(0)
    for b, t in [(1, 5), (2, 7), (1, 5), (3, 1), (2, 7)]:
        x = rng.standard_normal((b, t, 32)).astype(np.float32)
        got, want = sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0]
        assert got.shape == want.shape == (b, t, 4, 8)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_shape_values_that_are_graph_outputs_are_computed_every_run() -> None:
    """A shape value the caller receives is not cached (the caller may modify it)."""
    model = _reshape_by_shape_model()
    model.graph.output.append(helper.make_tensor_value_info("target", TensorProto.INT64, [4]))
    sess = ops_native.InferenceSession(model, threads=1)
    x = np.zeros((2, 3, 32), np.float32)
    first = sess.run(None, {"x": x})[1]
    first[:] = -7
    np.testing.assert_array_equal(sess.run(None, {"x": x})[1], [2, 3, 4, -1])


def _gelu_model(form: str, order: str) -> object:
    """GELU as exporters write it: erf form, or the tanh approximation with 0.044715 x^3 as k * Pow(x, 3),
    k * (x*x*x) or x * (x * (k * x)); the
    0.5 and the x applied in one of three orders; fed by MatMul + bias like a transformer's FFN."""
    rng = np.random.default_rng(len(form) + len(order))
    f = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    inits = [numpy_helper.from_array((rng.standard_normal((32, 40)) * 0.4).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), "bias"),
             f("half", 0.5), f("one", 1.0), f("sqrt2", 2 ** 0.5), f("three", 3.0), f("k", 0.044715),
             f("c", (2 / np.pi) ** 0.5)]
    nodes = [helper.make_node("MatMul", ["a", "w"], ["mm"]), helper.make_node("Add", ["mm", "bias"], ["x"])]
    if form == "erf":
        nodes += [helper.make_node("Div", ["x", "sqrt2"], ["u"]), helper.make_node("Erf", ["u"], ["t"])]
    else:
        if form == "tanh_pow":
            nodes += [helper.make_node("Pow", ["x", "three"], ["cube"]), helper.make_node("Mul", ["k", "cube"], ["kc"])]
        elif form == "tanh_mul":
            nodes += [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Mul", ["sq", "x"], ["cube"]),
                      helper.make_node("Mul", ["k", "cube"], ["kc"])]
        else:   # tanh_jax: the coefficient innermost, x * (x * (k * x)) (JAX via tf2onnx, Magika)
            nodes += [helper.make_node("Mul", ["k", "x"], ["k1"]), helper.make_node("Mul", ["x", "k1"], ["k2"]),
                      helper.make_node("Mul", ["x", "k2"], ["kc"])]
        nodes += [helper.make_node("Add", ["x", "kc"], ["in"]),
                  helper.make_node("Mul", ["in", "c"], ["u"]), helper.make_node("Tanh", ["u"], ["t"])]
    nodes.append(helper.make_node("Add", ["one", "t"], ["p"]))
    if order == "half_x_first":
        nodes += [helper.make_node("Mul", ["x", "half"], ["hx"]), helper.make_node("Mul", ["hx", "p"], ["y"])]
    elif order == "half_last":
        nodes += [helper.make_node("Mul", ["x", "p"], ["xp"]), helper.make_node("Mul", ["xp", "half"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["p", "half"], ["hp"]), helper.make_node("Mul", ["x", "hp"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 32])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 40])], inits, 17)


@pytest.mark.parametrize("form", ["erf", "tanh_pow", "tanh_mul", "tanh_jax"])
@pytest.mark.parametrize("order", ["half_x_first", "half_last", "half_with_p"])
def test_written_out_gelu_becomes_one_gelu(form: str, order: str) -> None:
    """Every written-out GELU is one Gelu: the erf form in the GEMM's epilogue (the plan is one MatMul),
    the tanh form as Gelu(approximate="tanh") after it."""
    model = _gelu_model(form, order)
    sess = ops_native.InferenceSession(model, threads=1)
    got_ops = [(n.op_type, n.attrs.get("_act"), n.attrs.get("approximate")) for n in sess._plan.nodes]
    if form == "erf":
        assert got_ops == [("MatMul", "gelu", None)]
    else:
        assert got_ops == [("MatMul", None, None), ("Gelu", None, "tanh")]
    a = (np.random.default_rng(1).standard_normal((7, 32)) * 2).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"a": a})[0], _ort(model).run(None, {"a": a})[0], rtol=RTOL, atol=ATOL)


def test_tanh_gelu_with_another_cubic_coefficient_is_left_alone() -> None:
    """0.05 x^3 instead of 0.044715 x^3 is not GELU: the nodes stay and the result is still ORT's."""
    model = _gelu_model("tanh_pow", "half_last")
    for init in model.graph.initializer:
        if init.name == "k":
            init.CopyFrom(numpy_helper.from_array(np.array(0.05, np.float32), "k"))
    sess = ops_native.InferenceSession(model, threads=1)
    assert "Gelu" not in [n.op_type for n in sess._plan.nodes]
    a = np.random.default_rng(2).standard_normal((5, 32)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"a": a})[0], _ort(model).run(None, {"a": a})[0], rtol=RTOL, atol=ATOL)


def test_tanh_gelu_whose_cube_is_also_read_elsewhere_is_left_alone() -> None:
    """x * (x * (k * x)) where k * x is also a graph output: those nodes must stay, so nothing is fused."""
    model = _gelu_model("tanh_jax", "half_last")
    model.graph.output.append(helper.make_tensor_value_info("k1", TensorProto.FLOAT, ["n", 40]))
    sess = ops_native.InferenceSession(model, threads=1)
    assert "Gelu" not in [n.op_type for n in sess._plan.nodes]
    a = np.random.default_rng(4).standard_normal((5, 32)).astype(np.float32)
    for got, want in zip(sess.run(None, {"a": a}), _ort(model).run(None, {"a": a})):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_layernorm_over_several_axes_after_an_add_follows_the_spec() -> None:
    """Add -> LayerNormalization(axis=-3) normalises over all three axes. ORT's default graph fusion (into its
    SkipLayerNormalization) normalises over the last axis only; unfused ORT and numpy agree with us."""
    rng = np.random.default_rng(7)
    g = rng.standard_normal(16).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    r = rng.standard_normal((1, 8, 16)).astype(np.float32)
    nodes = [helper.make_node("Add", ["x", "r"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-3, epsilon=1e-5)]
    graph = helper.make_graph(nodes, "ln3", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])],
                              [numpy_helper.from_array(a, n) for a, n in ((g, "g"), (b, "b"), (r, "r"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 8, 16)).astype(np.float32)
    s = x + r
    spec = (s - s.mean()) / np.sqrt(s.var() + 1e-5) * g + b
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unfused = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = ops_native.InferenceSession(model.SerializeToString(), threads=1).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, spec, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours, unfused, rtol=1e-4, atol=1e-5)
