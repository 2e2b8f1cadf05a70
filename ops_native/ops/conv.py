"""Convolutions on the GEMM / direct kernels: Conv (NCHW or NCHWc8 layouts, fused residual) and ConvTranspose."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ops_native import _core
from ops_native.ops.linalg import act_kwargs
from ops_native.ops.pooling import auto_pad, resolve_pads
from ops_native.ops.registry import (
    F32,
    BuildContext,
    Fn,
    Node,
    OpNotSupported,
    register,
    threads_for,
)


def _conv_geometry(node: Node, w_shape: tuple, x_spatial: tuple) -> dict:
    a = node.attrs
    kernel = tuple(int(k) for k in a.get("kernel_shape", w_shape[2:]))
    nd = len(kernel)
    strides = tuple(int(s) for s in a.get("strides", [1] * nd))
    dil = tuple(int(d) for d in a.get("dilations", [1] * nd))
    pads, out = resolve_pads(a, x_spatial, kernel, strides, dil)
    return {"nd": nd, "strides": strides, "dilations": dil, "pads": pads, "out": out}


def conv_output_shape(node: Node, w_shape: tuple, x_spatial: tuple) -> tuple[int, ...] | None:
    """Output spatial sizes of Conv ``node`` (weights of ``w_shape``) on an input of ``x_spatial``; None when
    the geometry is invalid (the conv itself then reports why when it runs)."""
    try:
        out = _conv_geometry(node, w_shape, x_spatial)["out"]
    except Exception:  # noqa: BLE001 - an invalid geometry: the conv step raises the real error
        return None
    return tuple(int(o) for o in out) if all(int(o) > 0 for o in out) else None


@register("Conv")
def _build_conv(node: Node, ctx: BuildContext) -> Fn:
    if not hasattr(_core, "Conv2d"):
        raise OpNotSupported("Conv: the native convolution kernel is not available in this build")
    threads = ctx.threads
    group = int(node.attrs.get("group", 1))
    act = act_kwargs(node)
    w_const = ctx.const(node.inputs[1])
    b_const = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if len(node.inputs) > 2 and node.inputs[2] and b_const is None:
        w_const = None   # a computed bias: the plan is made per run from both inputs
    # layouts chosen by passes.layout.assign_blocked_layouts (constant weights only): "nchw" or "nchwc8"
    in_layout = node.attrs.get("_in_layout", "nchw")
    out_layout = node.attrs.get("_out_layout", "nchw")
    x_ndim = 5 if in_layout != "nchw" else 4
    has_sum = bool(node.attrs.get("_sum"))   # passes.layout.fuse_conv_residual: args[3] is added to the output
    if w_const is not None and w_const.ndim not in (3, 4):
        raise OpNotSupported(f"Conv with {w_const.ndim - 2} spatial dims: only 1-D and 2-D are supported")
    auto = auto_pad(node.attrs)
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

    # A (K, 1) kernel on a W = 1 input (1-D convolutions exported as 2-D: TF/JAX Conv1D, Magika) runs as
    # (1, K) on the same memory read as [N, C, 1, H]: rows of H pixels fill the register tiles, where
    # one-pixel rows ran the NCHWc kernel at a third of its speed (Magika's 5x1 conv: 36 -> ~6 ms).
    swap_ok = w_const is not None and w_const.ndim == 4 and w_const.shape[3] == 1 and \
        int(node.attrs.get("strides", [1, 1])[-1]) == 1 and auto in ("NOTSET", "VALID") and \
        all(int(v) == 0 for v in list(node.attrs.get("pads", [0, 0, 0, 0]))[1::2])
    swapped: dict[tuple, Any] = {}

    def run_swapped(x: np.ndarray) -> np.ndarray:
        """x: [N, C, H, 1] or blocked [N, C/8, H, 1, 8] -> the output in the same form."""
        h = x.shape[2]
        conv = swapped.get(h)
        if conv is None:
            a = node.attrs
            sh = int(a.get("strides", [1, 1])[0])
            dh = int(a.get("dilations", [1, 1])[0])
            pads = [int(v) for v in a.get("pads", [0, 0, 0, 0])] if auto == "NOTSET" else [0, 0, 0, 0]
            w4 = np.ascontiguousarray(w_const.transpose(0, 1, 3, 2), dtype=np.float32)
            conv = swapped[h] = _core.Conv2d(w4, None if b_const is None else
                                             np.ascontiguousarray(b_const, dtype=np.float32),
                                             strides=(1, sh), pads=(0, pads[0], 0, pads[2]), dilations=(1, dh),
                                             group=group, **act, in_layout=in_layout, out_layout=out_layout)
        xs = x.reshape(x.shape[:2] + (1, h) + x.shape[4:])
        oshape = conv.output_shape(xs.shape)
        n_thr = threads_for(2.0 * math.prod(w_const.shape[1:]) * math.prod(oshape), threads)
        y = conv.run(xs, out=empty(oshape), threads=n_thr)
        return y.reshape(y.shape[:2] + (y.shape[3], 1) + y.shape[4:])

    # per input shape: (plan, output shape, threads worth using); a run with a seen shape does no
    # geometry work in Python (this wrapper cost ~30 us per node before, more than a small conv)
    shapes: dict[tuple, tuple] = {}
    shapes_1d: dict[tuple, tuple] = {}   # the same for 3-D inputs [N, C, L] (1-D convolutions), run as [N, C, 1, L]

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
        if x.ndim == 3:
            hit = shapes_1d.get(x.shape)
            if hit is not None:   # a seen 1-D shape: the 2-D plan on the [N, C, 1, L] view of x
                conv, oshape, n_thr = hit
                x4 = (x if x.flags.c_contiguous else np.ascontiguousarray(x)).reshape(x.shape[0], x.shape[1], 1, x.shape[2])
                return [conv.run(x4, out=empty(oshape), threads=n_thr).reshape(oshape[0], oshape[1], oshape[3])]
        if swap_ok and x.ndim == x_ndim and x.shape[3] == 1 and x.shape[2] > 1:
            return [run_swapped(np.ascontiguousarray(x))]
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
            oshape = conv.output_shape(x4.shape)
            n_thr = threads_for(2.0 * per_out * math.prod(oshape), threads)
            if w_const is not None and len(shapes_1d) < 64:
                shapes_1d[x.shape] = (conv, oshape, n_thr)
                shapes[x.shape] = (conv, (oshape[0], oshape[1], oshape[3]), n_thr)   # the native step: H = 1
            y = conv.run(x4, out=empty(oshape), threads=n_thr)
            return [y.reshape(y.shape[0], y.shape[1], y.shape[3])]
        oshape = conv.output_shape(x.shape)
        # depthwise runs at ~1/5 of the GEMM's FLOP rate (memory-bound), so the same FLOPs are 5x the time
        n_thr = threads_for(2.0 * per_out * math.prod(oshape) * (5.0 if conv.path == "depthwise" else 1.0),
                             threads)
        if w_const is not None and len(shapes) < 64:
            shapes[x.shape] = (conv, oshape, n_thr)
        return [conv.run(np.ascontiguousarray(x), out=empty(oshape), threads=n_thr)]

    # constant weights: seen shapes run natively from run_steps (the dict is shared with fn)
    fn = sum_fn if has_sum else conv_fn
    if node.attrs.get("_into") and w_const is not None and not has_sum:
        return _into_concat(conv_fn, shapes, x_ndim)
    return _core.ConvStep(shapes, ctx.pool, fn, has_sum) if w_const is not None else fn


def _into_concat(conv_fn: Fn, shapes: dict, x_ndim: int) -> Fn:
    """A Conv whose last argument is a view of its Concat's output (passes.concat) or None: the result is
    stored there when the run's shapes allow, else computed into a buffer of its own (the Concat copies it)."""

    def fn(args: list) -> list:
        x, view = args[0], args[-1]
        hit = shapes.get(x.shape) if isinstance(x, np.ndarray) and x.dtype == F32 and x.ndim == x_ndim else None
        if view is None or hit is None or view.shape != hit[1] or not view.flags.c_contiguous:
            return conv_fn(args[:-1])      # the first run with a shape fills `shapes`
        conv, _, n_thr = hit
        return [conv.run(x if x.flags.c_contiguous else np.ascontiguousarray(x), out=view, threads=n_thr)]

    return fn


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
        auto = auto_pad(a)
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
