"""Data movement and metadata ops: Transpose, Concat, Split, Slice, Gather, Pad, Expand, Tile, Reshape,
Flatten, (Un)Squeeze, Shape, Size, Constant(OfShape), Cast, Range."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ops_native import _core
from ops_native.ops.registry import (
    BuildContext,
    Fn,
    Node,
    OpBuildError,
    OpNotSupported,
    attr_str,
    check_alloc,
    is_native_dtype,
    normalize_axis,
    register,
)


@register("Transpose")
def _build_transpose(node: Node, ctx: BuildContext) -> Fn:
    perm = node.attrs.get("perm")
    threads = ctx.threads
    if node.attrs.get("_view"):   # only MatMuls read it, and they take strided operands (passes.fusions.mark_transpose_views)
        return lambda args: [args[0].transpose(perm)]

    def fn(args: list) -> list:
        x = args[0]
        p = list(reversed(range(x.ndim))) if perm is None else list(perm)
        view = x.transpose(p)
        return [_core.ops_copy(view, ctx.pool.empty(view.shape, x.dtype), threads)]

    return fn


@register("_FromBlocked")
def _build_from_blocked(node: Node, ctx: BuildContext) -> Fn:
    """Internal op of passes.layout: an NCHWc8 tensor [N, ceil(C/8), H, W, 8] -> NCHW [N, C, H, W], for the
    consumers of a blocked region's edge that read NCHW (channel c is lane c % 8 of block c // 8)."""
    channels = int(node.attrs["channels"])
    threads = ctx.threads

    def fn(args: list) -> list:
        x = args[0]
        n, cb, h, w, c0 = x.shape
        y = ctx.pool.empty((n, channels, h, w), x.dtype)
        whole = channels // c0
        if h * w == 1 and whole == cb:   # [N, C/8, 1, 1, 8] already is NCHW's order
            _core.ops_copy(x.reshape(n, channels, 1, 1), y, threads)
            return [y]
        if whole:
            _core.ops_copy(x[:, :whole].transpose(0, 1, 4, 2, 3), y[:, :whole * c0].reshape(n, whole, c0, h, w), threads)
        if whole < cb:   # the last, partly filled block
            _core.ops_copy(x[:, whole, :, :, :channels - whole * c0].transpose(0, 3, 1, 2), y[:, whole * c0:], threads)
        return [y]

    return fn


@register("_Subsample")
def _build_subsample(node: Node, ctx: BuildContext) -> Fn:
    """Internal op of passes.layout.subsample_strided_pointwise: x[:, :, ::sh, ::sw] of an NCHWc8 tensor, copied."""
    sh, sw = (int(v) for v in node.attrs["strides"])
    threads = ctx.threads

    def fn(args: list) -> list:
        v = args[0][:, :, ::sh, ::sw]
        return [_core.ops_copy(v, ctx.pool.empty(v.shape, v.dtype), threads)]

    return fn


def _reshape_target(shape: tuple, target: list[int]) -> tuple | None:
    """ONNX Reshape's target (0 copies the input dimension, one -1 is inferred) for an input of ``shape``;
    None when it does not fit."""
    dims = [shape[i] if v == 0 and i < len(shape) else v for i, v in enumerate(target)]
    if 0 in target[len(shape):] or dims.count(-1) > 1:
        return None
    known = math.prod(d for d in dims if d != -1)
    total = math.prod(shape)
    if -1 in dims:
        if known == 0 or total % known:
            return None
        dims[dims.index(-1)] = total // known
    return tuple(dims) if math.prod(dims) == total else None


@register("_ChannelShuffle")
def _build_channel_shuffle(node: Node, ctx: BuildContext) -> Fn:
    """Internal op of passes.layout.fuse_channel_shuffle: Reshape(shape5) -> Transpose(0, 2, 1, 3, 4) ->
    Reshape(shape4). NCHW: the three ops (one copy). NCHWc8 (passes.layout): output channel j * G + i is input
    channel i * (C / G) + j, one gather on the blocks, when the targets are that shuffle of [N, C, H, W]."""
    s5, s4 = list(node.attrs["shape5"]), list(node.attrs["shape4"])
    blocked = node.attrs.get("_in_layout") == "nchwc8"
    channels = int(node.attrs.get("channels", 0))
    threads = ctx.threads
    gathers: dict[tuple, Any] = {}   # per input shape: the source channels, or None (not a shuffle)

    def nchw(x: np.ndarray) -> np.ndarray:
        t5 = _reshape_target(x.shape, s5)
        if t5 is None:
            raise ValueError(f"Reshape: cannot reshape {list(x.shape)} to {s5}")
        v = x.reshape(t5).transpose(0, 2, 1, 3, 4)
        t4 = _reshape_target(v.shape, s4)
        if t4 is None:
            raise ValueError(f"Reshape: cannot reshape {list(v.shape)} to {s4}")
        return _core.ops_copy(v, ctx.pool.empty(v.shape, x.dtype), threads).reshape(t4)

    def source_channels(shape: tuple) -> Any:
        n, _, h, w, _ = shape
        t5 = _reshape_target((n, channels, h, w), s5)
        if t5 is None or t5[0] != n or t5[3:] != (h, w):
            return None
        g, k = t5[1], t5[2]
        if _reshape_target((n, k, g, h, w), s4) != (n, channels, h, w):
            return None
        c = np.arange(channels)
        return (c % g) * k + c // g

    def fn(args: list) -> list:
        x = args[0]
        if not blocked:
            return [nchw(x)]
        src = gathers.get(x.shape, False)
        if src is False:
            src = gathers[x.shape] = source_channels(x.shape)
        if src is None:   # not a shuffle of whole channels: the ops as written, on an NCHW copy
            n, cb, h, w, c0 = x.shape
            y = nchw(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, cb * c0, h, w)[:, :channels]))
            if y.shape != (n, channels, h, w):
                raise ValueError(f"channel shuffle: {s5} / {s4} make {list(y.shape)} of a blocked "
                                 f"[{n}, {channels}, {h}, {w}] tensor")
            full = np.zeros((n, cb * c0, h, w), np.float32)
            full[:, :channels] = y
            return [np.ascontiguousarray(full.reshape(n, cb, c0, h, w).transpose(0, 1, 3, 4, 2))]
        out = ctx.pool.empty((x.shape[0], -(-channels // 8), x.shape[2], x.shape[3], 8), np.float32)
        return [_core.ops_channel_gather_nchwc8(x, channels, src, threads, out)]

    return fn


SMALL_CONCAT = 1024   # elements in all inputs together


@register("Concat")
def _build_concat(node: Node, ctx: BuildContext) -> Fn:
    axis_attr = int(node.attrs["axis"])
    threads = ctx.threads
    blocked = node.attrs.get("_in_layout") == "nchwc8"   # passes.layout: whole 8-channel blocks, axis 1

    def fn(args: list) -> list:
        arrays = [a for a in args if a is not None]
        axis = 1 if blocked else normalize_axis(axis_attr, arrays[0].ndim)
        if sum(a.size for a in arrays) <= SMALL_CONCAT:
            # shape arithmetic (dims of a target shape): numpy's concatenate checks and joins in ~1 us,
            # less than the native call's argument set-up
            if any(a.dtype != arrays[0].dtype for a in arrays):
                raise ValueError(f"concat: inputs of types {[str(a.dtype) for a in arrays]}")
            return [np.concatenate(arrays, axis)]
        shape = list(arrays[0].shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
        return [_core.ops_concat(arrays, axis, threads, ctx.pool.empty(tuple(shape), arrays[0].dtype))]

    if not node.attrs.get("_in_place"):
        return fn

    placed: list[int] = node.attrs["_in_place"]
    n_in = len(node.inputs) - 1 - len(placed)

    def in_place(args: list) -> list:
        """passes.concat: after the inputs come the output buffer (or None) and the views of it that some
        producers were given; an input that *is* its view was written in place, the others are copied."""
        arrays, buf, views = args[:n_in], args[n_in], args[n_in + 1:]
        if buf is None or any(a is None or a.dtype != buf.dtype or a.ndim != buf.ndim for a in arrays) or \
                sum(a.shape[1] for a in arrays) != buf.shape[1]:
            return fn(arrays)
        done = {k for k, v in zip(placed, views) if arrays[k] is v}
        off = 0
        for k, a in enumerate(arrays):
            size = a.shape[1]
            if k not in done:
                part = buf[:, off:off + size]
                if a.shape != part.shape:
                    return fn(arrays)
                np.copyto(part, a)        # not written in place (another producer, or a fallback)
            off += size
        return [buf]

    return in_place


@register("_ConcatBuffer")
def _build_concat_buffer(node: Node, ctx: BuildContext) -> Fn:
    """passes.concat: the output of a channel Concat, allocated before its in-place producers run, and the
    views of it each of them writes. None for all when this run cannot be done in place (N != 1, shapes)."""
    from ops_native.ops.conv import conv_output_shape

    plan: list = node.attrs["_plan"]
    first, w_shape = node.attrs["_first"], node.attrs["_w_shape"]
    blocked = node.attrs["_layout"] == "nchwc8"
    n_views = len(node.outputs) - 1
    nothing = [None] * (n_views + 1)

    tails: dict[tuple, tuple | None] = {}   # first producer's input shape -> its output's trailing dims

    def fn(args: list) -> list:
        x, others = args[0], args[1:]
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != (5 if blocked else 4) or x.shape[0] != 1:
            return nothing
        tail = tails.get(x.shape, False)
        if tail is False:
            spatial = conv_output_shape(first, w_shape, tuple(x.shape[2:4]))
            tail = tails[x.shape] = None if spatial is None else (*spatial, 8) if blocked else tuple(spatial)
        if tail is None:
            return nothing
        sizes, k = [], 0
        for units in plan:
            if units is None:
                a = others[k]
                k += 1
                if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape[0] != 1 or a.shape[2:] != tail:
                    return nothing
                units = a.shape[1]
            sizes.append(units)
        buf = ctx.pool.empty((1, sum(sizes), *tail))
        views, off = [], 0
        for units, size in zip(plan, sizes):
            if units is not None:
                views.append(buf[:, off:off + size])
            off += size
        return [buf, *views]

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
        axis = normalize_axis(axis_attr, x.ndim)
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


def _ints(v: Any) -> list[int] | None:
    return None if v is None else [int(i) for i in np.asarray(v).reshape(-1)]


def _slices(shape: tuple, starts: list[int], ends: list[int], axes: list[int] | None,
            steps: list[int] | None) -> tuple:
    """The numpy index of ONNX Slice(starts, ends, axes, steps) on a tensor of this shape."""
    nd = len(shape)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    sl = [slice(None)] * nd
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise OpBuildError("Slice step 0")
        ax = normalize_axis(ax, nd)
        dim = shape[ax]
        # clamp like ONNX (Python slicing treats huge negatives differently for negative steps)
        s = max(-dim - 1, min(s, dim))
        e = max(-dim - 1, min(e, dim))
        sl[ax] = slice(s, None if st < 0 and e < -dim else e, st)
    return tuple(sl)


@register("Slice")
def _build_slice(node: Node, ctx: BuildContext) -> Fn:
    legacy = ctx.opset < 10
    threads = ctx.threads
    if legacy:
        params = (list(node.attrs["starts"]), list(node.attrs["ends"]), node.attrs.get("axes"), None)
    else:
        consts = [ctx.const(i) if k < len(node.inputs) else None for k, i in enumerate(node.inputs[1:5], 1)]
        given = [k < len(node.inputs) and node.inputs[k] != "" for k in range(1, 5)]
        params = None
        if all(c is not None or not g for c, g in zip(consts, given)):
            params = tuple(_ints(c) for c in consts) + (None,) * (4 - len(consts))
    if params is not None:
        # constant starts / ends / axes / steps (the usual case): the numpy index once per input shape
        seen: dict[tuple, tuple] = {}
        p_starts, p_ends, p_axes, p_steps = (list(v) if v is not None else None for v in params)

        def fn_const(args: list) -> list:
            x = args[0]
            sl = seen.get(x.shape)
            if sl is None:
                sl = seen[x.shape] = _slices(x.shape, p_starts, p_ends, p_axes, p_steps)
            return [_core.ops_contiguous(x[sl], threads)]

        return fn_const

    def fn(args: list) -> list:
        x = args[0]
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(args[3]) if len(args) > 3 else None
        steps = _ints(args[4]) if len(args) > 4 else None
        return [_core.ops_contiguous(x[_slices(x.shape, starts, ends, axes, steps)], threads)]

    return fn


# Gathers from tensors up to this many elements go through numpy's take (~1 us); the native kernel's
# argument checks and index normalisation cost ~10 us, worth it only where its threads pay. Shape
# arithmetic (Shape -> Gather of one dimension) is the usual small case.
SMALL_GATHER = 4096


@register("Gather")
def _build_gather(node: Node, ctx: BuildContext) -> Fn:
    axis_attr = int(node.attrs.get("axis", 0))
    threads = ctx.threads

    def fn(args: list) -> list:
        x, idx = args
        axis = normalize_axis(axis_attr, x.ndim)
        if x.size <= SMALL_GATHER and idx.dtype.kind in "iu":
            # numpy take: same output shape as ONNX Gather, negative indices wrap, out of range raises
            return [np.asarray(np.take(x, idx, axis=axis))]
        return [_core.ops_gather(x, idx, axis, threads)]

    return fn


@register("Pad")
def _build_pad(node: Node, ctx: BuildContext) -> Fn:
    mode = attr_str(node.attrs, "mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise OpBuildError(f"Pad mode={mode!r}: expected constant, reflect, edge or wrap")
    legacy = ctx.opset < 11
    threads = ctx.threads
    pad_index: dict[tuple, np.ndarray] = {}   # (size, pad before, pad after) -> source position of each output

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
            ax = [normalize_axis(int(v), nd) for v in axes.reshape(-1)]
            full = [0] * (2 * nd)
            for i, a_ in enumerate(ax):
                full[a_], full[a_ + nd] = pads[i], pads[i + len(ax)]
            pads = full
        if len(pads) != 2 * nd:
            raise OpBuildError(f"Pad: {len(pads)} pads for rank {nd}: expected {2 * nd}")
        if mode != "constant":
            check_alloc([x.shape[i] + pads[i] + pads[i + nd] for i in range(nd)], x.dtype, "Pad")
            if min(pads) >= 0:
                # reflect / edge / wrap read every output element from one input position: a gather along
                # each padded axis, its positions taken once per (size, pads) from numpy's own np.pad
                for ax in range(nd):
                    if pads[ax] or pads[ax + nd]:
                        key = (x.shape[ax], pads[ax], pads[ax + nd])
                        idx = pad_index.get(key)
                        if idx is None:
                            idx = pad_index[key] = np.pad(np.arange(key[0]), key[1:], mode=mode)
                        x = np.take(x, idx, axis=ax)
                return [x if x is args[0] else np.ascontiguousarray(x)]
            width = [(pads[i], pads[i + nd]) for i in range(nd)]
            return [np.pad(x, width, mode=mode)]
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

    def out_shape(shape: tuple, axes: list[int] | None) -> tuple:
        nd = len(shape)
        if squeeze:
            if axes is None:
                return tuple(d for d in shape if d != 1)
            ax = {normalize_axis(a_, nd) for a_ in axes}
            return tuple(d for i, d in enumerate(shape) if i not in ax)
        rank = nd + len(axes)
        out = list(shape)
        for a_ in sorted(normalize_axis(a_, rank) for a_ in axes):
            out.insert(a_, 1)
        return tuple(out)

    const_axes = not from_input or len(node.inputs) < 2 or not node.inputs[1] or ctx.const(node.inputs[1]) is not None
    if const_axes:
        # axes fixed at load: the output shape once per input shape, then a reshape (a view)
        axes = (None if attr_axes is None else list(attr_axes)) if not from_input else _ints(
            ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None)
        seen: dict[tuple, tuple] = {}

        def fn_const(args: list) -> list:
            x = args[0]
            shape = seen.get(x.shape)
            if shape is None:
                shape = seen[x.shape] = out_shape(x.shape, axes)
            return [x.reshape(shape)]

        return fn_const

    def fn(args: list) -> list:
        x = args[0]
        axes = None if len(args) < 2 or args[1] is None else _ints(args[1])
        return [x.reshape(out_shape(x.shape, axes))]

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
        if x.dtype == dtype:
            return [x]   # values are never written in place, so the input itself is the cast
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
