"""The blocked (NCHWc8) layout between convolutions: which tensors the executor keeps blocked, and that
every plan with it matches ONNX Runtime (rtol 1e-4, atol 1e-4) on every ISA, at 1 and 2 threads, with
the layout forced on and off (the portable kernels run it too, not only AVX2 / AVX-512)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native
from models import zoo
from ops_native import _core
from ops_native.passes.layout import blocked_layout_default

ISAS = _core.available_isas()


def _conv(rng: np.random.Generator, name: str, x: str, y: str, c: int, oc: int, k: int, group: int = 1,
          **attrs: object) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    w = (rng.standard_normal((oc, c // group, k, k)) / np.sqrt(c // group * k * k)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
    return helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], name=name, group=group, **attrs), inits


def chain_model(seed: int = 0) -> onnx.ModelProto:
    """Convolutions whose tensors may and may not be blocked, with dynamic batch and image size.

    Blocked: t0 (stem -> depthwise), t1 (depthwise -> 1x1 with 13 input channels), t2 / t3 (read and written
    by a group-2 conv with 10 input / 12 output channels per group: its second group starts inside a block),
    t4 (-> two convs), t5 / t6 / t7 (an Add of two blocked 16-channel tensors, read by a conv), t8 (a graph
    output that a conv reads: the conv reads it blocked, the caller gets an NCHW copy).
    """
    rng = np.random.default_rng(seed)
    parts = [
        _conv(rng, "c0", "x", "t0", 3, 13, 3, pads=[1, 1, 1, 1]),
        _conv(rng, "c1", "t0", "t1", 13, 13, 3, group=13, strides=[2, 2], pads=[1, 1, 1, 1]),
        _conv(rng, "c2", "t1", "t2", 13, 20, 1),
        _conv(rng, "c3", "t2", "t3", 20, 24, 3, group=2, pads=[1, 1, 1, 1]),
        _conv(rng, "c4", "t3", "t4", 24, 16, 1, auto_pad="SAME_UPPER"),
        _conv(rng, "c5", "t4", "t5", 16, 16, 3, pads=[1, 0, 1, 2]),
        _conv(rng, "c6", "t4", "t6", 16, 16, 5, group=16, pads=[2, 2, 2, 2]),
        _conv(rng, "c8", "t7", "t8", 16, 9, 3, pads=[1, 1, 1, 1]),
        _conv(rng, "c9", "t8", "y2", 9, 8, 1),
    ]
    nodes = [p[0] for p in parts]
    inits = [i for p in parts for i in p[1]]
    # activations fused into the convs (Relu after c0, Sigmoid after c2) exercise the fused stores
    nodes[0].output[0] = "t0pre"
    nodes.insert(1, helper.make_node("Relu", ["t0pre"], ["t0"]))
    nodes[3].output[0] = "t2pre"
    nodes.insert(4, helper.make_node("Sigmoid", ["t2pre"], ["t2"]))
    nodes.insert(-2, helper.make_node("Add", ["t5", "t6"], ["t7"]))
    dims = ["n", 3, "h", "w"]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("t8", TensorProto.FLOAT, ["n", 9, "h2", "w2"]),
         helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["n", 8, "h2", "w2"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("blocked", [True, False], ids=["nchwc8", "nchw"])
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_chain_matches_onnxruntime_in_both_layouts(isa: str, threads: int, blocked: bool) -> None:
    model = chain_model()
    sess = ops_native.InferenceSession(model, threads=threads, blocked_layout=blocked)
    assert sess._plan.blocked_values == (9 if blocked else 0)
    rng = np.random.default_rng(1)
    for shape in [(2, 3, 15, 17), (1, 3, 9, 12), (2, 3, 15, 17)]:   # new sizes re-plan; a seen one is cached
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        for got, want in zip(sess.run(None, feeds), _ort(model, feeds)):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_which_tensors_are_blocked() -> None:
    sess = ops_native.InferenceSession(chain_model(), blocked_layout=True)
    layouts = {n.name: (n.attrs.get("_in_layout", "nchw"), n.attrs.get("_out_layout", "nchw"))
               for n in sess._plan.nodes if n.op_type == "Conv"}
    assert layouts == {"c0": ("nchw", "nchwc8"), "c1": ("nchwc8", "nchwc8"), "c2": ("nchwc8", "nchwc8"),
                       "c3": ("nchwc8", "nchwc8"), "c4": ("nchwc8", "nchwc8"), "c5": ("nchwc8", "nchwc8"),
                       "c6": ("nchwc8", "nchwc8"), "c8": ("nchwc8", "nchwc8"), "c9": ("nchwc8", "nchw")}
    # the graph output t8 keeps its name: written in NCHW from c8's blocked output by one conversion step
    conv = [n for n in sess._plan.nodes if n.op_type == "_FromBlocked"]
    assert [(n.inputs, n.outputs) for n in conv] == [(["t8::nchwc8"], ["t8"])]


@pytest.mark.parametrize("threads", [1, 2])
def test_mobilenetv2_blocked_on_every_isa_matches_onnxruntime(isa: str, threads: int) -> None:
    """Each inverted-residual block keeps its two inner tensors (expand -> depthwise -> project) blocked,
    and a block output with no residual Add goes blocked into the next block's expand conv."""
    model = zoo.build("mobilenetv2")
    feeds = zoo.sample_inputs(model)
    sess = ops_native.InferenceSession(model, threads=threads, blocked_layout=True)
    depthwise = sum(1 for n in sess._plan.nodes if n.op_type == "Conv" and int(n.attrs.get("group", 1)) > 1)
    assert depthwise > 10 and sess._plan.blocked_values >= 2 * depthwise
    for got, want in zip(sess.run(None, feeds), _ort(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_layout_default_follows_the_isa_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPS_NATIVE_LAYOUT", raising=False)
    before = _core.isa()
    try:
        _core.set_isa("scalar")
        assert blocked_layout_default() is False       # no channel-blocked vector kernels: stay NCHW
        monkeypatch.setenv("OPS_NATIVE_LAYOUT", "nchwc8")
        assert blocked_layout_default() is True
        assert ops_native.InferenceSession(chain_model())._plan.blocked_values == 9
        monkeypatch.setenv("OPS_NATIVE_LAYOUT", "nchw")
        _core.set_isa(before)
        assert blocked_layout_default() is False
        assert ops_native.InferenceSession(chain_model())._plan.blocked_values == 0
        monkeypatch.delenv("OPS_NATIVE_LAYOUT")
        assert blocked_layout_default() is before.startswith("avx")
    finally:
        _core.set_isa(before)


def test_conv2d_refuses_layouts_its_geometry_cannot_take() -> None:
    w = np.ones((24, 10, 3, 3), np.float32)   # group 2: 10 input channels per group, the second group mid-block
    assert _core.conv_layout_ok(w.shape, pads=(1, 1, 1, 1), group=2, in_layout="nchwc8")
    assert not _core.conv_layout_ok(w.shape, pads=(1, 1, 1, 1), group=5, in_layout="nchwc8")   # 24 % 5
    with pytest.raises(_core.ArgumentError, match="layout must be one of"):
        _core.Conv2d(w, None, group=2, out_layout="nhwc")
    conv = _core.Conv2d(np.ones((16, 8, 1, 1), np.float32), None, in_layout="nchwc8", out_layout="nchwc8")
    with pytest.raises(_core.ArgumentError, match=r"NCHWc8 \[N, 1, H, W, 8\]"):
        conv.run(np.ones((1, 8, 4, 4), np.float32))
    y = conv.run(np.ones((1, 1, 4, 4, 8), np.float32))
    assert y.shape == (1, 2, 4, 4, 8) and np.all(y == 8.0)


def residual_model(broadcast: bool, seed: int = 2) -> onnx.ModelProto:
    """expand 1x1 -> depthwise -> project 1x1 (+ residual): the MobileNetV2 block, project + Add fused.

    broadcast: the residual is a per-channel [N, C, 1, 1] tensor (GlobalAveragePool of the input), which
    the fused conv must add with Add's broadcasting."""
    rng = np.random.default_rng(seed)
    parts = [_conv(rng, "expand", "x", "e", 12, 40, 1), _conv(rng, "dw", "e", "d", 40, 40, 3, group=40,
                                                              pads=[1, 1, 1, 1]),
             _conv(rng, "project", "d", "p", 40, 12, 1)]
    nodes = [p[0] for p in parts]
    inits = [i for p in parts for i in p[1]]
    if broadcast:
        nodes.insert(0, helper.make_node("GlobalAveragePool", ["x"], ["g"]))
    nodes.append(helper.make_node("Add", ["p", "g" if broadcast else "x"], ["y"]))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 12, 9, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 12, 9, 11])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("broadcast", [False, True], ids=["residual", "broadcast-residual"])
@pytest.mark.parametrize("threads", [1, 2])
def test_project_conv_adds_the_residual_in_its_store(isa: str, threads: int, broadcast: bool) -> None:
    model = residual_model(broadcast)
    sess = ops_native.InferenceSession(model, threads=threads, blocked_layout=True)
    ops = [n.op_type for n in sess._plan.nodes]
    assert "Add" not in ops and [n.name for n in sess._plan.nodes if n.attrs.get("_sum")] == ["project"]
    plain = ops_native.InferenceSession(model, threads=threads, blocked_layout=False)
    assert [n.op_type for n in plain._plan.nodes].count("Add") == 1   # NCHW: the GEMM path, no fused store
    rng = np.random.default_rng(5)
    for n in (2, 1, 2):
        feeds = {"x": rng.standard_normal((n, 12, 9, 11)).astype(np.float32)}
        want = _ort(model, feeds)[0]
        for s in (sess, plain):
            np.testing.assert_allclose(s.run(None, feeds)[0], want, rtol=1e-4, atol=1e-4)


def test_conv2d_residual_is_checked() -> None:
    w = np.ones((16, 8, 3, 3), np.float32)
    conv = _core.Conv2d(w, None, pads=(1, 1, 1, 1), in_layout="nchwc8")
    assert conv.can_sum
    x = np.ones((1, 1, 5, 5, 8), np.float32)
    with pytest.raises(_core.ArgumentError, match="sum has shape"):
        conv.run(x, sum=np.zeros((1, 16, 5, 4), np.float32))
    y = conv.run(x, sum=np.full((1, 16, 5, 5), 0.5, np.float32))
    assert y[0, 0, 2, 2] == 72.5   # 8 channels x 9 taps + 0.5
    relu = _core.Conv2d(w, None, pads=(1, 1, 1, 1), in_layout="nchwc8", act="relu")
    assert not relu.can_sum       # the activation would have to follow the sum
    with pytest.raises(_core.ArgumentError, match="cannot add a residual"):
        relu.run(x, sum=np.zeros((1, 16, 5, 5), np.float32))


@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("stride, dil, pads", [(1, 1, (0, 0)), (2, 1, (2, 1)), (1, 2, (4, 4))])
def test_kx1_convs_on_a_width_one_input_run_as_rows_and_match_onnxruntime(blocked: bool, stride: int, dil: int,
                                                                        pads: tuple) -> None:
    """A (K, 1) kernel on [N, C, H, 1] (1-D convs exported as 2-D, e.g. Magika) runs as (1, K) on the same memory;
    two in a row keep the blocked layout between them. Bias, activation, strides, dilation and H pads."""
    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array(rng.standard_normal((24, 12, 5, 1)).astype(np.float32) * 0.2, "w1"),
             numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((16, 24, 3, 1)).astype(np.float32) * 0.2, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], kernel_shape=[5, 1], strides=[stride, 1],
                              dilations=[dil, 1], pads=[pads[0], 0, pads[1], 0]),
             helper.make_node("Relu", ["y1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], kernel_shape=[3, 1], pads=[1, 0, 1, 0])]
    graph = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 12, 67, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, "h", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": rng.standard_normal((2, 12, 67, 1)).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for threads in (1, 2):
        sess = ops_native.InferenceSession(model, threads=threads, blocked_layout=blocked)
        got = sess.run(None, feeds)[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _image_model(nodes: list, name: str, outputs: list, inits: list) -> onnx.ModelProto:
    """An opset-13 model of ``nodes`` on a dynamic ``x`` of N x 3 x H x W, checked."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def through_model(seed: int = 3) -> onnx.ModelProto:
    """Convs joined by the layout-preserving ops: MaxPool (padded, ceil mode), two branches concatenated on
    channels, AveragePool (count_include_pad), LeakyRelu, Clip, an old-opset Sum residual followed by Relu,
    and ops that end the blocked region: a Concat of 12 + 1 channels (not whole blocks), a Mul of different
    channel counts (C broadcast)."""
    rng = np.random.default_rng(seed)
    parts = [
        _conv(rng, "stem", "x", "s", 3, 16, 3, pads=[1, 1, 1, 1]),
        _conv(rng, "b1", "p", "b1o", 16, 8, 1),
        _conv(rng, "b2", "p", "b2o", 16, 24, 3, pads=[1, 1, 1, 1]),
        _conv(rng, "mix", "a", "m", 32, 32, 3, pads=[1, 1, 1, 1]),
        _conv(rng, "res", "m", "r", 32, 32, 1),
        _conv(rng, "odd", "u", "o12", 32, 12, 1),
        _conv(rng, "one", "u", "o1", 32, 1, 1),
    ]
    conv = {p[0].name: p[0] for p in parts}
    inits = [i for p in parts for i in p[1]]
    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
              numpy_helper.from_array(np.array(4.0, np.float32), "hi")]
    nodes = [conv["stem"],
             helper.make_node("MaxPool", ["s"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0],
                              ceil_mode=1),
             conv["b1"], conv["b2"],
             helper.make_node("Concat", ["b1o", "b2o"], ["c"], axis=1),
             helper.make_node("AveragePool", ["c"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              count_include_pad=1),
             helper.make_node("LeakyRelu", ["ap"], ["lr"], alpha=0.1),
             helper.make_node("Clip", ["lr", "lo", "hi"], ["a"]),
             conv["mix"], conv["res"],
             helper.make_node("Sum", ["r", "a"], ["sm"]), helper.make_node("Relu", ["sm"], ["u"]),
             conv["odd"], conv["one"],
             helper.make_node("Concat", ["o12", "o1"], ["y1"], axis=1),
             helper.make_node("Mul", ["o12", "o1"], ["y2"])]
    return _image_model(nodes, "through", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", c, f"{n}h", f"{n}w"])
                                          for n, c in (("y1", 13), ("y2", 12))], inits)


@pytest.mark.parametrize("threads", [1, 2])
def test_blocked_layout_runs_through_pools_concat_activations_and_residual_sum(isa: str, threads: int) -> None:
    model = through_model()
    sess = ops_native.InferenceSession(model, threads=threads, blocked_layout=True)
    nodes = {n.name or n.op_type: n for n in sess._plan.nodes}
    blocked_ops = sorted(n.op_type for n in sess._plan.nodes
                         if n.op_type != "Conv" and n.attrs.get("_in_layout") == "nchwc8")
    assert blocked_ops == ["AveragePool", "Clip", "Concat", "LeakyRelu", "MaxPool", "Relu"]
    # the Sum became the res conv's store, in the blocked layout; the odd / one convs write NCHW for the
    # Concat of 13 channels and the Mul that broadcasts one channel
    assert "Sum" not in [n.op_type for n in sess._plan.nodes] and nodes["res"].attrs.get("_sum")
    assert nodes["res"].attrs.get("_out_layout") == "nchwc8"
    assert [nodes[c].attrs.get("_out_layout", "nchw") for c in ("odd", "one")] == ["nchw", "nchw"]
    rng = np.random.default_rng(4)
    for shape in [(2, 3, 13, 10), (1, 3, 8, 9)]:
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        want = _ort(model, feeds)
        for layout in (True, False):
            s = sess if layout else ops_native.InferenceSession(model, threads=threads, blocked_layout=False)
            for got, ref in zip(s.run(None, feeds), want):
                assert got.shape == ref.shape
                np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def edges_model(seed: int = 7) -> onnx.ModelProto:
    """A blocked region with ends that cannot read NCHWc8 and the per-channel ops that stay inside it.

    Inside: an unfolded BatchNormalization on 12 channels (a partly filled block) and on a Concat (DenseNet's
    order), Mul / Add / Sub with per-channel and scalar constants (the constant first for Sub), a
    squeeze-and-excitation Mul of the map by its own [N, C, 1, 1] gate, GlobalAveragePool / GlobalMaxPool.
    Ends: Flatten of a global pool (the classifier), Shape of a blocked map, a blocked map that is also a graph
    output. Each end reads an NCHW copy made once after its producer; the region itself stays blocked.
    """
    rng = np.random.default_rng(seed)
    parts = [
        _conv(rng, "stem", "x", "s0", 3, 12, 3, pads=[1, 1, 1, 1]),
        _conv(rng, "b", "bn1", "b", 12, 16, 3, pads=[1, 1, 1, 1]),
        _conv(rng, "se1", "g", "se1", 32, 8, 1),
        _conv(rng, "se2", "se1r", "se2", 8, 32, 1),
        _conv(rng, "head", "e", "h", 32, 24, 3, pads=[1, 1, 1, 1]),
    ]
    conv = {p[0].name: p[0] for p in parts}
    inits = [i for p in parts for i in p[1]]

    def bn(name: str, c: int) -> list[onnx.TensorProto]:
        return [numpy_helper.from_array(v.astype(np.float32), f"{name}_{k}") for k, v in
                (("g", rng.uniform(0.5, 1.5, c)), ("b", rng.standard_normal(c)), ("m", rng.standard_normal(c)),
                 ("v", rng.uniform(0.5, 2.0, c)))]

    inits += bn("bn1", 12) + bn("bn2", 32)
    inits += [numpy_helper.from_array(rng.standard_normal((32, 1, 1)).astype(np.float32), "pc"),
              numpy_helper.from_array(rng.standard_normal((1, 32, 1, 1)).astype(np.float32), "pc4"),
              numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [conv["stem"], helper.make_node("Relu", ["s0"], ["s"]),   # keeps BN out of the conv (fused into it)
             helper.make_node("BatchNormalization", ["s", "bn1_g", "bn1_b", "bn1_m", "bn1_v"], ["bn1"]),
             conv["b"],
             helper.make_node("Concat", ["b", "s16"], ["cat"], axis=1),
             helper.make_node("BatchNormalization", ["cat", "bn2_g", "bn2_b", "bn2_m", "bn2_v"], ["bn2"]),
             helper.make_node("Mul", ["bn2", "pc"], ["m1"]),
             helper.make_node("Sub", ["pc4", "m1"], ["m2"]),
             helper.make_node("Add", ["m2", "half"], ["m3"]),
             helper.make_node("Relu", ["m3"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             conv["se1"], helper.make_node("Relu", ["se1"], ["se1r"]), conv["se2"],
             helper.make_node("Sigmoid", ["se2"], ["gate"]),
             helper.make_node("Mul", ["r", "gate"], ["e"]),
             conv["head"],
             helper.make_node("GlobalMaxPool", ["h"], ["gm"]),
             helper.make_node("Flatten", ["gm"], ["logits"]),
             helper.make_node("Shape", ["e"], ["e_shape"])]
    # s16: a second stem, so that the Concat joins whole 8-channel blocks
    extra = _conv(rng, "s16", "x", "s16", 3, 16, 3, pads=[1, 1, 1, 1])
    nodes.insert(1, extra[0])
    inits += extra[1]
    return _image_model(nodes, "edges", [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 24]),
                                        helper.make_tensor_value_info("e", TensorProto.FLOAT, ["n", 32, "h", "w"]),
                                        helper.make_tensor_value_info("e_shape", TensorProto.INT64, [4])], inits)


@pytest.mark.parametrize("threads", [1, 2])
def test_blocked_region_edges_convert_once_and_per_channel_ops_stay_blocked(isa: str, threads: int) -> None:
    model = edges_model()
    sess = ops_native.InferenceSession(model, threads=threads, blocked_layout=True)
    blocked_ops = sorted(n.op_type for n in sess._plan.nodes
                         if n.op_type != "Conv" and n.attrs.get("_in_layout") == "nchwc8")
    # (bn2's per-channel Mul is folded into bn2: passes.fusions.fold_batchnorm_affine; the SE gate's Mul stays)
    assert blocked_ops == ["Add", "BatchNormalization", "BatchNormalization", "Concat", "GlobalAveragePool",
                           "GlobalMaxPool", "Mul", "Relu", "Sub"]
    # one NCHW copy for the classifier's Flatten and one for the map that is a graph output and has a Shape
    conversions = sorted(n.outputs[0] for n in sess._plan.nodes if n.op_type == "_FromBlocked")
    assert conversions == ["e", "gm"]
    rng = np.random.default_rng(8)
    for shape in [(2, 3, 11, 10), (1, 3, 6, 9)]:
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        want = _ort(model, feeds)
        for layout in (True, False):
            s = sess if layout else ops_native.InferenceSession(model, threads=threads, blocked_layout=False)
            for got, ref in zip(s.run(None, feeds), want):
                assert got.shape == ref.shape
                np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_from_blocked_conversion_drops_the_padding_lanes() -> None:
    """_FromBlocked on a partly filled last block (13 channels), and the [N, C/8, 1, 1, 8] case that is a copy."""
    from ops_native.ops import BuildContext, Node, build
    rng = np.random.default_rng(2)
    for c, hw in ((13, (5, 3)), (16, (1, 1)), (8, (4, 4))):
        x = rng.standard_normal((2, c, *hw)).astype(np.float32)
        blocks = -(-c // 8)
        xb = np.full((2, blocks * 8, *hw), np.nan, np.float32)   # padding lanes must never reach the output
        xb[:, :c] = x
        xb = np.ascontiguousarray(xb.reshape(2, blocks, 8, *hw).transpose(0, 1, 3, 4, 2))
        fn = build(Node("t", "_FromBlocked", ["xb"], ["y"], {"channels": c}), BuildContext(consts={}, opset=17, threads=1))
        np.testing.assert_array_equal(fn([xb])[0], x)


@pytest.mark.parametrize("threads", [1, 2])
def test_strided_pointwise_conv_on_blocks_subsamples_first_and_matches_onnxruntime(isa: str, threads: int) -> None:
    """A 1x1 conv with strides (2, 2) or (2, 3) reading a blocked tensor runs as a _Subsample copy and the same
    conv at stride 1, on odd plane sizes (the last row / column is sampled), with a fused residual Add."""
    rng = np.random.default_rng(9)
    parts = [_conv(rng, "a", "x", "t", 3, 24, 3, pads=[1, 1, 1, 1]),
             _conv(rng, "d", "t", "d", 24, 40, 1, strides=[2, 2]),
             _conv(rng, "e", "t", "e", 24, 40, 1, strides=[2, 3]),
             _conv(rng, "f", "t", "f", 24, 40, 3, strides=[2, 2], pads=[1, 1, 1, 1])]
    nodes = [p[0] for p in parts] + [helper.make_node("Add", ["d", "f"], ["y"]),
                                     helper.make_node("Relu", ["e"], ["y2"])]
    graph = helper.make_graph(nodes, "strided", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 40, "a", "b"]),
                               helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["n", 40, "c", "d"])],
                              [i for p in parts for i in p[1]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ops_native.InferenceSession(model, threads=threads, blocked_layout=True)
    subs = {n.outputs[0]: n.attrs["strides"] for n in sess._plan.nodes if n.op_type == "_Subsample"}
    assert sorted(subs.values()) == [[2, 2], [2, 3]]
    for shape in [(2, 3, 13, 11), (1, 3, 8, 9)]:
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        for got, ref in zip(sess.run(None, feeds), _ort(model, feeds)):
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_dropout_with_an_unread_mask_output_stays_in_the_blocked_region() -> None:
    """Old exports name Dropout's mask output even when nothing reads it (SqueezeNet before its classifier conv):
    the mask is not made, and Concat -> Dropout -> Conv stays blocked."""
    rng = np.random.default_rng(12)
    parts = [_conv(rng, "a", "x", "a", 3, 8, 3, pads=[1, 1, 1, 1]), _conv(rng, "b", "x", "b", 3, 16, 1),
             _conv(rng, "c", "d", "y", 24, 10, 1)]
    nodes = [parts[0][0], parts[1][0], helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
             helper.make_node("Dropout", ["cat"], ["d", "mask"], ratio=0.5), parts[2][0]]
    graph = helper.make_graph(nodes, "drop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10, 9, 7])],
                              [i for p in parts for i in p[1]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    sess = ops_native.InferenceSession(model, blocked_layout=True)
    drop = next(n for n in sess._plan.nodes if n.op_type == "Dropout")
    assert drop.outputs == ["d", ""] and drop.attrs.get("_in_layout") == "nchwc8"
    feeds = {"x": rng.standard_normal((1, 3, 9, 7)).astype(np.float32)}
    np.testing.assert_allclose(sess.run(None, feeds)[0], _ort(model, feeds)[0], rtol=1e-4, atol=1e-4)
