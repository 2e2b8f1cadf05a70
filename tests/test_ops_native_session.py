"""InferenceSession API and error behaviour: ORT-like surface, errors that name what was expected, and a
session that survives bad calls."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ops_native
from models import zoo


def _conv_relu_model(dynamic: bool = False) -> onnx.ModelProto:
    """x [1,3,8,8] -> Conv 3x3 -> BatchNorm -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.random(4).astype(np.float32) + 0.5, "g"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "m"),
        numpy_helper.from_array(rng.random(4).astype(np.float32) + 0.5, "v"),
        numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=-1),
    ]
    shape = ["N", 3, "H", "W"] if dynamic else [1, 3, 8, 8]
    g = helper.make_graph(
        nodes, "conv_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [shape[0], 5]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], 5])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return _conv_relu_model()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)


def test_get_inputs_and_outputs_describe_the_graph_like_onnxruntime(model: onnx.ModelProto) -> None:
    sess = ops_native.InferenceSession(model)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (i,) = sess.get_inputs()
    (ri,) = ref.get_inputs()
    assert (i.name, i.shape, i.type) == (ri.name, ri.shape, ri.type) == ("x", [1, 3, 8, 8], "tensor(float)")
    assert i.dtype == np.float32
    assert [o.name for o in sess.get_outputs()] == ["prob", "logits"]
    assert all(o.type == "tensor(float)" for o in sess.get_outputs())


def test_dynamic_dims_are_reported_as_strings() -> None:
    sess = ops_native.InferenceSession(_conv_relu_model(dynamic=True))
    assert sess.get_inputs()[0].shape == ["N", 3, "H", "W"]


def test_run_returns_all_outputs_or_the_named_ones_in_order(model: onnx.ModelProto, x: np.ndarray) -> None:
    sess = ops_native.InferenceSession(model, threads=2)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    prob, logits = sess.run(None, {"x": x})
    rprob, rlogits = ref.run(None, {"x": x})
    np.testing.assert_allclose(prob, rprob, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, rlogits, rtol=1e-4, atol=1e-5)
    (only,) = sess.run(["logits"], {"x": x})
    np.testing.assert_array_equal(only, logits)
    swapped = sess.run(["logits", "prob"], {"x": x})
    np.testing.assert_array_equal(swapped[1], prob)


def test_model_loads_from_path_bytes_and_proto(model: onnx.ModelProto, x: np.ndarray, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    outs = [ops_native.InferenceSession(src).run(["prob"], {"x": x})[0]
            for src in (str(path), path, model.SerializeToString(), model)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_dynamic_input_sizes_rederive_shapes_per_run() -> None:
    sess = ops_native.InferenceSession(_conv_relu_model(dynamic=True))
    for shape in [(1, 3, 8, 8), (2, 3, 5, 7), (1, 3, 16, 4)]:
        x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
        assert sess.run(["prob"], {"x": x})[0].shape == (shape[0], 5)


def test_wrong_dtype_raises_invalid_input_naming_expected_and_actual(model: onnx.ModelProto, x: np.ndarray) -> None:
    sess = ops_native.InferenceSession(model)
    with pytest.raises(ops_native.InvalidInputError) as e:
        sess.run(None, {"x": x.astype(np.float64)})
    assert str(e.value) == "input 'x': expected float32 [1,3,8,8], got float64 [1,3,8,8]"


def test_wrong_shape_raises_invalid_input(model: onnx.ModelProto, x: np.ndarray) -> None:
    sess = ops_native.InferenceSession(model)
    with pytest.raises(ops_native.InvalidInputError, match=r"expected float32 \[1,3,8,8\], got float32 \[1,3,9,8\]"):
        sess.run(None, {"x": np.zeros((1, 3, 9, 8), np.float32)})
    with pytest.raises(ops_native.InvalidInputError, match="got float32 \\[3,8,8\\]"):
        sess.run(None, {"x": x[0]})


def test_unknown_or_missing_input_and_output_names_raise(model: onnx.ModelProto, x: np.ndarray) -> None:
    sess = ops_native.InferenceSession(model)
    with pytest.raises(ops_native.InvalidInputError, match="unknown input name.*'y'.*model inputs: \\['x'\\]"):
        sess.run(None, {"x": x, "y": x})
    with pytest.raises(ops_native.InvalidInputError, match="missing input.*'x'"):
        sess.run(None, {})
    with pytest.raises(ops_native.InvalidInputError, match="unknown output name.*'nope'"):
        sess.run(["nope"], {"x": x})


def test_session_survives_bad_calls_and_runs_fine_afterwards(model: onnx.ModelProto, x: np.ndarray) -> None:
    sess = ops_native.InferenceSession(model)
    good = sess.run(None, {"x": x})
    for bad in ({"x": x.astype(np.float64)}, {"z": x}, {"x": np.zeros((2, 2), np.float32)}):
        with pytest.raises(ops_native.InvalidInputError):
            sess.run(None, bad)
    again = sess.run(None, {"x": x})
    for a, b in zip(good, again):
        np.testing.assert_array_equal(a, b)


def test_truncated_model_bytes_raise_invalid_model(model: onnx.ModelProto) -> None:
    data = model.SerializeToString()
    for cut in (len(data) // 2, 10, 1):
        with pytest.raises(ops_native.InvalidModelError, match="cannot parse|onnx.checker|empty graph"):
            ops_native.InferenceSession(data[:cut])
    with pytest.raises(ops_native.InvalidModelError, match="not found"):
        ops_native.InferenceSession("/nonexistent/model.onnx")
    with pytest.raises(ops_native.InvalidModelError, match="expected a path, bytes or onnx.ModelProto"):
        ops_native.InferenceSession(42)  # type: ignore[arg-type]


def test_missing_initializer_raises_invalid_model(model: onnx.ModelProto) -> None:
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    del broken.graph.initializer[0]  # the conv weight "w"
    with pytest.raises(ops_native.InvalidModelError, match="'w'"):
        ops_native.InferenceSession(broken)


def test_bad_attribute_raises_invalid_model_naming_the_node() -> None:
    g = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                                            auto_pad="SIDEWAYS")],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    sess_or_err = None
    with pytest.raises(ops_native.OpsNativeError, match="node 'pool' \\(op MaxPool\\).*auto_pad"):
        sess_or_err = ops_native.InferenceSession(m)
        sess_or_err.run(None, {"x": np.zeros((1, 1, 4, 4), np.float32)})


def test_errors_share_one_base_class() -> None:
    for cls in (ops_native.UnsupportedOpError, ops_native.InvalidModelError, ops_native.InvalidInputError):
        assert issubclass(cls, ops_native.OpsNativeError)
        assert issubclass(cls, RuntimeError)


def test_conv_batchnorm_relu_are_fused_into_one_step(model: onnx.ModelProto) -> None:
    sess = ops_native.InferenceSession(model)
    # (with the blocked layout a _FromBlocked conversion step sits between the pool and the Flatten)
    ops = [n.op_type for n in sess._plan.nodes if n.op_type != "_FromBlocked"]
    assert ops == ["Conv", "GlobalAveragePool", "Flatten", "Gemm", "Softmax"]
    assert sess._plan.nodes[0].attrs["_act"] == "relu"


def _reshape_model(target: list[int], allowzero: int, rank: int) -> onnx.ModelProto:
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=allowzero)
    graph = helper.make_graph([node], "reshape",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [f"x{i}" for i in range(rank)])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"y{i}" for i in range(len(target))])],
                              [numpy_helper.from_array(np.array(target, np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("x_shape, target, allowzero", [
    ((2, 3, 4), [6, -1], 0),            # constant target, no zeros
    ((2, 3, 4), [0, -1], 0),            # 0 copies the input's dimension
    ((2, 3, 4), [0, 0, 2, 2], 0),
    ((2, 0, 4), [0, 4, 0], 1),          # allowzero: a 0 is a real zero-sized dimension
    ((5, 7), [-1], 0),
])
def test_reshape_with_a_constant_shape_matches_onnxruntime(x_shape: tuple, target: list, allowzero: int) -> None:
    """The shape initializer is read once at load; copied (0) dimensions still come from each run's input."""
    model = _reshape_model(target, allowzero, len(x_shape))
    sess = ops_native.InferenceSession(model)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in (x_shape, (3,) + tuple(x_shape[1:])) if 0 in target and not allowzero else (x_shape,):
        x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0])


def test_reshape_copying_a_dimension_the_input_lacks_fails_naming_the_node() -> None:
    sess = ops_native.InferenceSession(_reshape_model([0, 0, 0, -1], 0, 2))
    with pytest.raises(ops_native.OpsNativeError, match=r"(?s)Reshape.*shape\[2\] = 0 copies a dimension"):
        sess.run(None, {"x": np.zeros((2, 3), np.float32)})


def test_randomly_damaged_models_raise_ops_native_errors_only() -> None:
    """Byte flips in a serialized model either still run or raise an OpsNativeError; nothing else escapes."""
    rng = np.random.default_rng(7)
    sources = [_conv_relu_model(dynamic=True).SerializeToString(), zoo.build("transformer").SerializeToString()]
    outcomes = {"ran": 0, "raised": 0}
    for it in range(120):
        data = bytearray(sources[it % 2])
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        try:
            sess = ops_native.InferenceSession(bytes(data))
            feeds = {}
            for i in sess.get_inputs():
                shape = [d if isinstance(d, int) else int(rng.integers(1, 9)) for d in i.shape]
                feeds[i.name] = rng.standard_normal(shape).astype(i.dtype) if i.dtype.kind == "f" else \
                    rng.integers(0, 5, shape).astype(i.dtype)
            sess.run(None, feeds)
            outcomes["ran"] += 1
        except ops_native.OpsNativeError:
            outcomes["raised"] += 1
    assert outcomes["ran"] > 0 and outcomes["raised"] > 0


def test_concurrent_runs_on_one_session_give_identical_results() -> None:
    """Kernels release the GIL and intermediate buffers are recycled: runs from several threads must not
    share a buffer."""
    import threading

    model = zoo.build("mobilenetv2")
    feeds = zoo.sample_inputs(model)
    sess = ops_native.InferenceSession(model, threads=1)
    want = sess.run(None, feeds)[0]
    mismatches: list[float] = []

    def worker() -> None:
        for _ in range(10):
            got = sess.run(None, feeds)[0]
            if not np.array_equal(got, want):
                mismatches.append(float(np.abs(got - want).max()))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mismatches == []


def test_outputs_are_not_overwritten_by_later_runs() -> None:
    model = zoo.build("mobilenetv2")
    sess = ops_native.InferenceSession(model)
    a = zoo.sample_inputs(model, seed=1)
    b = zoo.sample_inputs(model, seed=2)
    first = sess.run(None, a)[0]
    kept = first.copy()
    sess.run(None, b)
    np.testing.assert_array_equal(first, kept)


def test_inputs_over_the_tensor_size_limit_are_refused(model: onnx.ModelProto) -> None:
    sess = ops_native.InferenceSession(_conv_relu_model(dynamic=True))
    huge = np.broadcast_to(np.zeros((1, 3, 1, 1), np.float32), (1 << 14, 3, 256, 256))  # 12 GiB, zero strides
    with pytest.raises(ops_native.InvalidInputError, match="GiB, more than the 4 GiB per-tensor limit"):
        sess.run(None, {"x": huge})


def test_non_contiguous_and_unaligned_inputs_give_the_same_results(model: onnx.ModelProto, x: np.ndarray) -> None:
    sess = ops_native.InferenceSession(model)
    want = sess.run(None, {"x": x})[0]
    fortran = np.asfortranarray(x)
    strided = np.zeros((1, 3, 8, 16), np.float32)
    strided[..., ::2] = x
    raw = np.zeros(x.nbytes + 1, np.uint8)
    unaligned = np.frombuffer(raw.data, dtype=np.float32, count=x.size, offset=1).reshape(x.shape)
    unaligned[...] = x
    readonly = x.copy()
    readonly.flags.writeable = False
    for feed in (fortran, strided[..., ::2], unaligned, readonly):
        np.testing.assert_array_equal(sess.run(None, {"x": feed})[0], want)


def test_data_dependent_giant_tensor_is_refused_not_allocated() -> None:
    g = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["y"], name="cos")], "g",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    sess = ops_native.InferenceSession(m)
    assert sess.run(None, {"shape": np.array([2, 3], np.int64)})[0].shape == (2, 3)
    with pytest.raises(ops_native.OpsNativeError, match="node 'cos' \\(op ConstantOfShape\\).*per-tensor limit"):
        sess.run(None, {"shape": np.array([1 << 20, 1 << 20], np.int64)})


def _dense_model(a_shape: list, op: str, **attrs) -> onnx.ModelProto:
    """a -> MatMul/Gemm with a constant B (and C for Gemm) -> Relu; the product runs as a native DenseStep."""
    rng = np.random.default_rng(3)
    k = a_shape[-1] if isinstance(a_shape[-1], int) else 40
    inits = [numpy_helper.from_array(rng.standard_normal((k, 24)).astype(np.float32), "B")]
    ins = ["a", "B"]
    if op == "Gemm":
        inits.append(numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "C"))
        ins.append("C")
    nodes = [helper.make_node(op, ins, ["p"], name="dense", **attrs), helper.make_node("Relu", ["p"], ["y"])]
    g = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(a_shape))], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op,a_shape,attrs", [
    ("MatMul", [40], {}),                       # 1-D A: y is [N]
    ("MatMul", [3, 40], {}),
    ("MatMul", [2, 5, 40], {}),                 # batched A flattened to rows
    ("Gemm", [7, 40], {"alpha": 0.5, "beta": 2.0}),
    ("Gemm", [1, 40], {}),
])
def test_dense_products_with_constant_weights_match_onnxruntime(op: str, a_shape: list, attrs: dict) -> None:
    m = _dense_model(a_shape, op, **attrs)
    a = np.random.default_rng(4).standard_normal(a_shape).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    for threads in (1, 2):
        sess = ops_native.InferenceSession(m, threads=threads)
        got = sess.run(None, {"a": a})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
        # a non-contiguous view of the same values goes through the same native step
        wide = np.repeat(a, 2, axis=-1)[..., ::2]
        np.testing.assert_allclose(sess.run(None, {"a": wide})[0], ref, rtol=1e-4, atol=1e-4)


def test_dense_step_with_a_wrong_inner_dimension_fails_naming_the_node() -> None:
    m = _dense_model(["N", "K"], "MatMul")
    sess = ops_native.InferenceSession(m)
    with pytest.raises(ops_native.OpsNativeError, match="dense"):
        sess.run(None, {"a": np.zeros((2, 41), np.float32)})
    assert sess.run(None, {"a": np.ones((2, 40), np.float32)})[0].shape == (2, 24)  # still serving
