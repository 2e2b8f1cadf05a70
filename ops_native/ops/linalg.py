"""Matrix products on the GEMM kernels: MatMul and Gemm, with their fused epilogues (bias, activation, alpha)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ops_native import _core
from ops_native.ops.registry import (
    F32,
    PARALLEL_MIN_FLOPS,
    BuildContext,
    Fn,
    Node,
    OpBuildError,
    OpNotSupported,
    is_f32,
    register,
    threads_for,
)

ACT_NAMES = {"Relu": "relu", "Clip": "clip", "LeakyRelu": "leaky_relu", "HardSwish": "hardswish",
             "Sigmoid": "sigmoid", "Gelu": "gelu"}   # Gelu: the erf form only (approximate="none")


def _dense_step(packed: Any, bias: np.ndarray | None, act: dict, alpha: float, threads: int,
                ctx: BuildContext, fallback: Fn, two_d: bool = False) -> Fn:
    """The native step for a product with packed constant weights; `fallback` handles what it does not.
    two_d (Gemm): only a 2-D A takes the native path (Gemm has no batched or 1-D form)."""
    return _core.DenseStep(packed, bias, act.get("act", "none"), act.get("act_alpha", 0.0),
                           act.get("act_beta", 0.0), alpha, threads, PARALLEL_MIN_FLOPS, ctx.pool, fallback,
                           two_d)


def act_kwargs(node: Node) -> dict:
    """The fused activation of a node (set by passes.fusions.fuse_activation) as kernel keyword arguments."""
    act = node.attrs.get("_act")
    if not act:
        return {}
    return {"act": act, "act_alpha": float(node.attrs.get("_act_alpha", 0.0)),
            "act_beta": float(node.attrs.get("_act_beta", 0.0))}


@register("MatMul")
def _build_matmul(node: Node, ctx: BuildContext) -> Fn:
    threads = ctx.threads
    b_const = ctx.const(node.inputs[1])
    bias_name = node.attrs.get("_bias")
    bias = None if bias_name is None else np.ascontiguousarray(ctx.const(bias_name), dtype=np.float32).reshape(-1)
    act = act_kwargs(node)
    if b_const is not None and b_const.dtype == F32 and b_const.ndim == 2:
        packed = _core.PackedB(np.ascontiguousarray(b_const))
        k, n = b_const.shape

        def fn_packed(args: list) -> list:
            a = args[0]
            if a.dtype != F32:
                raise OpNotSupported(f"MatMul on {a.dtype}: expected float32")
            if a.ndim == 1:
                y = _core.gemm(a.reshape(1, k), packed, bias, threads=threads, **act)
                return [y.reshape(n)]
            if a.shape[-1] != k:
                raise OpBuildError(f"MatMul: A {a.shape} and B {b_const.shape} do not agree")
            a2 = np.ascontiguousarray(a).reshape(-1, k)
            y = _core.gemm(a2, packed, bias, threads=threads_for(2.0 * a2.shape[0] * k * n, threads),
                           out=ctx.pool.empty((a2.shape[0], n)), **act)
            return [y.reshape(a.shape[:-1] + (n,))]

        return _dense_step(packed, bias, act, 1.0, threads, ctx, fn_packed)
    if bias is not None or act:
        raise OpBuildError("internal: fused MatMul needs a constant 2-D B")
    alpha = float(node.attrs.get("_alpha", 1.0))   # passes.fusions.fuse_matmul_scale

    def fn(args: list) -> list:
        a, b = args
        if is_f32(a, b):
            y = _core.matmul(a, b, threads=threads_for(2.0 * a.size * (b.shape[-1] if b.ndim > 1 else 1),
                                                        threads), alpha=alpha)
            return [y.reshape(()) if a.ndim == 1 and b.ndim == 1 else y]
        if alpha != 1.0:
            raise OpNotSupported(f"MatMul scaled by {alpha} on {a.dtype} x {b.dtype}: expected float32")
        return [np.matmul(a, b)]

    return fn


@register("Gemm")
def _build_gemm(node: Node, ctx: BuildContext) -> Fn:
    at = node.attrs
    trans_a, trans_b = bool(at.get("transA", 0)), bool(at.get("transB", 0))
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    threads = ctx.threads
    act = act_kwargs(node)
    b_const = ctx.const(node.inputs[1])
    c_const = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    has_c = len(node.inputs) > 2 and bool(node.inputs[2])
    packed = _core.PackedB(np.ascontiguousarray(b_const, dtype=np.float32), trans_b) \
        if b_const is not None and b_const.dtype == F32 else None
    n_out = None if b_const is None else (b_const.shape[0] if trans_b else b_const.shape[1])
    bias = None
    if c_const is not None and n_out is not None and c_const.size in (1, n_out) and \
            (c_const.ndim <= 1 or (c_const.ndim == 2 and c_const.shape[0] == 1)):
        bias = np.ascontiguousarray(np.broadcast_to(c_const.reshape(-1) * beta, (n_out,)), dtype=np.float32)
    if act and has_c and bias is None:
        raise OpBuildError("internal: fused Gemm needs a per-column bias")

    def fn(args: list) -> list:
        a = args[0]
        b = packed if packed is not None else np.ascontiguousarray(args[1], dtype=np.float32)
        c = args[2] if len(args) > 2 else None
        y = _core.gemm(np.ascontiguousarray(a, dtype=np.float32), b, bias, trans_a=trans_a,
                       trans_b=trans_b if packed is None else False, alpha=alpha, threads=threads, **act)
        if c is not None and bias is None and beta != 0.0:
            cb = c if beta == 1.0 else _core.ops_binary(_core.OPS_BINARY["Mul"], c, np.float32(beta), threads)
            y = _core.ops_binary(_core.OPS_BINARY["Add"], y, cb, threads)
        return [y]

    if packed is not None and not trans_a and (not has_c or bias is not None):
        return _dense_step(packed, bias, act, alpha, threads, ctx, fn, two_d=True)
    return fn
