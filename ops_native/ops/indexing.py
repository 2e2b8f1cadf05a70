"""Index-valued and index-driven ops, numpy-backed (none is hot in the corpus; each works for every dtype its
ONNX node cases use): TopK, ArgMax / ArgMin, GatherElements, ScatterND, CumSum, NonMaxSuppression."""

from __future__ import annotations

import numpy as np

from ops_native.ops.registry import (
    BuildContext,
    Fn,
    Node,
    OpBuildError,
    attr_str,
    normalize_axis,
    register,
)


def _descending_stable(x: np.ndarray, axis: int) -> np.ndarray:
    """Indices that sort x descending along axis, equal values in ascending index order (ONNX's tie rule);
    no negation, so unsigned and extreme integers sort right."""
    n = x.shape[axis]
    rev = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
    return (n - 1) - np.flip(rev, axis)


@register("TopK")
def _build_topk(node: Node, ctx: BuildContext) -> Fn:
    axis_attr = int(node.attrs.get("axis", -1))
    largest = bool(node.attrs.get("largest", 1))
    legacy_k = node.attrs.get("k")

    def fn(args: list) -> list:
        x = args[0]
        k = int(legacy_k if ctx.opset < 10 else np.asarray(args[1]).reshape(-1)[0])
        axis = normalize_axis(axis_attr, x.ndim)
        if not 0 <= k <= x.shape[axis]:
            raise OpBuildError(f"TopK k={k} for an axis of {x.shape[axis]}")
        order = _descending_stable(x, axis) if largest else np.argsort(x, axis=axis, kind="stable")
        idx = np.take(order, np.arange(k), axis=axis)
        return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]

    return fn


@register("ArgMax", "ArgMin")
def _build_arg(node: Node, ctx: BuildContext) -> Fn:
    axis_attr = int(node.attrs.get("axis", 0))
    keepdims = bool(node.attrs.get("keepdims", 1))
    last = bool(node.attrs.get("select_last_index", 0))
    f = np.argmax if node.op_type == "ArgMax" else np.argmin

    def fn(args: list) -> list:
        x = args[0]
        axis = normalize_axis(axis_attr, x.ndim)
        if x.shape[axis] == 0:
            raise OpBuildError(f"{node.op_type} over an empty axis")
        idx = (x.shape[axis] - 1) - f(np.flip(x, axis), axis=axis) if last else f(x, axis=axis)
        if keepdims:
            idx = np.expand_dims(idx, axis)
        return [np.asarray(idx, dtype=np.int64)]

    return fn


def _checked_indices(idx: np.ndarray, dim: int | np.ndarray, what: str) -> np.ndarray:
    """Indices with negative values counted from the end; OpBuildError for any outside [-dim, dim)."""
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size and (np.any(idx < -dim) or np.any(idx >= dim)):
        raise OpBuildError(f"{what}: index out of range for a dimension of {dim}")
    return np.where(idx < 0, idx + dim, idx)


@register("GatherElements")
def _build_gather_elements(node: Node, ctx: BuildContext) -> Fn:
    axis_attr = int(node.attrs.get("axis", 0))

    def fn(args: list) -> list:
        x, idx = args
        axis = normalize_axis(axis_attr, x.ndim)
        if idx.ndim != x.ndim:
            raise OpBuildError(f"GatherElements indices of rank {idx.ndim} for data of rank {x.ndim}")
        return [np.take_along_axis(x, _checked_indices(idx, x.shape[axis], "GatherElements"), axis=axis)]

    return fn


_SCATTER_REDUCE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


@register("ScatterND")
def _build_scatter_nd(node: Node, ctx: BuildContext) -> Fn:
    reduction = attr_str(node.attrs, "reduction", "none")
    if reduction not in ("none", *_SCATTER_REDUCE):
        raise OpBuildError(f"ScatterND reduction={reduction!r}: expected none, add, mul, max or min")

    def fn(args: list) -> list:
        data, idx, upd = args
        k = idx.shape[-1]
        if k > data.ndim:
            raise OpBuildError(f"ScatterND index tuples of {k} for data of rank {data.ndim}")
        out = data.copy()
        flat = _checked_indices(idx.reshape(-1, k), np.asarray(data.shape[:k], np.int64), "ScatterND")
        where = tuple(flat.T)
        vals = upd.reshape((flat.shape[0],) + data.shape[k:])
        if reduction == "none":
            out[where] = vals
        else:
            _SCATTER_REDUCE[reduction].at(out, where, vals)
        return [out]

    return fn


@register("CumSum")
def _build_cumsum(node: Node, ctx: BuildContext) -> Fn:
    exclusive = bool(node.attrs.get("exclusive", 0))
    reverse = bool(node.attrs.get("reverse", 0))

    def fn(args: list) -> list:
        x = args[0]
        axis = normalize_axis(int(np.asarray(args[1]).reshape(-1)[0]), x.ndim)
        y = np.flip(x, axis) if reverse else x
        s = np.cumsum(y, axis=axis, dtype=x.dtype)
        if exclusive:
            s = np.concatenate([np.zeros_like(np.take(s, [0], axis=axis)), np.take(s, np.arange(s.shape[axis] - 1),
                                                                                  axis=axis)], axis=axis)
        return [np.ascontiguousarray(np.flip(s, axis) if reverse else s)]

    return fn


def _corners(boxes: np.ndarray, center: bool) -> np.ndarray:
    """[n, 4] boxes as (y_min, x_min, y_max, x_max), whichever corner order or the center form they come in."""
    b = boxes.astype(np.float64)
    if center:   # [x_center, y_center, width, height]
        return np.stack([b[:, 1] - b[:, 3] / 2, b[:, 0] - b[:, 2] / 2, b[:, 1] + b[:, 3] / 2,
                         b[:, 0] + b[:, 2] / 2], axis=1)
    return np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 0], b[:, 2]),
                     np.maximum(b[:, 1], b[:, 3])], axis=1)


def _nms_one(c: np.ndarray, scores: np.ndarray, limit: int, iou_thr: float, score_thr: float | None) -> list[int]:
    """Greedy NMS of one (batch, class): highest score first (ties: lower index), drop boxes whose IoU with a
    kept one exceeds iou_thr."""
    cand = np.arange(scores.shape[0]) if score_thr is None else np.nonzero(scores > score_thr)[0]
    order = cand[_descending_stable(scores[cand], 0)]
    area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    kept: list[int] = []
    for i in order:
        if len(kept) >= limit:
            break
        if kept:
            k = np.asarray(kept)
            ih = np.minimum(c[k, 2], c[i, 2]) - np.maximum(c[k, 0], c[i, 0])
            iw = np.minimum(c[k, 3], c[i, 3]) - np.maximum(c[k, 1], c[i, 1])
            inter = np.where((ih > 0) & (iw > 0), ih * iw, 0.0)
            union = area[k] + area[i] - inter
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = np.where((inter > 0) & (area[k] > 0) & (area[i] > 0) & (union > 0), inter / union, 0.0)
            if np.any(iou > iou_thr):
                continue
        kept.append(int(i))
    return kept


@register("NonMaxSuppression")
def _build_nms(node: Node, ctx: BuildContext) -> Fn:
    center = int(node.attrs.get("center_point_box", 0))
    if center not in (0, 1):
        raise OpBuildError(f"NonMaxSuppression center_point_box={center}: expected 0 or 1")

    def opt(args: list, k: int) -> np.ndarray | None:
        return args[k] if len(args) > k and args[k] is not None and args[k].size else None

    def fn(args: list) -> list:
        boxes, scores = args[0], args[1]
        if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[0] != boxes.shape[0] or \
                scores.shape[2] != boxes.shape[1]:
            raise OpBuildError(f"NonMaxSuppression boxes {list(boxes.shape)} / scores {list(scores.shape)}: "
                               "expected [B, N, 4] and [B, C, N]")
        m, iou, st = opt(args, 2), opt(args, 3), opt(args, 4)
        limit = 0 if m is None else int(m.reshape(-1)[0])
        iou_thr = 0.0 if iou is None else float(iou.reshape(-1)[0])
        score_thr = None if st is None else float(st.reshape(-1)[0])
        if not 0.0 <= iou_thr <= 1.0:
            raise OpBuildError(f"NonMaxSuppression iou_threshold {iou_thr}: expected [0, 1]")
        out = []
        for b in range(boxes.shape[0]):
            c = _corners(boxes[b], bool(center))
            for cls in range(scores.shape[1]):
                if limit > 0:
                    out += [(b, cls, i) for i in _nms_one(c, scores[b, cls].astype(np.float64), limit, iou_thr,
                                                          score_thr)]
        return [np.asarray(out, dtype=np.int64).reshape(-1, 3)]

    return fn
