"""The op registry of the ops_native executor: ONNX op type -> implementation.

Each op has a *builder* ``build(node, ctx) -> fn``. The builder runs once at load time: it parses the
attributes, checks what it can, and pre-binds constant inputs (weights are packed here, once). The
returned ``fn(args: list) -> list`` runs the node; ``args`` holds one value per node input (None for an
absent optional input). float32 compute goes to the C kernels of ``ops_native._core``; int64 / bool
tensors (shape subgraphs) use numpy.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ops_native import _core

Fn = Callable[[list], list]

F32 = np.dtype(np.float32)


class OpBuildError(ValueError):
    """A node cannot be built: bad or unsupported attribute / input combination."""


class OpNotSupported(OpBuildError):
    """The op exists in the registry, but this variant of it (attribute, rank, dtype) is not supported."""


@dataclass
class Node:
    """One graph node in the executor's own form (after fusions)."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""


MAX_TENSOR_BYTES = 4 << 30  # no single tensor may need more: a damaged model or feed is refused, not OOM-killed


def check_alloc(shape: Any, dtype: Any, what: str) -> tuple:
    """shape as a tuple of ints, or OpBuildError if it is negative or the tensor would exceed MAX_TENSOR_BYTES."""
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise OpBuildError(f"{what}: negative dimension in shape {list(dims)}")
    nbytes = math.prod(dims) * np.dtype(dtype).itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise OpBuildError(f"{what}: shape {list(dims)} needs {nbytes / (1 << 30):.1f} GiB, more than the "
                           f"{MAX_TENSOR_BYTES >> 30} GiB per-tensor limit")
    return dims


class BufferPool(_core.BufferPool):
    """The executor's buffer pool (ops_native/pool.pxi, in Cython so that native steps and the run loop
    take and return buffers with C calls), plus give() for Python callers."""

    def give(self, arr: Any) -> None:
        """Take back arr's buffer if it came from this pool and nothing else still uses it."""
        # arr: the caller's variable + this argument + getrefcount's argument. Each link of the view chain
        # arr -> base -> ... -> pooled buffer: its child's .base + `node` + getrefcount's argument.
        if type(arr) is not np.ndarray or sys.getrefcount(arr) > 3:
            return
        node = arr.base
        while node is not None:
            if sys.getrefcount(node) > 3:
                return
            if type(node) is _core._PoolBuffer:
                self._recycle(node)
                return
            node = getattr(node, "base", None)


def _new_pool() -> BufferPool:
    return BufferPool(MAX_TENSOR_BYTES, check_alloc)


@dataclass
class BuildContext:
    """What a builder may know at load time."""

    consts: dict[str, np.ndarray]
    opset: int
    threads: int
    pool: BufferPool = field(default_factory=_new_pool)

    def const(self, name: str) -> np.ndarray | None:
        """The constant value of input ``name`` (None if it is computed at run time or absent)."""
        if not name:
            return None
        return self.consts.get(name)


REGISTRY: dict[str, Callable[[Node, BuildContext], Fn]] = {}


def register(*op_types: str) -> Callable:
    """Decorator: register a builder for the given op types."""

    def deco(fn: Callable[[Node, BuildContext], Fn]) -> Callable[[Node, BuildContext], Fn]:
        for op in op_types:
            REGISTRY[op] = fn
        return fn

    return deco


def supported_ops() -> list[str]:
    """The ONNX op types (default domain) the executor runs."""
    return sorted(REGISTRY)


_NATIVE_DTYPES = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                         np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)}


def is_native_dtype(dtype: np.dtype) -> bool:
    """True for the element types the executor handles (numpy's own; not float8/int4/bfloat16)."""
    return np.dtype(dtype) in _NATIVE_DTYPES


def _is_f32(*arrays: Any) -> bool:
    return all(isinstance(a, np.ndarray) and a.dtype == F32 for a in arrays)


def _axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1):
        raise OpBuildError(f"{what} {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


# ---------------------------------------------------------------------------------------------------
# elementwise
# ---------------------------------------------------------------------------------------------------
_NP_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power,
              "Min": np.minimum, "Max": np.maximum}


def _np_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return np.trunc(np.true_divide(a, b)).astype(a.dtype)
    return np.divide(a, b).astype(a.dtype, copy=False)


PARALLEL_MIN_FLOPS = 1_000_000   # below this (~10 us of work) a split costs more than it saves


def _threads_for(flops: float, threads: int) -> int:
    """Threads worth using for one call: small kernels run inline on the calling thread."""
    return threads if flops >= PARALLEL_MIN_FLOPS else 1


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
    run = _binary_fn(node.op_type, ctx.threads, ctx.pool)
    return lambda args: [run(args[0], args[1])]


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
        if _is_f32(a, b):
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
        if _is_f32(x, y):
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

    return fn


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

    return fn


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


# ---------------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------------
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
            return [_np_softmax(x, _axis(axis_attr, x.ndim), legacy, log)]
        rank = x.ndim
        axis = _axis(axis_attr, rank)
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
        axis = _axis(axis_attr, x.ndim)
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

    def fn(args: list) -> list:
        x = args[0]
        scale, shift = pre if pre is not None else batchnorm_scale_shift(node.attrs, *args[1:5])
        if x.ndim == 1:
            x = x.reshape(1, -1)
        return [_core.ops_channel_affine(x, scale, shift, threads, ctx.pool.empty(x.shape)).reshape(args[0].shape)]

    return fn


# ---------------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------------
def _auto_pad(attrs: dict) -> str:
    p = attrs.get("auto_pad", "NOTSET")
    return p.decode() if isinstance(p, bytes) else p


def resolve_pads(attrs: dict, in_sizes: tuple, kernel: tuple, strides: tuple, dilations: tuple,
                 ceil_mode: bool = False) -> tuple[list[int], list[int]]:
    """(pads [begin..., end...], output sizes) for pooling / convolution per ONNX auto_pad rules."""
    nd = len(in_sizes)
    auto = _auto_pad(attrs)
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    if len(pads) != 2 * nd:
        raise OpBuildError(f"pads has {len(pads)} values: expected {2 * nd}")
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-i // s) for i, s in zip(in_sizes, strides)]
        for i in range(nd):
            total = max(0, (out[i] - 1) * strides[i] + eff[i] - in_sizes[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto == "SAME_UPPER" else (big, small)
        return pads, out
    if auto == "VALID":
        pads = [0] * (2 * nd)
        return pads, [(i - e) // s + 1 for i, e, s in zip(in_sizes, eff, strides)]
    if auto != "NOTSET":
        raise OpBuildError(f"auto_pad={auto!r}: expected NOTSET, SAME_UPPER, SAME_LOWER or VALID")
    out = []
    for i in range(nd):
        span = in_sizes[i] + pads[i] + pads[i + nd] - eff[i]
        if ceil_mode:
            o = -(-span // strides[i]) + 1
            if (o - 1) * strides[i] >= in_sizes[i] + pads[i]:
                o -= 1
        else:
            o = span // strides[i] + 1
        out.append(o)
    return pads, out


def pool_nd_numpy(x: np.ndarray, is_max: bool, kernel: tuple, strides: tuple, dilations: tuple, pads: list,
                  out: list, count_include_pad: bool) -> np.ndarray:
    """N-D pooling in numpy (slow path for 3-D and higher): one strided slice per kernel offset."""
    nd = len(kernel)
    need = [(out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(nd)]
    tail = [max(need[i] - x.shape[2 + i] - pads[i], 0) for i in range(nd)]  # padding + ceil_mode overhang
    width = [(0, 0), (0, 0)] + [(pads[i], tail[i]) for i in range(nd)]
    fill = -np.inf if is_max else 0.0
    xp = np.pad(x.astype(np.float64), width, constant_values=fill)
    valid = np.pad(np.ones(x.shape[2:]), width[2:])
    inside = np.zeros(valid.shape)  # the declared padding counts for count_include_pad, the overhang never
    inside[tuple(slice(0, pads[i] + x.shape[2 + i] + pads[i + nd]) for i in range(nd))] = 1
    acc = np.full(x.shape[:2] + tuple(out), fill)
    cnt_valid = np.zeros(tuple(out))
    cnt_pad = np.zeros(tuple(out))
    for offs in np.ndindex(*kernel):
        sl = tuple(slice(o * d, o * d + (n - 1) * st + 1, st) for o, d, n, st in zip(offs, dilations, out, strides))
        win = xp[(slice(None), slice(None)) + sl]
        acc = np.maximum(acc, win) if is_max else acc + win
        cnt_valid += valid[sl]
        cnt_pad += inside[sl]
    if is_max:
        return acc.astype(x.dtype)
    cnt = cnt_pad if count_include_pad else cnt_valid
    return (acc / np.maximum(cnt, 1)).astype(x.dtype)


@register("MaxPool", "AveragePool")
def _build_pool(node: Node, ctx: BuildContext) -> Fn:
    is_max = node.op_type == "MaxPool"
    if len([o for o in node.outputs if o]) > 1:
        raise OpNotSupported("MaxPool Indices output is not supported")
    a = node.attrs
    kernel = tuple(int(k) for k in a["kernel_shape"])
    nd = len(kernel)
    strides = tuple(int(s) for s in a.get("strides", [1] * nd))
    dilations = tuple(int(d) for d in a.get("dilations", [1] * nd))
    ceil_mode = bool(a.get("ceil_mode", 0))
    cip = bool(a.get("count_include_pad", 0))
    threads = ctx.threads

    def fn(args: list) -> list:
        x = args[0]
        if x.dtype != F32:
            if is_max and x.dtype.kind in "iu" and x.dtype.itemsize <= 2:  # exact in float32
                return [fn([x.astype(np.float32)])[0].astype(x.dtype)]
            raise OpNotSupported(f"{node.op_type} on {x.dtype}: expected float32")
        if x.ndim != nd + 2:
            raise OpBuildError(f"input rank {x.ndim}: expected {nd + 2}")
        pads, out = resolve_pads(a, x.shape[2:], kernel, strides, dilations, ceil_mode)
        if nd > 2:  # 3-D pooling: numpy slow path (rare in the models we serve)
            check_alloc(x.shape[:2] + tuple(out), x.dtype, node.op_type)
            return [pool_nd_numpy(x, is_max, kernel, strides, dilations, pads, out, cip)]
        if nd == 1:
            y = _core.ops_pool2d(x[:, :, None, :], is_max, (1, kernel[0]), (1, strides[0]), (1, dilations[0]),
                                 (0, pads[0], 0, pads[1]), (1, out[0]), cip, threads)
            return [y.reshape(x.shape[0], x.shape[1], out[0])]
        return [_core.ops_pool2d(x, is_max, kernel, strides, dilations, (pads[0], pads[1], pads[2], pads[3]),
                                 tuple(out), cip, threads, ctx.pool.empty((x.shape[0], x.shape[1], out[0], out[1])))]

    return fn


@register("GlobalAveragePool", "GlobalMaxPool")
def _build_global_pool(node: Node, ctx: BuildContext) -> Fn:
    is_max = node.op_type == "GlobalMaxPool"
    threads = ctx.threads
    return lambda args: [_core.ops_global_pool(args[0], is_max, threads)]


# ---------------------------------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------------------------------
_NP_REDUCE = {"ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max, "ReduceMin": np.min,
              "ReduceProd": np.prod}
_AXES_AS_INPUT_FROM = {"ReduceSum": 13}


@register("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare")
def _build_reduce(node: Node, ctx: BuildContext) -> Fn:
    op = node.op_type
    code = _core.OPS_REDUCE[op]
    keepdims = bool(node.attrs.get("keepdims", 1))
    noop_empty = bool(node.attrs.get("noop_with_empty_axes", 0))
    axes_input = ctx.opset >= _AXES_AS_INPUT_FROM.get(op, 18)
    attr_axes = node.attrs.get("axes")
    threads = ctx.threads

    def fn(args: list) -> list:
        x = args[0]
        if axes_input:
            ax = args[1] if len(args) > 1 and args[1] is not None else None
            axes = None if ax is None or ax.size == 0 else [int(v) for v in ax.reshape(-1)]
        else:
            axes = None if attr_axes is None else list(attr_axes)
        if axes is None:
            if noop_empty:
                return [x]
            axes = list(range(x.ndim))
        axes = sorted({_axis(v, x.ndim) for v in axes})
        out_keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        out_shape = out_keep if keepdims else tuple(d for i, d in enumerate(x.shape) if i not in axes)
        if any(x.shape[i] == 0 for i in axes) and op in ("ReduceMax", "ReduceMin"):
            if x.dtype == np.bool_:
                ident = op == "ReduceMin"
            elif x.dtype.kind == "f":
                ident = -np.inf if op == "ReduceMax" else np.inf
            else:
                info = np.iinfo(x.dtype)
                ident = info.min if op == "ReduceMax" else info.max
            return [np.full(out_shape, ident, dtype=x.dtype)]
        if x.dtype != F32 or x.size == 0:
            if op == "ReduceSumSquare":
                y = np.sum(np.square(x), axis=tuple(axes), keepdims=True)
            else:
                y = _NP_REDUCE[op](x, axis=tuple(axes), keepdims=True)
            return [np.asarray(y, dtype=x.dtype).reshape(out_shape)]
        # consecutive axes reduce in one pass over an [outer, r, inner] view; others one axis at a time
        y = x
        groups: list[list[int]] = []
        for ax_ in axes:
            if groups and groups[-1][-1] == ax_ - 1:
                groups[-1].append(ax_)
            else:
                groups.append([ax_])
        for gi, grp in enumerate(reversed(groups)):
            shp = y.shape
            outer = math.prod(shp[:grp[0]])
            r = math.prod(shp[grp[0]:grp[-1] + 1])
            inner = math.prod(shp[grp[-1] + 1:])
            gop = code
            if len(groups) > 1 and gi > 0:  # later passes combine partial results
                gop = {"ReduceSumSquare": _core.OPS_REDUCE["ReduceSum"]}.get(op, code)
            new_shape = shp[:grp[0]] + (1,) * len(grp) + shp[grp[-1] + 1:]
            y = _core.ops_reduce(gop, y, outer, r, inner, threads).reshape(new_shape)
        return [y.reshape(out_shape)]

    return fn


# ---------------------------------------------------------------------------------------------------
# resize
# ---------------------------------------------------------------------------------------------------
def _attr_str(attrs: dict, key: str, default: str) -> str:
    v = attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


def resize_source_coords(mode: str, out_len: int, in_len: int, scale: float) -> np.ndarray:
    """Fractional input coordinate of each output index per ONNX coordinate_transformation_mode."""
    x = np.arange(out_len, dtype=np.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else np.zeros_like(x)
    if mode == "align_corners":  # ONNX uses the unrounded resized length in_len * scale
        resized = in_len * scale
        return x * (in_len - 1) / (resized - 1) if out_len > 1 and resized != 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "half_pixel_symmetric":
        adj = out_len / (scale * in_len)
        center = in_len / 2
        return center * (1 - adj) + (x + 0.5) / scale - 0.5
    raise OpNotSupported(f"Resize coordinate_transformation_mode={mode!r} is not supported")


def _nearest_index(coords: np.ndarray, mode: str, in_len: int) -> np.ndarray:
    if mode == "round_prefer_floor":
        idx = np.where(coords - np.floor(coords) == 0.5, np.floor(coords), np.round(coords))
    elif mode == "round_prefer_ceil":
        idx = np.where(coords - np.floor(coords) == 0.5, np.ceil(coords), np.round(coords))
    elif mode == "floor":
        idx = np.floor(coords)
    elif mode == "ceil":
        idx = np.ceil(coords)
    else:
        raise OpNotSupported(f"Resize nearest_mode={mode!r} is not supported")
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


def _linear_index(coords: np.ndarray, in_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = np.clip(coords, 0, in_len - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_len - 1)
    return i0, i1, (c - i0).astype(np.float32)


def _cubic_taps(coords: np.ndarray, in_len: int, a: float, exclude_outside: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indices [out, 4], weights [out, 4]) of the ONNX cubic kernel with coefficient a (edge-clamped taps)."""
    x0 = np.floor(coords)
    t = coords - x0
    idx = x0[:, None].astype(np.int64) + np.arange(-1, 3)[None, :]
    d = np.abs(np.stack([t + 1, t, 1 - t, 2 - t], axis=1))
    w = np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a)
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_len), 0.0, w)
        w = w / w.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, in_len - 1), w


@register("Resize", "Upsample")
def _build_resize(node: Node, ctx: BuildContext) -> Fn:
    a = node.attrs
    mode = _attr_str(a, "mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear", "cubic"):
        raise OpNotSupported(f"Resize mode={mode!r}: expected nearest, linear or cubic")
    cubic_a = float(a.get("cubic_coeff_a", -0.75))
    exclude_outside = bool(int(a.get("exclude_outside", 0)))
    legacy = node.op_type == "Upsample" or ctx.opset < 11
    coord = _attr_str(a, "coordinate_transformation_mode", "asymmetric" if legacy else "half_pixel")
    nearest = _attr_str(a, "nearest_mode", "floor" if legacy else "round_prefer_floor")
    if int(a.get("antialias", 0)):
        raise OpNotSupported("Resize antialias=1 is not supported")
    if coord == "tf_crop_and_resize":
        raise OpNotSupported("Resize tf_crop_and_resize is not supported")
    policy = _attr_str(a, "keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise OpBuildError(f"Resize keep_aspect_ratio_policy={policy!r}")
    attr_axes = a.get("axes")
    threads = ctx.threads

    def fn(args: list) -> list:
        x = args[0]
        if legacy:
            scales = args[1] if len(args) > 1 else np.asarray(a.get("scales"), dtype=np.float32)
            sizes = None
        else:
            scales = args[2] if len(args) > 2 and args[2] is not None and args[2].size else None
            sizes = args[3] if len(args) > 3 and args[3] is not None and args[3].size else None
        axes = list(range(x.ndim)) if attr_axes is None else [_axis(int(v), x.ndim) for v in attr_axes]
        given = sizes if sizes is not None else scales
        if given is None:
            raise OpBuildError("Resize needs scales or sizes")
        if given.size != len(axes):
            raise OpBuildError(f"Resize scales/sizes have {given.size} values: expected {len(axes)}")
        out, sc = list(x.shape), [1.0] * x.ndim
        if sizes is not None:
            want = [int(v) for v in sizes.reshape(-1)]
            if policy != "stretch":
                ratios = [w / x.shape[ax] for w, ax in zip(want, axes)]
                r = min(ratios) if policy == "not_larger" else max(ratios)
                for ax in axes:
                    sc[ax], out[ax] = r, int(math.floor(r * x.shape[ax] + 0.5))
            else:
                for w, ax in zip(want, axes):
                    out[ax], sc[ax] = w, w / x.shape[ax]
        else:
            for v, ax in zip(scales.reshape(-1), axes):
                sc[ax] = float(v)
                out[ax] = int(math.floor(x.shape[ax] * sc[ax]))
        if x.dtype != F32:
            raise OpNotSupported(f"Resize on {x.dtype}: expected float32")
        check_alloc(out, x.dtype, "Resize")
        maps = []
        for ax in range(x.ndim):
            if out[ax] == x.shape[ax] and sc[ax] == 1.0:
                maps.append(None)
                continue
            coords = resize_source_coords(coord, out[ax], x.shape[ax], sc[ax])
            if mode == "nearest":
                maps.append(_nearest_index(coords, nearest, x.shape[ax]))
            elif mode == "cubic":
                maps.append(_cubic_taps(coords, x.shape[ax], cubic_a, exclude_outside))
            else:
                maps.append(_linear_index(coords, x.shape[ax]))
        resized = [i for i, m in enumerate(maps) if m is not None]
        if mode != "cubic" and x.ndim >= 2 and all(i >= x.ndim - 2 for i in resized):
            h, w = x.shape[-2], x.shape[-1]
            my, mx = maps[-2], maps[-1]
            if mode == "nearest":
                iy = np.arange(h) if my is None else my
                ix = np.arange(w) if mx is None else mx
                return [_core.ops_resize_nearest2d(x, iy, ix, threads,
                                                   ctx.pool.empty(x.shape[:-2] + (len(iy), len(ix))))]
            ident_y = (np.arange(h), np.arange(h), np.zeros(h, np.float32))
            ident_x = (np.arange(w), np.arange(w), np.zeros(w, np.float32))
            y0, y1, wy = ident_y if my is None else my
            x0, x1, wx = ident_x if mx is None else mx
            return [_core.ops_resize_linear2d(x, y0, y1, wy, x0, x1, wx, threads,
                                              ctx.pool.empty(x.shape[:-2] + (len(y0), len(x0))))]
        y = x.astype(np.float64)
        for ax in resized:  # separable numpy path for resizes of other axes
            m = maps[ax]
            if mode == "nearest":
                y = np.take(y, m, axis=ax)
            elif mode == "cubic":  # numpy slow path: 4 taps per output index
                idx, w = m
                shape = [1] * y.ndim
                shape[ax] = -1
                y = sum(np.take(y, idx[:, k], axis=ax) * w[:, k].reshape(shape) for k in range(4))
            else:
                i0, i1, w = m
                shape = [1] * y.ndim
                shape[ax] = -1
                w = w.astype(np.float64).reshape(shape)
                y = np.take(y, i0, axis=ax) * (1 - w) + np.take(y, i1, axis=ax) * w
        return [y.astype(np.float32)]

    return fn


# ---------------------------------------------------------------------------------------------------
# data movement and metadata
# ---------------------------------------------------------------------------------------------------
@register("Transpose")
def _build_transpose(node: Node, ctx: BuildContext) -> Fn:
    perm = node.attrs.get("perm")
    threads = ctx.threads
    if node.attrs.get("_view"):   # only MatMuls read it, and they take strided operands (graph.py)
        return lambda args: [args[0].transpose(perm)]

    def fn(args: list) -> list:
        x = args[0]
        p = list(reversed(range(x.ndim))) if perm is None else list(perm)
        view = x.transpose(p)
        return [_core.ops_copy(view, ctx.pool.empty(view.shape, x.dtype), threads)]

    return fn


@register("Concat")
def _build_concat(node: Node, ctx: BuildContext) -> Fn:
    axis_attr = int(node.attrs["axis"])
    threads = ctx.threads

    def fn(args: list) -> list:
        arrays = [a for a in args if a is not None]
        axis = _axis(axis_attr, arrays[0].ndim)
        shape = list(arrays[0].shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
        return [_core.ops_concat(arrays, axis, threads, ctx.pool.empty(tuple(shape), arrays[0].dtype))]

    return fn


@register("Split")
def _build_split(node: Node, ctx: BuildContext) -> Fn:
    axis_attr = int(node.attrs.get("axis", 0))
    attr_split = node.attrs.get("split")
    num_outputs = node.attrs.get("num_outputs")
    n_out = len(node.outputs)
    threads = ctx.threads

    def fn(args: list) -> list:
        x = args[0]
        axis = _axis(axis_attr, x.ndim)
        dim = x.shape[axis]
        split = args[1] if len(args) > 1 and args[1] is not None else attr_split
        if split is None:
            n = int(num_outputs) if num_outputs is not None else n_out
            chunk = -(-dim // n)
            split = [min(chunk, dim - i * chunk) for i in range(n)]
        split = [int(s) for s in np.asarray(split).reshape(-1)]
        if sum(split) != dim:
            raise OpBuildError(f"split sizes {split} do not add up to dim {dim}")
        outs, start = [], 0
        for s in split:
            sl = [slice(None)] * x.ndim
            sl[axis] = slice(start, start + s)
            outs.append(_core.ops_contiguous(x[tuple(sl)], threads))
            start += s
        return outs

    return fn


@register("Slice")
def _build_slice(node: Node, ctx: BuildContext) -> Fn:
    legacy = ctx.opset < 10
    threads = ctx.threads

    def fn(args: list) -> list:
        x = args[0]
        if legacy:
            starts, ends = node.attrs["starts"], node.attrs["ends"]
            axes, steps = node.attrs.get("axes"), None
        else:
            starts, ends = args[1], args[2]
            axes = args[3] if len(args) > 3 and args[3] is not None else None
            steps = args[4] if len(args) > 4 and args[4] is not None else None
        starts = [int(v) for v in np.asarray(starts).reshape(-1)]
        ends = [int(v) for v in np.asarray(ends).reshape(-1)]
        axes = list(range(len(starts))) if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]
        steps = [1] * len(starts) if steps is None else [int(v) for v in np.asarray(steps).reshape(-1)]
        sl = [slice(None)] * x.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            if st == 0:
                raise OpBuildError("Slice step 0")
            ax = _axis(ax, x.ndim)
            dim = x.shape[ax]
            # clamp like ONNX (Python slicing treats huge negatives differently for negative steps)
            s = max(-dim - 1, min(s, dim))
            e = max(-dim - 1, min(e, dim))
            if st < 0 and e < -dim:
                e = None
            sl[ax] = slice(s, e, st)
        return [_core.ops_contiguous(x[tuple(sl)], threads)]

    return fn


@register("Gather")
def _build_gather(node: Node, ctx: BuildContext) -> Fn:
    axis_attr = int(node.attrs.get("axis", 0))
    threads = ctx.threads

    def fn(args: list) -> list:
        x, idx = args
        return [_core.ops_gather(x, idx, _axis(axis_attr, x.ndim), threads)]

    return fn


@register("Pad")
def _build_pad(node: Node, ctx: BuildContext) -> Fn:
    mode = _attr_str(node.attrs, "mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise OpBuildError(f"Pad mode={mode!r}: expected constant, reflect, edge or wrap")
    legacy = ctx.opset < 11
    threads = ctx.threads

    def fn(args: list) -> list:
        x = args[0]
        if legacy:
            pads = list(node.attrs["pads"])
            value = float(node.attrs.get("value", 0.0))
            axes = None
        else:
            pads = [int(v) for v in args[1].reshape(-1)]
            cv = args[2] if len(args) > 2 and args[2] is not None and args[2].size else None
            value = 0 if cv is None else cv.reshape(-1)[0]
            axes = args[3] if len(args) > 3 and args[3] is not None else None
        nd = x.ndim
        if axes is not None:
            ax = [_axis(int(v), nd) for v in axes.reshape(-1)]
            full = [0] * (2 * nd)
            for i, a_ in enumerate(ax):
                full[a_], full[a_ + nd] = pads[i], pads[i + len(ax)]
            pads = full
        if len(pads) != 2 * nd:
            raise OpBuildError(f"Pad: {len(pads)} pads for rank {nd}: expected {2 * nd}")
        if mode != "constant":
            check_alloc([x.shape[i] + pads[i] + pads[i + nd] for i in range(nd)], x.dtype, "Pad")
            width = [(pads[i], pads[i + nd]) for i in range(nd)]
            np_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode]
            return [np.pad(x, width, mode=np_mode)]
        out_shape = check_alloc([x.shape[i] + pads[i] + pads[i + nd] for i in range(nd)], x.dtype, "Pad")
        y = np.full(out_shape, value, dtype=x.dtype)
        src = tuple(slice(max(0, -pads[i]), x.shape[i] - max(0, -pads[i + nd])) for i in range(nd))
        dst = tuple(slice(max(0, pads[i]), max(0, pads[i]) + max(0, x.shape[i] - max(0, -pads[i])
                                                                   - max(0, -pads[i + nd]))) for i in range(nd))
        _core.ops_copy(x[src], y[dst], threads)
        return [y]

    return fn


@register("Expand")
def _build_expand(node: Node, ctx: BuildContext) -> Fn:
    threads = ctx.threads

    def fn(args: list) -> list:
        x, shape = args
        out_shape = np.broadcast_shapes(x.shape, tuple(int(v) for v in shape.reshape(-1)))
        y = np.empty(check_alloc(out_shape, x.dtype, "Expand"), dtype=x.dtype)
        _core.ops_copy(np.broadcast_to(x, out_shape), y, threads)
        return [y]

    return fn


@register("Tile")
def _build_tile(node: Node, ctx: BuildContext) -> Fn:
    def fn(args: list) -> list:
        x, reps = args[0], [int(v) for v in args[1].reshape(-1)]
        if len(reps) != x.ndim or any(r < 0 for r in reps):
            raise OpBuildError(f"Tile repeats {reps}: expected {x.ndim} non-negative values")
        check_alloc([d * r for d, r in zip(x.shape, reps)], x.dtype, "Tile")
        return [np.tile(x, reps)]

    return fn


@register("Reshape")
def _build_reshape(node: Node, ctx: BuildContext) -> Fn:
    allowzero = int(node.attrs.get("allowzero", 0))
    legacy_shape = node.attrs.get("shape")
    const_shape = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
    if const_shape is not None and (allowzero or 0 not in const_shape.reshape(-1).tolist()):
        # the usual exported Reshape: a constant target with no "copy this dimension" zeros
        target = tuple(int(v) for v in const_shape.reshape(-1))
        return lambda args: [args[0].reshape(target)]
    if const_shape is not None:
        target_list = [int(v) for v in const_shape.reshape(-1)]
        copied = [i for i, v in enumerate(target_list) if v == 0]

        def fn_const(args: list) -> list:
            x = args[0]
            shape = list(target_list)
            for i in copied:
                if i >= x.ndim:
                    raise ValueError(f"Reshape: shape[{i}] = 0 copies a dimension input of rank {x.ndim} lacks")
                shape[i] = x.shape[i]
            return [x.reshape(shape)]

        return fn_const

    def fn(args: list) -> list:
        x = args[0]
        shape = [int(v) for v in (args[1].reshape(-1) if len(args) > 1 else legacy_shape)]
        if not allowzero:
            shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
        return [x.reshape(shape)]

    return fn


@register("Flatten")
def _build_flatten(node: Node, ctx: BuildContext) -> Fn:
    axis_attr = int(node.attrs.get("axis", 1))

    def fn(args: list) -> list:
        x = args[0]
        axis = axis_attr + x.ndim if axis_attr < 0 else axis_attr
        outer = math.prod(x.shape[:axis])
        return [x.reshape(outer, -1) if outer else x.reshape(0, math.prod(x.shape[axis:]))]

    return fn


@register("Squeeze", "Unsqueeze")
def _build_squeeze(node: Node, ctx: BuildContext) -> Fn:
    squeeze = node.op_type == "Squeeze"
    from_input = ctx.opset >= 13
    attr_axes = node.attrs.get("axes")

    def fn(args: list) -> list:
        x = args[0]
        if from_input:
            axes = None if len(args) < 2 or args[1] is None else [int(v) for v in args[1].reshape(-1)]
        else:
            axes = None if attr_axes is None else list(attr_axes)
        if squeeze:
            if axes is None:
                return [x.reshape([d for d in x.shape if d != 1])]
            ax = {_axis(a_, x.ndim) for a_ in axes}
            return [x.reshape([d for i, d in enumerate(x.shape) if i not in ax])]
        rank = x.ndim + len(axes)
        ax = sorted(_axis(a_, rank) for a_ in axes)
        shape = list(x.shape)
        for a_ in ax:
            shape.insert(a_, 1)
        return [x.reshape(shape)]

    return fn


@register("Shape")
def _build_shape(node: Node, ctx: BuildContext) -> Fn:
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end")
    return lambda args: [np.asarray(args[0].shape[start:end], dtype=np.int64)]


@register("Size")
def _build_size(node: Node, ctx: BuildContext) -> Fn:
    return lambda args: [np.asarray(args[0].size, dtype=np.int64)]


def constant_value(node: Node) -> np.ndarray:
    """The value of a Constant node."""
    import onnx.numpy_helper as nh

    a = node.attrs
    if "value" in a:
        return nh.to_array(a["value"])
    if "value_float" in a:
        return np.asarray(a["value_float"], dtype=np.float32)
    if "value_floats" in a:
        return np.asarray(a["value_floats"], dtype=np.float32)
    if "value_int" in a:
        return np.asarray(a["value_int"], dtype=np.int64)
    if "value_ints" in a:
        return np.asarray(a["value_ints"], dtype=np.int64)
    raise OpNotSupported(f"Constant attributes {sorted(a)}: expected value, value_float(s) or value_int(s)")


@register("Constant")
def _build_constant(node: Node, ctx: BuildContext) -> Fn:
    value = constant_value(node)
    return lambda args: [value]


@register("ConstantOfShape")
def _build_constant_of_shape(node: Node, ctx: BuildContext) -> Fn:
    import onnx.numpy_helper as nh

    v = node.attrs.get("value")
    value = nh.to_array(v).reshape(-1)[0] if v is not None else np.float32(0)

    def fn(args: list) -> list:
        dt = np.asarray(value).dtype
        return [np.full(check_alloc(args[0].reshape(-1), dt, "ConstantOfShape"), value, dtype=dt)]

    return fn


@register("Cast")
def _build_cast(node: Node, ctx: BuildContext) -> Fn:
    from onnx import helper

    to = int(node.attrs["to"])
    try:
        dtype = helper.tensor_dtype_to_np_dtype(to)
    except Exception as e:  # noqa: BLE001 - onnx raises several types for unknown codes
        raise OpBuildError(f"Cast to={to}: unknown type") from e
    if not is_native_dtype(dtype):
        raise OpNotSupported(f"Cast to {dtype} is not supported")

    def fn(args: list) -> list:
        x = args[0]
        if not is_native_dtype(x.dtype):
            raise OpNotSupported(f"Cast from {x.dtype} is not supported")
        return [x.astype(dtype)]

    return fn


@register("Range")
def _build_range(node: Node, ctx: BuildContext) -> Fn:
    def fn(args: list) -> list:
        start, limit, delta = (np.asarray(a).reshape(()) for a in args)
        if delta == 0:
            raise OpBuildError("Range delta 0")
        n = max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)
        check_alloc([n], start.dtype, "Range")
        return [np.arange(start, limit, delta, dtype=start.dtype)]

    return fn


# ---------------------------------------------------------------------------------------------------
# GEMM family (part A's kernels): MatMul, Gemm, Conv, ConvTranspose
# ---------------------------------------------------------------------------------------------------
ACT_NAMES = {"Relu": "relu", "Clip": "clip", "LeakyRelu": "leaky_relu", "HardSwish": "hardswish",
             "Sigmoid": "sigmoid"}


def _dense_step(packed: Any, bias: np.ndarray | None, act: dict, alpha: float, threads: int,
                ctx: BuildContext, fallback: Fn, two_d: bool = False) -> Fn:
    """The native step for a product with packed constant weights; `fallback` handles what it does not.
    two_d (Gemm): only a 2-D A takes the native path (Gemm has no batched or 1-D form)."""
    return _core.DenseStep(packed, bias, act.get("act", "none"), act.get("act_alpha", 0.0),
                           act.get("act_beta", 0.0), alpha, threads, PARALLEL_MIN_FLOPS, ctx.pool, fallback,
                           two_d)


def _act_kwargs(node: Node) -> dict:
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
    act = _act_kwargs(node)
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
            y = _core.gemm(a2, packed, bias, threads=_threads_for(2.0 * a2.shape[0] * k * n, threads),
                           out=ctx.pool.empty((a2.shape[0], n)), **act)
            return [y.reshape(a.shape[:-1] + (n,))]

        return _dense_step(packed, bias, act, 1.0, threads, ctx, fn_packed)
    if bias is not None or act:
        raise OpBuildError("internal: fused MatMul needs a constant 2-D B")
    alpha = float(node.attrs.get("_alpha", 1.0))   # graph.fuse_matmul_scale

    def fn(args: list) -> list:
        a, b = args
        if _is_f32(a, b):
            y = _core.matmul(a, b, threads=_threads_for(2.0 * a.size * (b.shape[-1] if b.ndim > 1 else 1),
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
    act = _act_kwargs(node)
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


def _conv_geometry(node: Node, w_shape: tuple, x_spatial: tuple) -> dict:
    a = node.attrs
    kernel = tuple(int(k) for k in a.get("kernel_shape", w_shape[2:]))
    nd = len(kernel)
    strides = tuple(int(s) for s in a.get("strides", [1] * nd))
    dil = tuple(int(d) for d in a.get("dilations", [1] * nd))
    pads, out = resolve_pads(a, x_spatial, kernel, strides, dil)
    return {"nd": nd, "strides": strides, "dilations": dil, "pads": pads, "out": out}


@register("Conv")
def _build_conv(node: Node, ctx: BuildContext) -> Fn:
    if not hasattr(_core, "Conv2d"):
        raise OpNotSupported("Conv: the native convolution kernel is not available in this build")
    threads = ctx.threads
    group = int(node.attrs.get("group", 1))
    act = _act_kwargs(node)
    w_const = ctx.const(node.inputs[1])
    b_const = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if len(node.inputs) > 2 and node.inputs[2] and b_const is None:
        w_const = None   # a computed bias: the plan is made per run from both inputs
    # layouts chosen by graph.assign_blocked_layouts (constant weights only): "nchw" or "nchwc8"
    in_layout = node.attrs.get("_in_layout", "nchw")
    out_layout = node.attrs.get("_out_layout", "nchw")
    x_ndim = 5 if in_layout != "nchw" else 4
    has_sum = bool(node.attrs.get("_sum"))   # graph.fuse_conv_residual: args[3] is added to the output
    if w_const is not None and w_const.ndim not in (3, 4):
        raise OpNotSupported(f"Conv with {w_const.ndim - 2} spatial dims: only 1-D and 2-D are supported")
    auto = _auto_pad(node.attrs)
    cache: dict[tuple, Any] = {}
    empty = ctx.pool.empty

    def make(w: np.ndarray, b: np.ndarray | None, x_spatial: tuple) -> Any:
        g = _conv_geometry(node, w.shape, x_spatial)
        w4 = w if w.ndim == 4 else w[:, :, None, :]
        if g["nd"] == 1:
            strides, dil = (1, g["strides"][0]), (1, g["dilations"][0])
            pads = (0, g["pads"][0], 0, g["pads"][1])
        else:
            strides, dil = g["strides"], g["dilations"]
            p = g["pads"]
            pads = (p[0], p[1], p[2], p[3])
        return _core.Conv2d(np.ascontiguousarray(w4, dtype=np.float32),
                            None if b is None else np.ascontiguousarray(b, dtype=np.float32),
                            strides=strides, pads=pads, dilations=dil, group=group, **act,
                            in_layout=in_layout, out_layout=out_layout)

    # per input shape: (plan, output shape, threads worth using); a run with a seen shape does no
    # geometry work in Python (this wrapper cost ~30 us per node before, more than a small conv)
    shapes: dict[tuple, tuple] = {}

    def sum_fn(args: list) -> list:
        """The fused Add, with its broadcasting, where the native step could not take the residual."""
        y, r = conv_fn(args)[0], args[3]
        return [np.add(y, r, out=y) if r.dtype == F32 and r.shape == y.shape else y + r]

    def conv_fn(args: list) -> list:
        x = args[0]
        if x.dtype != F32:
            raise OpNotSupported(f"Conv on {x.dtype}: expected float32")
        if w_const is not None:
            hit = shapes.get(x.shape)
            if hit is not None:
                conv, oshape, n_thr = hit
                if x.ndim == x_ndim:
                    return [conv.run(x if x.flags.c_contiguous else np.ascontiguousarray(x), out=empty(oshape),
                                     threads=n_thr)]
        if x_ndim == 5:
            if x.ndim != 5:   # only this executor makes blocked tensors; anything else is a bug
                raise OpNotSupported(f"Conv expected an NCHWc8 input [N, C/8, H, W, 8], got shape {list(x.shape)}")
            spatial = x.shape[2:4]
        elif x.ndim not in (3, 4):
            raise OpNotSupported(f"Conv on a {x.ndim}-D input: only 1-D and 2-D convolutions are supported")
        else:
            spatial = x.shape[2:]
        if w_const is not None:
            key = spatial if auto not in ("NOTSET", "VALID") else ()
            conv = cache.get(key)
            if conv is None:
                conv = cache[key] = make(w_const, b_const, spatial)
        else:
            b = args[2] if len(args) > 2 else None
            conv = make(args[1], b, spatial)
        wshape = (w_const if w_const is not None else args[1]).shape
        per_out = math.prod(wshape[1:])
        if x.ndim == 3 and x_ndim == 4:
            x4 = np.ascontiguousarray(x[:, :, None, :])
            n_thr = _threads_for(2.0 * per_out * math.prod(conv.output_shape(x4.shape)), threads)
            y = conv.run(x4, threads=n_thr)
            return [y.reshape(y.shape[0], y.shape[1], y.shape[3])]
        oshape = conv.output_shape(x.shape)
        # depthwise runs at ~1/5 of the GEMM's FLOP rate (memory-bound), so the same FLOPs are 5x the time
        n_thr = _threads_for(2.0 * per_out * math.prod(oshape) * (5.0 if conv.path == "depthwise" else 1.0),
                             threads)
        if w_const is not None and len(shapes) < 64:
            shapes[x.shape] = (conv, oshape, n_thr)
        return [conv.run(np.ascontiguousarray(x), out=empty(oshape), threads=n_thr)]

    # constant weights: seen shapes run natively from run_steps (the dict is shared with fn)
    fn = sum_fn if has_sum else conv_fn
    return _core.ConvStep(shapes, ctx.pool, fn, has_sum) if w_const is not None else fn


@register("ConvTranspose")
def _build_conv_transpose(node: Node, ctx: BuildContext) -> Fn:
    if not hasattr(_core, "ConvTranspose2d"):
        raise OpNotSupported("ConvTranspose: the native kernel is not available in this build")
    a = node.attrs
    threads = ctx.threads
    group = int(a.get("group", 1))
    w_const = ctx.const(node.inputs[1])
    b_const = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    cache: dict[tuple, Any] = {}

    def make(w: np.ndarray, b: np.ndarray | None, x_spatial: tuple) -> Any:
        kernel = tuple(int(k) for k in a.get("kernel_shape", w.shape[2:]))
        nd = len(kernel)
        if nd not in (1, 2):
            raise OpNotSupported(f"ConvTranspose with {nd} spatial dims: only 1-D and 2-D are supported")
        strides = [int(s) for s in a.get("strides", [1] * nd)]
        dil = [int(d) for d in a.get("dilations", [1] * nd)]
        opad = [int(p) for p in a.get("output_padding", [0] * nd)]
        pads = [int(p) for p in a.get("pads", [0] * (2 * nd))]
        auto = _auto_pad(a)
        out_shape = a.get("output_shape")
        if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
            if out_shape is None:
                out_shape = [x_spatial[i] * strides[i] for i in range(nd)]
            out_shape = list(out_shape)[-nd:]
            for i in range(nd):
                total = strides[i] * (x_spatial[i] - 1) + opad[i] + ((kernel[i] - 1) * dil[i] + 1) - out_shape[i]
                if total < 0:  # output_shape beyond the natural size: the extra rows come from output_padding
                    opad[i] += -total
                    total = 0
                if auto == "SAME_UPPER":
                    pads[i], pads[i + nd] = total // 2, total - total // 2
                else:
                    pads[i], pads[i + nd] = total - total // 2, total // 2
        w4 = w if w.ndim == 4 else w[:, :, None, :]
        if nd == 1:
            strides, dil, opad = [1] + strides, [1] + dil, [0] + opad
            pads = [0, pads[0], 0, pads[1]]
        return _core.ConvTranspose2d(np.ascontiguousarray(w4, dtype=np.float32),
                                     None if b is None else np.ascontiguousarray(b, dtype=np.float32),
                                     strides=tuple(strides), pads=tuple(pads), output_padding=tuple(opad),
                                     dilations=tuple(dil), group=group)

    def fn(args: list) -> list:
        x = args[0]
        if x.dtype != F32:
            raise OpNotSupported(f"ConvTranspose on {x.dtype}: expected float32")
        spatial = x.shape[2:]
        if w_const is not None:
            conv = cache.get(spatial)
            if conv is None:
                conv = cache[spatial] = make(w_const, b_const, spatial)
        else:
            conv = make(args[1], args[2] if len(args) > 2 else None, spatial)
        if x.ndim == 3:
            y = conv.run(np.ascontiguousarray(x[:, :, None, :]), threads=threads)
            return [y.reshape(y.shape[0], y.shape[1], y.shape[3])]
        return [conv.run(np.ascontiguousarray(x), out=ctx.pool.empty(conv.output_shape(x.shape)), threads=threads)]

    return fn
