"""8-bit quantised ops of ops_native (ops/quant.py) against ONNX Runtime, one node at a time.

Integer outputs (MatMulInteger, ConvInteger, QuantizeLinear, DynamicQuantizeLinear) must equal ORT's exactly.
ORT runs the model with int8 weights stored as uint8 + 128 (models/quantized.py): the same numbers, but its
AVX2 uint8 x int8 GEMM saturates pair sums at int16 and its uint8 x uint8 one does not.
Float outputs of the dynamically quantised contrib ops: both sides quantise the same float input with the
same arithmetic, so the integer products agree exactly and only the float rescale / bias / LSTM gates differ
(in the last bits: rtol 1e-5); an LSTM quantises its hidden state again at every step, so a last-bit
difference in h can move one element by one quantisation step of h (max|h| / 127.5) at the next step: its
outputs are bounded by a few such steps. (The ONNX backend node cases of the standard ops run in
test_ops_native_conformance.py.)
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native
from models import quantized, zoo_extra

_NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint8): TensorProto.UINT8,
               np.dtype(np.int8): TensorProto.INT8, np.dtype(np.int32): TensorProto.INT32}


def _model(node: onnx.NodeProto, feeds: dict[str, np.ndarray], consts: dict[str, np.ndarray],
           outputs: list[tuple[str, int]], opset: int = 21) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(k, _NP_TO_ONNX[v.dtype], list(v.shape)) for k, v in feeds.items()]
    outs = [helper.make_tensor_value_info(n, t, None) for n, t in outputs]
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    graph = helper.make_graph([node], "g", inputs, outs, inits)
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=imports, ir_version=9)


def _both(model: onnx.ModelProto, feeds: dict, threads: int = 1) -> tuple[list, list]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    ref = quantized.int8_weights_as_uint8(model)   # ORT's exact path (models/quantized.py)
    want = ort.InferenceSession(ref.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    return _native(model, feeds, [w.shape for w in want], threads), want


def _native(model: onnx.ModelProto, feeds: dict, shapes: list[tuple], threads: int = 1) -> list:
    """Run on ops_native, the graph outputs given their shapes (the checker wants them; ORT does not)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for out, shape in zip(model.graph.output, shapes):
        out.type.tensor_type.shape.Clear()
        for d in shape:
            out.type.tensor_type.shape.dim.add().dim_value = d
    return ops_native.InferenceSession(model, threads=threads).run(None, feeds)


def _q(rng: np.random.Generator, dtype: type, shape: tuple) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


@pytest.mark.parametrize("a_t,b_t", [(np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.int8)])
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_integer_equals_onnxruntime_exactly(a_t: type, b_t: type, threads: int) -> None:
    rng = np.random.default_rng(0)
    for a_shape, b_shape, b_const in [((7, 33), (33, 21), True), ((2, 5, 300), (300, 130), True),
                                      ((3, 4, 17), (3, 17, 6), False), ((1, 1024), (1024, 513), True)]:
        a, b = _q(rng, a_t, a_shape), _q(rng, b_t, b_shape)
        azp, bzp = np.array(_q(rng, a_t, ())), np.array(_q(rng, b_t, ()))
        feeds = {"a": a, "azp": azp} if b_const else {"a": a, "azp": azp, "b": b}
        consts = {"bzp": bzp} | ({"b": b} if b_const else {})
        node = helper.make_node("MatMulInteger", ["a", "b", "azp", "bzp"], ["y"])
        got, want = _both(_model(node, feeds, consts, [("y", TensorProto.INT32)], opset=10), feeds, threads)
        exact = (a.astype(np.int64) - azp.astype(np.int64)) @ (b.astype(np.int64) - bzp.astype(np.int64))
        assert got[0].dtype == np.int32
        np.testing.assert_array_equal(got[0], exact, err_msg=f"{a_shape} x {b_shape}")
        if b_const or b_t is np.uint8:   # a computed int8 B cannot be shifted to ORT's exact uint8 path
            np.testing.assert_array_equal(got[0], want[0], err_msg=f"{a_shape} x {b_shape}")


@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_integer_weights_that_fit_int8_panels_equal_onnxruntime_exactly(threads: int) -> None:
    """Constant weights whose centered values fit int8 (int8 with zero point 0, uint8 with zero point 128, as
    quantize_dynamic and models/quantized.py store them) run on int8 panels; still exact, any M, N, odd K."""
    rng = np.random.default_rng(7)
    for b_t, zp in [(np.int8, 0), (np.uint8, 128)]:
        for a_shape, b_shape in [((7, 33), (33, 21)), ((13, 300), (300, 130)), ((1, 515), (515, 40))]:
            a, b = _q(rng, np.uint8, a_shape), _q(rng, b_t, b_shape)
            azp, bzp = np.array(np.uint8(rng.integers(0, 256))), np.array(b_t(zp))
            node = helper.make_node("MatMulInteger", ["a", "b", "azp", "bzp"], ["y"])
            feeds = {"a": a, "azp": azp}
            got, want = _both(_model(node, feeds, {"b": b, "bzp": bzp}, [("y", TensorProto.INT32)], opset=10), feeds,
                              threads)
            exact = (a.astype(np.int64) - azp.astype(np.int64)) @ (b.astype(np.int64) - zp)
            np.testing.assert_array_equal(got[0], exact, err_msg=f"{b_t.__name__} {a_shape} x {b_shape}")
            np.testing.assert_array_equal(got[0], want[0], err_msg=f"{b_t.__name__} {a_shape} x {b_shape}")


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_integer_pointwise_and_int8_input_equal_onnxruntime_exactly(threads: int) -> None:
    """The 1x1 stride-1 convolution (its input packed without im2col), an int8 input, and an image wide enough that
    a 16-pixel panel spans output rows."""
    rng = np.random.default_rng(5)
    cases = [((1, 24, 9, 21), (10, 24, 1, 1), {}, np.uint8), ((2, 6, 8, 8), (10, 3, 1, 1), {"group": 2}, np.uint8),
             ((1, 5, 13, 37), (11, 5, 3, 3), {"pads": [1, 1, 1, 1]}, np.int8),
             ((1, 4, 10, 11), (7, 4, 1, 1), {"strides": [2, 2]}, np.int8)]
    for x_shape, w_shape, attrs, x_t in cases:
        x, w = _q(rng, x_t, x_shape), _q(rng, np.uint8, w_shape)
        feeds = {"x": x, "xzp": np.array(_q(rng, x_t, ()))}
        consts = {"w": w, "wzp": np.array(np.uint8(rng.integers(0, 256)))}
        node = helper.make_node("ConvInteger", ["x", "w", "xzp", "wzp"], ["y"], **attrs)
        model = _model(node, feeds, consts, [("y", TensorProto.INT32)], opset=10)
        if x_t is np.uint8:
            got, want = _both(model, feeds, threads)
            np.testing.assert_array_equal(got[0], want[0], err_msg=f"{x_shape} {w_shape} {attrs}")
        # the definition (ORT has no int8-input ConvInteger): the float convolution of the centered values, exact
        # in float64 at these sizes
        xs = x.astype(np.float64) - float(feeds["xzp"])
        ws = w.astype(np.float64) - float(consts["wzp"])
        ref = _conv_ref(xs, ws, attrs)
        got = _native(model, feeds, [ref.shape], threads)[0]
        np.testing.assert_array_equal(got, ref.astype(np.int64), err_msg=f"{x_shape} {w_shape} {attrs} {x_t}")


def _conv_ref(x: np.ndarray, w: np.ndarray, attrs: dict) -> np.ndarray:
    """Direct 2-D convolution (NCHW, groups, symmetric-or-not pads, strides) in float64."""
    group = attrs.get("group", 1)
    pads = attrs.get("pads", [0, 0, 0, 0])
    sh, sw = attrs.get("strides", [1, 1])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, c, h, wd = xp.shape
    m, cg, kh, kw = w.shape
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    y = np.zeros((n, m, oh, ow))
    mg = m // group
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(oh):
            for j in range(ow):
                win = xs[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
                y[:, g * mg:(g + 1) * mg, i, j] = np.tensordot(win, w[g * mg:(g + 1) * mg], axes=([1, 2, 3], [1, 2, 3]))
    return y


def test_matmul_integer_uint8_by_int8_is_exact_where_pair_sums_pass_int16() -> None:
    """255 * 127 * 2 > 32767: a u8 x s8 kernel built on _mm256_maddubs_epi16 saturates here; ours may not."""
    a = np.full((3, 64), 255, np.uint8)
    b = np.full((64, 5), 127, np.int8)
    b[:, 1] = -128
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    model = _model(node, {"a": a}, {"b": b}, [("y", TensorProto.INT32)], 10)
    got = _native(model, {"a": a}, [(3, 5)])[0]
    np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


def test_matmul_integer_per_column_b_zero_point_matches_definition() -> None:
    rng = np.random.default_rng(1)
    a, b = _q(rng, np.uint8, (6, 40)), _q(rng, np.uint8, (40, 9))
    azp, bzp = np.uint8(3), _q(rng, np.uint8, (9,))
    node = helper.make_node("MatMulInteger", ["a", "b", "azp", "bzp"], ["y"])
    model = _model(node, {"a": a}, {"b": b, "azp": np.array(azp), "bzp": bzp}, [("y", TensorProto.INT32)], 10)
    got = _native(model, {"a": a}, [(6, 9)])[0]
    want = (a.astype(np.int64) - 3) @ (b.astype(np.int64) - bzp.astype(np.int64))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_integer_equals_onnxruntime_exactly(threads: int) -> None:
    rng = np.random.default_rng(2)
    cases = [((1, 3, 17, 19), (8, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
             ((2, 4, 12, 10), (6, 2, 3, 2), {"group": 2, "strides": [2, 1], "pads": [1, 0, 0, 1]}),
             ((1, 2, 15, 15), (4, 2, 3, 3), {"dilations": [2, 2], "pads": [2, 1, 2, 2]}),
             ((1, 3, 11, 13), (5, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
             ((1, 5, 30), (7, 5, 4), {"strides": [3], "pads": [2, 1]})]
    for x_shape, w_shape, attrs in cases:
        x, w = _q(rng, np.uint8, x_shape), _q(rng, np.uint8, w_shape)
        feeds = {"x": x, "xzp": np.array(np.uint8(rng.integers(0, 256)))}
        consts = {"w": w, "wzp": np.array(np.uint8(rng.integers(0, 256)))}
        node = helper.make_node("ConvInteger", ["x", "w", "xzp", "wzp"], ["y"], **attrs)
        got, want = _both(_model(node, feeds, consts, [("y", TensorProto.INT32)], opset=10), feeds, threads)
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"{x_shape} {w_shape} {attrs}")


def test_conv_integer_per_output_channel_weight_zero_point_matches_definition() -> None:
    rng = np.random.default_rng(3)
    x, w = _q(rng, np.uint8, (1, 3, 9, 9)), _q(rng, np.int8, (4, 3, 3, 3))
    wzp = _q(rng, np.int8, (4,))
    node = helper.make_node("ConvInteger", ["x", "w", "xzp", "wzp"], ["y"])
    model = _model(node, {"x": x}, {"w": w, "xzp": np.array(np.uint8(7)), "wzp": wzp}, [("y", TensorProto.INT32)], 10)
    got = _native(model, {"x": x}, [(1, 4, 7, 7)])[0]
    xs = x.astype(np.int64) - 7
    ws = w.astype(np.int64) - wzp.astype(np.int64)[:, None, None, None]
    want = np.zeros((1, 4, 7, 7), np.int64)
    for i in range(7):
        for j in range(7):
            want[0, :, i, j] = np.tensordot(ws, xs[0, :, i:i + 3, j:j + 3], axes=3)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("y_t", [np.uint8, np.int8])
def test_quantize_and_dequantize_linear_per_tensor_and_per_axis_equal_onnxruntime(y_t: type) -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 5, 7)) * 3).astype(np.float32)
    x[0, 0, :4] = [0.5, 1.5, 2.5, -2.5]   # ties: round half to even
    for scale, zp, axis in [(np.array(0.02, np.float32), np.array(_q(rng, y_t, ())), 1),
                            ((rng.random(5) * 0.05 + 0.01).astype(np.float32), _q(rng, y_t, (5,)), 1),
                            ((rng.random(7) * 0.05 + 0.01).astype(np.float32), _q(rng, y_t, (7,)), -1),
                            (np.array(1.0, np.float32), np.array(y_t(0)), 1)]:
        q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis)
        model = _model(q, {"x": x}, {"s": scale, "z": zp}, [("q", _NP_TO_ONNX[np.dtype(y_t)])], 13)
        got, want = _both(model, {"x": x})
        assert got[0].dtype == y_t
        np.testing.assert_array_equal(got[0], want[0])
        dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)
        model = _model(dq, {"q": want[0]}, {"s": scale, "z": zp}, [("y", TensorProto.FLOAT)], 13)
        got, want = _both(model, {"q": want[0]})
        np.testing.assert_array_equal(got[0], want[0])


def test_dynamic_quantize_linear_equals_onnxruntime_exactly() -> None:
    rng = np.random.default_rng(5)
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    outs = [("y", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8)]
    for x in [(rng.standard_normal((3, 50)) * 4).astype(np.float32), rng.random((4, 4)).astype(np.float32),
              -rng.random(9).astype(np.float32), np.zeros(5, np.float32)]:
        got, want = _both(_model(node, {"x": x}, {}, outs, 11), {"x": x})
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("b_t", [np.uint8, np.int8])
@pytest.mark.parametrize("threads", [1, 2])
def test_dynamic_quantize_matmul_matches_onnxruntime(b_t: type, threads: int) -> None:
    rng = np.random.default_rng(6)
    for a_shape, n, bias in [((5, 64), 48, True), ((2, 3, 300), 130, False), ((1, 1, 1024), 8, True)]:
        k = a_shape[-1]
        a = (rng.standard_normal(a_shape) * 2).astype(np.float32)
        consts = {"b": _q(rng, b_t, (k, n)), "bs": np.array([0.003], np.float32),
                  "bz": np.array([b_t(3)])} | ({"bias": rng.standard_normal(n).astype(np.float32)} if bias else {})
        ins = ["a", "b", "bs", "bz"] + (["bias"] if bias else [])
        node = helper.make_node("DynamicQuantizeMatMul", ins, ["y"], domain="com.microsoft")
        got, want = _both(_model(node, {"a": a}, consts, [("y", TensorProto.FLOAT)]), {"a": a}, threads)
        assert got[0].shape == want[0].shape
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5 * float(np.abs(want[0]).max()))


def _qlstm(rng: np.random.Generator, direction: str, hidden: int, isize: int, w_t: type, per_column: bool,
           peephole: bool) -> tuple[onnx.NodeProto, dict]:
    nd = 2 if direction == "bidirectional" else 1
    g4 = 4 * hidden
    sshape = (nd, g4) if per_column else (nd,)
    zp = np.zeros(sshape, w_t) if w_t is np.int8 else np.full(sshape, 128, w_t)   # ORT: one zero point each
    consts = {"W": _q(rng, w_t, (nd, isize, g4)), "R": _q(rng, w_t, (nd, hidden, g4)),
              "B": (rng.standard_normal((nd, 2 * g4)) * 0.1).astype(np.float32),
              "Ws": (rng.random(sshape) * 0.004 + 0.001).astype(np.float32), "Wz": zp,
              "Rs": (rng.random(sshape) * 0.004 + 0.001).astype(np.float32), "Rz": zp.copy()}
    if peephole:
        consts["P"] = (rng.standard_normal((nd, 3 * hidden)) * 0.1).astype(np.float32)
    ins = ["X", "W", "R", "B", "", "h0", "c0", "P" if peephole else "", "Ws", "Wz", "Rs", "Rz"]
    node = helper.make_node("DynamicQuantizeLSTM", ins, ["Y", "Yh", "Yc"], domain="com.microsoft",
                            direction=direction, hidden_size=hidden)
    return node, consts


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("threads", [1, 2])
def test_dynamic_quantize_lstm_matches_onnxruntime(direction: str, threads: int) -> None:
    rng = np.random.default_rng(7)
    for hidden, isize, steps, batch, w_t, per_column, peephole in [(16, 24, 9, 1, np.int8, False, False),
                                                                   (32, 17, 5, 3, np.uint8, True, True),
                                                                   (8, 256, 20, 2, np.int8, True, False)]:
        node, consts = _qlstm(rng, direction, hidden, isize, w_t, per_column, peephole)
        nd = 2 if direction == "bidirectional" else 1
        feeds = {"X": rng.standard_normal((steps, batch, isize)).astype(np.float32),
                 "h0": (rng.standard_normal((nd, batch, hidden)) * 0.5).astype(np.float32),
                 "c0": (rng.standard_normal((nd, batch, hidden)) * 0.5).astype(np.float32)}
        outs = [("Y", TensorProto.FLOAT), ("Yh", TensorProto.FLOAT), ("Yc", TensorProto.FLOAT)]
        got, want = _both(_model(node, feeds, consts, outs), feeds, threads)
        for g, w, name in zip(got, want, ("Y", "Y_h", "Y_c")):
            assert g.shape == w.shape, name
            # h is in (-1, 1): one step of its dynamic quantisation is at most 2 / 255; a flipped step moves a
            # gate by at most step * max|R| * scale, far below this bound, and the cell sums a few of them
            np.testing.assert_allclose(g, w, rtol=0, atol=2e-3, err_msg=f"{name} H{hidden} {direction}")


def test_quantized_zoo_models_use_the_dynamic_quantisation_ops() -> None:
    """The zoo's quantised models carry what quantize_dynamic emits, so the corpus tests run these ops."""
    ops = {name: {(n.domain + "." if n.domain else "") + n.op_type for n in zoo_extra.build(name).graph.node}
           for name in ("crnn_bilstm_int8", "vit_int8")}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "com.microsoft.DynamicQuantizeLSTM"} <= \
        ops["crnn_bilstm_int8"]
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops["vit_int8"]
    assert {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
            "com.microsoft.DynamicQuantizeMatMul", "com.microsoft.DynamicQuantizeLSTM"} <= set(ops_native.supported_ops())
