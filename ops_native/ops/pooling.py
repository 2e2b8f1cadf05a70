"""Pooling ops (MaxPool, AveragePool, their global forms) and the ONNX padding rules they share with Conv."""

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
    check_alloc,
    register,
)


def auto_pad(attrs: dict) -> str:
    """The auto_pad attribute as str (NOTSET when absent)."""
    p = attrs.get("auto_pad", "NOTSET")
    return p.decode() if isinstance(p, bytes) else p


def resolve_pads(attrs: dict, in_sizes: tuple, kernel: tuple, strides: tuple, dilations: tuple,
                 ceil_mode: bool = False) -> tuple[list[int], list[int]]:
    """(pads [begin..., end...], output sizes) for pooling / convolution per ONNX auto_pad rules."""
    nd = len(in_sizes)
    auto = auto_pad(attrs)
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
    seen: dict[tuple, tuple] = {}   # input shape -> its padding and output size
    if a.get("_in_layout") == "nchwc8":   # passes.layout: x is [N, C/8, H, W, 8], and so is the output
        def fn_blocked(args: list) -> list:
            x = args[0]
            if x.dtype != F32 or x.ndim != 5:   # only this executor makes blocked tensors: anything else is a bug
                raise OpNotSupported(f"{node.op_type} expected a float32 NCHWc8 input, got {x.dtype} {list(x.shape)}")
            hit = seen.get(x.shape)
            if hit is None:
                pads, out = resolve_pads(a, x.shape[2:4], kernel, strides, dilations, ceil_mode)
                hit = seen[x.shape] = (tuple(pads), tuple(out), (x.shape[0], x.shape[1], out[0], out[1], 8))
            return [_core.ops_pool2d_nchwc8(x, is_max, kernel, strides, dilations, hit[0], hit[1], cip,
                                            threads, ctx.pool.empty(hit[2]))]
        return fn_blocked

    def fn(args: list) -> list:
        x = args[0]
        if x.dtype != F32:
            if is_max and x.dtype.kind in "iu" and x.dtype.itemsize <= 2:  # exact in float32
                return [fn([x.astype(np.float32)])[0].astype(x.dtype)]
            raise OpNotSupported(f"{node.op_type} on {x.dtype}: expected float32")
        if x.ndim != nd + 2:
            raise OpBuildError(f"input rank {x.ndim}: expected {nd + 2}")
        hit = seen.get(x.shape)
        if hit is None:   # padding and output size: once per input shape
            hit = seen[x.shape] = resolve_pads(a, x.shape[2:], kernel, strides, dilations, ceil_mode)
        pads, out = hit
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
    if node.attrs.get("_in_layout") == "nchwc8":   # passes.layout: [N, C/8, H, W, 8] -> [N, C/8, 1, 1, 8]
        def fn_blocked(args: list) -> list:
            x = args[0]
            if x.dtype != F32 or x.ndim != 5:
                raise OpNotSupported(f"{node.op_type} expected a float32 NCHWc8 input, got {x.dtype} {list(x.shape)}")
            hw = (int(x.shape[2]), int(x.shape[3]))
            return [_core.ops_pool2d_nchwc8(x, is_max, hw, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), False, threads,
                                            ctx.pool.empty((x.shape[0], x.shape[1], 1, 1, 8)))]
        return fn_blocked
    return lambda args: [_core.ops_global_pool(args[0], is_max, threads)]
