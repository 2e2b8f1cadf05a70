"""Reductions over axes: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceSumSquare."""

from __future__ import annotations

import math

import numpy as np

from ops_native import _core
from ops_native.ops.registry import (
    F32,
    BuildContext,
    Fn,
    Node,
    normalize_axis,
    register,
)

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
        axes = sorted({normalize_axis(v, x.ndim) for v in axes})
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
