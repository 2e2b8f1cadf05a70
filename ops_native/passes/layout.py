"""Blocked layout: which tensors between convolutions stay in NCHWc8, and the conv + residual fusion that
the blocked direct kernels make possible."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from ops_native import _core
from ops_native.ops import Node
from ops_native.ops.pooling import auto_pad

BLOCKED = "nchwc8"
BLOCKED_SUFFIX = "::nchwc8"   # the blocked name of a tensor that also has an NCHW copy (_FromBlocked)


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
                  "Clip", "Identity", "Dropout", "_ChannelShuffle"}   # the shuffle: a channel gather on blocks
_BINARY_BLOCKED = {"Add", "Sub", "Mul", "Max", "Min", "Sum"}   # all data inputs blocked, same channel count
_POOLS = {"MaxPool", "AveragePool"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool"}   # on the NCHWc8 pooling kernel, window = the plane
_CONST_BINARY_BLOCKED = {"Add", "Sub", "Mul", "Max", "Min"}   # with a per-channel constant, see _channel_const


def _data_inputs(n: Node, consts: dict[str, np.ndarray] | None = None) -> list[str]:
    """The inputs of a layout-preserving node that carry the tensor (Clip's bounds, Dropout's ratio, a
    BatchNormalization's statistics and a binary op's constant operand do not)."""
    if n.op_type in _BINARY_BLOCKED or n.op_type == "Concat":
        return [i for i in n.inputs if i and (consts is None or i not in consts)]
    return n.inputs[:1]


def _channel_const(c: np.ndarray, channels: int) -> bool:
    """Whether constant c broadcasts against an [N, C, H, W] tensor per channel or as a scalar (then the same
    values, laid out in blocks, broadcast against the NCHWc8 tensor): shape [C, 1, 1], [1, C, 1, 1] or one
    element."""
    if c.dtype != np.float32:
        return False
    if c.size == 1:
        return c.ndim <= 4
    dims = (1,) * (4 - c.ndim) + tuple(c.shape) if c.ndim <= 4 else ()
    return len(dims) == 4 and dims[0] == 1 and dims[1] == channels and dims[2] == 1 and dims[3] == 1


def _blocked_const(c: np.ndarray, channels: int) -> np.ndarray:
    """A per-channel (or scalar) constant as [1, ceil(C/8), 1, 1, 8]; the lanes past channel C get zeros."""
    flat = np.broadcast_to(c.reshape(-1), (channels,)) if c.size == 1 else c.reshape(-1)
    blocks = -(-channels // 8)
    out = np.zeros(blocks * 8, np.float32)
    out[:channels] = flat
    return out.reshape(1, blocks, 1, 1, 8)


def _preserves_layout(n: Node, channels: dict[str, int], consts: dict[str, np.ndarray]) -> bool:
    """Whether node n can run on blocked tensors (before knowing whether its neighbours let it)."""
    named = [o for o in n.outputs if o]
    if len(named) != 1 or named[0] != n.outputs[0]:
        return False   # e.g. Dropout's mask output, which would have to be blocked too
    ins = _data_inputs(n, consts)
    if not ins:
        return False
    if n.op_type in _UNARY_BLOCKED:
        return True
    if n.op_type in _POOLS:
        return len(n.attrs.get("kernel_shape", ())) == 2
    if n.op_type in _GLOBAL_POOLS:   # 4-D only: the channel count is known, and only convs made the tensor
        return True
    if n.op_type == "BatchNormalization":   # inference: one scale and shift per channel, known now
        return not int(n.attrs.get("training_mode", 0)) and len(n.inputs) == 5 and \
            all(i in consts for i in n.inputs[1:5]) and channels.get(ins[0]) is not None
    cs = [channels.get(i) for i in ins]
    if n.op_type in _BINARY_BLOCKED:
        # equal channel counts: broadcasting over H / W is the same in both layouts, over C it is not; a
        # constant operand per channel (an unfolded BatchNorm's Mul / Add) is laid out in blocks too
        others = [i for i in n.inputs if i and i in consts]
        if cs[0] is None or not all(c == cs[0] for c in cs):
            return False
        if others:
            return len(ins) == 1 and len(others) == 1 and n.op_type in _CONST_BINARY_BLOCKED and \
                _channel_const(consts[others[0]], cs[0])
        return len(ins) >= 2
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
        cs = [ch.get(i) for i in _data_inputs(n, consts)] if n.op_type in _UNARY_BLOCKED | _BINARY_BLOCKED | \
            _POOLS | _GLOBAL_POOLS | {"Concat", "BatchNormalization"} else []
        if not cs or any(c is None for c in cs):
            continue
        others = [consts[i] for i in n.inputs if i in consts] if n.op_type in _BINARY_BLOCKED else []
        if others and not (len(others) == 1 and _channel_const(others[0], cs[0])):
            continue   # a constant that broadcasts the channels up (or is not per channel)
        if n.op_type == "Concat":
            ch[n.outputs[0]] = sum(cs)
        elif all(c == cs[0] for c in cs):
            ch[n.outputs[0]] = cs[0]
    return ch


def assign_blocked_layouts(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> int:
    """Keep the tensors between convolutions in the NCHWc8 layout, through pools, activations, residual
    adds and channel concats. Changes ``nodes`` in place (layout attrs, and conversion nodes inserted).

    A tensor is blocked when its producer can write NCHWc8 (a Conv whose plan allows it, or a
    layout-preserving op whose data inputs are all blocked), it is not a constant, and either some consumer
    reads it blocked (a Conv reading it as its data input, or a layout-preserving op whose other data inputs
    and output are blocked too) or its producer is a layout-preserving op. The set is found by starting from
    every candidate and removing tensors that break a rule until none does. Consumers that cannot read
    NCHWc8 (a Flatten, a Shape, a graph output, an Add with a tensor that is not blocked) read an NCHW copy
    made by one internal ``_FromBlocked`` step inserted after the producer: one conversion at the edge of a
    region instead of the whole region falling back to NCHW (ResNet's last stage before its
    pool and Flatten; a pool that feeds a classifier; a feature map that is also a graph output). A Conv whose
    output no consumer reads blocked simply writes NCHW itself.
    Sets the nodes' `_in_layout` / `_out_layout` attrs; returns how many tensors it blocked.
    """
    consumers: dict[str, list[tuple[Node, int]]] = defaultdict(list)
    for n in nodes:
        for k, i in enumerate(n.inputs):
            if i:
                consumers[i].append((n, k))
    for n in nodes:   # an inference Dropout's mask that nobody reads (old exports name it) is not made at all
        if n.op_type == "Dropout" and len(n.outputs) > 1 and n.outputs[1] and \
                n.outputs[1] not in consumers and n.outputs[1] not in graph_outputs:
            n.outputs[1] = ""
    channels = _channel_counts(nodes, consts)
    preserving = [n for n in nodes if n.op_type != "Conv" and _preserves_layout(n, channels, consts)]
    keep = {id(n) for n in preserving}
    producer: dict[str, Node] = {}
    blocked: set[str] = set()
    for n in nodes:
        out = n.outputs[0] if n.outputs else ""
        if not out or out in consts or out not in channels:
            continue
        producer[out] = n
        if (n.op_type == "Conv" and _conv_layout_ok(n, consts, "nchw", BLOCKED)
                or n.op_type == "Conv" and _conv_layout_ok(n, consts, BLOCKED, BLOCKED)) or id(n) in keep:
            blocked.add(out)

    def layout(v: str) -> str:
        return BLOCKED if v in blocked else "nchw"

    def reads_blocked(u: Node, k: int) -> bool:
        if u.op_type == "Conv":
            return k == 0 and _conv_layout_ok(u, consts, BLOCKED, layout(u.outputs[0]))
        return id(u) in keep and u.outputs[0] in blocked and u.inputs[k] in _data_inputs(u, consts)

    changed = True
    while changed:
        changed = False
        for n in preserving:   # a blocked output needs every data input blocked (else the op runs on NCHW)
            if n.outputs[0] in blocked and not all(v in blocked for v in _data_inputs(n, consts)):
                blocked.discard(n.outputs[0])
                changed = True
        for v in list(blocked):
            p = producer[v]
            if p.op_type == "Conv":
                # a conv writes NCHW itself more cheaply than a conversion after it
                ok = any(reads_blocked(u, k) for u, k in consumers.get(v, [])) and \
                    _conv_layout_ok(p, consts, layout(p.inputs[0]), BLOCKED)
            elif p.op_type in _POOLS | _GLOBAL_POOLS:   # a pool's output is at most its input's: convert after it
                ok = bool(consumers.get(v)) or v in graph_outputs
            else:   # a copy after an op as large as its input costs what running that op on NCHW saves
                ok = any(reads_blocked(u, k) for u, k in consumers.get(v, []))
            if not ok:
                blocked.discard(v)
                changed = True
    for n in nodes:
        if n.op_type == "Conv":
            if n.outputs and n.outputs[0] in blocked:
                n.attrs["_out_layout"] = BLOCKED
            if n.inputs[0] in blocked and reads_blocked(n, 0):   # else it reads the NCHW copy
                n.attrs["_in_layout"] = BLOCKED
        elif id(n) in keep and n.outputs[0] in blocked:
            n.attrs["_in_layout"] = BLOCKED
            n.attrs["_out_layout"] = BLOCKED
            if n.op_type == "_ChannelShuffle":
                n.attrs["channels"] = channels[n.outputs[0]]
            if n.op_type in _BINARY_BLOCKED:   # its constant operand, laid out in blocks once
                for k, i in enumerate(n.inputs):
                    if i in consts:
                        name = i + BLOCKED_SUFFIX
                        if name not in consts:
                            consts[name] = _blocked_const(consts[i], channels[n.outputs[0]])
                        n.inputs[k] = name
    _insert_conversions(nodes, blocked, consumers, channels, graph_outputs, reads_blocked)
    return len(blocked)


def _insert_conversions(nodes: list[Node], blocked: set[str], consumers: dict[str, list[tuple[Node, int]]],
                        channels: dict[str, int], graph_outputs: set[str],
                        reads_blocked: Callable[[Node, int], bool]) -> None:
    """For every blocked tensor v that something reads as NCHW (a consumer, or the caller as a graph output):
    the producer and the blocked readers use the new name ``v + BLOCKED_SUFFIX``, and a ``_FromBlocked`` node
    right after the producer writes v itself in NCHW, so every NCHW reader and the graph output keep v's name."""
    plans = []   # decided before any renaming: reads_blocked looks at the consumers' output names
    for v in sorted(blocked):
        readers = consumers.get(v, [])
        nchw = {(id(u), k) for u, k in readers if not reads_blocked(u, k)}
        if nchw or v in graph_outputs:
            plans.append((v, readers, nchw))
    for v, readers, nchw in plans:
        vb = v + BLOCKED_SUFFIX
        at = next(idx for idx, n in enumerate(nodes) if n.outputs and n.outputs[0] == v)
        nodes[at].outputs[0] = vb
        for u, k in readers:
            if (id(u), k) not in nchw:
                u.inputs[k] = vb
        nodes.insert(at + 1, Node(v + "_to_nchw", "_FromBlocked", [vb], [v], {"channels": channels[v]}))


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
        if other == out or other in consts or order.get(other, -1) >= k:
            continue
        n.inputs = [n.inputs[0], n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else "", other]
        n.attrs["_sum"] = True
        n.outputs = [add.outputs[0]]
        dead.add(id(add))
    return [n for n in nodes if id(n) not in dead]



def fuse_channel_shuffle(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """Reshape [N, G, C/G, H, W] -> Transpose(0, 2, 1, 3, 4) -> Reshape [N, C, H, W] (the channel shuffle of
    ShuffleNet v1/v2 and other grouped-conv nets) ==> one internal ``_ChannelShuffle`` node, which the layout
    pass keeps on blocked tensors (a channel gather) where the NCHW form would need conversions around it.

    Only constant 5-D / 4-D targets and that permutation, with the two inner tensors read by nothing else; the
    node keeps both targets and checks at run time that they describe that shuffle of its input (else it runs
    the three ops as written)."""
    consumers: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        for i in n.inputs:
            if i:
                consumers[i].append(n)

    def const_shape(n: Node) -> list[int] | None:
        if n.op_type != "Reshape" or len(n.inputs) != 2 or n.inputs[1] not in consts or \
                int(n.attrs.get("allowzero", 0)):
            return None
        return [int(v) for v in consts[n.inputs[1]].reshape(-1)]

    dead: set[int] = set()
    for r1 in nodes:
        s1 = const_shape(r1)
        if s1 is None or len(s1) != 5 or r1.outputs[0] in graph_outputs:
            continue
        users = consumers.get(r1.outputs[0], [])
        tr = users[0] if len(users) == 1 else None
        if tr is None or tr.op_type != "Transpose" or [int(v) for v in tr.attrs.get("perm", ())] != [0, 2, 1, 3, 4] \
                or tr.outputs[0] in graph_outputs:
            continue
        users = consumers.get(tr.outputs[0], [])
        r2 = users[0] if len(users) == 1 else None
        s2 = const_shape(r2) if r2 is not None else None
        if s2 is None or len(s2) != 4:
            continue
        r2.op_type = "_ChannelShuffle"
        r2.inputs = [r1.inputs[0]]
        r2.attrs = {"shape5": s1, "shape4": s2}
        dead.update((id(r1), id(tr)))
    return [n for n in nodes if id(n) not in dead]


def subsample_strided_pointwise(nodes: list[Node], consts: dict[str, np.ndarray]) -> list[Node]:
    """A 1x1 Conv with strides (sh, sw) > 1 and no padding reading a blocked tensor ==> an internal ``_Subsample``
    step (x[:, :, ::sh, ::sw] copied, a quarter of the input at stride 2) and the same Conv at stride 1.

    The conv then reads the compact copy in place on the pointwise kernel (whole register tiles over the
    flattened plane) instead of packing the whole input and running rows of every other pixel: ResNet's
    downsampling shortcuts, 1024 -> 2048 at 14x14 measured 1.38x ORT's time before."""
    out: list[Node] = []
    for n in nodes:
        a = n.attrs
        w = consts.get(n.inputs[1]) if n.op_type == "Conv" and len(n.inputs) > 1 else None
        strides = tuple(int(v) for v in a.get("strides", (1, 1)))
        if w is None or w.ndim != 4 or w.shape[2:] != (1, 1) or a.get("_in_layout") != BLOCKED or \
                strides == (1, 1) or len(strides) != 2 or int(a.get("group", 1)) != 1 or \
                auto_pad(a) not in ("NOTSET", "VALID") or any(int(v) for v in a.get("pads", (0, 0, 0, 0))):
            out.append(n)
            continue
        sub = n.inputs[0] + f"::sub{strides[0]}x{strides[1]}"
        out.append(Node(n.name + "_subsample", "_Subsample", [n.inputs[0]], [sub], {"strides": list(strides)}))
        n.inputs = [sub] + n.inputs[1:]
        n.attrs["strides"] = [1, 1]
        out.append(n)
    return out


def blocked_layout_default() -> bool:
    """Blocked tensors by default where the ISA has the channel-blocked kernels that make them pay
    (AVX2 / AVX-512); ``OPS_NATIVE_LAYOUT=nchw`` or ``=nchwc8`` overrides (tests, comparisons)."""
    forced = os.environ.get("OPS_NATIVE_LAYOUT", "").strip().lower()
    if forced in ("nchw", BLOCKED):
        return forced == BLOCKED
    return _core.isa().startswith("avx")

