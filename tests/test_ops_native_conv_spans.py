"""Direct convolutions into a blocked (NCHWc8) output, against ONNX Runtime (rtol 1e-4, atol 1e-4) on
every ISA at 1 and 2 threads. On AVX2, rows under 24 pixels run as pixel spans (conv_nchwc.c): a whole
small plane, or spans across the row ends; the tiles store into y (bias, activation and residual in
registers, partial sums of the channel chunks in y). Wider rows and 1x1 planes take the row kernel.
The geometry grid covers every border case of the padded input (pads on one side, both, none; stride 2;
dilation 2), odd widths, remainders of every tile width and a channel count that leaves pad lanes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ops_native import _core

ISAS = _core.available_isas()

# (name, C, OC, H, W, K, stride, dilation, pads t/l/b/r): output planes from 1 pixel to past 128, rows
# of 1..23 pixels (spans across rows), 24 pixels and more (the row kernel)
GEOMETRIES = [
    ("one-pixel", 16, 24, 3, 3, 3, 1, 1, (0, 0, 0, 0)),
    ("7x7 plane", 32, 40, 7, 7, 3, 1, 1, (1, 1, 1, 1)),
    ("odd 13x19", 24, 13, 13, 19, 3, 1, 1, (1, 1, 1, 1)),
    ("s2 asym pads", 16, 24, 31, 29, 3, 2, 1, (1, 0, 2, 1)),
    ("dil2 s1", 8, 16, 17, 23, 3, 1, 2, (2, 2, 2, 2)),
    ("s2 dil2 5x5 one-side pads", 16, 32, 33, 27, 5, 2, 2, (0, 4, 4, 0)),
    ("wide rows 61", 16, 24, 9, 61, 3, 1, 1, (1, 1, 1, 1)),
    ("row pieces 150", 8, 16, 4, 150, 3, 1, 1, (1, 1, 1, 1)),
    ("many channel chunks", 72, 24, 12, 13, 3, 1, 1, (1, 1, 1, 1)),
    ("rgb 7x7 s2 stem", 3, 64, 45, 43, 7, 2, 1, (3, 3, 3, 3)),
    ("pointwise 14x14", 40, 48, 14, 14, 1, 1, 1, (0, 0, 0, 0)),
    # rows of 24+ pixels (the row kernel): 3-, 2- and 1-block tiles with a row-end remainder each,
    # partial sums over several channel chunks, pad lanes, stride 2 with 2 + 2 blocks, dilation 2
    ("wide rows chunks odd OC", 72, 20, 5, 37, 3, 1, 1, (1, 1, 1, 1)),
    ("wide rows 2-block tiles", 40, 12, 4, 29, 3, 1, 1, (1, 1, 1, 1)),
    ("wide rows 1 block", 16, 5, 4, 35, 3, 1, 1, (0, 1, 1, 0)),
    ("wide s2 rows 2+2 blocks", 24, 28, 7, 61, 3, 2, 1, (1, 1, 1, 1)),
    ("wide dil2 rows", 8, 24, 7, 53, 3, 1, 2, (2, 2, 2, 2)),
    ("wide s2 3-block tiles", 16, 20, 5, 57, 3, 2, 1, (1, 1, 1, 1)),
    ("wide s2 1 block one-side pads", 8, 6, 5, 63, 3, 2, 1, (0, 1, 0, 1)),
    ("wide s3 rows", 16, 20, 7, 89, 3, 3, 1, (1, 1, 1, 1)),
]


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest):
    before = _core.isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


def to_blocked(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    cb = -(-c // 8)
    xp = np.zeros((n, cb * 8, h, w), np.float32)
    xp[:, :c] = x
    return np.ascontiguousarray(xp.reshape(n, cb, 8, h, w).transpose(0, 1, 3, 4, 2))


def from_blocked(y: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """NCHW view of the first c channels, and the pad lanes."""
    n, cb, h, w, _ = y.shape
    full = y.transpose(0, 1, 4, 2, 3).reshape(n, cb * 8, h, w)
    return full[:, :c], full[:, c:]


def ort_conv(w: np.ndarray, b: np.ndarray, x: np.ndarray, stride: int, dil: int, pads: tuple,
             act: str, residual: np.ndarray | None) -> np.ndarray:
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    out = "c"
    nodes = [helper.make_node("Conv", ["x", "W", "B"], [out], strides=[stride] * 2, dilations=[dil] * 2,
                              pads=[pads[0], pads[1], pads[2], pads[3]])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))]
    feeds = {"x": x}
    if act != "none":
        nodes.append(helper.make_node({"relu": "Relu", "sigmoid": "Sigmoid"}[act], [out], ["s"]))
        out = "s"
    if residual is not None:
        nodes.append(helper.make_node("Add", [out, "r"], ["a"]))
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, list(residual.shape)))
        feeds["r"] = residual
        out = "a"
    graph = helper.make_graph(nodes, "conv", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _case(geo: tuple, seed: int = 0):
    _, c, oc, h, w_, k, stride, dil, pads = geo
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((oc, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = (rng.standard_normal(oc) * 0.1).astype(np.float32)
    x = rng.standard_normal((2, c, h, w_)).astype(np.float32)
    return rng, w, b, x, {"strides": (stride, stride), "dilations": (dil, dil), "pads": pads}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", ["relu", "sigmoid"])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
def test_blocked_output_conv_matches_onnxruntime(isa: str, geo: tuple, act: str, threads: int) -> None:
    _, w, b, x, kw = _case(geo)
    in_layout = "nchwc8" if _core.conv_layout_ok(w.shape, in_layout="nchwc8", out_layout="nchwc8", **kw) \
        else "nchw"
    conv = _core.Conv2d(w, b, act=act, in_layout=in_layout, out_layout="nchwc8", **kw)
    assert conv.path == "nchwc"
    xin = to_blocked(x) if in_layout == "nchwc8" else x
    got, pad = from_blocked(conv.run(xin, threads=threads), w.shape[0])
    want = ort_conv(w, b, x, kw["strides"][0], kw["dilations"][0], kw["pads"], act, None)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not pad.any()   # sigmoid(0) = 0.5: the pad lanes are stored as zeros, not act(0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
def test_blocked_output_conv_adds_a_residual_like_onnxruntime(isa: str, geo: tuple, threads: int) -> None:
    rng, w, b, x, kw = _case(geo, seed=1)
    conv = _core.Conv2d(w, b, in_layout="nchw", out_layout="nchwc8", **kw)
    assert conv.can_sum
    oshape = conv.output_shape(x.shape)
    res = rng.standard_normal((oshape[0], w.shape[0], oshape[2], oshape[3])).astype(np.float32)
    want = ort_conv(w, b, x, kw["strides"][0], kw["dilations"][0], kw["pads"], "none", res)
    got, pad = from_blocked(conv.run(x, sum=to_blocked(res), threads=threads), w.shape[0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not pad.any()
    # the residual may be the output buffer itself (accumulated in place): still conv + residual
    both = to_blocked(res)
    out = conv.run(x, out=both, sum=both, threads=threads)
    assert out is both
    np.testing.assert_allclose(from_blocked(out, w.shape[0])[0], want, rtol=1e-4, atol=1e-4)
