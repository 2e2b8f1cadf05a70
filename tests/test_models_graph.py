"""Graph tools and cost model: validated loading, static shapes, hand-checked FLOP counts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import zoo
from models.cost import model_cost
from models.graph import ModelError, input_specs, load_model, output_specs, tensor_types, with_static_shapes


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def _w(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


# ------------------------------------------------------------------------------------------ loading


def test_load_model_accepts_path_bytes_and_proto(tmp_path) -> None:
    m = zoo.build("mlp")
    p = tmp_path / "mlp.onnx"
    p.write_bytes(m.SerializeToString())
    for src in (p, str(p), m.SerializeToString(), m):
        assert len(load_model(src).graph.node) == len(m.graph.node)


def test_load_model_rejects_corrupt_bytes_with_model_error() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ModelError, match="ONNX"):
        load_model(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert issubclass(ModelError, ValueError)


def test_load_model_rejects_truncated_model(tmp_path) -> None:
    data = zoo.build("transformer").SerializeToString()
    for cut in (len(data) // 2, len(data) - 7, 40):
        with pytest.raises(ModelError) as err:
            load_model(data[:cut])
        assert "bytes" in str(err.value)  # names the source


def test_load_model_rejects_non_onnx_file_and_missing_file(tmp_path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("this is not an ONNX model\n" * 10)
    with pytest.raises(ModelError, match="notes.txt"):
        load_model(p)
    with pytest.raises(ModelError, match="cannot read"):
        load_model(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="empty"):
        load_model(b"")


def test_load_model_rejects_invalid_graph_with_checker_message() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    bad = _model([helper.make_node("Relu", ["nope"], ["y"])], [x], [y])
    with pytest.raises(ModelError, match="invalid"):
        load_model(bad.SerializeToString())


# ------------------------------------------------------------------------------------------- shapes


def test_specs_report_symbolic_dims_and_dtypes() -> None:
    m = zoo.build("transformer")
    (i,) = input_specs(m)
    (o,) = output_specs(m)
    assert (i.name, i.dtype, i.shape) == ("input", np.dtype("float32"), ("N", 64, 128))
    assert o.shape == ("N", 64, 128)


def test_with_static_shapes_gives_every_edge_a_concrete_shape() -> None:
    m = zoo.build("transformer")
    s = with_static_shapes(m, {"input": (3, 64, 128)})
    types = tensor_types(s)
    for node in s.graph.node:
        for out in node.output:
            shape = types[out][1]
            assert shape is not None and all(isinstance(d, int) for d in shape), out
    assert types["output"][1] == (3, 64, 128)
    assert input_specs(m)[0].shape[0] == "N"  # the original is untouched
    assert tensor_types(with_static_shapes(m))["output"][1] == (1, 64, 128)


def test_with_static_shapes_rejects_conflicting_or_unknown_inputs() -> None:
    m = zoo.build("mlp")
    with pytest.raises(ModelError, match="fixed to 256"):
        with_static_shapes(m, {"input": (1, 300)})
    with pytest.raises(ModelError, match="not inputs"):
        with_static_shapes(m, {"bogus": (1, 256)})


# --------------------------------------------------------------------------------------------- cost


def test_conv_flops_equal_two_macs_including_depthwise() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node(
            "Conv", ["c1", "w2"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4, group=16
        ),
    ]
    m = _model(nodes, [x], [y], [_w("w1", (16, 8, 3, 3)), _w("b1", (16,)), _w("w2", (16, 1, 3, 3))])
    c = model_cost(m)
    assert c.nodes[0].flops == 2 * (2 * 16 * 16 * 16) * (8 * 3 * 3)
    assert c.nodes[1].flops == 2 * (2 * 16 * 8 * 8) * (1 * 3 * 3)  # depthwise: 9 MACs per output
    assert c.nodes[0].weight_bytes == (16 * 8 * 9 + 16) * 4
    assert c.nodes[0].out_bytes == 2 * 16 * 16 * 16 * 4
    assert c.total_weight_bytes == (16 * 8 * 9 + 16 + 16 * 9) * 4


def test_gemm_and_batched_matmul_flops_equal_hand_count() -> None:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 64])
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [2, 4, 10, 32])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [2, 4, 32, 12])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("g", "s", "bm")]
    nodes = [
        helper.make_node("Gemm", ["a", "wg", "bg"], ["g"], transB=1),
        helper.make_node("MatMul", ["q", "k"], ["s"]),
        helper.make_node("MatMul", ["q", "wm"], ["bm"]),  # broadcast of a 2-D weight over batch dims
    ]
    m = _model(nodes, [a, q, k], outs, [_w("wg", (20, 64)), _w("bg", (20,)), _w("wm", (32, 7))])
    c = model_cost(m, {"a": (5, 64)})
    assert c.nodes[0].flops == 2 * 5 * 20 * 64
    assert c.nodes[1].flops == 2 * (2 * 4) * 10 * 12 * 32
    assert c.nodes[2].flops == 2 * (2 * 4) * 10 * 7 * 32
    assert c.tensor_bytes["s"] == 2 * 4 * 10 * 12 * 4
    assert c.total_flops == sum(n.flops for n in c.nodes)


def test_constant_node_values_count_as_weights_of_their_reader() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])
    cval = numpy_helper.from_array(np.full((4, 6), 2.0, np.float32))
    nodes = [helper.make_node("Constant", [], ["c"], value=cval), helper.make_node("Mul", ["x", "c"], ["y"])]
    c = model_cost(_model(nodes, [x], [y]))
    assert c.nodes[0].flops == 0
    assert c.nodes[1].weight_bytes == 4 * 6 * 4 and c.nodes[1].flops == 24
    assert c.total_weight_bytes == 96


def test_zoo_model_costs_are_in_expected_ranges() -> None:
    mlp = model_cost(zoo.build("mlp"))
    elementwise = 512 + 2 * 256 + 128  # three Relu and one bias Add
    assert mlp.total_flops == 2 * (256 * 512 + 512 * 256 + 256 * 128 + 128 * 10) + elementwise
    mb = model_cost(zoo.build("mobilenetv2"), {"input": (1, 3, 128, 128)})
    assert 2e8 < mb.total_flops < 1e9
