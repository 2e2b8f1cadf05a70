"""Loading an ONNX model into the executor's plan.

Steps, in order: load + check (``onnx.checker``), convert nodes, topological order, constant folding
(with the executor's own kernels), fusions, binding of every node to a callable (weights packed once),
and a memory plan: each intermediate value lives in a slot that is cleared after its last use.

Fusions (each only when the intermediate value has a single consumer and is not a graph output):
  * Conv -> BatchNormalization            : folded into the Conv weights and bias
  * Conv -> Mul/Add by a per-channel const : folded into the Conv weights and bias
  * Add(x,3) -> Clip(0,6) -> Mul(x,.) -> Div(6) : HardSwish
  * x / sqrt2 -> Erf -> +1 -> * x -> * 0.5   : Gelu
  * Mul(x, scalar) -> Add(., scalar)        : one affine pass, folded into a following 1x1 Conv
  * ConvTranspose -> BatchNormalization / Add(per-channel const) : folded into its weights and bias
  * Conv / Gemm / MatMul(+Add bias) -> Relu | Clip | LeakyRelu | HardSwish | Sigmoid : fused epilogue
  * MatMul (computed B) -> Div / Mul by a scalar const : the GEMM's alpha (attention scores)
  * Conv with a blocked input -> Add(residual)   : added in the conv's store (fuse_conv_residual)
  * Transpose feeding only MatMuls of computed inputs : a strided view the batched GEMM reads in place
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ops_native import ops as ops_mod
from ops_native.ops import BuildContext, Node


class OpsNativeError(RuntimeError):
    """Base class of every error raised by ops_native's executor."""


class UnsupportedOpError(OpsNativeError):
    """The model uses an op (or op variant) the executor cannot run."""


class InvalidModelError(OpsNativeError):
    """The model cannot be loaded: malformed bytes, checker failure, missing initializer, bad attribute."""


class InvalidInputError(OpsNativeError):
    """run() got inputs that do not match the model: unknown/missing name, dtype, rank or fixed dim."""


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, or str for a dynamic dim), ONNX type string and numpy dtype of a graph value."""

    name: str
    shape: list
    type: str
    dtype: np.dtype


_TYPE_NAMES = {
    1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "double", 12: "uint32", 13: "uint64",
}


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    elem = tt.elem_type
    shape: list = []
    if tt.HasField("shape"):
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            else:
                shape.append(d.dim_param or f"unk__{i}")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except Exception:  # noqa: BLE001 - unknown element type codes raise various errors
        dtype = np.dtype(object)
    return TensorInfo(vi.name, shape, f"tensor({_TYPE_NAMES.get(elem, 'unknown')})", dtype)


def load_model(model: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Parse and check a model given as a path, serialized bytes or a ModelProto."""
    try:
        if isinstance(model, onnx.ModelProto):
            proto = model
        elif isinstance(model, (bytes, bytearray, memoryview)):
            proto = onnx.load_from_string(bytes(model))
        elif isinstance(model, (str, os.PathLike)):
            proto = onnx.load(os.fspath(model))
        else:
            raise InvalidModelError(f"model: expected a path, bytes or onnx.ModelProto, got {type(model).__name__}")
    except InvalidModelError:
        raise
    except FileNotFoundError as e:
        raise InvalidModelError(f"model file not found: {e.filename}") from e
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and others for bad bytes
        raise InvalidModelError(f"cannot parse the model: {type(e).__name__}: {e}") from e
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - ValidationError and C++ errors
        raise InvalidModelError(f"model fails onnx.checker: {e}") from e
    if len(proto.graph.node) == 0 and len(proto.graph.output) == 0:
        raise InvalidModelError("model has an empty graph")
    return proto


def default_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset the model imports."""
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _text(v: str | bytes) -> str:
    """A protobuf string field as str (invalid UTF-8 in a damaged model comes back as bytes)."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def convert_nodes(graph: onnx.GraphProto) -> list[Node]:
    """The graph's nodes in the executor's form, with attributes decoded."""
    out = []
    for i, n in enumerate(graph.node):
        attrs: dict[str, Any] = {}
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                attrs[a.name] = a  # subgraphs: kept opaque (ops with subgraphs are unsupported)
                continue
            v = helper.get_attribute_value(a)
            attrs[a.name] = v.decode() if isinstance(v, bytes) else v
        out.append(Node(_text(n.name) or f"{_text(n.op_type)}_{i}", _text(n.op_type), [_text(v) for v in n.input],
                        [_text(v) for v in n.output], attrs, _text(n.domain)))
    return out


def topo_sort(nodes: list[Node], available: set[str]) -> list[Node]:
    """Kahn's order; raises InvalidModelError for an input nothing produces or a cycle."""
    producers = {o: n for n in nodes for o in n.outputs if o}
    for n in nodes:
        for i in n.inputs:
            if i and i not in available and i not in producers:
                raise InvalidModelError(f"node '{n.name}' ({n.op_type}): input '{i}' is neither a graph input, "
                                        "an initializer nor produced by any node")
    pending = {id(n): len({i for i in n.inputs if i and i not in available}) for n in nodes}
    waiting: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        for i in {i for i in n.inputs if i and i not in available}:
            waiting[i].append(n)
    ready = [n for n in nodes if pending[id(n)] == 0]
    order: list[Node] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for o in n.outputs:
            for m in waiting.pop(o, []):
                pending[id(m)] -= 1
                if pending[id(m)] == 0:
                    ready.append(m)
    if len(order) != len(nodes):
        raise InvalidModelError("graph has a cycle")
    return order


# ---------------------------------------------------------------------------------------------------
# fusions
# ---------------------------------------------------------------------------------------------------
class _Fuser:
    """Graph rewrites over the Node list; constants live in ``consts``."""

    def __init__(self, nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> None:
        self.nodes = nodes
        self.consts = consts
        self.outputs = graph_outputs
        self._uid = 0

    def _consumers(self) -> dict[str, list[Node]]:
        cons: dict[str, list[Node]] = defaultdict(list)
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    cons[i].append(n)
        return cons

    def _sole_consumer(self, cons: dict, value: str) -> Node | None:
        users = cons.get(value, [])
        if len(users) != 1 or value in self.outputs:
            return None
        return users[0]

    def _new_const(self, base: str, arr: np.ndarray) -> str:
        self._uid += 1
        name = f"{base}__fused{self._uid}"
        self.consts[name] = arr
        return name

    def _scalar(self, name: str) -> float | None:
        c = self.consts.get(name) if name else None
        if c is None or c.size != 1 or c.dtype != np.float32:
            return None
        return float(c.reshape(()))

    def _clip_bounds(self, n: Node) -> tuple[float, float] | None:
        if "min" in n.attrs or "max" in n.attrs:
            return float(n.attrs.get("min", -np.inf)), float(n.attrs.get("max", np.inf))
        lo = self._scalar(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else -np.inf
        hi = self._scalar(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else np.inf
        if lo is None or hi is None:
            return None
        return lo, hi

    def _remove(self, dead: list[Node]) -> None:
        ids = {id(d) for d in dead}
        self.nodes = [n for n in self.nodes if id(n) not in ids]

    def _conv_param(self, conv: Node) -> tuple[np.ndarray, np.ndarray] | None:
        w = self.consts.get(conv.inputs[1])
        if w is None or w.dtype != np.float32 or "_act" in conv.attrs:
            return None
        b = self.consts.get(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
        if len(conv.inputs) > 2 and conv.inputs[2] and b is None:
            return None
        return w, (np.zeros(w.shape[0], np.float32) if b is None else b.astype(np.float32))

    def _set_conv_param(self, conv: Node, w: np.ndarray, b: np.ndarray) -> None:
        conv.inputs = [conv.inputs[0], self._new_const(conv.name + "_w", w.astype(np.float32)),
                       self._new_const(conv.name + "_b", b.astype(np.float32))]

    def fold_conv_affine(self) -> None:
        """Conv -> BatchNormalization / Mul(per-channel const) / Add(per-channel const) into the Conv."""
        changed = True
        while changed:
            changed = False
            cons = self._consumers()
            for conv in self.nodes:
                if conv.op_type != "Conv":
                    continue
                nxt = self._sole_consumer(cons, conv.outputs[0])
                params = self._conv_param(conv)
                if nxt is None or params is None:
                    continue
                w, b = params
                oc = w.shape[0]
                if nxt.op_type == "BatchNormalization" and nxt.inputs[0] == conv.outputs[0] and \
                        len([o for o in nxt.outputs if o]) == 1 and not nxt.attrs.get("training_mode", 0):
                    bn = [self.consts.get(i) for i in nxt.inputs[1:5]]
                    if any(v is None for v in bn):
                        continue
                    scale, shift = ops_mod.batchnorm_scale_shift(nxt.attrs, *bn)
                    w2 = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
                    b2 = b * scale + shift
                elif nxt.op_type in ("Mul", "Add") and len(nxt.inputs) == 2:
                    other = nxt.inputs[1] if nxt.inputs[0] == conv.outputs[0] else nxt.inputs[0]
                    c = self.consts.get(other)
                    if c is None or c.dtype != np.float32 or other == conv.outputs[0]:
                        continue
                    vec = _per_channel(c, oc, w.ndim)
                    if vec is None:
                        continue
                    if nxt.op_type == "Mul":
                        w2 = w * vec.reshape(-1, *([1] * (w.ndim - 1)))
                        b2 = b * vec
                    else:
                        w2, b2 = w, b + vec
                else:
                    continue
                self._set_conv_param(conv, w2, b2)
                conv.outputs = [nxt.outputs[0]]
                self._remove([nxt])
                changed = True
                break

    def fold_affine_into_pointwise_conv(self) -> None:
        """_Affine(x; a, b) -> Conv 1x1 without padding ==> Conv(x) with W' = a W, b' = bias + b sum(W).

        Exact only without zero padding (a padded border would see 0, not b), hence pointwise convs only.
        """
        cons = self._consumers()
        dead: list[Node] = []
        for aff in self.nodes:
            if aff.op_type != "_Affine":
                continue
            conv = self._sole_consumer(cons, aff.outputs[0])
            if conv is None or conv.op_type != "Conv" or conv.inputs[0] != aff.outputs[0]:
                continue
            w = self.consts.get(conv.inputs[1])
            if w is None or w.dtype != np.float32 or w.ndim != 4 or w.shape[2:] != (1, 1):
                continue
            if any(int(p) for p in conv.attrs.get("pads", [])) or \
                    ops_mod._auto_pad(conv.attrs) not in ("NOTSET", "VALID"):
                continue
            has_b = len(conv.inputs) > 2 and bool(conv.inputs[2])
            b = self.consts.get(conv.inputs[2]) if has_b else np.zeros(w.shape[0], np.float32)
            if b is None:
                continue
            alpha, beta = float(aff.attrs["alpha"]), float(aff.attrs["beta"])
            w64 = w.astype(np.float64)
            b2 = b.astype(np.float64) + beta * w64.sum(axis=(1, 2, 3))
            conv.inputs = [aff.inputs[0], self._new_const(conv.name + "_w", (w64 * alpha).astype(np.float32)),
                           self._new_const(conv.name + "_b", b2.astype(np.float32))]
            dead.append(aff)
        self._remove(dead)

    def fold_conv_transpose_affine(self) -> None:
        """ConvTranspose (group 1) -> BatchNormalization / Add(per-channel const) ==> folded weights / bias."""
        changed = True
        while changed:
            changed = False
            cons = self._consumers()
            for ct in self.nodes:
                if ct.op_type != "ConvTranspose" or int(ct.attrs.get("group", 1)) != 1:
                    continue
                w = self.consts.get(ct.inputs[1])
                nxt = self._sole_consumer(cons, ct.outputs[0])
                if w is None or w.dtype != np.float32 or nxt is None or nxt.inputs[0] != ct.outputs[0]:
                    continue
                has_b = len(ct.inputs) > 2 and bool(ct.inputs[2])
                b = self.consts.get(ct.inputs[2]) if has_b else np.zeros(w.shape[1], np.float32)
                if b is None:
                    continue
                oc = w.shape[1]
                if nxt.op_type == "BatchNormalization" and len([o for o in nxt.outputs if o]) == 1 and \
                        not nxt.attrs.get("training_mode", 0):
                    bn = [self.consts.get(i) for i in nxt.inputs[1:5]]
                    if any(v is None for v in bn):
                        continue
                    scale, shift = ops_mod.batchnorm_scale_shift(nxt.attrs, *bn)
                    w2 = w * scale.reshape(1, -1, *([1] * (w.ndim - 2)))
                    b2 = b * scale + shift
                elif nxt.op_type == "Add" and len(nxt.inputs) == 2:
                    c = self.consts.get(nxt.inputs[1])
                    vec = None if c is None or c.dtype != np.float32 else _per_channel(c, oc, w.ndim)
                    if vec is None:
                        continue
                    w2, b2 = w, b + vec
                else:
                    continue
                ct.inputs = [ct.inputs[0], self._new_const(ct.name + "_w", w2.astype(np.float32)),
                             self._new_const(ct.name + "_b", b2.astype(np.float32))]
                ct.outputs = [nxt.outputs[0]]
                self._remove([nxt])
                changed = True
                break

    def fuse_hardswish(self) -> None:
        """Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(., 6) | Mul(., 1/6)  ==>  HardSwish(x)."""
        cons = self._consumers()
        dead: list[Node] = []
        for add in list(self.nodes):
            if add.op_type != "Add" or len(add.inputs) != 2 or id(add) in {id(d) for d in dead}:
                continue
            k = [i for i, name in enumerate(add.inputs) if self._scalar(name) == 3.0]
            if not k:
                continue
            x = add.inputs[1 - k[0]]
            clip = self._sole_consumer(cons, add.outputs[0])
            if clip is None or clip.op_type != "Clip" or self._clip_bounds(clip) != (0.0, 6.0):
                continue
            mul = self._sole_consumer(cons, clip.outputs[0])
            if mul is None or mul.op_type != "Mul" or sorted(mul.inputs) != sorted([x, clip.outputs[0]]):
                continue
            scale = self._sole_consumer(cons, mul.outputs[0])
            if scale is None or scale.inputs[0] != mul.outputs[0]:
                continue
            s = self._scalar(scale.inputs[1])
            ok = (scale.op_type == "Div" and s == 6.0) or (scale.op_type == "Mul" and s is not None
                                                            and abs(s - 1 / 6) < 1e-7)
            if not ok:
                continue
            hs = Node(scale.name + "_hardswish", "HardSwish", [x], [scale.outputs[0]])
            idx = next(i for i, n in enumerate(self.nodes) if n is scale)
            self.nodes[idx] = hs
            dead += [add, clip, mul]
        self._remove(dead)

    def fuse_gelu(self) -> None:
        """x/sqrt2 (or x*(1/sqrt2)) -> Erf -> +1 -> times x and 0.5 (either order) ==> Gelu(x)."""
        cons = self._consumers()
        dead: list[Node] = []
        dead_ids: set[int] = set()

        def other(n: Node, name: str) -> str:
            return n.inputs[1] if n.inputs[0] == name else n.inputs[0]

        for erf in list(self.nodes):
            if erf.op_type != "Erf" or id(erf) in dead_ids:
                continue
            scale = next((n for n in self.nodes if erf.inputs[0] in n.outputs), None)
            if scale is None or self._sole_consumer(cons, scale.outputs[0]) is not erf or len(scale.inputs) != 2:
                continue
            c = self._scalar(scale.inputs[1])
            if not ((scale.op_type == "Div" and c is not None and abs(c - 2 ** 0.5) < 1e-5) or
                    (scale.op_type == "Mul" and c is not None and abs(c - 2 ** -0.5) < 1e-5)):
                continue
            x = scale.inputs[0]
            add = self._sole_consumer(cons, erf.outputs[0])
            if add is None or add.op_type != "Add" or self._scalar(other(add, erf.outputs[0])) != 1.0:
                continue
            mul = self._sole_consumer(cons, add.outputs[0])
            if mul is None or mul.op_type != "Mul":
                continue
            partner = other(mul, add.outputs[0])
            half = next((n for n in self.nodes if partner in n.outputs), None)
            chain: list[Node]
            if half is not None and half.op_type == "Mul" and x in half.inputs and \
                    self._scalar(other(half, x)) == 0.5 and self._sole_consumer(cons, partner) is mul:
                out, chain = mul.outputs[0], [scale, erf, add, half, mul]  # (x * 0.5) * (1 + erf)
            elif partner == x:
                last = self._sole_consumer(cons, mul.outputs[0])
                if last is None or last.op_type != "Mul" or self._scalar(other(last, mul.outputs[0])) != 0.5:
                    continue
                out, chain = last.outputs[0], [scale, erf, add, mul, last]  # (x * (1 + erf)) * 0.5
            else:
                continue
            gelu = Node(erf.name + "_gelu", "Gelu", [x], [out])
            idx = next(i for i, n in enumerate(self.nodes) if n is chain[-1])
            self.nodes[idx] = gelu
            dead += chain[:-1]
            dead_ids |= {id(n) for n in chain}
        self._remove(dead)

    def fuse_affine(self) -> None:
        """Mul(x, scalar) -> Add(., scalar) ==> one affine pass."""
        cons = self._consumers()
        dead: list[Node] = []
        for mul in list(self.nodes):
            if mul.op_type != "Mul" or len(mul.inputs) != 2:
                continue
            k = [i for i, name in enumerate(mul.inputs) if self._scalar(name) is not None]
            if len(k) != 1:
                continue
            add = self._sole_consumer(cons, mul.outputs[0])
            if add is None or add.op_type != "Add":
                continue
            other = add.inputs[1] if add.inputs[0] == mul.outputs[0] else add.inputs[0]
            beta = self._scalar(other)
            if beta is None or other == mul.outputs[0]:
                continue
            x = mul.inputs[1 - k[0]]
            # the scalars must not change the output shape (rank of x must be >= const rank)
            aff = Node(add.name + "_affine", "_Affine", [x, mul.inputs[k[0]], other], [add.outputs[0]],
                       {"alpha": self._scalar(mul.inputs[k[0]]), "beta": beta})
            idx = next(i for i, n in enumerate(self.nodes) if n is add)
            self.nodes[idx] = aff
            dead.append(mul)
        self._remove(dead)

    def fuse_bias_add(self) -> None:
        """MatMul(x, const B 2-D) -> Add(const [N]) ==> MatMul with a bias; Gemm ditto without C."""
        changed = True
        while changed:
            changed = False
            cons = self._consumers()
            for mm in self.nodes:
                if mm.op_type != "MatMul" or "_bias" in mm.attrs or "_act" in mm.attrs:
                    continue
                b = self.consts.get(mm.inputs[1])
                if b is None or b.ndim != 2 or b.dtype != np.float32:
                    continue
                add = self._sole_consumer(cons, mm.outputs[0])
                if add is None or add.op_type != "Add":
                    continue
                other = add.inputs[1] if add.inputs[0] == mm.outputs[0] else add.inputs[0]
                c = self.consts.get(other)
                n = b.shape[1]
                if c is None or c.dtype != np.float32 or other == mm.outputs[0] or c.size != n or \
                        (c.ndim >= 1 and c.shape[-1] != n) or c.ndim > 2:
                    continue
                mm.attrs["_bias"] = self._new_const(mm.name + "_bias", c.reshape(-1).astype(np.float32))
                mm.outputs = [add.outputs[0]]
                self._remove([add])
                changed = True
                break

    def fuse_matmul_scale(self) -> None:
        """MatMul(A, B) with both inputs computed -> Div / Mul by a scalar constant ==> one batched GEMM
        with alpha (attention's Q.K^T / sqrt(d)): the scale is applied in the GEMM's store, not in another
        pass over the scores. (A constant B goes to the packed path, which has no alpha.)"""
        cons = self._consumers()
        dead: list[Node] = []
        for mm in self.nodes:
            if mm.op_type != "MatMul" or mm.inputs[1] in self.consts or \
                    any(k in mm.attrs for k in ("_bias", "_act", "_alpha")):
                continue
            nxt = self._sole_consumer(cons, mm.outputs[0])
            if nxt is None or nxt.op_type not in ("Div", "Mul") or len(nxt.inputs) != 2:
                continue
            if nxt.op_type == "Div" and nxt.inputs[0] != mm.outputs[0]:
                continue
            other = nxt.inputs[1] if nxt.inputs[0] == mm.outputs[0] else nxt.inputs[0]
            c = self._scalar(other)
            if c is None or other == mm.outputs[0] or self.consts[other].ndim > 1:
                continue   # (a [1, 1, 1]-shaped constant could add dims: leave it to the Div)
            if nxt.op_type == "Div":
                if c == 0.0:
                    continue
                c = float(np.float32(1.0) / np.float32(c))
            mm.attrs["_alpha"] = c
            mm.outputs = [nxt.outputs[0]]
            dead.append(nxt)
        self._remove(dead)

    def mark_transpose_views(self) -> None:
        """A Transpose whose output only feeds MatMuls of two computed inputs (attention's Q, K^T and V
        head splits) returns a strided view instead of a copy: the batched GEMM reads transposed and
        head-interleaved operands in place (ops_native._core.matmul). Marked with ``_view``."""
        cons = self._consumers()
        for n in self.nodes:
            if n.op_type != "Transpose" or n.outputs[0] in self.outputs:
                continue
            users = cons.get(n.outputs[0], [])
            if users and all(u.op_type == "MatMul" and not any(i in self.consts for i in u.inputs[:2])
                             and "_bias" not in u.attrs and "_act" not in u.attrs for u in users):
                n.attrs["_view"] = 1

    def fuse_activation(self) -> None:
        """Conv / Gemm / MatMul (const B) -> activation ==> fused epilogue."""
        cons = self._consumers()
        dead: list[Node] = []
        for n in self.nodes:
            if n.op_type not in ("Conv", "Gemm", "MatMul") or "_act" in n.attrs:
                continue
            if n.op_type == "MatMul":
                b = self.consts.get(n.inputs[1])
                if b is None or b.ndim != 2 or b.dtype != np.float32:
                    continue
            if n.op_type == "Gemm" and len(n.inputs) > 2 and n.inputs[2]:
                c = self.consts.get(n.inputs[2])
                if c is None or c.ndim > 1 and c.shape[0] != 1:
                    continue
            act = self._sole_consumer(cons, n.outputs[0])
            if act is None or act.op_type not in ops_mod.ACT_NAMES:
                continue
            alpha = beta = 0.0
            if act.op_type == "Clip":
                bounds = self._clip_bounds(act)
                if bounds is None:
                    continue
                alpha, beta = bounds
            elif act.op_type == "LeakyRelu":
                alpha = float(act.attrs.get("alpha", 0.01))
            n.attrs.update({"_act": ops_mod.ACT_NAMES[act.op_type], "_act_alpha": alpha, "_act_beta": beta})
            n.outputs = [act.outputs[0]]
            dead.append(act)
        self._remove(dead)


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
    if ops_mod._auto_pad(a) in ("NOTSET", "VALID"):
        pads = tuple(int(v) for v in a.get("pads", (0, 0, 0, 0))) if ops_mod._auto_pad(a) == "NOTSET" else (0,) * 4
        pads = (pads[0], pads[1], pads[2], pads[3])   # ONNX (t, l, b, r) is the plan's order too
    else:  # SAME_*: zero only for a 1x1 stride-1 kernel; any non-zero stands for "padded" in the check
        pads = (0,) * 4 if kernel == (1, 1) and strides == (1, 1) else (1,) * 4
    return ops_mod._core.conv_layout_ok(w.shape, strides=strides, pads=pads, dilations=dil,
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


def _per_channel(c: np.ndarray, oc: int, w_ndim: int) -> np.ndarray | None:
    """c as a per-output-channel vector of length oc if it broadcasts over [N, OC, spatial...] that way."""
    if c.size == 1:
        return np.full(oc, float(c.reshape(())), np.float32)
    shape = c.shape
    if len(shape) > w_ndim:
        return None
    full = (1,) * (w_ndim - len(shape)) + tuple(shape)  # aligned to [N, OC, *spatial]
    if full[1] == oc and all(d == 1 for i, d in enumerate(full) if i != 1):
        return c.reshape(oc).astype(np.float32)
    return None


@ops_mod.register("_Affine")
def _build_affine(node: Node, ctx: BuildContext):  # noqa: ANN202 - registry builder
    from ops_native import _core

    code = _core.OPS_UNARY["Affine"]
    alpha, beta = float(node.attrs["alpha"]), float(node.attrs["beta"])
    threads = ctx.threads

    def fn(args: list) -> list:
        x = args[0]
        if x.dtype != np.float32 or x.ndim < max(args[1].ndim, args[2].ndim):
            y = x * args[1] + args[2]
            return [np.asarray(y, dtype=x.dtype)]
        return [_core.ops_unary(code, x, alpha, beta, ctx.pool.empty(x.shape), threads)]

    return fn


# ---------------------------------------------------------------------------------------------------
# the compiled plan
# ---------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Everything InferenceSession.run needs."""

    steps: list          # (fn, in_slots, out_slots, free_slots) per node
    nodes: list[Node]    # the node of each step (for error messages and profiling)
    template: list       # initial slot values: constants filled, everything else None
    input_slots: dict[str, int]
    output_slots: dict[str, int]
    const_slots: set[int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    pool: ops_mod.BufferPool
    blocked_values: int = 0  # intermediate tensors kept in NCHWc8 (assign_blocked_layouts)


def unsupported_node_ops(nodes: list[Node]) -> list[str]:
    """Op types (in first-seen order) of nodes that have no implementation."""
    seen: list[str] = []
    for n in nodes:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        if (n.domain not in ("", "ai.onnx") or n.op_type not in ops_mod.REGISTRY or n.op_type.startswith("_")) \
                and key not in seen:
            seen.append(key)
    return seen


def _raise_unsupported(nodes: list[Node]) -> None:
    for n in nodes:
        if n.domain not in ("", "ai.onnx") or n.op_type not in ops_mod.REGISTRY or n.op_type.startswith("_"):
            dom = f" domain '{n.domain}'" if n.domain not in ("", "ai.onnx") else ""
            raise UnsupportedOpError(f"node '{n.name}' (op {n.op_type}{dom}) is not supported; supported ops: "
                                     f"{', '.join(ops_mod.supported_ops())}")


def _build_node(n: Node, ctx: BuildContext):  # noqa: ANN202 - returns the bound callable
    try:
        return ops_mod.REGISTRY[n.op_type](n, ctx)
    except ops_mod.OpNotSupported as e:
        raise UnsupportedOpError(f"node '{n.name}' (op {n.op_type}): {e}") from e
    except (ops_mod.OpBuildError, KeyError, TypeError, ValueError, IndexError) as e:
        raise InvalidModelError(f"node '{n.name}' (op {n.op_type}): invalid attributes or inputs: "
                                f"{type(e).__name__}: {e}") from e


_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def fold_constants(nodes: list[Node], consts: dict[str, np.ndarray], ctx: BuildContext) -> list[Node]:
    """Run every node whose inputs are all constant once, now; return the nodes left to run."""
    rest = []
    for n in nodes:
        if n.op_type not in _NO_FOLD and n.op_type in ops_mod.REGISTRY and \
                all((not i) or i in consts for i in n.inputs):
            fn = _build_node(n, ctx)
            try:
                outs = fn([consts.get(i) if i else None for i in n.inputs])
            except ops_mod.OpNotSupported as e:
                raise UnsupportedOpError(f"node '{n.name}' (op {n.op_type}): {e}") from e
            except Exception as e:  # noqa: BLE001 - any kernel/shape error on constant data
                raise InvalidModelError(f"node '{n.name}' (op {n.op_type}) fails on its constant inputs: "
                                        f"{type(e).__name__}: {e}") from e
            for name, v in zip(n.outputs, outs):
                if name:
                    consts[name] = np.asarray(v)
            continue
        rest.append(n)
    return rest


def blocked_layout_default() -> bool:
    """Blocked tensors by default where the ISA has the channel-blocked kernels that make them pay
    (AVX2 / AVX-512); ``OPS_NATIVE_LAYOUT=nchw`` or ``=nchwc8`` overrides (tests, comparisons)."""
    forced = os.environ.get("OPS_NATIVE_LAYOUT", "").strip().lower()
    if forced in ("nchw", BLOCKED):
        return forced == BLOCKED
    return ops_mod._core.isa().startswith("avx")


def compile_model(proto: onnx.ModelProto, threads: int, fuse: bool = True, blocked: bool | None = None) -> Plan:
    """Turn a checked ModelProto into a Plan. Raises UnsupportedOpError / InvalidModelError.

    blocked: keep tensors between convolutions in NCHWc8 (None: blocked_layout_default())."""
    graph = proto.graph
    opset = default_opset(proto)
    consts: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        try:
            consts[init.name] = numpy_helper.to_array(init)
        except Exception as e:  # noqa: BLE001 - external data missing etc.
            raise InvalidModelError(f"initializer '{init.name}' cannot be read: {e}") from e
    init_names = set(consts)
    inputs = [_tensor_info(vi) for vi in graph.input if vi.name not in init_names]
    outputs = [_tensor_info(vi) for vi in graph.output]
    nodes = convert_nodes(graph)
    _raise_unsupported(nodes)
    available = set(consts) | {i.name for i in inputs}
    nodes = topo_sort(nodes, available)
    ctx = BuildContext(consts=consts, opset=opset, threads=threads)
    nodes = fold_constants(nodes, consts, ctx)
    graph_outputs = {o.name for o in outputs}
    if fuse:
        f = _Fuser(nodes, consts, graph_outputs)
        f.fold_conv_affine()
        f.fold_conv_transpose_affine()
        f.fuse_hardswish()
        f.fuse_gelu()
        f.fuse_affine()
        f.fuse_bias_add()
        f.fuse_matmul_scale()
        f.fuse_activation()
        f.mark_transpose_views()
        f.fold_affine_into_pointwise_conv()
        nodes = f.nodes
    n_blocked = assign_blocked_layouts(nodes, consts, graph_outputs) if (
        blocked_layout_default() if blocked is None else blocked) else 0
    if fuse and n_blocked:
        nodes = fuse_conv_residual(nodes, consts, graph_outputs)
    for o in outputs:
        if o.name not in consts and o.name not in {i.name for i in inputs} and \
                not any(o.name in n.outputs for n in nodes):
            raise InvalidModelError(f"graph output '{o.name}' is not produced by any node")

    # slots: 0 is the absent optional input; constants first, then everything else
    slot: dict[str, int] = {"": 0}
    template: list = [None]
    used = {i for n in nodes for i in n.inputs} | graph_outputs
    for name, value in consts.items():
        if name in used:
            slot[name] = len(template)
            template.append(value)
    const_slots = set(range(1, len(template)))
    for i in inputs:
        slot[i.name] = len(template)
        template.append(None)
    for n in nodes:
        for o in n.outputs:
            if o and o not in slot:
                slot[o] = len(template)
                template.append(None)
    last_use: dict[int, int] = {}
    for idx, n in enumerate(nodes):
        for i in n.inputs:
            last_use[slot[i]] = idx
    keep = const_slots | {slot[o] for o in graph_outputs if o in slot}
    input_slots = {slot[i.name] for i in inputs}
    steps = []
    for idx, n in enumerate(nodes):
        fn = _build_node(n, ctx)
        ins = tuple(slot[i] for i in n.inputs)
        outs = tuple(slot[o] if o else 0 for o in n.outputs)
        frees = [s for s in set(ins) if s and s not in keep and last_use.get(s) == idx]
        frees += [s for s in outs if s and s not in keep and s not in last_use]
        frees = [-s if s in input_slots else s for s in frees]  # caller's arrays: clear, never recycle
        steps.append((fn, ins, outs, tuple(frees)))
    return Plan(steps=steps, nodes=nodes, template=template,
                input_slots={i.name: slot[i.name] for i in inputs},
                output_slots={o.name: slot[o.name] for o in outputs if o.name in slot},
                const_slots=const_slots, inputs=inputs, outputs=outputs, pool=ctx.pool,
                blocked_values=n_blocked)
