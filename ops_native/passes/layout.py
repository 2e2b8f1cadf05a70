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


# Ops that read and write the blocked layout unchanged (every data input and the output in NCHWc8): they work
# on any layout elementwise or, for pools, through the NCHWc8 pooling kernel. Activations only where a finite
# input gives a finite output: the lanes past the last channel hold whatever the producer left there (finite),
# and a NaN or inf there would reach valid outputs through the zero weights of the next conv.
_UNARY_BLOCKED = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Elu", "Softplus",
                  "Clip", "Identity", "Dropout"}
_BINARY_BLOCKED = {"Add", "Sub", "Mul", "Max", "Min", "Sum"}   # all data inputs blocked, same channel count
_POOLS = {"MaxPool", "AveragePool"}


def _data_inputs(n: Node) -> list[str]:
    """The inputs of a layout-preserving node that carry the tensor (Clip's bounds, Dropout's ratio do not)."""
    if n.op_type in _BINARY_BLOCKED or n.op_type == "Concat":
        return [i for i in n.inputs if i]
    return n.inputs[:1]


def _preserves_layout(n: Node, channels: dict[str, int]) -> bool:
    """Whether node n can run on blocked tensors (before knowing whether its neighbours let it)."""
    named = [o for o in n.outputs if o]
    if len(named) != 1 or named[0] != n.outputs[0]:
        return False   # e.g. Dropout's mask output, which would have to be blocked too
    ins = _data_inputs(n)
    if not ins:
        return False
    if n.op_type in _UNARY_BLOCKED:
        return True
    if n.op_type in _POOLS:
        return len(n.attrs.get("kernel_shape", ())) == 2
    cs = [channels.get(i) for i in ins]
    if n.op_type in _BINARY_BLOCKED:
        # equal channel counts: broadcasting over H / W is the same in both layouts, over C it is not
        return len(ins) >= 2 and cs[0] is not None and all(c == cs[0] for c in cs)
    if n.op_type == "Concat":
        # channel axis of a 4-D tensor, every part whole blocks (no lanes to close up)
        return int(n.attrs.get("axis", 0)) in (1, -3) and all(c is not None and c % 8 == 0 for c in cs)
    return False


def _channel_counts(nodes: list[Node], consts: dict[str, np.ndarray]) -> dict[str, int]:
    """Channels of the tensors a conv produces, carried through the layout-preserving ops (what is unknown
    is left out)."""
    ch: dict[str, int] = {}
    for n in nodes:
        if not n.outputs or not n.outputs[0]:
            continue
        if n.op_type == "Conv":
            w = consts.get(n.inputs[1]) if len(n.inputs) > 1 else None
            if w is not None and w.ndim == 4:
                ch[n.outputs[0]] = int(w.shape[0])
            continue
        cs = [ch.get(i) for i in _data_inputs(n)] if n.op_type in _UNARY_BLOCKED | _BINARY_BLOCKED | _POOLS | \
            {"Concat"} else []
        if not cs or any(c is None for c in cs):
            continue
        if n.op_type == "Concat":
            ch[n.outputs[0]] = sum(cs)
        elif all(c == cs[0] for c in cs):
            ch[n.outputs[0]] = cs[0]
    return ch


def assign_blocked_layouts(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> int:
    """Keep the tensors between convolutions in the NCHWc8 layout, through pools, activations, residual
    adds and channel concats.

    A tensor is blocked when its producer can write NCHWc8 (a Conv whose plan allows it, or a
    layout-preserving op whose data inputs are all blocked) and every consumer can read it (a Conv reading
    it as its data input, or a layout-preserving op whose other data inputs and output are blocked too), and
    it is not a graph output. The set is found by starting from every candidate and removing tensors that
    break a rule until none does. The convolutions then skip gathering their input into channel blocks and
    transposing their output back; the layout changes only where a tensor leaves or enters such a region
    (ResNet's blocks, DenseNet's and Inception's concats, SqueezeNet's fire modules stay blocked end to end).
    Sets the nodes' `_in_layout` / `_out_layout` attrs; returns how many tensors it blocked.
    """
    consumers: dict[str, list[tuple[Node, int]]] = defaultdict(list)
    for n in nodes:
        for k, i in enumerate(n.inputs):
            if i:
                consumers[i].append((n, k))
    channels = _channel_counts(nodes, consts)
    preserving = [n for n in nodes if n.op_type != "Conv" and _preserves_layout(n, channels)]
    keep = {id(n) for n in preserving}
    producer: dict[str, Node] = {}
    blocked: set[str] = set()
    for n in nodes:
        out = n.outputs[0] if n.outputs else ""
        if not out or out in graph_outputs or out in consts:
            continue
        producer[out] = n
        if (n.op_type == "Conv" and _conv_layout_ok(n, consts, "nchw", BLOCKED)
                or n.op_type == "Conv" and _conv_layout_ok(n, consts, BLOCKED, BLOCKED)) or id(n) in keep:
            blocked.add(out)

    def layout(v: str) -> str:
        return BLOCKED if v in blocked else "nchw"

    def consumer_ok(u: Node, k: int) -> bool:
        if u.op_type == "Conv":
            return k == 0 and _conv_layout_ok(u, consts, BLOCKED, layout(u.outputs[0]))
        return id(u) in keep and u.inputs[k] in _data_inputs(u)

    changed = True
    while changed:
        changed = False
        for n in preserving:   # all or nothing: the data inputs and the output share one layout
            group = _data_inputs(n) + [n.outputs[0]]
            if any(v in blocked for v in group) and not all(v in blocked for v in group):
                blocked.difference_update(group)
                changed = True
        for v in list(blocked):
            p = producer[v]
            ok = all(consumer_ok(u, k) for u, k in consumers.get(v, [])) and bool(consumers.get(v))
            if ok and p.op_type == "Conv":
                ok = _conv_layout_ok(p, consts, layout(p.inputs[0]), BLOCKED)
            if not ok:
                blocked.discard(v)
                changed = True
    for n in nodes:
        if n.op_type == "Conv":
            if n.outputs and n.outputs[0] in blocked:
                n.attrs["_out_layout"] = BLOCKED
            if n.inputs[0] in blocked:
                n.attrs["_in_layout"] = BLOCKED
        elif id(n) in keep and n.outputs[0] in blocked:
            n.attrs["_in_layout"] = BLOCKED
            n.attrs["_out_layout"] = BLOCKED
    return len(blocked)


def fuse_conv_residual(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """Conv -> Add(conv, r) ==> one Conv that adds r in its store (a residual connection in one pass).

    For convolutions that read or write a blocked tensor (the direct NCHWc path, which has the fused store:
    MobileNet's project convs, ResNet's last 1x1 of a block) and have no activation of their own; the Conv
    output may not be used elsewhere nor be a graph output, and r must be computed before the Conv runs. Old
    opsets' two-input Sum is the same Add. r has the Conv output's layout (assign_blocked_layouts keeps an
    Add's inputs and output in one layout). A residual that broadcasts is added as Add would at run time.
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
                BLOCKED not in (n.attrs.get("_in_layout"), n.attrs.get("_out_layout")):
            continue
        w = consts.get(n.inputs[1])
        if w is None or (int(n.attrs.get("group", 1)) == w.shape[0] and w.shape[1] == 1):
            continue   # depthwise: its own kernel, no fused store
        out = n.outputs[0]
        users = consumers.get(out, [])
        if out in graph_outputs or len(users) != 1 or users[0].op_type not in ("Add", "Sum") or \
                len(users[0].inputs) != 2:
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

