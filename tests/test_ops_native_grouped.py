"""Grouped convolutions and the channel shuffle on the blocked (NCHWc8) layout.

Grouped k x k convs of any group width stay blocked: a group that starts inside an 8-channel block is packed
and stored lane by lane (ResNeXt's 32 groups of 4); grouped 1x1s do when their groups fill whole blocks (else
the per-group GEMM on NCHW was faster); the Reshape -> Transpose -> Reshape channel shuffle becomes one
gather on the blocks. Every plan is compared with ONNX Runtime
(rtol 1e-4, atol 1e-4) on every ISA, at 1 and 2 threads, with the layout forced on and off."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native
from ops_native import _core


def _conv(rng: np.random.Generator, name: str, x: str, y: str, c: int, oc: int, k: int, group: int = 1,
          **attrs: object) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    w = (rng.standard_normal((oc, c // group, k, k)) / np.sqrt(c // group * k * k)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
    return helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], name=name, group=group, **attrs), inits


def _model(nodes: list, inits: list, out: str, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", "c", "oh", "ow"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def grouped_model(groups: int, cpg: int, k: int, stride: int, residual: bool, seed: int = 0) -> onnx.ModelProto:
    """stem (3 -> C, blocked out) -> grouped conv (C -> C, `groups` groups of `cpg` channels, k x k, stride,
    padded) -> Relu -> [+ the stem's output: a residual, stride 1 only] -> grouped 1x1 (C -> C) -> 1x1 (C -> 8)."""
    rng = np.random.default_rng(seed)
    c = groups * cpg
    pad = k // 2
    parts = [_conv(rng, "stem", "x", "s", 3, c, 3, pads=[1, 1, 1, 1]),
             _conv(rng, "g1", "s", "g1o", c, c, k, group=groups, strides=[stride, stride], pads=[pad] * 4),
             _conv(rng, "g2", "r" if not residual else "a", "g2o", c, c, 1, group=groups),
             _conv(rng, "head", "g2o", "y", c, 8, 1)]
    nodes = [parts[0][0], parts[1][0], helper.make_node("Relu", ["g1o"], ["r"])]
    if residual:
        nodes.append(helper.make_node("Add", ["r", "s"], ["a"]))
    nodes += [parts[2][0], parts[3][0]]
    return _model(nodes, [i for p in parts for i in p[1]], "y", "grouped")


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    # basic optimisations only: ORT's own NCHWc rewrite fails on some of these graphs ("ReorderInput:
    # (channels % 4) == 0 was false" after a 136-channel depthwise conv fed by a shuffle)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _layouts(sess: ops_native.InferenceSession) -> dict[str, tuple[str, str]]:
    return {n.name: (n.attrs.get("_in_layout", "nchw"), n.attrs.get("_out_layout", "nchw"))
            for n in sess._plan.nodes if n.op_type == "Conv"}


@pytest.mark.parametrize("groups,cpg,k,stride,residual", [
    (2, 12, 3, 1, False),   # 12 channels per group: the second group starts at lane 4
    (3, 8, 3, 2, False),    # whole blocks, stride 2
    (4, 34, 3, 1, True),    # ShuffleNet's 136 = 4 x 34, with a residual add
    (4, 6, 3, 1, False),    # fewer than 8 channels per group
    (8, 5, 3, 2, False),
    (32, 4, 3, 1, True),    # ResNeXt's cardinality 32, 4 channels per group
])
@pytest.mark.parametrize("threads", [1, 2])
def test_grouped_convs_stay_blocked_and_match_onnxruntime(isa: str, threads: int, groups: int, cpg: int, k: int,
                                                          stride: int, residual: bool) -> None:
    model = grouped_model(groups, cpg, k, stride, residual)
    sess = ops_native.InferenceSession(model, threads=threads, blocked_layout=True)
    lay = _layouts(sess)
    # the grouped k x k conv reads and writes blocks at any group width; a grouped 1x1 whose groups start
    # inside blocks stays on the per-group GEMM in NCHW (measured faster than the direct kernel there)
    whole = cpg % 8 == 0
    assert lay["g1"] == ("nchwc8", "nchwc8" if whole else "nchw") and lay["g2"][0] == ("nchwc8" if whole else "nchw")
    if whole:
        assert not [n for n in sess._plan.nodes if n.op_type == "_FromBlocked"]
    flat = ops_native.InferenceSession(model, threads=threads, blocked_layout=False)
    rng = np.random.default_rng(1)
    for shape in [(2, 3, 13, 11), (1, 3, 8, 9)]:
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        want = _ort(model, feeds)[0]
        for s in (sess, flat):
            got = s.run(None, feeds)[0]
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups,cpg", [(2, 12), (4, 34), (3, 5), (4, 8)])
@pytest.mark.parametrize("k,stride", [(1, 1), (3, 2)])
def test_conv2d_grouped_blocked_in_and_out_match_nchw(isa: str, groups: int, cpg: int, k: int, stride: int) -> None:
    """The kernel alone: a grouped conv with a blocked input and / or output (and a residual in the store)
    gives the NCHW plan's result, and the lanes past the last channel of a blocked output are zero."""
    rng = np.random.default_rng(groups * 100 + cpg)
    c, oc = groups * cpg, groups * (cpg + 3)
    w = rng.standard_normal((oc, cpg, k, k)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    x = rng.standard_normal((2, c, 9, 10)).astype(np.float32)
    pads = (k // 2,) * 4
    ref = _core.Conv2d(w, b, strides=(stride, stride), pads=pads, group=groups).run(x)

    def block(t: np.ndarray) -> np.ndarray:
        n, ch, h, wd = t.shape
        full = np.zeros((n, -(-ch // 8) * 8, h, wd), np.float32)
        full[:, :ch] = t
        return np.ascontiguousarray(full.reshape(n, -1, 8, h, wd).transpose(0, 1, 3, 4, 2))

    def unblock(t: np.ndarray, ch: int) -> np.ndarray:
        n, cb, h, wd, _ = t.shape
        return t.transpose(0, 1, 4, 2, 3).reshape(n, cb * 8, h, wd)[:, :ch]

    if k == 1:   # a grouped 1x1 whose groups start inside blocks stays on the per-group GEMM (NCHW only)
        assert not _core.conv_layout_ok(w.shape, group=groups, in_layout="nchwc8")
        return
    for xl, yl in (("nchwc8", "nchw"), ("nchw", "nchwc8"), ("nchwc8", "nchwc8")):
        assert _core.conv_layout_ok(w.shape, strides=(stride, stride), pads=pads, group=groups, in_layout=xl,
                                    out_layout=yl)
        conv = _core.Conv2d(w, b, strides=(stride, stride), pads=pads, group=groups, in_layout=xl, out_layout=yl)
        for threads in (1, 2):
            y = np.full(conv.output_shape((block(x) if xl == "nchwc8" else x).shape), np.nan, np.float32)
            conv.run(block(x) if xl == "nchwc8" else x, out=y, threads=threads)
            if yl == "nchwc8":
                assert np.all(y.transpose(0, 1, 4, 2, 3).reshape(2, -1, *y.shape[2:4])[:, oc:] == 0)
                y = unblock(y, oc)
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    # the residual add in the store, on a blocked output whose groups share blocks
    conv = _core.Conv2d(w, None, strides=(stride, stride), pads=pads, group=groups, in_layout="nchwc8",
                        out_layout="nchwc8")
    ref0 = _core.Conv2d(w, None, strides=(stride, stride), pads=pads, group=groups).run(x)
    r = rng.standard_normal(ref0.shape).astype(np.float32)
    y = conv.run(block(x), sum=block(r))
    np.testing.assert_allclose(unblock(y, oc), ref0 + r, rtol=1e-4, atol=1e-4)


def shuffle_model(groups: int, cpg: int, shape5: list[int], shape4: list[int] | None = None,
                  seed: int = 3) -> onnx.ModelProto:
    """A ShuffleNet unit: grouped 1x1 -> Relu -> channel shuffle (Reshape, Transpose, Reshape) -> depthwise
    3x3 -> grouped 1x1 -> + the unit's input -> 1x1 head."""
    rng = np.random.default_rng(seed)
    c = groups * cpg
    parts = [_conv(rng, "stem", "x", "s", 3, c, 3, pads=[1, 1, 1, 1]),
             _conv(rng, "g1", "s", "g1o", c, c, 1, group=groups),
             _conv(rng, "dw", "sh", "d", c, c, 3, group=c, pads=[1, 1, 1, 1]),
             _conv(rng, "g2", "d", "g2o", c, c, 1, group=groups),
             _conv(rng, "head", "a", "y", c, 8, 1)]
    inits = [i for p in parts for i in p[1]]
    inits += [numpy_helper.from_array(np.array(shape5, np.int64), "s5"),
              numpy_helper.from_array(np.array(shape4 or [0, -1, 6, 7], np.int64), "s4")]
    nodes = [parts[0][0], parts[1][0], helper.make_node("Relu", ["g1o"], ["r"]),
             helper.make_node("Reshape", ["r", "s5"], ["r5"]),
             helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "s4"], ["sh"]),
             parts[2][0], parts[3][0], helper.make_node("Add", ["g2o", "s"], ["a"]), parts[4][0]]
    return _model(nodes, inits, "y", "shuffle")


@pytest.mark.parametrize("groups,cpg,dims", [
    (4, 34, "exact"),    # ShuffleNet v1: 136 channels, groups start mid-block (the shuffle runs on NCHW)
    (4, 16, "exact"),
    (3, 8, "zeros"),     # 0 = copy the dimension, -1 inferred
    (2, 12, "zeros"),    # ShuffleNet v2's two branches
    (8, 3, "exact"),
])
@pytest.mark.parametrize("threads", [1, 2])
def test_channel_shuffle_runs_on_blocks_and_matches_onnxruntime(isa: str, threads: int, groups: int, cpg: int,
                                                                dims: str) -> None:
    c = groups * cpg
    model = shuffle_model(groups, cpg, [0, groups, cpg, -1, 7], [0, -1, 6, 7]) if dims == "zeros" else \
        shuffle_model(groups, cpg, [2, groups, cpg, 6, 7], [2, c, 6, 7])
    sess = ops_native.InferenceSession(model, threads=threads, blocked_layout=True)
    ops = [n.op_type for n in sess._plan.nodes]
    assert "Transpose" not in ops and "Reshape" not in ops
    shuffle = next(n for n in sess._plan.nodes if n.op_type == "_ChannelShuffle")
    assert shuffle.attrs.get("_in_layout") == ("nchwc8" if cpg % 8 == 0 else None)
    if cpg % 8 == 0:   # grouped 1x1s with whole-block groups: the whole unit stays blocked
        assert all(lay == ("nchwc8", "nchwc8") for name, lay in _layouts(sess).items() if name not in ("stem", "head"))
    flat = ops_native.InferenceSession(model, threads=threads, blocked_layout=False)
    rng = np.random.default_rng(5)
    for n in (2,) if dims == "exact" else (2, 1):
        feeds = {"x": rng.standard_normal((n, 3, 6, 7)).astype(np.float32)}
        want = _ort(model, feeds)[0]
        for s in (sess, flat):
            np.testing.assert_allclose(s.run(None, feeds)[0], want, rtol=1e-4, atol=1e-4)


def test_channel_shuffle_whose_targets_are_not_a_shuffle_runs_as_written() -> None:
    """Targets that split the channels and the height together (the Transpose then moves rows between
    channels): the blocked node runs the three ops on an NCHW copy, as ONNX defines them."""
    # [2, 32, 6, 7] -> [2, 4, 16, 3, 7]: channel pairs x 6 rows become 16 "channels" x 3 rows
    model = shuffle_model(4, 8, [2, 4, 16, 3, 7], [2, 32, 6, 7])
    sess = ops_native.InferenceSession(model, blocked_layout=True)
    assert any(n.op_type == "_ChannelShuffle" and n.attrs.get("_in_layout") == "nchwc8" for n in sess._plan.nodes)
    feeds = {"x": np.random.default_rng(6).standard_normal((2, 3, 6, 7)).astype(np.float32)}
    np.testing.assert_allclose(sess.run(None, feeds)[0], _ort(model, feeds)[0], rtol=1e-4, atol=1e-4)


def test_channel_gather_kernel_permutes_blocks_and_zeroes_the_padding_lanes() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4, 5, 8)).astype(np.float32)   # 20 channels: lanes 4..7 of block 2 unused
    x[:, 2, :, :, 4:] = np.nan
    src = rng.permutation(20)[:13]
    y = _core.ops_channel_gather_nchwc8(x, 20, src, 2)
    assert y.shape == (2, 2, 4, 5, 8)
    nchw = x.transpose(0, 1, 4, 2, 3).reshape(2, 24, 4, 5)
    got = y.transpose(0, 1, 4, 2, 3).reshape(2, 16, 4, 5)
    np.testing.assert_array_equal(got[:, :13], nchw[:, src])
    assert np.all(got[:, 13:] == 0)
    with pytest.raises(ValueError, match="invalid argument"):   # a source channel past cin
        _core.ops_channel_gather_nchwc8(x, 20, np.array([20]), 1)
