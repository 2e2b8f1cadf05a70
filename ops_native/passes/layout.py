"""Blocked layout: which tensors between convolutions stay in NCHWc8, and the conv + residual fusion that
the blocked direct kernels make possible."""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from ops_native import _core
from ops_native.ops import Node
from ops_native.ops.pooling import auto_pad

BLOCKED = "nchwc8"


def _conv_layout_ok(conv: Node, consts: dict[str, np.ndarray], in_layout: str, out_layout: str) -> bool:
    """Whether this Conv node's native plan can run with these layouts: constant float32 2-D weights
    (and bias), and a geometry the blocked kernels take (ops_native._core.conv_layout_ok)."""
    w = consts.get(conv.inputs[1])
    if w is None or w.ndim != 4 or w.dtype != np.float32:
        return False
    if len(conv.inputs) > 2 and conv.inputs[2] and conv.inputs[2] not in consts:
        return False
    a = conv.attrs
    kernel = tuple(int(k) for k in a.get("kernel_shape", w.shape[2:]))
    if kernel != tuple(w.shape[2:]):
        return False
    strides = tuple(int(v) for v in a.get("strides", (1, 1)))
    dil = tuple(int(v) for v in a.get("dilations", (1, 1)))
    if auto_pad(a) in ("NOTSET", "VALID"):
        pads = tuple(int(v) for v in a.get("pads", (0, 0, 0, 0))) if auto_pad(a) == "NOTSET" else (0,) * 4
        pads = (pads[0], pads[1], pads[2], pads[3])   # ONNX (t, l, b, r) is the plan's order too
    else:  # SAME_*: zero only for a 1x1 stride-1 kernel; any non-zero stands for "padded" in the check
        pads = (0,) * 4 if kernel == (1, 1) and strides == (1, 1) else (1,) * 4
    return _core.conv_layout_ok(w.shape, strides=strides, pads=pads, dilations=dil,
                                        group=int(a.get("group", 1)), in_layout=in_layout, out_layout=out_layout)


def assign_blocked_layouts(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> int:
    """Keep every tensor that flows only from a Conv into Convs in the NCHWc8 layout.

    A tensor qualifies when its producer is a Conv that can write NCHWc8, every consumer is a Conv that
    reads it as its data input and can read NCHWc8, and it is not a graph output. Those convolutions
    then skip gathering their input into channel blocks and transposing their output back; the layout
    changes only where a tensor leaves or enters a chain of convolutions (in an inverted-residual block:
    expand 1x1 -> depthwise -> project 1x1, the two inner tensors). Sets the nodes' `_in_layout` /
    `_out_layout` attrs; returns how many tensors it blocked.
    """
    consumers: dict[str, list[tuple[Node, int]]] = defaultdict(list)
    for n in nodes:
        for k, i in enumerate(n.inputs):
            if i:
                consumers[i].append((n, k))
    blocked = 0
    for n in nodes:
        if n.op_type != "Conv" or not n.outputs or n.outputs[0] in graph_outputs:
            continue
        v = n.outputs[0]
        users = consumers.get(v, [])
        if not users or any(u.op_type != "Conv" or k != 0 for u, k in users):
            continue
        if not _conv_layout_ok(n, consts, n.attrs.get("_in_layout", "nchw"), BLOCKED):
            continue
        if not all(_conv_layout_ok(u, consts, BLOCKED, u.attrs.get("_out_layout", "nchw")) for u, _ in users):
            continue
        n.attrs["_out_layout"] = BLOCKED
        for u, _ in users:
            u.attrs["_in_layout"] = BLOCKED
        blocked += 1
    return blocked


def fuse_conv_residual(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """Conv -> Add(conv, r) ==> one Conv that adds r in its store (a residual connection in one pass).

    For convolutions that read a blocked input (the direct NCHWc path, which has the fused store:
    MobileNet's project convs) and have no activation of their own; the Conv output may not be used
    elsewhere nor be a graph output, and r must be computed before the Conv runs. A residual that
    broadcasts is added as Add would at run time.
    """
    consumers: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        for i in n.inputs:
            if i:
                consumers[i].append(n)
    order = {o: k for k, n in enumerate(nodes) for o in n.outputs if o}
    dead: set[int] = set()
    for k, n in enumerate(nodes):
        if n.op_type != "Conv" or "_act" in n.attrs or "_sum" in n.attrs or \
                n.attrs.get("_in_layout") != BLOCKED or n.attrs.get("_out_layout", "nchw") != "nchw":
            continue
        w = consts.get(n.inputs[1])
        if w is None or (int(n.attrs.get("group", 1)) == w.shape[0] and w.shape[1] == 1):
            continue   # depthwise: its own kernel, no fused store
        out = n.outputs[0]
        users = consumers.get(out, [])
        if out in graph_outputs or len(users) != 1 or users[0].op_type != "Add" or len(users[0].inputs) != 2:
            continue
        add = users[0]
        other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
        if other == out or order.get(other, -1) >= k:
            continue
        n.inputs = [n.inputs[0], n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else "", other]
        n.attrs["_sum"] = True
        n.outputs = [add.outputs[0]]
        dead.add(id(add))
    return [n for n in nodes if id(n) not in dead]



def blocked_layout_default() -> bool:
    """Blocked tensors by default where the ISA has the channel-blocked kernels that make them pay
    (AVX2 / AVX-512); ``OPS_NATIVE_LAYOUT=nchw`` or ``=nchwc8`` overrides (tests, comparisons)."""
    forced = os.environ.get("OPS_NATIVE_LAYOUT", "").strip().lower()
    if forced in ("nchw", BLOCKED):
        return forced == BLOCKED
    return _core.isa().startswith("avx")

