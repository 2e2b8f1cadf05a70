"""Data-movement and shape ops (ops/data.py) on their load-time-specialised paths: constant Slice / Squeeze /
Unsqueeze parameters worked out once per input shape, small Gathers through numpy, a Cast to the same type
passed through. Each runs one session over several input shapes (a wrong per-shape cache shows) and is
compared with ONNX Runtime, exactly (data movement does no arithmetic)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native
from ops_native.ops import data

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes: list, inputs: list, outputs: list, inits: dict) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _out(name: str, rank: int, elem: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [f"{name}{i}" for i in range(rank)])


def _same_as_ort(model: onnx.ModelProto, feeds_list: list[dict]) -> None:
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for threads in (1, 2):
        sess = ops_native.InferenceSession(model, threads=threads)
        for feeds in feeds_list + feeds_list[::-1]:   # back and forth: each shape after another shape
            for got, want in zip(sess.run(None, feeds), ref.run(None, feeds)):
                assert got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1], [-1], [1], [1]), ([0, 2], [100, -2], [0, 2], [2, 1]), ([-1], [-1000], [-1], [-1]),
    ([2, 0], [0, 3], [1, 0], [-1, 2]), ([5], [2], [1], [1])], ids=["one_axis", "clamped", "reversed", "neg_step", "empty"])
def test_slice_with_constant_parameters_matches_onnxruntime_at_several_shapes(starts: list, ends: list, axes: list,
                                                                              steps: list) -> None:
    inits = {"s": np.array(starts, np.int64), "e": np.array(ends, np.int64), "a": np.array(axes, np.int64),
             "st": np.array(steps, np.int64)}
    model = _model([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])],
                   [helper.make_tensor_value_info("x", F, ["A", "B", "C"])], [_out("y", 3)], inits)
    rng = np.random.default_rng(0)
    _same_as_ort(model, [{"x": rng.standard_normal(s).astype(np.float32)} for s in ((4, 6, 5), (3, 2, 9), (1, 7, 1))])


def test_slice_with_runtime_parameters_matches_onnxruntime() -> None:
    model = _model([helper.make_node("Slice", ["x", "s", "e", "", "st"], ["y"])],
                   [helper.make_tensor_value_info("x", F, ["A", "B"]), helper.make_tensor_value_info("s", I64, [2]),
                    helper.make_tensor_value_info("e", I64, [2])],
                   [_out("y", 2)], {"st": np.array([1, -1], np.int64)})
    x = np.arange(30, dtype=np.float32).reshape(5, 6)
    _same_as_ort(model, [{"x": x, "s": np.array([1, -2], np.int64), "e": np.array([4, 0], np.int64)},
                         {"x": x, "s": np.array([0, 5], np.int64), "e": np.array([-1, -100], np.int64)}])


@pytest.mark.parametrize("op,axes", [("Squeeze", [0, -1]), ("Squeeze", None), ("Unsqueeze", [0, -1]),
                                     ("Unsqueeze", [1, 3])])
def test_squeeze_and_unsqueeze_with_constant_axes_match_onnxruntime_at_several_shapes(op: str, axes: list | None) -> None:
    ins = ["x"] if axes is None else ["x", "axes"]
    rank = 4 + (len(axes) if op == "Unsqueeze" else -len(axes) if axes else -2)
    model = _model([helper.make_node(op, ins, ["y"])], [helper.make_tensor_value_info("x", F, [1, "B", "C", 1])],
                   [_out("y", rank)], {} if axes is None else {"axes": np.array(axes, np.int64)})
    rng = np.random.default_rng(1)
    _same_as_ort(model, [{"x": rng.standard_normal(s).astype(np.float32)} for s in ((1, 3, 4, 1), (1, 5, 2, 1), (1, 1, 1, 1))])


def test_squeeze_with_runtime_axes_matches_onnxruntime() -> None:
    model = _model([helper.make_node("Squeeze", ["x", "axes"], ["y"])],
                   [helper.make_tensor_value_info("x", F, [1, 3, 1]), helper.make_tensor_value_info("axes", I64, [1])],
                   [_out("y", 2)], {})
    x = np.ones((1, 3, 1), np.float32)
    _same_as_ort(model, [{"x": x, "axes": np.array([0], np.int64)}, {"x": x, "axes": np.array([-1], np.int64)}])


@pytest.mark.parametrize("size", [6, data.SMALL_GATHER + 10], ids=["small_numpy", "large_native"])
@pytest.mark.parametrize("indices", [np.array(-1, np.int64), np.array([[0, 2], [-3, 1]], np.int64),
                                     np.array([1, -2, 0], np.int32)], ids=["scalar_neg", "matrix", "int32"])
def test_gather_small_and_large_match_onnxruntime_on_both_paths(size: int, indices: np.ndarray) -> None:
    """Shape arithmetic (Shape -> Gather -> Equal) and a float Gather along axis 1, on both sides of
    SMALL_GATHER (numpy take below, the native kernel above)."""
    model = _model([helper.make_node("Gather", ["x", "idx"], ["y"], axis=1),
                    helper.make_node("Shape", ["x"], ["shp"]),
                    helper.make_node("Gather", ["shp", "idx"], ["dims"], axis=0),
                    helper.make_node("Equal", ["dims", "three"], ["is3"])],
                   [helper.make_tensor_value_info("x", F, ["A", "B", "C"])],
                   [_out("y", 2 + indices.ndim), _out("dims", indices.ndim, I64), _out("is3", indices.ndim, TensorProto.BOOL)],
                   {"idx": indices, "three": np.array(3, np.int64)})
    rng = np.random.default_rng(2)
    c = max(1, size // 12)
    _same_as_ort(model, [{"x": rng.standard_normal((2, 3, c)).astype(np.float32)},
                         {"x": rng.standard_normal((2, 4, c)).astype(np.float32)}])


def test_gather_index_out_of_range_fails_naming_the_node() -> None:
    model = _model([helper.make_node("Gather", ["x", "idx"], ["y"], name="the_gather")],
                   [helper.make_tensor_value_info("x", F, ["A"])], [_out("y", 1)], {"idx": np.array([3], np.int64)})
    sess = ops_native.InferenceSession(model)
    np.testing.assert_array_equal(sess.run(None, {"x": np.arange(4, dtype=np.float32)})[0], [3.0])
    with pytest.raises(ops_native.OpsNativeError, match="the_gather"):
        sess.run(None, {"x": np.arange(3, dtype=np.float32)})


@pytest.mark.parametrize("src,to", [(np.int64, I64), (np.int64, TensorProto.INT32), (np.float32, F),
                                    (np.float32, TensorProto.BOOL)])
def test_cast_to_its_own_type_and_to_others_matches_onnxruntime(src: type, to: int) -> None:
    model = _model([helper.make_node("Cast", ["x"], ["c"], to=to), helper.make_node("Cast", ["c"], ["y"], to=to)],
                   [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(np.dtype(src)), [4])],
                   [helper.make_tensor_value_info("y", to, [4])], {})
    _same_as_ort(model, [{"x": np.array([0, 1, -2, 3], src)}])


@pytest.mark.parametrize("n", [3, 700], ids=["small_numpy", "large_native"])
def test_concat_of_shape_vectors_and_of_tensors_matches_onnxruntime_on_both_paths(n: int) -> None:
    """Concat of int64 shape pieces (Shape -> Concat -> Reshape) and of float tensors along axis -1, on both
    sides of SMALL_CONCAT."""
    model = _model([helper.make_node("Shape", ["x"], ["shp"]),
                    helper.make_node("Slice", ["shp", "zero", "one"], ["lead"]),
                    helper.make_node("Concat", ["lead", "minus1"], ["target"], axis=0),
                    helper.make_node("Reshape", ["x", "target"], ["flat"]),
                    helper.make_node("Concat", ["x", "x"], ["y"], axis=-1)],
                   [helper.make_tensor_value_info("x", F, ["A", "B", "C"])], [_out("flat", 2), _out("y", 3)],
                   {"zero": np.array([0], np.int64), "one": np.array([1], np.int64), "minus1": np.array([-1], np.int64)})
    rng = np.random.default_rng(3)
    _same_as_ort(model, [{"x": rng.standard_normal((2, n, 1)).astype(np.float32)},
                         {"x": rng.standard_normal((1, 3, n)).astype(np.float32)}])


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", [[0, 0, 3, 0, 1, 2], [1, 2, 0, 2, 0, 1], [0, 0, 0, 0, 0, 0]], ids=["last", "two_axes", "none"])
def test_pad_reflect_edge_wrap_match_onnxruntime_at_several_shapes(mode: str, pads: list) -> None:
    g = helper.make_graph([helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)], "g",
                          [helper.make_tensor_value_info("x", F, ["A", "B", "C"])], [_out("y", 3)],
                          [numpy_helper.from_array(np.array(pads, np.int64), "pads")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    rng = np.random.default_rng(4)
    _same_as_ort(model, [{"x": rng.standard_normal(s).astype(np.float32)} for s in ((3, 4, 5), (4, 3, 9), (3, 6, 4))])
