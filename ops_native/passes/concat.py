"""Channel Concats written in place by the convolutions that produce their inputs.

Inception, SqueezeNet's fire modules, CSP / YOLO necks and U-Net decoders join branches with a Concat over
channels. Run as written, every branch output is computed into a buffer of its own and then copied into
the Concat's output: one more write and read of the whole joined tensor. For one image (N = 1) the
channel range of one input is a contiguous block of the output, in NCHW ([C][H][W]) as in the blocked
NCHWc8 layout ([C/8][H][W][8], whole blocks), so a convolution can store its result straight there.

The pass rewrites ``Concat(a, conv1(x1), conv2(x2))`` into

    buf, v1, v2 = _ConcatBuffer(x1, a)   # the joined output, allocated before the first producer runs,
                                         # and the views of it where conv1 and conv2 go
    y1 = Conv(x1, ..., v1)               # stores into v1 and returns it
    y2 = Conv(x2, ..., v2)
    out = Concat(a, y1, y2, buf, v1, v2) # copies only the inputs not already in place (here a), returns buf

Each such convolution has constant weights and no other consumer. Nothing is reordered: the buffer is
made right before the first in-place producer, so only the convolutions that run after every other input
of the Concat exists write in place (the others are copied as before). Everything is decided again at run
time from the actual arrays: with N > 1, a 1-D convolution, another shape than the buffer's,
``_ConcatBuffer`` gives None or the convolution writes a buffer of its own, and the Concat then copies.
The buffer travels as a value of the
run (a slot), so concurrent runs of one plan share nothing. The memory plan needs nothing new: the views
and the buffer are referenced by the Concat's output, so the pool never recycles them early (pool.pxi).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ops_native.ops import Node

BLOCKED = "nchwc8"


def _channel_axis(n: Node) -> bool:
    """True when the Concat joins channels of 4-D NCHW tensors or of blocked ones (axis 1 either way)."""
    if n.attrs.get("_in_layout") == BLOCKED:
        return True
    return int(n.attrs.get("axis", 0)) in (1, -3)


def _in_place_conv(p: Node, consts: dict[str, np.ndarray], layout: str | None) -> int | None:
    """Entries along axis 1 (channels, or 8-channel blocks) a convolution writes, or None when it cannot
    write into a Concat: computed weights, not a 2-D conv, a fused residual, another layout than the Concat's."""
    if p.op_type != "Conv" or p.attrs.get("_sum") or len(p.inputs) < 2:
        return None
    w = consts.get(p.inputs[1])
    if w is None or w.ndim != 4:
        return None
    if len(p.inputs) > 2 and p.inputs[2] and p.inputs[2] not in consts:
        return None
    if (p.attrs.get("_out_layout", "nchw") == BLOCKED) != (layout == BLOCKED):
        return None
    oc = int(w.shape[0])
    if layout == BLOCKED:
        return oc // 8 if oc % 8 == 0 else None
    return oc


def write_concats_in_place(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """Rewrite channel Concats whose inputs come from convolutions (see the module docstring)."""
    consumers: dict[str, int] = defaultdict(int)
    for n in nodes:
        for i in n.inputs:
            if i:
                consumers[i] += 1
    position = {o: k for k, n in enumerate(nodes) for o in n.outputs if o}
    producer = {o: n for n in nodes for o in n.outputs if o}
    before: dict[int, Node] = {}          # id(first in-place producer) -> the buffer node that precedes it
    for c in nodes:
        if c.op_type != "Concat" or not _channel_axis(c) or len(c.inputs) < 2 or \
                any(not i or i in consts for i in c.inputs):
            continue
        layout = c.attrs.get("_in_layout")
        plan: list = []                      # per input: entries (int) for an in-place conv, else None
        for i in c.inputs:
            p = producer.get(i)
            units = None
            if p is not None and consumers[i] == 1 and i not in graph_outputs and c.inputs.count(i) == 1 \
                    and "_into" not in p.attrs and id(p) not in before:
                units = _in_place_conv(p, consts, layout)
            plan.append(units)
        # The buffer is made just before the first in-place producer, so every other input must exist by
        # then: producers that run before one of those are computed as before, and copied. Nothing moves
        # (moving a branch's last conv away from the one feeding it cost its input's cache locality).
        ready = max((position.get(i, -1) for i, u in zip(c.inputs, plan) if u is None), default=-1)
        plan = [u if u is not None and position[i] > ready else None for i, u in zip(c.inputs, plan)]
        convs = sorted((producer[i] for i, u in zip(c.inputs, plan) if u is not None),
                       key=lambda p: position[p.outputs[0]])
        if not convs:
            continue
        buf = f"{c.outputs[0]}__concat_buffer"
        views = {id(p): f"{buf}_{k}" for k, p in enumerate(producer[i] for i, u in zip(c.inputs, plan) if u is not None)}
        others = [i for i, u in zip(c.inputs, plan) if u is None]
        alloc = Node(name=f"{c.name}__buffer", op_type="_ConcatBuffer", inputs=[convs[0].inputs[0], *others],
                     outputs=[buf, *views.values()],
                     attrs={"_layout": layout or "nchw", "_plan": plan, "_first": convs[0],
                            "_w_shape": consts[convs[0].inputs[1]].shape})
        for p in convs:
            p.inputs = [p.inputs[0], p.inputs[1], p.inputs[2] if len(p.inputs) > 2 else "", views[id(p)]]  # after the bias
            p.attrs["_into"] = True
        c.attrs["_in_place"] = [k for k, u in enumerate(plan) if u is not None]   # inputs with a view
        c.inputs = [*c.inputs, buf, *(views[id(producer[c.inputs[k]])] for k in c.attrs["_in_place"])]
        before[id(convs[0])] = alloc
    if not before:
        return nodes
    out: list[Node] = []
    for n in nodes:
        if id(n) in before:
            out.append(before[id(n)])
        out.append(n)
    return out
