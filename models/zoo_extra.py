"""More reference models built in code: the families the real-model corpus lacks.

Each model mimics the structure of a well-known architecture with small, seeded random weights:

- ``yolo_silu``: a YOLOv8-style detector: SiLU (``x * Sigmoid(x)``) convolutions, a split/concat
  C2f block, SPPF max-pools, an upsample (``Resize`` nearest) + ``Concat`` neck and three heads
  flattened and concatenated into ``[N, 4 + 16, anchors]``. H and W are dynamic (multiples of 32).
- ``crnn_bilstm``: a CRNN text recogniser: a VGG-like CNN collapses a 32-pixel line to a sequence,
  two bidirectional ``LSTM`` layers and a per-step classifier (``LogSoftmax``). W is dynamic.
- ``gru_kws``: a keyword spotter on log-mel features ``[N, T, 40]``: two ``GRU`` layers
  (``linear_before_reset=1``, as PyTorch exports them) and a ``Softmax`` head on the last state.
  T is dynamic.
- ``unet``: a 3-level U-Net: ``BatchNormalization`` + ReLU convolutions, ``MaxPool`` down, one
  decoder level up by ``ConvTranspose`` and one by ``Resize`` (linear), skip ``Concat``. H and W
  are dynamic (multiples of 8).
- ``vit``: a small ViT: a 16x16 patch-embedding ``Conv``, a class token broadcast with ``Expand``,
  learned position embeddings resized (``Resize`` linear, ``sizes`` from ``Shape``) to the patch
  grid, pre-norm ``LayerNormalization`` attention blocks with Erf-based Gelu. H and W are dynamic
  (multiples of 16).

- ``crnn_bilstm_int8``, ``vit_int8``: the CRNN and the ViT through ONNX Runtime's
  ``quantize_dynamic`` (int8 weights, activations quantised at run time), as users shrink a model:
  ``DynamicQuantizeLinear`` + ``ConvInteger`` / ``MatMulInteger`` with float rescaling, and the CRNN's
  LSTMs as ``com.microsoft.DynamicQuantizeLSTM``. The quantisation runs in code, in a temporary folder.

All use opset 17 and IR version 9 and pass the ONNX checker with ``full_check=True``.
:data:`SHAPES` gives two representative input shapes per model.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from models.zoo import _Builder

__all__ = ["SHAPES", "names", "build", "sample_inputs"]

# Two representative shapes of each model's single input (the second one exercises dynamic dims).
SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "yolo_silu": ((1, 3, 320, 320), (1, 3, 256, 416)),
    "crnn_bilstm": ((1, 1, 32, 128), (2, 1, 32, 320)),
    "gru_kws": ((1, 49, 40), (2, 98, 40)),
    "unet": ((1, 3, 128, 128), (1, 3, 96, 160)),
    "vit": ((1, 3, 224, 224), (2, 3, 160, 256)),
}
# quantised variant -> the float model it is made from (same inputs and shapes)
_QUANTIZED = {"crnn_bilstm_int8": "crnn_bilstm", "vit_int8": "vit"}
SHAPES.update({q: SHAPES[f] for q, f in _QUANTIZED.items()})


class _Net(_Builder):
    """A :class:`models.zoo._Builder` with the layers the models below share."""

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, gain: float = 2.0) -> str:
        w = self.normal("conv_w", (cout, cin, k, k), math.sqrt(gain / (cin * k * k)))
        bias = self.init("conv_b", (0.01 * self.rng.standard_normal(cout)).astype(np.float32))
        return self.op("Conv", [x, w, bias], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def const(self, base: str, values: list[int] | list[float], dtype: type = np.int64) -> str:
        return self.init(base, np.array(values, dtype))

    def dense(self, x: str, cin: int, cout: int, gain: float = 1.0) -> str:
        w = self.normal("w", (cin, cout), math.sqrt(gain / cin))
        bias = self.init("b", (0.02 * self.rng.standard_normal(cout)).astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, w]), bias])


def _io(name: str, dims: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


# ------------------------------------------------------------------------------------- YOLO (SiLU)

_YOLO_CLASSES = 16


def _yolo_silu(seed: int) -> onnx.ModelProto:
    b = _Net(seed)

    def cbs(x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        return b.silu(b.conv(x, cin, cout, k, stride, gain=2.5))

    def c2f(x: str, c: int) -> str:
        """Split in two halves, run a bottleneck on the second, concat all three and fuse (1x1)."""
        y = cbs(x, c, c, 1)
        y1, y2 = b.op("Split", [y, b.const("split", [c // 2, c // 2])], n_out=2, axis=1)
        y3 = b.op("Add", [y2, cbs(cbs(y2, c // 2, c // 2), c // 2, c // 2)])
        return cbs(b.op("Concat", [y1, y2, y3], axis=1), c + c // 2, c, 1)

    def sppf(x: str, c: int) -> str:
        y = cbs(x, c, c // 2, 1)
        pools = [y]
        for _ in range(3):
            pools.append(b.op("MaxPool", [pools[-1]], kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[1, 1]))
        return cbs(b.op("Concat", pools, axis=1), 2 * c, c, 1)

    up = b.const("up_scales", [1.0, 1.0, 2.0, 2.0], np.float32)

    def upsample(x: str) -> str:
        return b.op("Resize", [x, "", up], mode="nearest")

    x = cbs("images", 3, 16, 3, 2)  # /2
    x = c2f(cbs(x, 16, 32, 3, 2), 32)  # /4
    p3 = c2f(cbs(x, 32, 64, 3, 2), 64)  # /8
    p4 = c2f(cbs(p3, 64, 96, 3, 2), 96)  # /16
    p5 = sppf(c2f(cbs(p4, 96, 128, 3, 2), 128), 128)  # /32
    n4 = c2f(cbs(b.op("Concat", [upsample(p5), p4], axis=1), 224, 96, 1), 96)
    n3 = c2f(cbs(b.op("Concat", [upsample(n4), p3], axis=1), 160, 64, 1), 64)
    d4 = c2f(cbs(b.op("Concat", [cbs(n3, 64, 64, 3, 2), n4], axis=1), 160, 96, 1), 96)
    d5 = c2f(cbs(b.op("Concat", [cbs(d4, 96, 96, 3, 2), p5], axis=1), 224, 128, 1), 128)
    c_out = 4 + _YOLO_CLASSES
    flat = b.const("head_shape", [0, c_out, -1])
    heads = []
    for feat, c in ((n3, 64), (d4, 96), (d5, 128)):
        box = b.conv(cbs(feat, c, 64), 64, 4, 1, gain=1.0)
        cls = b.op("Sigmoid", [b.conv(cbs(feat, c, 64), 64, _YOLO_CLASSES, 1, gain=1.0)])
        heads.append(b.op("Reshape", [b.op("Concat", [box, cls], axis=1), flat]))
    b.nodes.append(helper.make_node("Concat", heads, ["output0"], name="detections", axis=2))
    return b.model("yolo_silu", [_io("images", ["N", 3, "H", "W"])], [_io("output0", ["N", c_out, "A"])])


# ------------------------------------------------------------------------------------ CRNN + BiLSTM

_CRNN_HIDDEN, _CRNN_CLASSES = 96, 37


def _crnn_bilstm(seed: int) -> onnx.ModelProto:
    b = _Net(seed)

    def block(x: str, cin: int, cout: int, pool: tuple[int, int]) -> str:
        y = b.op("Relu", [b.conv(x, cin, cout, 3)])
        return b.op("MaxPool", [y], kernel_shape=list(pool), strides=list(pool))

    x = block("input", 1, 32, (2, 2))  # 16 x W/2
    x = block(x, 32, 64, (2, 2))  # 8 x W/4
    x = block(x, 64, 128, (2, 1))  # 4 x W/4
    x = block(x, 128, 128, (4, 1))  # 1 x W/4
    x = b.op("Reshape", [x, b.const("seq_shape", [0, 128, -1])])  # N, C, T
    x = b.op("Transpose", [x], perm=[2, 0, 1])  # T, N, C
    h = _CRNN_HIDDEN
    to_feat = b.const("bi_shape", [0, 0, 2 * h])
    cin = 128
    for _ in range(2):
        s = 1.0 / math.sqrt(h)
        w = b.init("lstm_w", b.rng.uniform(-s, s, (2, 4 * h, cin)).astype(np.float32))
        r = b.init("lstm_r", b.rng.uniform(-s, s, (2, 4 * h, h)).astype(np.float32))
        bias = b.init("lstm_b", b.rng.uniform(-s, s, (2, 8 * h)).astype(np.float32))
        y = b.op("LSTM", [x, w, r, bias], n_out=3, hidden_size=h, direction="bidirectional")[0]
        # Y is [T, 2, N, H]: put the directions next to the features, as PyTorch exports do.
        x = b.op("Reshape", [b.op("Transpose", [y], perm=[0, 2, 1, 3]), to_feat])
        cin = 2 * h
    logits = b.dense(x, 2 * h, _CRNN_CLASSES)
    b.nodes.append(helper.make_node("LogSoftmax", [logits], ["output"], name="ctc_logprobs", axis=-1))
    return b.model(
        "crnn_bilstm", [_io("input", ["N", 1, 32, "W"])], [_io("output", ["T", "N", _CRNN_CLASSES])]
    )


# ------------------------------------------------------------------------------------ GRU keyword spotter

_KWS_MELS, _KWS_HIDDEN, _KWS_WORDS = 40, 64, 12


def _gru_kws(seed: int) -> onnx.ModelProto:
    b = _Net(seed)
    h = _KWS_HIDDEN
    x = b.op("Transpose", ["features"], perm=[1, 0, 2])  # T, N, mels
    cin = _KWS_MELS
    y_h = ""
    for _ in range(2):
        s = 1.0 / math.sqrt(h)
        w = b.init("gru_w", b.rng.uniform(-s, s, (1, 3 * h, cin)).astype(np.float32))
        r = b.init("gru_r", b.rng.uniform(-s, s, (1, 3 * h, h)).astype(np.float32))
        bias = b.init("gru_b", b.rng.uniform(-s, s, (1, 6 * h)).astype(np.float32))
        y, y_h = b.op("GRU", [x, w, r, bias], n_out=2, hidden_size=h, linear_before_reset=1)
        x = b.op("Squeeze", [y, b.const("axis1", [1])])  # T, N, H
        cin = h
    last = b.op("Squeeze", [y_h, b.const("axis0", [0])])  # N, H
    logits = b.op("Relu", [b.dense(last, h, 64, gain=2.0)])
    b.nodes.append(
        helper.make_node("Softmax", [b.dense(logits, 64, _KWS_WORDS)], ["probs"], name="kws_softmax", axis=-1)
    )
    return b.model("gru_kws", [_io("features", ["N", "T", _KWS_MELS])], [_io("probs", ["N", _KWS_WORDS])])


# ------------------------------------------------------------------------------------------- U-Net

_UNET_CLASSES = 4


def _unet(seed: int) -> onnx.ModelProto:
    b = _Net(seed)

    def cbr(x: str, cin: int, cout: int) -> str:
        y = b.conv(x, cin, cout, 3)
        bn = [
            b.init("bn_scale", (1.0 + 0.1 * b.rng.standard_normal(cout)).astype(np.float32)),
            b.init("bn_bias", (0.05 * b.rng.standard_normal(cout)).astype(np.float32)),
            b.init("bn_mean", (0.05 * b.rng.standard_normal(cout)).astype(np.float32)),
            b.init("bn_var", (1.0 + 0.2 * b.rng.random(cout)).astype(np.float32)),
        ]
        return b.op("Relu", [b.op("BatchNormalization", [y, *bn], epsilon=1e-5)])

    def double(x: str, cin: int, cout: int) -> str:
        return cbr(cbr(x, cin, cout), cout, cout)

    def pool(x: str) -> str:
        return b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])

    def up_transpose(x: str, cin: int, cout: int) -> str:
        w = b.normal("deconv_w", (cin, cout, 2, 2), math.sqrt(1.0 / cin))
        bias = b.init("deconv_b", np.zeros(cout, np.float32))
        return b.op("ConvTranspose", [x, w, bias], kernel_shape=[2, 2], strides=[2, 2])

    scales = b.const("up_scales", [1.0, 1.0, 2.0, 2.0], np.float32)

    def up_resize(x: str, cin: int, cout: int) -> str:
        y = b.op("Resize", [x, "", scales], mode="linear", coordinate_transformation_mode="half_pixel")
        return b.conv(y, cin, cout, 1, gain=1.0)

    e1 = double("image", 3, 16)
    e2 = double(pool(e1), 16, 32)
    e3 = double(pool(e2), 32, 64)
    mid = double(pool(e3), 64, 128)
    d3 = double(b.op("Concat", [up_transpose(mid, 128, 64), e3], axis=1), 128, 64)
    d2 = double(b.op("Concat", [up_resize(d3, 64, 32), e2], axis=1), 64, 32)
    d1 = double(b.op("Concat", [up_transpose(d2, 32, 16), e1], axis=1), 32, 16)
    logits = b.conv(d1, 16, _UNET_CLASSES, 1, gain=1.0)
    b.nodes.append(helper.make_node("Softmax", [logits], ["mask"], name="mask_softmax", axis=1))
    return b.model(
        "unet", [_io("image", ["N", 3, "H", "W"])], [_io("mask", ["N", _UNET_CLASSES, "H", "W"])]
    )


# --------------------------------------------------------------------------------------------- ViT

_VIT_DIM, _VIT_HEADS, _VIT_LAYERS, _VIT_PATCH, _VIT_GRID, _VIT_CLASSES = 192, 3, 4, 16, 14, 100


def _vit(seed: int) -> onnx.ModelProto:
    b = _Net(seed)
    d, hd = _VIT_DIM, _VIT_DIM // _VIT_HEADS
    w = b.normal("patch_w", (d, 3, _VIT_PATCH, _VIT_PATCH), math.sqrt(1.0 / (3 * _VIT_PATCH**2)))
    pe = b.op(
        "Conv", ["pixel_values", w, b.init("patch_b", np.zeros(d, np.float32))],
        kernel_shape=[_VIT_PATCH, _VIT_PATCH], strides=[_VIT_PATCH, _VIT_PATCH],
    )  # N, D, H/16, W/16
    # Position embeddings learned on a 14x14 grid, resized to the actual patch grid (as timm does).
    pos = b.normal("pos_grid", (1, d, _VIT_GRID, _VIT_GRID), 0.02)
    pe_shape = b.op("Shape", [pe])
    sizes = b.op("Concat", [b.const("pos_nd", [1, d]), b.op("Slice", [pe_shape, b.const("s2", [2]), b.const("s4", [4])])], axis=0)
    pos = b.op("Resize", [pos, "", "", sizes], mode="linear")
    tokens = b.op("Transpose", [b.op("Reshape", [b.op("Add", [pe, pos]), b.const("flat", [0, d, -1])])], perm=[0, 2, 1])
    # Class token (with its own position embedding) broadcast to the batch.
    cls = b.init("cls_token", (0.02 * b.rng.standard_normal((1, 1, d))).astype(np.float32))
    batch = b.op("Slice", [pe_shape, b.const("s0", [0]), b.const("s1", [1])])
    cls = b.op("Expand", [cls, b.op("Concat", [batch, b.const("one_d", [1, d])], axis=0)])
    x = b.op("Concat", [cls, tokens], axis=1)  # N, 1 + T, D

    to_heads = b.const("shape_heads", [0, 0, _VIT_HEADS, hd])
    to_model = b.const("shape_model", [0, 0, d])
    scale = b.const("attn_scale", [1.0 / math.sqrt(hd)], np.float32)
    half, one = b.const("half", [0.5], np.float32), b.const("one", [1.0], np.float32)
    sqrt2 = b.const("sqrt2", [math.sqrt(2.0)], np.float32)

    def layer_norm(v: str) -> str:
        g = b.init("ln_g", (1.0 + 0.05 * b.rng.standard_normal(d)).astype(np.float32))
        beta = b.init("ln_b", (0.05 * b.rng.standard_normal(d)).astype(np.float32))
        return b.op("LayerNormalization", [v, g, beta], axis=-1, epsilon=1e-6)

    for _ in range(_VIT_LAYERS):
        y = layer_norm(x)
        q = b.op("Transpose", [b.op("Reshape", [b.dense(y, d, d), to_heads])], perm=[0, 2, 1, 3])
        k = b.op("Transpose", [b.op("Reshape", [b.dense(y, d, d), to_heads])], perm=[0, 2, 3, 1])
        v = b.op("Transpose", [b.op("Reshape", [b.dense(y, d, d), to_heads])], perm=[0, 2, 1, 3])
        att = b.op("Softmax", [b.op("Mul", [b.op("MatMul", [q, k]), scale])], axis=-1)
        merged = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [att, v])], perm=[0, 2, 1, 3]), to_model])
        x = b.op("Add", [x, b.dense(merged, d, d, gain=0.5)])
        h = b.dense(layer_norm(x), d, 4 * d, gain=2.0)
        gelu = b.op("Mul", [b.op("Mul", [h, half]), b.op("Add", [b.op("Erf", [b.op("Div", [h, sqrt2])]), one])])
        x = b.op("Add", [x, b.dense(gelu, 4 * d, d, gain=0.5)])
    b.nodes.append(
        helper.make_node("Constant", [], ["cls_index"], name="cls_index", value=helper.make_tensor("i", TensorProto.INT64, [], [0]))
    )
    cls_out = b.op("Gather", [layer_norm(x), "cls_index"], axis=1)  # N, D
    head_w = b.normal("head_w", (_VIT_CLASSES, d), math.sqrt(1.0 / d))
    b.nodes.append(
        helper.make_node(
            "Gemm", [cls_out, head_w, b.init("head_b", np.zeros(_VIT_CLASSES, np.float32))], ["logits"],
            name="head", transB=1,
        )
    )
    return b.model("vit", [_io("pixel_values", ["N", 3, "H", "W"])], [_io("logits", ["N", _VIT_CLASSES])])


def _quantize_dynamic(float_model: onnx.ModelProto) -> onnx.ModelProto:
    """The model through onnxruntime.quantization.quantize_dynamic with its defaults (int8 weights per tensor,
    uint8 activations): the ops it emits are whatever that tool emits for these layers."""
    # imported here: it is heavy, and only a quantised model needs it
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "float.onnx"), os.path.join(d, "int8.onnx")
        onnx.save(float_model, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return onnx.load(dst)


_BUILDERS: dict[str, Callable[[int], onnx.ModelProto]] = {
    "yolo_silu": _yolo_silu,
    "crnn_bilstm": _crnn_bilstm,
    "gru_kws": _gru_kws,
    "unet": _unet,
    "vit": _vit,
    "crnn_bilstm_int8": lambda seed: _quantize_dynamic(_crnn_bilstm(seed)),
    "vit_int8": lambda seed: _quantize_dynamic(_vit(seed)),
}


def names() -> list[str]:
    """Names of the models :func:`build` can make."""
    return list(_BUILDERS)


def build(name: str, seed: int = 0) -> onnx.ModelProto:
    """Build model ``name`` with weights drawn from ``numpy.random.default_rng(seed)`` (deterministic)."""
    try:
        fn = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown zoo_extra model {name!r}; known: {', '.join(_BUILDERS)}") from None
    return fn(seed)


def sample_inputs(name: str, shape_index: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Input of ``name`` at ``SHAPES[name][shape_index]`` in a realistic range.

    Images are ImageNet-normalised uniform pixels, the text line is in [-1, 1] (as PP-OCR/CRNN
    preprocessing gives), and log-mel features are around -4 with unit spread.
    """
    shape = SHAPES[name][shape_index]
    name = _QUANTIZED.get(name, name)
    rng = np.random.default_rng(seed)
    if name == "gru_kws":
        data = rng.normal(-4.0, 1.0, shape)
    elif name == "crnn_bilstm":
        data = rng.uniform(-1.0, 1.0, shape)
    else:
        mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
        std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
        data = (rng.random(shape) - mean) / std
    input_name = {"yolo_silu": "images", "crnn_bilstm": "input", "gru_kws": "features",
                  "unet": "image", "vit": "pixel_values"}[name]
    return {input_name: data.astype(np.float32)}
