"""8-bit quantised ops on the integer kernels (on_quant.h): QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear, MatMulInteger, QLinearMatMul, ConvInteger, and ONNX Runtime's contrib ops
com.microsoft.DynamicQuantizeMatMul and com.microsoft.DynamicQuantizeLSTM.

These are the ops ``onnxruntime.quantization.quantize_dynamic`` emits (weights stored as uint8 / int8 with a
scale and zero point, activations quantised at run time) and the QDQ pairs of static quantisation.

Integer products are exact (int32 sums of int16 operands: the 8-bit values minus their zero points).
Constant weights are converted to that form once, at load time. The float parts follow ONNX Runtime's
arithmetic (x / scale, round half to even, the dynamic range [min(x, 0), max(x, 0)] over 0..255), so an
output differs from ONNX Runtime's only where a float result differs in its last bits (a sigmoid, a sum
order) and that moves a value across a rounding boundary of the next dynamic quantisation: one
quantisation step of that tensor.
"""

from __future__ import annotations

import math

import numpy as np

from ops_native import _core
from ops_native.ops.pooling import resolve_pads
from ops_native.ops.recurrent import _activations
from ops_native.ops.registry import (
    F32,
    BuildContext,
    Fn,
    Node,
    OpBuildError,
    OpNotSupported,
    attr_str,
    normalize_axis,
    register,
)

I16 = np.dtype(np.int16)
I32 = np.dtype(np.int32)
_Q8 = (np.dtype(np.uint8), np.dtype(np.int8))
_ONNX_Q8 = {2: np.dtype(np.uint8), 3: np.dtype(np.int8)}   # TensorProto UINT8 / INT8


def _q8(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype not in _Q8:
        raise OpNotSupported(f"{what} is {a.dtype}: only uint8 / int8 are supported")
    return a


def _zp_array(zp: np.ndarray | None, n: int, what: str) -> np.ndarray:
    """Zero points as int32 of size n (a scalar or 1-element zero point broadcast); 0 when absent."""
    if zp is None:
        return np.zeros(n, np.int32)
    z = _q8(zp, what).reshape(-1).astype(np.int32)
    if z.size == 1:
        return np.full(n, z[0], np.int32)
    if z.size != n:
        raise OpBuildError(f"{what} has {z.size} values, expected 1 or {n}")
    return z


def _axis_view(x_shape: tuple, scale: np.ndarray, attrs: dict, what: str) -> tuple[int, int, int]:
    """(outer, c, inner) of x for a per-tensor (scale of one value) or per-axis (1-D scale along `axis`) op."""
    if int(attrs.get("block_size", 0)):
        raise OpNotSupported(f"{what}: blocked quantisation (block_size) is not supported")
    n = math.prod(x_shape)
    if scale.size == 1 and scale.ndim <= 1:
        return n, 1, 1
    if scale.ndim != 1:
        raise OpBuildError(f"{what}: scale of shape {list(scale.shape)} must be a scalar or 1-D")
    axis = normalize_axis(int(attrs.get("axis", 1)), len(x_shape))
    if x_shape[axis] != scale.size:
        raise OpBuildError(f"{what}: {scale.size} scales for axis {axis} of size {x_shape[axis]}")
    return math.prod(x_shape[:axis]), scale.size, math.prod(x_shape[axis + 1:])


def _scale_f32(s: np.ndarray, what: str) -> np.ndarray:
    if s.dtype != F32:
        raise OpNotSupported(f"{what} is {s.dtype}: only float32 scales are supported")
    return s


@register("QuantizeLinear")
def _build_quantize(node: Node, ctx: BuildContext) -> Fn:
    threads, pool, attrs = ctx.threads, ctx.pool, node.attrs
    out_attr = int(attrs.get("output_dtype", 0))
    if out_attr and out_attr not in _ONNX_Q8:
        raise OpNotSupported(f"QuantizeLinear to TensorProto type {out_attr}: only uint8 / int8 are supported")
    has_zp = len(node.inputs) > 2 and bool(node.inputs[2])

    def fn(args: list) -> list:
        x, scale = args[0], _scale_f32(args[1], "QuantizeLinear y_scale")
        zp = args[2] if has_zp else None
        if x.dtype != F32:
            raise OpNotSupported(f"QuantizeLinear of {x.dtype}: only float32 is supported")
        ydt = _q8(zp, "QuantizeLinear y_zero_point").dtype if zp is not None else _ONNX_Q8.get(out_attr, _Q8[0])
        outer, c, inner = _axis_view(x.shape, scale, attrs, "QuantizeLinear")
        y = pool.empty(x.shape, ydt)
        _core.quant_quantize(x, y, outer, c, inner, scale.reshape(-1), _zp_array(zp, c, "y_zero_point"), threads)
        return [y]

    return fn


@register("DequantizeLinear")
def _build_dequantize(node: Node, ctx: BuildContext) -> Fn:
    threads, pool, attrs = ctx.threads, ctx.pool, node.attrs
    has_zp = len(node.inputs) > 2 and bool(node.inputs[2])

    out_attr = int(attrs.get("output_dtype", 0))
    if out_attr not in (0, 1):
        raise OpNotSupported(f"DequantizeLinear to TensorProto type {out_attr}: only float32 is supported")

    def fn(args: list) -> list:
        x, scale = np.ascontiguousarray(args[0]), _scale_f32(args[1], "DequantizeLinear x_scale")
        zp = args[2] if has_zp else None
        if x.dtype not in _Q8 and x.dtype != I32:
            raise OpNotSupported(f"DequantizeLinear of {x.dtype}: only uint8 / int8 / int32 are supported")
        outer, c, inner = _axis_view(x.shape, scale, attrs, "DequantizeLinear")
        if zp is not None and x.dtype == I32:
            z = zp.reshape(-1).astype(np.int32)
            z = np.full(c, z[0], np.int32) if z.size == 1 else z
        else:
            z = _zp_array(zp, c, "x_zero_point")
        y = pool.empty(x.shape)
        _core.quant_dequantize(x, y, outer, c, inner, scale.reshape(-1), z, threads)
        return [y]

    return fn


@register("DynamicQuantizeLinear")
def _build_dynamic_quantize(node: Node, ctx: BuildContext) -> Fn:
    threads, pool = ctx.threads, ctx.pool

    def fn(args: list) -> list:
        x = args[0]
        if x.dtype != F32:
            raise OpNotSupported(f"DynamicQuantizeLinear of {x.dtype}: only float32 is supported")
        scale, zp = _core.quant_dynamic_params(x, threads)
        y = pool.empty(x.shape, np.uint8)
        _core.quant_quantize_u8(x, scale, zp, y, threads)
        return [y, np.array(scale, F32), np.array(zp, np.uint8)]

    return fn


# ---- integer products -------------------------------------------------------------------------------------

def _check_k(k: int, what: str) -> None:
    if k > _core.QGEMM_MAX_K:
        raise OpNotSupported(f"{what}: K = {k} exceeds the exact int32 range of the integer GEMM "
                             f"({_core.QGEMM_MAX_K})")


def _packed_b(b: np.ndarray, zp: np.ndarray | None, what: str, threads: int = 1, narrow: bool = False) -> np.ndarray:
    """B [K, N] (uint8 / int8) minus its zero point (scalar or per column) in the integer GEMM's packed panels.
    narrow (constant weights, packed once): int8 panels when every centered value fits (symmetric int8 weights,
    uint8 weights around 128), half the bytes the GEMM streams; else int16."""
    b = np.ascontiguousarray(_q8(b, what))
    z = _zp_array(zp, b.shape[1] if zp is not None and zp.size > 1 else 1, f"{what} zero point")
    bp = _core.quant_pack_b(b, z, False, threads)
    if narrow:
        bp8 = _core.quant_narrow_s8(bp)
        if bp8 is not None:
            return bp8
    return bp


def _centered_rows(a: np.ndarray, zp: np.ndarray | None, what: str) -> np.ndarray:
    """A [rows, K] (uint8 / int8) as int16 minus a zero point (scalar, or one per row)."""
    a = np.ascontiguousarray(_q8(a, what))
    z = _zp_array(zp, a.shape[0] if zp is not None and zp.size > 1 else 1, f"{what} zero point")
    out = np.empty(a.shape, I16)
    _core.quant_q8_to_s16(a, z, 1 if z.size > 1 else 0, out)
    return out


def _matmul_int32(a: np.ndarray, b: np.ndarray, a_zp: np.ndarray | None, b_zp: np.ndarray | None,
                  packed: np.ndarray | None, threads: int, pool) -> np.ndarray:
    """(a - a_zp) @ (b - b_zp) in int32, numpy's matmul broadcasting; packed: B already as centered B^T."""
    if a.ndim == 0 or b.ndim == 0:
        raise OpBuildError("MatMulInteger: scalar operands")
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    k = a2.shape[-1]
    if b2.shape[-2] != k:
        raise OpBuildError(f"MatMulInteger: A {list(a.shape)} and B {list(b.shape)} do not agree on K")
    _check_k(k, "MatMulInteger")
    if a_zp is not None and a_zp.size > 1 and a_zp.size != a2.shape[-2]:
        raise OpBuildError(f"MatMulInteger: a_zero_point has {a_zp.size} values for {a2.shape[-2]} rows")

    n = b2.shape[-1]

    def product(a_mk: np.ndarray, zp: np.ndarray | None, bp: np.ndarray) -> np.ndarray:
        a16 = _centered_rows(a_mk, zp, "A")
        y = pool.empty((a_mk.shape[0], n), np.int32)
        _core.quant_gemm_packed(a16, bp, k, y, threads=threads)
        return y

    if b2.ndim == 2 and (a_zp is None or a_zp.size <= 1):   # B shared by every row of A: one GEMM
        bp = packed if packed is not None else _packed_b(b2, b_zp, "B", threads)
        y = product(a2.reshape(-1, k), a_zp, bp).reshape(a2.shape[:-1] + (n,))
    else:
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        ab = np.broadcast_to(a2, batch + a2.shape[-2:])
        bb = np.broadcast_to(b2, batch + b2.shape[-2:])
        y = np.empty(batch + (a2.shape[-2], b2.shape[-1]), np.int32)
        for idx in np.ndindex(*batch):
            y[idx] = product(np.ascontiguousarray(ab[idx]), a_zp, _packed_b(bb[idx], b_zp, "B", threads))
    if a.ndim == 1:
        y = y[..., 0, :]
    if b.ndim == 1:
        y = y[..., 0]
    return y


def _const_b(node: Node, ctx: BuildContext, b_index: int, zp_index: int) -> np.ndarray | None:
    """A constant 2-D B (with a constant or absent zero point) minus its zero point, packed once; else None."""
    ins = list(node.inputs) + [""] * (zp_index + 1 - len(node.inputs))
    b, zp = ctx.const(ins[b_index]), ctx.const(ins[zp_index]) if ins[zp_index] else None
    if b is None or b.ndim != 2 or (ins[zp_index] and zp is None):
        return None
    _check_k(b.shape[0], node.op_type)
    return _packed_b(b, zp, f"{node.op_type} B", narrow=True)


@register("MatMulInteger")
def _build_matmul_integer(node: Node, ctx: BuildContext) -> Fn:
    threads, pool = ctx.threads, ctx.pool
    has = [bool(n) for n in list(node.inputs) + [""] * (4 - len(node.inputs))]
    packed = _const_b(node, ctx, 1, 3)

    def fn(args: list) -> list:
        a_zp = args[2] if has[2] else None
        b_zp = args[3] if has[3] else None
        return [_matmul_int32(args[0], args[1], a_zp, b_zp, packed, threads, pool)]

    return fn


@register("QLinearMatMul")
def _build_qlinear_matmul(node: Node, ctx: BuildContext) -> Fn:
    """y = saturate(round((a - a_zp) @ (b - b_zp) * a_scale * b_scale / y_scale) + y_zp): the exact int32 product,
    then one float rescale (as the ONNX definition: a_scale * b_scale / y_scale in float32, applied in double)."""
    threads, pool = ctx.threads, ctx.pool
    packed = _const_b(node, ctx, 3, 5)

    def fn(args: list) -> list:
        a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = args[:8]
        for s, what in ((a_s, "a_scale"), (b_s, "b_scale"), (y_s, "y_scale")):
            _scale_f32(s, f"QLinearMatMul {what}")
        ydt = _q8(y_zp, "QLinearMatMul y_zero_point").dtype
        acc = _matmul_int32(a, b, a_zp, b_zp, packed, threads, pool)
        a_s = a_s.reshape(-1, 1) if a_s.size > 1 else a_s.reshape(())
        mult = a_s * b_s.reshape(-1) / y_s.reshape(())
        lo, hi = (0, 255) if ydt == np.uint8 else (-128, 127)
        y = np.clip(np.rint(acc * mult.astype(np.float64)) + int(y_zp.reshape(-1)[0]), lo, hi)
        return [y.astype(ydt)]

    return fn


@register("ConvInteger")
def _build_conv_integer(node: Node, ctx: BuildContext) -> Fn:
    threads, pool, attrs = ctx.threads, ctx.pool, node.attrs
    ins = list(node.inputs) + [""] * (4 - len(node.inputs))
    group = int(attrs.get("group", 1))
    w_const, wz_const = ctx.const(ins[1]), ctx.const(ins[3]) if ins[3] else None
    cache: dict = {}

    def weights(w: np.ndarray, w_zp: np.ndarray | None) -> np.ndarray:
        """W [M, C/g, k...] as int16 rows [M, C/g * prod(k)] minus the zero point (scalar or per output channel)."""
        if w.ndim not in (3, 4):
            raise OpNotSupported(f"ConvInteger with {w.ndim - 2} spatial dims: only 1-D and 2-D are supported")
        return _centered_rows(w.reshape(w.shape[0], -1), w_zp, "ConvInteger W")

    if w_const is not None and (not ins[3] or wz_const is not None):
        cache["w"] = weights(w_const, wz_const)

    def fn(args: list) -> list:
        x, w = _q8(args[0], "ConvInteger x"), _q8(args[1], "ConvInteger w")
        x_zp = args[2] if ins[2] else None
        w16 = cache["w"] if "w" in cache else weights(w, args[3] if ins[3] else None)
        if x_zp is not None and x_zp.size != 1:
            raise OpNotSupported("ConvInteger: x_zero_point must be a scalar")
        one_d = x.ndim == 3
        if x.ndim not in (3, 4) or x.ndim != w.ndim:
            raise OpBuildError(f"ConvInteger: x {list(x.shape)} and w {list(w.shape)} must both be 3-D or 4-D")
        kernel = tuple(int(k) for k in attrs.get("kernel_shape", w.shape[2:]))
        nd = len(kernel)
        strides = tuple(int(s) for s in attrs.get("strides", [1] * nd))
        dil = tuple(int(d) for d in attrs.get("dilations", [1] * nd))
        pads, out = resolve_pads(attrs, x.shape[2:], kernel, strides, dil)
        n, c = x.shape[:2]
        m = w.shape[0]
        if c != w.shape[1] * group or m % group:
            raise OpBuildError(f"ConvInteger: x {list(x.shape)}, w {list(w.shape)} and group {group} do not agree")
        if one_d:   # 1-D as 2-D with a height of 1
            x, kernel, strides, dil = x[:, :, None, :], (1,) + kernel, (1,) + strides, (1,) + dil
            pads, out = [0, pads[0], 0, pads[1]], [1, out[0]]
        cg, mg, kg = c // group, m // group, w16.shape[1]
        _check_k(kg, "ConvInteger")
        zp = 0 if x_zp is None else int(x_zp.reshape(-1)[0])
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, strides, dil, out
        # a 1x1, stride-1, unpadded convolution's B is the input itself ([C, H * W]): packed without im2col
        pointwise = (kh, kw, sh, sw) == (1, 1, 1, 1) and not any(pads)
        geom = (kh, kw, sh, sw, dh, dw, pads[0], pads[1], oh, ow)
        x = np.ascontiguousarray(x)
        y = pool.empty((n, m, oh, ow), np.int32)
        bp = np.empty(_core.quant_packed_size(kg, oh * ow), I16)
        cols = None if pointwise else np.empty(kg * oh * ow, np.uint8)
        for b in range(n):
            for g in range(group):
                xs = x[b, g * cg:(g + 1) * cg]
                if pointwise:
                    bp = _core.quant_pack_b(xs.reshape(cg, -1), np.array([zp], np.int32), False, threads)
                else:
                    _core.quant_conv_pack(xs, geom, zp, bp, cols, threads)
                yg = y[b, g * mg:(g + 1) * mg].reshape(mg, oh * ow)
                _core.quant_gemm_packed(w16[g * mg:(g + 1) * mg], bp, kg, yg, threads=threads)
        return [y[:, :, 0, :] if one_d else y]

    return fn


# ---- ONNX Runtime contrib ops (com.microsoft) -------------------------------------------------------------

def _dynamic_centered(x: np.ndarray, threads: int) -> tuple[np.ndarray, float]:
    """x (float32) quantised to uint8 with ONNX Runtime's dynamic parameters, minus the zero point (int16)."""
    scale, zp = _core.quant_dynamic_params(x, threads)
    q = np.empty(x.shape, I16)
    _core.quant_centered_s16(x, scale, zp, q, threads)
    return q, scale


@register("com.microsoft.DynamicQuantizeMatMul")
def _build_dynamic_quantize_matmul(node: Node, ctx: BuildContext) -> Fn:
    """Y = A B + bias with A quantised per call, B constant uint8 / int8 ([K, N], scale / zero point per tensor
    or per column)."""
    threads, pool = ctx.threads, ctx.pool
    ins = list(node.inputs) + [""] * (5 - len(node.inputs))
    consts = [ctx.const(n) if n else None for n in ins[1:5]]
    if consts[0] is None or consts[1] is None or (ins[3] and consts[2] is None) or (ins[4] and consts[3] is None):
        raise OpNotSupported("DynamicQuantizeMatMul: B, its scale, zero point and the bias must be constants")
    b, b_scale, b_zp, bias = consts
    if b.ndim != 2:
        raise OpNotSupported(f"DynamicQuantizeMatMul: B of rank {b.ndim} (only 2-D)")
    k, n = b.shape
    _check_k(k, "DynamicQuantizeMatMul")
    bp = _packed_b(b, b_zp, "DynamicQuantizeMatMul B", narrow=True)
    b_scale = _scale_f32(b_scale, "b_scale").reshape(-1)
    if b_scale.size not in (1, n):
        raise OpBuildError(f"DynamicQuantizeMatMul: {b_scale.size} scales for {n} columns")
    bias = None if bias is None else np.ascontiguousarray(bias, F32).reshape(-1)

    def fn(args: list) -> list:
        a = args[0]
        if a.dtype != F32 or a.shape[-1] != k:
            raise OpBuildError(f"DynamicQuantizeMatMul: A {a.dtype} {list(a.shape)} for B {list(b.shape)}")
        a2 = np.ascontiguousarray(a).reshape(-1, k)
        a16, a_scale = _dynamic_centered(a2, threads)
        y = pool.empty(a.shape[:-1] + (n,))
        _core.quant_gemm_packed(a16, bp, k, y.reshape(-1, n), np.float32(a_scale) * b_scale, bias, False, threads)
        return [y]

    return fn


@register("com.microsoft.DynamicQuantizeLSTM")
def _build_dynamic_quantize_lstm(node: Node, ctx: BuildContext) -> Fn:
    """ONNX Runtime's LSTM with uint8 / int8 weights W [D, I, 4H] and R [D, H, 4H] (note: transposed from the
    ONNX LSTM's), each a scale and zero point per direction or per gate column. As ONNX Runtime computes it:
    X quantised once for the whole sequence (one range over all of X), the hidden state quantised again at
    every step, both products summed in float, then the gates."""
    threads, pool, attrs = ctx.threads, ctx.pool, node.attrs
    direction = attr_str(attrs, "direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise OpBuildError(f"DynamicQuantizeLSTM: direction {direction!r}")
    ndir = 2 if direction == "bidirectional" else 1
    sig_tanh = [_core.RNN_ACTIVATIONS[a] for a in ("Sigmoid", "Tanh", "Tanh")]
    for trip in _activations(Node(node.name, "LSTM", [], [], attrs), ndir):
        if [t[0] for t in trip] != sig_tanh:
            raise OpNotSupported("DynamicQuantizeLSTM: only the default activations (Sigmoid, Tanh, Tanh)")
    if int(attrs.get("layout", 0)):
        raise OpNotSupported("DynamicQuantizeLSTM: layout 1")
    clip = float(attrs["clip"]) if "clip" in attrs else 0.0
    input_forget = bool(attrs.get("input_forget", 0))
    ins = list(node.inputs) + [""] * (12 - len(node.inputs))
    names = {"W": ins[1], "R": ins[2], "B": ins[3], "P": ins[7], "W_scale": ins[8], "W_zero_point": ins[9],
             "R_scale": ins[10], "R_zero_point": ins[11]}
    consts = {k: ctx.const(v) if v else None for k, v in names.items()}
    for k in ("W", "R", "W_scale", "W_zero_point", "R_scale", "R_zero_point"):
        if consts[k] is None:
            raise OpNotSupported(f"DynamicQuantizeLSTM: {k} must be a constant")
    for k in ("B", "P"):
        if names[k] and consts[k] is None:
            raise OpNotSupported(f"DynamicQuantizeLSTM: {k} must be a constant")
    w, r = _q8(consts["W"], "W"), _q8(consts["R"], "R")
    if w.ndim != 3 or r.ndim != 3 or w.shape[0] != ndir or r.shape[0] != ndir or r.shape[2] != 4 * r.shape[1] or \
            w.shape[2] != r.shape[2]:
        raise OpBuildError(f"DynamicQuantizeLSTM: W {list(w.shape)} / R {list(r.shape)} must be [{ndir}, I, 4H] / "
                           f"[{ndir}, H, 4H]")
    hidden, isize = r.shape[1], w.shape[1]
    if "hidden_size" in attrs and int(attrs["hidden_size"]) != hidden:
        raise OpBuildError(f"DynamicQuantizeLSTM: hidden_size {attrs['hidden_size']} but R is {list(r.shape)}")
    _check_k(max(isize, hidden), "DynamicQuantizeLSTM")
    g4 = 4 * hidden

    def per_dir(a: np.ndarray, what: str) -> list[np.ndarray]:
        a = a.reshape(ndir, -1)
        if a.shape[1] not in (1, g4):
            raise OpBuildError(f"DynamicQuantizeLSTM: {what} must be [{ndir}] or [{ndir}, {g4}]")
        return [a[d] for d in range(ndir)]

    w_scale = per_dir(_scale_f32(consts["W_scale"], "W_scale"), "W_scale")
    r_scale = per_dir(_scale_f32(consts["R_scale"], "R_scale"), "R_scale")
    w_zp = per_dir(consts["W_zero_point"], "W_zero_point")
    r_zp = per_dir(consts["R_zero_point"], "R_zero_point")
    wt = [_packed_b(w[d], w_zp[d], "W", narrow=True) for d in range(ndir)]   # [I, 4H] packed
    rt = [_packed_b(r[d], r_zp[d], "R", narrow=True) for d in range(ndir)]
    bias = None
    if consts["B"] is not None:   # Wb + Rb, added after both products (as ONNX Runtime fuses it)
        b = np.asarray(consts["B"], F32).reshape(ndir, 2 * g4)
        bias = [np.ascontiguousarray(b[d, :g4] + b[d, g4:]) for d in range(ndir)]
    peep = None if consts["P"] is None else [np.ascontiguousarray(p, F32)
                                             for p in np.asarray(consts["P"], F32).reshape(ndir, 3 * hidden)]
    outs = list(node.outputs) + [""] * (3 - len(node.outputs))
    n_out = len(node.outputs)

    def fn(args: list) -> list:
        args = list(args) + [None] * (12 - len(args))
        x = args[0]
        if x.dtype != F32 or x.ndim != 3 or x.shape[2] != isize:
            raise OpBuildError(f"DynamicQuantizeLSTM: X {x.dtype} {list(x.shape)}, expected float32 [T, B, {isize}]")
        steps, batch = x.shape[:2]
        lens = args[4]
        if lens is not None and np.any(np.asarray(lens) != steps):
            raise OpNotSupported("DynamicQuantizeLSTM: sequence_lens shorter than the sequence")
        y = pool.empty((steps, ndir, batch, hidden)) if outs[0] else None
        yh = pool.empty((ndir, batch, hidden))
        yc = pool.empty((ndir, batch, hidden))
        x2 = np.ascontiguousarray(x).reshape(steps * batch, isize)
        xq, x_scale = _dynamic_centered(x2, threads)   # one range for X: the same for both directions
        h_scratch = np.empty((batch, hidden), F32)
        g = np.empty((steps * batch, g4), F32)
        for d in range(ndir):
            reverse = direction == "reverse" or d == 1
            _core.quant_gemm_packed(xq, wt[d], isize, g, np.float32(x_scale) * w_scale[d], None, False, threads)
            g3 = g.reshape(steps, batch, g4)
            h = yh[d]
            if args[5] is not None:
                h[...] = np.asarray(args[5], F32)[d]
            else:
                h[...] = 0.0
            c = yc[d]
            if args[6] is not None:
                c[...] = np.asarray(args[6], F32)[d]
            else:
                c[...] = 0.0
            for s in range(steps):
                t = steps - 1 - s if reverse else s
                hq, h_scale = _dynamic_centered(h, threads)
                gt = g3[t]
                _core.quant_gemm_packed(hq, rt[d], hidden, gt, np.float32(h_scale) * r_scale[d], None, True, threads)
                h_out = y[t, d] if y is not None else h_scratch
                _core.quant_lstm_gates(gt, None if bias is None else bias[d], None if peep is None else peep[d],
                                       c, h_out, clip, input_forget)
                if h_out is not h:
                    h[...] = h_out
        return [y, yh, yc][:n_out]

    return fn
