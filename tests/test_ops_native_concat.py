"""Channel Concats written in place by their convolutions (ops_native.passes.concat): the plan, which inputs
are still copied, the fallbacks (N > 1, a conv read elsewhere or returned, a non-conv input that comes late),
and every result against ONNX Runtime (atol 1e-4, rtol 1e-4) at 1 and 2 threads, blocked and NCHW."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native
import ops_native.ops.data as data_ops


def _conv(rng: np.random.Generator, name: str, x: str, y: str, c: int, oc: int, k: int) -> tuple:
    w = (rng.standard_normal((oc, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = (rng.standard_normal(oc) * 0.1).astype(np.float32)
    node = helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], name=name, pads=[k // 2] * 4)
    return node, [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]


def fire_model(channels: int = 16, seed: int = 0) -> onnx.ModelProto:
    """A stem conv, then Concat(conv1x1(s), conv3x3(s), maxpool(s)) -> conv (an Inception / SqueezeNet join,
    with a non-conv input that exists before the convs run), then Concat(conv(t), relu(t)) where the relu
    runs after the conv (so that conv is copied, not written in place), and a conv whose output is also a
    graph output inside a third Concat (copied too). Dynamic batch and image size."""
    rng = np.random.default_rng(seed)
    c = channels
    parts = [_conv(rng, "stem", "x", "s", 3, c, 3), _conv(rng, "a", "s", "a_out", c, c, 1),
             _conv(rng, "b", "s", "b_out", c, 2 * c, 3), _conv(rng, "mix", "cat1", "t", 4 * c, c, 1),
             _conv(rng, "d", "t", "d_out", c, c, 3), _conv(rng, "e", "t", "e_out", c, c, 1)]
    nodes = [p[0] for p in parts]
    inits = [i for p in parts for i in p[1]]
    nodes += [
        helper.make_node("MaxPool", ["s"], ["p_out"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Concat", ["a_out", "b_out", "p_out"], ["cat1"], axis=1),
        helper.make_node("Relu", ["t"], ["r_out"]),
        helper.make_node("Concat", ["d_out", "r_out"], ["cat2"], axis=-3),
        helper.make_node("Concat", ["cat2", "e_out"], ["y"], axis=1),
    ]
    by = {n.output[0]: n for n in nodes}
    seq = [by[o] for o in ["s", "p_out", "a_out", "b_out", "cat1", "t", "d_out", "r_out", "cat2", "e_out", "y"]]
    graph = helper.make_graph(
        seq, "fire", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3 * c, "h", "w"]),
         helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["n", c, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def _run_both(model: onnx.ModelProto, x: np.ndarray, threads: int, **kw: object) -> tuple[list, list, object]:
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    sess = ops_native.InferenceSession(model.SerializeToString(), threads=threads, **kw)
    sess.run(None, {"x": x})                   # the first run with a shape fills the conv plans
    return ref, sess.run(None, {"x": x}), sess


@pytest.mark.parametrize("blocked", [True, False], ids=["nchwc8", "nchw"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 3, 12, 10), (2, 3, 9, 13), (1, 3, 7, 1)], ids=["n1", "n2", "w1"])
def test_concats_of_convolutions_match_onnxruntime(blocked: bool, threads: int, shape: tuple) -> None:
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ref, ours, _ = _run_both(fire_model(), x, threads, blocked_layout=blocked)
    for r, o in zip(ref, ours):
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("blocked", [True, False], ids=["nchwc8", "nchw"])
def test_the_plan_writes_only_convolutions_that_run_after_every_other_input(blocked: bool) -> None:
    sess = ops_native.InferenceSession(fire_model().SerializeToString(), threads=1, blocked_layout=blocked)
    nodes = sess._plan.nodes
    buffers = [n for n in nodes if n.op_type == "_ConcatBuffer"]
    into = sorted(n.name for n in nodes if n.attrs.get("_into"))
    # cat1: a and b (the max pool ran before them); cat2: d runs before the relu, so it is copied; y: e is
    # also a graph output, so it is copied too.
    assert into == ["a", "b"]
    assert len(buffers) == 1
    order = [n.name or n.op_type for n in nodes]
    assert order.index(buffers[0].name) < order.index("a") < order.index("b")


def test_only_inputs_not_written_in_place_are_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(2).standard_normal((1, 3, 12, 10)).astype(np.float32)
    sess = ops_native.InferenceSession(fire_model().SerializeToString(), threads=1)
    sess.run(None, {"x": x})
    copied: list[tuple] = []
    real = np.copyto

    def counting(dst: np.ndarray, src: np.ndarray) -> None:
        copied.append(tuple(src.shape))
        real(dst, src)

    monkeypatch.setattr(data_ops.np, "copyto", counting)
    sess.run(None, {"x": x})
    assert len(copied) == 1                     # cat1's max pool branch; a and b wrote in place


def test_a_batch_of_two_falls_back_to_copies_and_a_later_batch_of_one_writes_in_place_again() -> None:
    model = fire_model()
    sess = ops_native.InferenceSession(model.SerializeToString(), threads=2)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for shape in [(1, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8), (1, 3, 16, 6), (3, 3, 5, 5), (1, 3, 8, 8)]:
        x = rng.standard_normal(shape).astype(np.float32)
        for r, o in zip(ref.run(None, {"x": x}), sess.run(None, {"x": x})):
            np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-4)


def test_results_of_one_run_are_not_overwritten_by_the_next() -> None:
    sess = ops_native.InferenceSession(fire_model().SerializeToString(), threads=1)
    rng = np.random.default_rng(4)
    x1, x2 = (rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(2))
    sess.run(None, {"x": x1})
    y1 = sess.run(None, {"x": x1})[0]
    keep = y1.copy()
    sess.run(None, {"x": x2})
    np.testing.assert_array_equal(y1, keep)
