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
    build,
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


def _moment_norm_plan(x: np.ndarray, axes: list[int], factor: float | None, shapes: list[np.ndarray],
                      params: list[np.ndarray | None]) -> tuple | None:
    """Whether the graph _MomentNorm replaced (passes.fusions.fuse_layernorm_moments) is a layer norm for this
    x: (first axis, end axis, scale, bias) with scale / bias over x.shape[first:end], else None."""
    if x.dtype != F32 or x.ndim == 0:
        return None
    ax = sorted(a + x.ndim if a < 0 else a for a in axes)
    if ax[0] < 0 or ax[-1] >= x.ndim or ax != list(range(ax[0], ax[-1] + 1)):
        return None
    a, b = ax[0], ax[-1] + 1
    block = x.shape[a:b]
    n = math.prod(block)
    if n == 0 or (factor is not None and abs(factor * n - 1.0) > 1e-6):
        return None
    kept = x.shape[:a] + (1,) * (b - a) + x.shape[b:]
    for s in shapes:   # Reshape / Expand targets: the keepdims shape, or (Expand) x's own
        if s.dtype.kind != "i" or s.ndim != 1 or tuple(int(v) for v in s) not in (kept, x.shape):
            return None
    out = []
    for p in params:
        if p is None:
            out.append(None)
            continue
        if p.ndim > x.ndim:
            return None
        full = (1,) * (x.ndim - p.ndim) + p.shape
        if any(full[i] != 1 for i in range(x.ndim) if not a <= i < b) or \
                any(full[i] not in (1, x.shape[i]) for i in range(a, b)):
            return None
        out.append(np.ascontiguousarray(np.broadcast_to(p.reshape(full[a:b]), block), dtype=np.float32).reshape(n))
    return a, b, out[0] if out[0] is not None else np.ones(n, np.float32), out[1]


@register("_MomentNorm")
def _build_moment_norm(node: Node, ctx: BuildContext) -> Fn:
    """A layer norm the graph wrote from its moments (see passes.fusions.fuse_layernorm_moments): one pass of
    the LayerNormalization kernel when the checks of _moment_norm_plan hold (over axes that are not the
    last ones, on a copy with them moved last), else the original nodes."""
    at = node.attrs
    eps, factor, axes = float(at["epsilon"]), at["factor"], list(at["axes"])
    params = [ctx.const(at["gamma"]) if at["gamma"] else None, ctx.const(at["beta"]) if at["beta"] else None]
    shape_idx = [node.inputs.index(s) for s in at["_shape_values"]]
    inner: list[Node] = at["_nodes"]
    fns = [build(n, ctx) for n in inner]
    consts, sources, threads = ctx.consts, list(node.inputs), ctx.threads
    plans: dict[tuple, tuple | None] = {}

    def original(args: list) -> list:
        env = dict(zip(sources, args))
        for n, f in zip(inner, fns):
            res = f([env[i] if i in env else consts.get(i) if i else None for i in n.inputs])
            env.update((o, v) for o, v in zip(n.outputs, res) if o)
        return [env[node.outputs[0]]]

    def fn(args: list) -> list:
        x = args[0]
        shapes = [args[i] for i in shape_idx]
        key = (x.shape, x.dtype) + tuple(tuple(s.tolist()) for s in shapes)
        if key not in plans:
            plans[key] = _moment_norm_plan(x, axes, factor, shapes, params)
        plan = plans[key]
        if plan is None:
            return original(args)
        a, b, scale, bias = plan
        n = scale.size
        if b == x.ndim:
            return [_core.ops_layernorm(x, scale, bias, n, eps, threads, ctx.pool.empty(x.shape))]
        # normalised axes inside: move them last, normalise rows, move them back
        outer, rest = math.prod(x.shape[:a]), math.prod(x.shape[b:])
        xt = _core.ops_contiguous(x.reshape(outer, n, rest).transpose(0, 2, 1), threads)
        yt = _core.ops_layernorm(xt, scale, bias, n, eps, threads, np.empty(xt.shape, np.float32))
        return [_core.ops_contiguous(yt.transpose(0, 2, 1), threads).reshape(x.shape)]

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
    """Inference BatchNormalization as y = x * scale + shift per channel (``_scale_shift``: a BatchNormalization
    the fusions combined with the per-channel Mul / Add after it, whose gamma and beta are that scale and shift)."""
    if attrs.get("_scale_shift"):
        return gamma.astype(np.float32), beta.astype(np.float32)
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
