"""Ops over the channel axis of [N, C, ...] tensors: LRN (a window of channels at each pixel), PRelu (a slope
per channel, or any slope that broadcasts to x), InstanceNormalization and GroupNormalization (statistics
per channel / per group of channels).

LRN and PRelu are C kernels with SIMD paths (src/ops_chanops.c, on_chanops.h); the two normalisations are
the layer-norm row kernel over [N * groups, rest] followed by the per-channel affine map of BatchNorm.
"""

from __future__ import annotations

import numpy as np

from ops_native import _core
from ops_native.ops.registry import (
    F32,
    BuildContext,
    Fn,
    Node,
    OpBuildError,
    OpNotSupported,
    register,
)


def _lrn_numpy(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """LRN for float types other than float32 (float16 / float64 graphs), in float64."""
    xs = x.astype(np.float64)
    sq = xs * xs
    c = x.shape[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    s = np.zeros_like(xs)
    for ch in range(c):
        s[:, ch] = sq[:, max(0, ch - lo):min(c, ch + hi + 1)].sum(axis=1)
    return (xs / (bias + alpha / size * s) ** beta).astype(x.dtype)


@register("LRN")
def _build_lrn(node: Node, ctx: BuildContext) -> Fn:
    size = int(node.attrs["size"])
    if size < 1:
        raise OpBuildError(f"LRN size {size}: expected >= 1")
    alpha = float(node.attrs.get("alpha", 1e-4))
    beta = float(node.attrs.get("beta", 0.75))
    bias = float(node.attrs.get("bias", 1.0))
    threads = ctx.threads
    empty = ctx.pool.empty

    def fn(args: list) -> list:
        x = args[0]
        if x.ndim < 3:
            raise OpBuildError(f"LRN input of rank {x.ndim}: expected [N, C, D1, ...]")
        if x.dtype == F32:
            return [_core.ops_lrn(x, size, alpha, beta, bias, threads, empty(x.shape))]
        if x.dtype.kind != "f":
            raise OpNotSupported(f"LRN on {x.dtype}: expected a float type")
        return [_lrn_numpy(x, size, alpha, beta, bias)]

    return fn


@register("PRelu")
def _build_prelu(node: Node, ctx: BuildContext) -> Fn:
    threads = ctx.threads
    empty = ctx.pool.empty

    def fn(args: list) -> list:
        x, slope = args
        if x.dtype == F32 and slope.dtype == F32:
            return [_core.ops_prelu(x, slope, threads, empty(x.shape))]
        if np.broadcast_shapes(x.shape, slope.shape) != x.shape:
            raise OpBuildError(f"PRelu slope {list(slope.shape)} does not broadcast to x {list(x.shape)}")
        return [np.where(x < 0, x * slope, x).astype(x.dtype)]

    return fn


def _group_norm(x: np.ndarray, groups: int, scale: np.ndarray, bias: np.ndarray, eps: float, threads: int,
                ctx: BuildContext) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) per (n, group), then y * scale[c] + bias[c] per channel."""
    n, c = x.shape[0], x.shape[1]
    if c % groups:
        raise OpBuildError(f"{c} channels do not split into {groups} groups")
    if x.dtype != F32:
        if x.dtype.kind != "f":
            raise OpNotSupported(f"normalisation on {x.dtype}: expected a float type")
        xs = x.astype(np.float64).reshape(n, groups, -1)
        y = (xs - xs.mean(axis=2, keepdims=True)) / np.sqrt(xs.var(axis=2, keepdims=True) + eps)
        shape = (1, c) + (1,) * (x.ndim - 2)
        return (y.reshape(x.shape) * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype)
    cols = x.size // (n * groups) if n * groups else 0
    if x.size == 0:
        return x.copy()
    ones = np.ones(cols, np.float32)
    y = _core.ops_layernorm(x, ones, None, cols, eps, threads, ctx.pool.empty(x.shape))
    inner = x.size // (n * c)
    return _core.ops_channel_affine(y.reshape(n, c, inner), scale, bias, threads,
                                    ctx.pool.empty((n, c, inner))).reshape(x.shape)


@register("InstanceNormalization")
def _build_instance_norm(node: Node, ctx: BuildContext) -> Fn:
    eps = float(node.attrs.get("epsilon", 1e-5))

    def fn(args: list) -> list:
        x, scale, bias = args
        if x.ndim < 3:
            raise OpBuildError(f"InstanceNormalization input of rank {x.ndim}: expected [N, C, D1, ...]")
        return [_group_norm(x, x.shape[1], scale.astype(np.float32, copy=False),
                            bias.astype(np.float32, copy=False), eps, ctx.threads, ctx)]

    return fn


@register("GroupNormalization")
def _build_group_norm(node: Node, ctx: BuildContext) -> Fn:
    eps = float(node.attrs.get("epsilon", 1e-5))
    groups = int(node.attrs["num_groups"])
    if groups < 1:
        raise OpBuildError(f"GroupNormalization num_groups {groups}: expected >= 1")
    if int(node.attrs.get("stash_type", 1)) != 1:
        raise OpNotSupported("GroupNormalization stash_type other than float32")
    per_group = ctx.opset < 21   # opset 18: scale and bias per group; 21: per channel

    def fn(args: list) -> list:
        x, scale, bias = args
        if x.ndim < 3:
            raise OpBuildError(f"GroupNormalization input of rank {x.ndim}: expected [N, C, D1, ...]")
        c = x.shape[1]
        if per_group and c % groups == 0:
            scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
        if scale.size != c or bias.size != c:
            raise OpBuildError(f"GroupNormalization scale/bias of {scale.size}/{bias.size} values for {c} channels")
        dt = F32 if x.dtype == F32 else np.float64
        return [_group_norm(x, groups, scale.astype(dt).reshape(-1), bias.astype(dt).reshape(-1), eps,
                            ctx.threads, ctx)]

    return fn

