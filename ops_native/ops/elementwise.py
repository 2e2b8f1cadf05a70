"""Elementwise ops: arithmetic, comparison, logic, Where, activations, Clip, Identity (and the internal _Affine)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ops_native import _core
from ops_native.ops.registry import (
    F32,
    BufferPool,
    BuildContext,
    Fn,
    Node,
    OpBuildError,
    OpNotSupported,
    is_f32,
    register,
)

_NP_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power,
              "Min": np.minimum, "Max": np.maximum}


def _np_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return np.trunc(np.true_divide(a, b)).astype(a.dtype)
    return np.divide(a, b).astype(a.dtype, copy=False)


def _binary_fn(op_type: str, threads: int, pool: BufferPool | None = None
               ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    code = _core.OPS_BINARY[op_type]
    empty = pool.empty if pool is not None else (lambda shape: np.empty(shape, np.float32))
    np_fn = _np_div if op_type == "Div" else _NP_BINARY[op_type]

    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if op_type == "Pow" and a.dtype == F32 and b.dtype != F32:
            b = b.astype(np.float32)
        if a.dtype == F32 and b.dtype == F32:
            return _core.ops_binary(code, a, b, threads, None, empty)
        res = np_fn(a, b)
        return np.asarray(res, dtype=a.dtype)

    return run


@register("Add", "Sub", "Mul", "Div", "Pow")
def _build_binary(node: Node, ctx: BuildContext) -> Fn:
    blocked = _blocked_channel_affine(node, ctx)
    if blocked is not None:
        return blocked
    run = _binary_fn(node.op_type, ctx.threads, ctx.pool)
    square = _pow_square(node, ctx)
    if square is not None:
        return square
    if node.attrs.get("_in_layout") == "nchwc8" and node.op_type in ("Add", "Mul"):
        return _blocked_broadcast_pixel(node.op_type, run, ctx)
    return lambda args: [run(args[0], args[1])]


def _pow_square(node: Node, ctx: BuildContext) -> Fn | None:
    """Pow(x, 2) with a constant scalar exponent as x * x (a multiply instead of the general power
    function; what the magnitude of a spectrum or a variance computes); None for any other node."""
    e = ctx.const(node.inputs[1]) if node.op_type == "Pow" else None
    if e is None or e.size != 1 or float(e.reshape(-1)[0]) != 2.0:
        return None
    mul = _binary_fn("Mul", ctx.threads, ctx.pool)
    general = _binary_fn("Pow", ctx.threads, ctx.pool)

    def fn(args: list) -> list:
        x = args[0]
        if x.dtype != F32 or x.ndim < e.ndim:   # other types, or an exponent that broadcasts x up
            return [general(x, args[1])]
        return [mul(x, x)]

    return fn


def _blocked_broadcast_pixel(op_type: str, run: Callable, ctx: BuildContext) -> Fn:
    """Add / Mul of two NCHWc8 tensors where one is a single pixel per channel (a squeeze-and-excitation
    scale [N, C/8, 1, 1, 8]): a scale-and-shift pass per image instead of the general broadcasting loop."""
    threads = ctx.threads
    filler: dict[int, np.ndarray] = {}

    def fn(args: list) -> list:
        a, b = args[0], args[1]
        if a.shape[2:4] == (1, 1) and b.shape[2:4] != (1, 1):
            a, b = b, a
        if a.ndim != 5 or b.ndim != 5 or b.shape[2:4] != (1, 1) or a.shape[2:4] == (1, 1) or \
                b.shape[0] not in (1, a.shape[0]) or b.shape[1] != a.shape[1]:
            return [run(args[0], args[1])]
        y = ctx.pool.empty(a.shape)
        fill = filler.get(b.shape[1])
        if fill is None:   # the other operand of the scale-and-shift: zeros for Mul, ones for Add
            fill = filler[b.shape[1]] = np.full(b.shape[1] * 8, 0.0 if op_type == "Mul" else 1.0, np.float32)
        if a.shape[0] == 1:
            v = b.reshape(-1)
            _core.ops_channel_affine_nchwc8(a, *((v, fill) if op_type == "Mul" else (fill, v)), threads, y)
            return [y]
        for n in range(a.shape[0]):
            v = b[n if b.shape[0] > 1 else 0].reshape(-1)
            _core.ops_channel_affine_nchwc8(a[n:n + 1], *((v, fill) if op_type == "Mul" else (fill, v)), threads,
                                            y[n:n + 1])
        return [y]

    return fn


def _blocked_channel_affine(node: Node, ctx: BuildContext) -> Fn | None:
    """Add / Sub / Mul of an NCHWc8 tensor and its per-channel constant (passes.layout lays the constant out
    as [1, C/8, 1, 1, 8]) as one scale-and-shift pass; None for any other node."""
    if node.attrs.get("_in_layout") != "nchwc8" or node.op_type not in ("Add", "Sub", "Mul"):
        return None
    k = next((k for k, i in enumerate(node.inputs[:2]) if ctx.const(i) is not None), None)
    if k is None:
        return None
    c = ctx.const(node.inputs[k]).reshape(-1).astype(np.float32)
    one, zero = np.ones_like(c), np.zeros_like(c)
    scale, shift = {"Mul": (c, zero), "Add": (one, c),
                    "Sub": (one, -c) if k == 1 else (-one, c)}[node.op_type]
    x_at, threads = 1 - k, ctx.threads
    return lambda args: [_core.ops_channel_affine_nchwc8(args[x_at], scale, shift, threads,
                                                         ctx.pool.empty(args[x_at].shape))]


@register("Min", "Max", "Sum", "Mean")
def _build_variadic(node: Node, ctx: BuildContext) -> Fn:
    base = {"Sum": "Add", "Mean": "Add"}.get(node.op_type, node.op_type)
    run = _binary_fn(base, ctx.threads, ctx.pool)
    div = _binary_fn("Div", ctx.threads, ctx.pool)
    mean = node.op_type == "Mean"

    def fn(args: list) -> list:
        acc = args[0]
        for x in args[1:]:
            acc = run(acc, x)
        if len(args) == 1:
            acc = acc.copy()
        if mean:
            acc = div(acc, np.asarray(len(args), dtype=acc.dtype))
        return [acc]

    return fn


_NP_COMPARE = {"Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
               "GreaterOrEqual": np.greater_equal}


@register("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
def _build_compare(node: Node, ctx: BuildContext) -> Fn:
    code = _core.OPS_COMPARE[node.op_type]
    np_fn = _NP_COMPARE[node.op_type]
    threads = ctx.threads

    def fn(args: list) -> list:
        a, b = args
        if is_f32(a, b):
            return [_core.ops_compare(code, a, b, threads)]
        return [np.asarray(np_fn(a, b))]

    return fn


@register("Not", "And", "Or", "Xor")
def _build_logical(node: Node, ctx: BuildContext) -> Fn:
    f = {"Not": np.logical_not, "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}[node.op_type]
    return lambda args: [np.asarray(f(*args))]


@register("Where")
def _build_where(node: Node, ctx: BuildContext) -> Fn:
    threads = ctx.threads

    def fn(args: list) -> list:
        c, x, y = args
        if is_f32(x, y):
            return [_core.ops_where(c, x, y, threads)]
        return [np.asarray(np.where(c, x, y), dtype=x.dtype)]

    return fn


_NP_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Neg": np.negative, "Abs": np.abs, "Relu": lambda x: np.maximum(x, 0).astype(x.dtype),
    "Floor": np.floor, "Ceil": np.ceil, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log,
    "Reciprocal": np.reciprocal, "Sign": np.sign,
}


def unary_params(node: Node) -> tuple[str, float, float]:
    """(kernel op, alpha, beta) of an activation node with attribute-only parameters."""
    op, a = node.op_type, node.attrs
    if op == "LeakyRelu":
        return "LeakyRelu", float(a.get("alpha", 0.01)), 0.0
    if op == "HardSigmoid":
        return "HardSigmoid", float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if op == "Elu":
        return "Elu", float(a.get("alpha", 1.0)), 0.0
    if op == "Gelu":
        approx = a.get("approximate", "none")
        approx = approx.decode() if isinstance(approx, bytes) else approx
        if approx not in ("none", "tanh"):
            raise OpBuildError(f"Gelu approximate={approx!r}: expected 'none' or 'tanh'")
        return ("GeluTanh" if approx == "tanh" else "Gelu"), 0.0, 0.0
    return op, 0.0, 0.0


@register("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Exp", "Log", "Sqrt",
          "Neg", "Abs", "Erf", "Reciprocal", "Floor", "Ceil", "Elu", "Softplus")
def _build_unary(node: Node, ctx: BuildContext) -> Fn:
    kop, alpha, beta = unary_params(node)
    code = _core.OPS_UNARY[kop]
    threads = ctx.threads
    np_fn = _NP_UNARY.get(node.op_type)
    empty = ctx.pool.empty

    def fn(args: list) -> list:
        x = args[0]
        if x.dtype == F32:
            return [_core.ops_unary(code, x, alpha, beta, empty(x.shape), threads)]
        if np_fn is None:
            raise OpNotSupported(f"{node.op_type} on {x.dtype}: expected float32")
        return [np.asarray(np_fn(x), dtype=x.dtype)]

    # float32 runs without a Python frame; fn handles the rest (and gives the same results)
    return _core.UnaryStep(code, alpha, beta, threads, ctx.pool, fn)


@register("Clip")
def _build_clip(node: Node, ctx: BuildContext) -> Fn:
    code = _core.OPS_UNARY["Clip"]
    threads = ctx.threads
    attr_min = node.attrs.get("min", -np.inf)
    attr_max = node.attrs.get("max", np.inf)

    def fn(args: list) -> list:
        x = args[0]
        lo = args[1] if len(args) > 1 and args[1] is not None else None
        hi = args[2] if len(args) > 2 and args[2] is not None else None
        if ctx.opset < 11:
            lo, hi = attr_min, attr_max
        if x.dtype == F32:
            lo_f = -np.inf if lo is None else float(np.asarray(lo).reshape(()))
            hi_f = np.inf if hi is None else float(np.asarray(hi).reshape(()))
            return [_core.ops_unary(code, x, lo_f, hi_f, ctx.pool.empty(x.shape), threads)]
        y = x
        if lo is not None:
            y = np.maximum(y, np.asarray(lo, dtype=x.dtype))
        if hi is not None:
            y = np.minimum(y, np.asarray(hi, dtype=x.dtype))
        return [np.array(y, dtype=x.dtype)]

    if ctx.opset < 11 or all(len(node.inputs) <= k or not node.inputs[k] or ctx.const(node.inputs[k]) is not None
                             for k in (1, 2)):
        # constant bounds (attributes, or constant inputs: the usual ReLU6 / hard clamp): a native step
        lo_c = attr_min if ctx.opset < 11 else _const_bound(node, ctx, 1, -np.inf)
        hi_c = attr_max if ctx.opset < 11 else _const_bound(node, ctx, 2, np.inf)
        if lo_c is not None and hi_c is not None:
            return _core.UnaryStep(code, lo_c, hi_c, threads, ctx.pool, fn)
    return fn


def _const_bound(node: Node, ctx: BuildContext, k: int, default: float) -> float | None:
    """Clip's bound input ``k`` as a float when it is absent or a one-value constant; None otherwise."""
    if len(node.inputs) <= k or not node.inputs[k]:
        return default
    v = ctx.const(node.inputs[k])
    if v is None or v.size != 1:
        return None
    return float(np.asarray(v, dtype=np.float64).reshape(()))


@register("Identity", "Dropout")
def _build_identity(node: Node, ctx: BuildContext) -> Fn:
    if node.op_type == "Dropout":
        if len(node.inputs) > 2 and node.inputs[2]:
            mode = ctx.const(node.inputs[2])
            if mode is None or bool(mode.reshape(-1)[0]):
                raise OpNotSupported("Dropout in training mode (random masks) is not supported")
        if len(node.outputs) > 1 and node.outputs[1]:
            return lambda args: [args[0], np.ones(args[0].shape, dtype=bool)]
    return lambda args: [args[0]]


@register("_Affine")
def _build_affine(node: Node, ctx: BuildContext) -> Fn:
    """Internal op of passes.fusions.fuse_affine: x * alpha + beta in one pass (inputs: x, the alpha and beta
    constants it came from, used when x is not float32 or the constants would broadcast x up)."""
    code = _core.OPS_UNARY["Affine"]
    alpha, beta = float(node.attrs["alpha"]), float(node.attrs["beta"])
    threads = ctx.threads

    def fn(args: list) -> list:
        x = args[0]
        if x.dtype != np.float32 or x.ndim < max(args[1].ndim, args[2].ndim):
            y = x * args[1] + args[2]
            return [np.asarray(y, dtype=x.dtype)]
        return [_core.ops_unary(code, x, alpha, beta, ctx.pool.empty(x.shape), threads)]

    consts = [ctx.const(node.inputs[k]) for k in (1, 2)]
    if all(c is not None and c.ndim == 0 for c in consts):
        # scalar constants (as fuse_affine makes them): a native step for float32
        return _core.UnaryStep(code, alpha, beta, threads, ctx.pool, fn)
    return fn
