"""Normalisation ops: Softmax / LogSoftmax, LayerNormalization, BatchNormalization."""

from __future__ import annotations

import math

import numpy as np

from ops_native import _core
from ops_native.ops.registry import (
    F32,
    BuildContext,
    Fn,
    Node,
    OpNotSupported,
    normalize_axis,
    register,
)


def _move_axis_last(x: np.ndarray, axis: int, threads: int) -> np.ndarray:
    return _core.ops_contiguous(np.moveaxis(x, axis, -1), threads)


def _np_softmax(x: np.ndarray, axis: int, legacy: bool, log: bool) -> np.ndarray:
    """numpy softmax for float types other than float32 (float64 / float16 graphs)."""
    y = x.reshape(math.prod(x.shape[:axis]), -1) if legacy else x
    ax = -1 if legacy else axis
    m = np.max(y, axis=ax, keepdims=True)
    e = np.exp(y - m)
    s = np.sum(e, axis=ax, keepdims=True)
    r = (y - m - np.log(s)) if log else e / s
    return r.reshape(x.shape).astype(x.dtype)


@register("Softmax", "LogSoftmax")
def _build_softmax(node: Node, ctx: BuildContext) -> Fn:
    log = node.op_type == "LogSoftmax"
    threads = ctx.threads
    legacy = ctx.opset < 13
    axis_attr = int(node.attrs.get("axis", 1 if legacy else -1))

    def fn(args: list) -> list:
        x = args[0]
        if x.dtype != F32:
            if x.dtype.kind != "f":
                raise OpNotSupported(f"{node.op_type} on {x.dtype}: expected a float type")
            return [_np_softmax(x, normalize_axis(axis_attr, x.ndim), legacy, log)]
        rank = x.ndim
        axis = normalize_axis(axis_attr, rank)
        if legacy:
            inner = math.prod(x.shape[axis:])
            return [_core.ops_softmax(x.reshape(-1, inner) if x.size else x, log, threads).reshape(x.shape)]
        if axis == rank - 1:
            return [_core.ops_softmax(x, log, threads)]
        y = _core.ops_softmax(_move_axis_last(x, axis, threads), log, threads)
        return [_core.ops_contiguous(np.moveaxis(y, -1, axis), threads)]

    return fn


@register("LayerNormalization")
def _build_layernorm(node: Node, ctx: BuildContext) -> Fn:
    axis_attr = int(node.attrs.get("axis", -1))
    eps = float(node.attrs.get("epsilon", 1e-5))
    threads = ctx.threads
    n_out = len(node.outputs)

    def fn(args: list) -> list:
        x, scale = args[0], args[1]
        bias = args[2] if len(args) > 2 else None
        axis = normalize_axis(axis_attr, x.ndim)
        norm_shape = x.shape[axis:]
        cols = math.prod(norm_shape)
        if x.dtype != F32:
            raise OpNotSupported(f"LayerNormalization on {x.dtype}: expected float32")
        if scale.shape != norm_shape:
            scale = np.broadcast_to(scale, norm_shape)
        if bias is not None and bias.shape != norm_shape:
            bias = np.broadcast_to(bias, norm_shape)
        y = _core.ops_layernorm(x, scale, bias, cols, eps, threads, ctx.pool.empty(x.shape))
        if n_out == 1:
            return [y]
        xs = x.reshape(-1, cols).astype(np.float64)
        mean = xs.mean(axis=1)
        inv = 1.0 / np.sqrt(xs.var(axis=1) + eps)
        stat_shape = x.shape[:axis] + (1,) * (x.ndim - axis)
        return [y, mean.astype(np.float32).reshape(stat_shape), inv.astype(np.float32).reshape(stat_shape)]

    return fn


def batchnorm_scale_shift(attrs: dict, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                          var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNormalization as y = x * scale + shift per channel."""
    eps = float(attrs.get("epsilon", 1e-5))
    scale = (gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps))
    shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
    return scale.astype(np.float32), shift.astype(np.float32)


@register("BatchNormalization")
def _build_batchnorm(node: Node, ctx: BuildContext) -> Fn:
    if int(node.attrs.get("training_mode", 0)) or len([o for o in node.outputs if o]) > 1:
        raise OpNotSupported("BatchNormalization training mode: only inference is supported")
    threads = ctx.threads
    consts = [ctx.const(n) for n in node.inputs[1:5]]
    pre = batchnorm_scale_shift(node.attrs, *consts) if all(c is not None for c in consts) else None
    if node.attrs.get("_in_layout") == "nchwc8" and pre is not None:   # passes.layout: x is [N, C/8, H, W, 8]
        blocks = -(-pre[0].size // 8)
        scale8, shift8 = (np.pad(v, (0, blocks * 8 - v.size)) for v in pre)
        return lambda args: [_core.ops_channel_affine_nchwc8(args[0], scale8, shift8, threads,
                                                             ctx.pool.empty(args[0].shape))]

    def fn(args: list) -> list:
        x = args[0]
        scale, shift = pre if pre is not None else batchnorm_scale_shift(node.attrs, *args[1:5])
        if x.ndim == 1:
            x = x.reshape(1, -1)
        return [_core.ops_channel_affine(x, scale, shift, threads, ctx.pool.empty(x.shape)).reshape(args[0].shape)]

    return fn
