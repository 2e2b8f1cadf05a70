"""Reference models built in code with seeded random weights.

They exist so that tests, benchmarks and demos have real, varied ONNX graphs without downloads:
an MLP (Gemm/MatMul), a MobileNetV2-style CNN (Conv, depthwise Conv, BatchNormalization, Clip,
residual Add, GlobalAveragePool) and a small transformer encoder (MatMul, Reshape/Transpose,
Softmax, LayerNormalization, Erf-based Gelu). All use opset 17 and IR version 9 and pass the
ONNX checker with ``full_check=True``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.graph import input_specs

__all__ = ["names", "build", "sample_inputs", "OPSET", "IR_VERSION"]

OPSET = 17
IR_VERSION = 9


class _Builder:
    """Accumulates nodes and initializers with unique, readable names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count: dict[str, int] = {}

    def name(self, base: str) -> str:
        k = self._count.get(base, 0)
        self._count[base] = k + 1
        return f"{base}_{k}"

    def init(self, base: str, arr: np.ndarray) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def normal(self, base: str, shape: tuple[int, ...], std: float) -> str:
        return self.init(base, (self.rng.standard_normal(shape) * std).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: object) -> str | list[str]:
        n = self.name(op_type.lower())
        outs = [f"{n}_out{i}" if n_out > 1 else f"{n}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=n, **attrs))
        return outs[0] if n_out == 1 else outs

    def model(
        self, graph_name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.inits)
        m = helper.make_model(
            g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edge-agent.models.zoo"
        )
        m.ir_version = IR_VERSION
        onnx.checker.check_model(m, full_check=True)
        return m


# ------------------------------------------------------------------------------------------------ MLP


def _mlp(seed: int) -> onnx.ModelProto:
    b = _Builder(seed)
    x = "input"
    widths = [256, 512, 256, 128]
    for i, (cin, cout) in enumerate(itertools.pairwise(widths)):
        w = b.normal("fc_w", (cin, cout), math.sqrt(2.0 / cin))
        bias = b.init("fc_b", np.zeros(cout, np.float32) + 0.01)
        if i % 2 == 0:
            x = b.op("Gemm", [x, w, bias])
        else:  # MatMul + Add variant of a dense layer
            x = b.op("Add", [b.op("MatMul", [x, w]), bias])
        x = b.op("Relu", [x])
    w = b.normal("head_w", (10, widths[-1]), math.sqrt(1.0 / widths[-1]))
    bias = b.init("head_b", np.zeros(10, np.float32))
    b.nodes.append(helper.make_node("Gemm", [x, w, bias], ["output"], name="head", transB=1))
    return b.model(
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
    )


# -------------------------------------------------------------------------------------- MobileNetV2

# (expansion t, output channels c, repeats n, first stride s) from the MobileNetV2 paper.
_MBV2_CFG = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
_MBV2_WIDTH = 1.4


def _divisible(v: float, d: int = 8) -> int:
    return max(d, int(v + d / 2) // d * d)


def _mobilenetv2(seed: int) -> onnx.ModelProto:
    b = _Builder(seed)
    zero = b.init("clip_min", np.array(0.0, np.float32))
    six = b.init("clip_max", np.array(6.0, np.float32))

    def conv(x: str, cin: int, cout: int, k: int, stride: int, group: int = 1, gain: float = 2.0) -> str:
        fan_in = cin // group * k * k
        w = b.normal("conv_w", (cout, cin // group, k, k), math.sqrt(gain / fan_in))
        bias = b.init("conv_b", np.zeros(cout, np.float32))
        return b.op(
            "Conv",
            [x, w, bias],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[k // 2] * 4,
            group=group,
        )

    def relu6(x: str) -> str:
        return b.op("Clip", [x, zero, six])

    # Stem: 3x3 s2 conv without bias, then BatchNormalization (exercises BN folding downstream).
    c_stem = _divisible(32 * _MBV2_WIDTH)
    w = b.normal("stem_w", (c_stem, 3, 3, 3), math.sqrt(2.0 / 27))
    x = b.op("Conv", ["input", w], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    bn = [
        b.init("bn_scale", (1.0 + 0.1 * b.rng.standard_normal(c_stem)).astype(np.float32)),
        b.init("bn_bias", (0.05 * b.rng.standard_normal(c_stem)).astype(np.float32)),
        b.init("bn_mean", (0.05 * b.rng.standard_normal(c_stem)).astype(np.float32)),
        b.init("bn_var", (1.0 + 0.2 * b.rng.random(c_stem)).astype(np.float32)),
    ]
    x = relu6(b.op("BatchNormalization", [x, *bn], epsilon=1e-5))
    cin = c_stem
    for t, c, n, s in _MBV2_CFG:
        cout = _divisible(c * _MBV2_WIDTH)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x
            if t != 1:
                y = relu6(conv(y, cin, hidden, 1, 1))
            y = relu6(conv(y, hidden, hidden, 3, stride, group=hidden))
            # Small gain on the linear projection keeps the residual stream O(1) through 17 blocks.
            y = conv(y, hidden, cout, 1, 1, gain=0.5)
            if stride == 1 and cin == cout:
                y = b.op("Add", [x, y])
            x, cin = y, cout
    c_last = 1280 if _MBV2_WIDTH <= 1.0 else _divisible(1280 * _MBV2_WIDTH)
    x = relu6(conv(x, cin, c_last, 1, 1))
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    w = b.normal("fc_w", (1000, c_last), math.sqrt(1.0 / c_last))
    bias = b.init("fc_b", np.zeros(1000, np.float32))
    b.nodes.append(helper.make_node("Gemm", [x, w, bias], ["output"], name="classifier", transB=1))
    return b.model(
        "mobilenetv2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 128, 128])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1000])],
    )


# -------------------------------------------------------------------------------------- Transformer

_TOKENS, _DIM, _HEADS, _LAYERS, _FFN = 64, 128, 4, 2, 512


def _transformer(seed: int) -> onnx.ModelProto:
    b = _Builder(seed)
    hd = _DIM // _HEADS
    to_heads = b.init("shape_heads", np.array([0, 0, _HEADS, hd], np.int64))
    to_model = b.init("shape_model", np.array([0, 0, _DIM], np.int64))
    # The attention scale comes from a Constant node (not an initializer) so graph tools see both kinds.
    b.nodes.append(
        helper.make_node(
            "Constant",
            [],
            ["attn_scale"],
            name="attn_scale_const",
            value=numpy_helper.from_array(np.array(math.sqrt(hd), np.float32)),
        )
    )
    half = b.init("half", np.array(0.5, np.float32))
    one = b.init("one", np.array(1.0, np.float32))
    sqrt2 = b.init("sqrt2", np.array(math.sqrt(2.0), np.float32))

    def dense(x: str, cin: int, cout: int, gain: float = 1.0) -> str:
        w = b.normal("w", (cin, cout), math.sqrt(gain / cin))
        bias = b.init("b", (0.02 * b.rng.standard_normal(cout)).astype(np.float32))
        return b.op("Add", [b.op("MatMul", [x, w]), bias])

    def layer_norm(x: str) -> str:
        g = b.init("ln_g", (1.0 + 0.05 * b.rng.standard_normal(_DIM)).astype(np.float32))
        beta = b.init("ln_b", (0.05 * b.rng.standard_normal(_DIM)).astype(np.float32))
        return b.op("LayerNormalization", [x, g, beta], axis=-1, epsilon=1e-5)

    x = "input"
    for _ in range(_LAYERS):
        q = b.op("Transpose", [b.op("Reshape", [dense(x, _DIM, _DIM), to_heads])], perm=[0, 2, 1, 3])
        k = b.op("Transpose", [b.op("Reshape", [dense(x, _DIM, _DIM), to_heads])], perm=[0, 2, 3, 1])
        v = b.op("Transpose", [b.op("Reshape", [dense(x, _DIM, _DIM), to_heads])], perm=[0, 2, 1, 3])
        scores = b.op("Div", [b.op("MatMul", [q, k]), "attn_scale"])
        attn = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
        merged = b.op("Reshape", [b.op("Transpose", [attn], perm=[0, 2, 1, 3]), to_model])
        x = layer_norm(b.op("Add", [x, dense(merged, _DIM, _DIM)]))
        h = dense(x, _DIM, _FFN, gain=2.0)
        gelu = b.op(
            "Mul", [b.op("Mul", [h, half]), b.op("Add", [b.op("Erf", [b.op("Div", [h, sqrt2])]), one])]
        )
        x = layer_norm(b.op("Add", [x, dense(gelu, _FFN, _DIM)]))
    b.nodes.append(helper.make_node("Identity", [x], ["output"], name="output_identity"))
    return b.model(
        "transformer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", _TOKENS, _DIM])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", _TOKENS, _DIM])],
    )


_BUILDERS: dict[str, Callable[[int], onnx.ModelProto]] = {
    "mlp": _mlp,
    "mobilenetv2": _mobilenetv2,
    "transformer": _transformer,
}


def names() -> list[str]:
    """Names of the models :func:`build` can make."""
    return list(_BUILDERS)


def build(name: str, seed: int = 0) -> onnx.ModelProto:
    """Build zoo model ``name`` with weights drawn from ``numpy.random.default_rng(seed)``.

    The same name and seed always give byte-identical models.
    """
    try:
        fn = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(_BUILDERS)}") from None
    return fn(seed)


def sample_inputs(
    model_or_name: onnx.ModelProto | str,
    seed: int = 0,
    batch: int = 1,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs for a model (a zoo name or any ``ModelProto``), deterministic for ``seed``.

    A symbolic leading dimension becomes ``batch``; other symbolic dimensions default to 32 unless
    ``shapes`` gives the full shape of that input. Floats are standard normal, integers in [0, 10),
    booleans random.
    """
    model = build(model_or_name) if isinstance(model_or_name, str) else model_or_name
    rng = np.random.default_rng(seed)
    shapes = shapes or {}
    feeds: dict[str, np.ndarray] = {}
    for spec in input_specs(model):
        if spec.name in shapes:
            shape = tuple(int(d) for d in shapes[spec.name])
        else:
            shape = tuple(
                d if isinstance(d, int) else (batch if i == 0 else 32) for i, d in enumerate(spec.shape)
            )
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            raise ValueError(f"cannot make sample data for input {spec.name!r} of dtype {spec.dtype}")
    return feeds
