"""Resize / Upsample: nearest, linear and cubic modes with every coordinate transformation."""

from __future__ import annotations

import math

import numpy as np

from ops_native import _core
from ops_native.ops.registry import (
    F32,
    BuildContext,
    Fn,
    Node,
    OpBuildError,
    OpNotSupported,
    attr_str,
    check_alloc,
    normalize_axis,
    register,
)


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
    mode = attr_str(a, "mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear", "cubic"):
        raise OpNotSupported(f"Resize mode={mode!r}: expected nearest, linear or cubic")
    cubic_a = float(a.get("cubic_coeff_a", -0.75))
    exclude_outside = bool(int(a.get("exclude_outside", 0)))
    legacy = node.op_type == "Upsample" or ctx.opset < 11
    coord = attr_str(a, "coordinate_transformation_mode", "asymmetric" if legacy else "half_pixel")
    nearest = attr_str(a, "nearest_mode", "floor" if legacy else "round_prefer_floor")
    if int(a.get("antialias", 0)):
        raise OpNotSupported("Resize antialias=1 is not supported")
    if coord == "tf_crop_and_resize":
        raise OpNotSupported("Resize tf_crop_and_resize is not supported")
    policy = attr_str(a, "keep_aspect_ratio_policy", "stretch")
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
        axes = list(range(x.ndim)) if attr_axes is None else [normalize_axis(int(v), x.ndim) for v in attr_axes]
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
