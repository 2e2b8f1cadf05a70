"""Graph rewrites that merge nodes before binding (each only when the intermediate value has a single
consumer and is not a graph output):

  * Conv -> BatchNormalization            : folded into the Conv weights and bias
  * Conv -> Mul/Add by a per-channel const : folded into the Conv weights and bias
  * Add(x,3) -> Clip(0,6) -> Mul(x,.) -> Div(6) : HardSwish
  * x / sqrt2 -> Erf -> +1 -> * x -> * 0.5   : Gelu
  * tanh(sqrt(2/pi)(x + 0.044715 x^3)) -> +1 -> * x -> * 0.5 : Gelu(approximate="tanh")
  * mean over the last axes, x - mean, mean of its square, + eps, sqrt, divide (then * gamma + beta)
                                            : LayerNormalization (the pre-opset-17 / TF export of it)
  * E[x], E[x*x] - E[x]^2 (clamped at 0), (x - E[x]) / sqrt(var + eps) (then * gamma + beta), over any
    block of axes, the means as ReduceSum * 1/n with a Reshape back : _MomentNorm (JAX / Flax exports)
  * Mul(x, scalar) -> Add(., scalar)        : one affine pass (internal op _Affine), folded into a
                                              following 1x1 Conv
  * ConvTranspose -> BatchNormalization / Add(per-channel const) : folded into its weights and bias
  * BatchNormalization -> Mul/Add by a per-channel const : one BatchNormalization (its scale and shift)
  * Conv / Gemm / MatMul(+Add bias) -> Relu | Clip | LeakyRelu | HardSwish | Sigmoid | Gelu : fused epilogue
  * Conv / Gemm / MatMul(+Add bias) -> Sigmoid -> Mul(y, sigmoid) (SiLU / Swish) : fused epilogue
  * MatMul (computed B) -> Div / Mul by a scalar const : the GEMM's alpha (attention scores)
  * Transpose feeding only MatMuls of computed inputs : a strided view the batched GEMM reads in place

(Conv + Add(residual) needs the blocked layout: passes.layout.fuse_conv_residual.)
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ops_native.ops import Node
from ops_native.ops.linalg import ACT_NAMES
from ops_native.ops.norm import batchnorm_scale_shift
from ops_native.ops.pooling import auto_pad


def fuse(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """Every fusion, in the order that lets later ones see the results of earlier ones; returns the new node
    list (new constants, e.g. folded weights, are added to ``consts``)."""
    f = Fuser(nodes, consts, graph_outputs)
    f.fold_conv_affine()
    f.fold_conv_transpose_affine()
    f.fold_batchnorm_affine()
    f.fuse_hardswish()
    f.fuse_gelu()
    f.fuse_layernorm()
    f.fuse_layernorm_moments()
    f.fuse_affine()
    f.fuse_bias_add()
    f.fuse_matmul_scale()
    f.fuse_silu()
    f.fuse_activation()
    f.mark_transpose_views()
    f.fold_affine_into_pointwise_conv()
    return f.nodes


class Fuser:
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
                    scale, shift = batchnorm_scale_shift(nxt.attrs, *bn)
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

    def _rank(self, value: str, producers: dict[str, Node], depth: int = 0) -> int | None:
        """The rank of ``value`` where its producers tell it (a Conv's weight, a pool's window, else the first
        input of a rank-preserving op), else None."""
        if value in self.consts:
            return self.consts[value].ndim
        prod = producers.get(value)
        if prod is None or depth > 64:
            return None
        if prod.op_type in ("Conv", "ConvTranspose") and prod.inputs[1] in self.consts:
            return self.consts[prod.inputs[1]].ndim
        if prod.op_type in ("MaxPool", "AveragePool", "LpPool") and "kernel_shape" in prod.attrs:
            return len(prod.attrs["kernel_shape"]) + 2
        if prod.op_type in ("Concat", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh",
                            "GlobalAveragePool", "GlobalMaxPool", "Dropout", "Identity", "PRelu", "HardSwish"):
            return self._rank(prod.inputs[0], producers, depth + 1)
        return None

    def fold_batchnorm_affine(self) -> None:
        """BatchNormalization -> Mul / Add by a per-channel (or scalar) const ==> one BatchNormalization whose
        inputs are the combined scale and shift (attribute ``_scale_shift``, read by batchnorm_scale_shift).

        Caffe2's exports write every pre-activation BatchNorm this way (BN, Mul, Add, Relu: DenseNet, the
        Inception and ResNet families of the model zoo); each fold saves a pass over the activation. The const
        must broadcast along axis 1 only, which needs the input's rank (from its producers)."""
        changed = True
        while changed:   # one sweep folds one op after each BatchNormalization (Mul, then Add: two sweeps)
            changed = False
            cons = self._consumers()
            producers = {o: n for n in self.nodes for o in n.outputs if o}
            dead: list[Node] = []
            for bn in self.nodes:
                if bn.op_type != "BatchNormalization" or len([o for o in bn.outputs if o]) != 1 or \
                        bn.attrs.get("training_mode", 0):
                    continue
                nxt = self._sole_consumer(cons, bn.outputs[0])
                params = [self.consts.get(i) for i in bn.inputs[1:5]]
                if nxt is None or nxt.op_type not in ("Mul", "Add") or len(nxt.inputs) != 2 or \
                        any(p is None for p in params):
                    continue
                other = nxt.inputs[1] if nxt.inputs[0] == bn.outputs[0] else nxt.inputs[0]
                c = self.consts.get(other)
                rank = self._rank(bn.inputs[0], producers)
                if c is None or c.dtype != np.float32 or other == bn.outputs[0] or rank is None:
                    continue
                scale, shift = batchnorm_scale_shift(bn.attrs, *params)
                vec = _per_channel(c, scale.size, rank)
                if vec is None:
                    continue
                scale64, shift64, vec64 = (v.astype(np.float64) for v in (scale, shift, vec))
                if nxt.op_type == "Mul":
                    scale64, shift64 = scale64 * vec64, shift64 * vec64
                else:
                    shift64 = shift64 + vec64
                unused = self._new_const(bn.name + "_unused", np.zeros_like(scale))   # mean and var: read no more
                bn.inputs = [bn.inputs[0], self._new_const(bn.name + "_scale", scale64.astype(np.float32)),
                             self._new_const(bn.name + "_shift", shift64.astype(np.float32)), unused, unused]
                bn.attrs = {**bn.attrs, "_scale_shift": 1}
                bn.outputs = [nxt.outputs[0]]
                dead.append(nxt)
                changed = True
            self._remove(dead)

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
                    auto_pad(conv.attrs) not in ("NOTSET", "VALID"):
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
                    scale, shift = batchnorm_scale_shift(nxt.attrs, *bn)
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

    def _gelu_tail(self, cons: dict, add: Node, x: str) -> tuple[str, list[Node]] | None:
        """After p = 1 + f(x): (x * 0.5) * p, (x * p) * 0.5 or x * (p * 0.5) -> (output, the nodes after add)."""
        def other(n: Node, name: str) -> str:
            return n.inputs[1] if n.inputs[0] == name else n.inputs[0]

        mul = self._sole_consumer(cons, add.outputs[0])
        if mul is None or mul.op_type != "Mul" or len(mul.inputs) != 2:
            return None
        partner = other(mul, add.outputs[0])
        half = next((n for n in self.nodes if partner in n.outputs), None)
        if half is not None and half.op_type == "Mul" and x in half.inputs and \
                self._scalar(other(half, x)) == 0.5 and self._sole_consumer(cons, partner) is mul:
            return mul.outputs[0], [half, mul]                          # (x * 0.5) * p
        if partner == x:
            last = self._sole_consumer(cons, mul.outputs[0])
            if last is None or last.op_type != "Mul" or self._scalar(other(last, mul.outputs[0])) != 0.5:
                return None
            return last.outputs[0], [mul, last]                         # (x * p) * 0.5
        if self._scalar(partner) == 0.5:
            last = self._sole_consumer(cons, mul.outputs[0])
            if last is None or last.op_type != "Mul" or other(last, mul.outputs[0]) != x:
                return None
            return last.outputs[0], [mul, last]                         # x * (p * 0.5)
        return None

    def fuse_gelu(self) -> None:
        """x/sqrt2 (or x*(1/sqrt2)) -> Erf -> +1 -> times x and 0.5 (either order) ==> Gelu(x);
        tanh(sqrt(2/pi) * (x + 0.044715 x^3)) -> +1 -> times x and 0.5 ==> Gelu(x, approximate="tanh")
        (0.044715 x^3 as any product of Muls / Pow(x, 2 | 3) with that constant; the constants to 1e-4,
        which covers every exporter's rounding)."""
        cons = self._consumers()
        producer = {o: n for n in self.nodes for o in n.outputs if o}
        dead: list[Node] = []
        dead_ids: set[int] = set()

        def other(n: Node, name: str) -> str:
            return n.inputs[1] if n.inputs[0] == name else n.inputs[0]

        def near(name: str, value: float) -> bool:
            c = self._scalar(name)
            return c is not None and abs(c - value) <= 1e-4 * abs(value)

        for f in list(self.nodes):
            if f.op_type not in ("Erf", "Tanh") or id(f) in dead_ids:
                continue
            scale = producer.get(f.inputs[0])
            if scale is None or self._sole_consumer(cons, scale.outputs[0]) is not f or len(scale.inputs) != 2:
                continue
            head: list[Node]
            if f.op_type == "Erf":
                c = self._scalar(scale.inputs[1])
                if not ((scale.op_type == "Div" and c is not None and abs(c - 2 ** 0.5) < 1e-5) or
                        (scale.op_type == "Mul" and c is not None and abs(c - 2 ** -0.5) < 1e-5)):
                    continue
                x, head, approx = scale.inputs[0], [scale], "none"
            else:
                # scale = sqrt(2/pi) * inner; inner = x + 0.044715 * cube
                inner_name = next((i for i in scale.inputs if near(other(scale, i), (2 / np.pi) ** 0.5)), None)
                if scale.op_type != "Mul" or inner_name is None or inner_name == other(scale, inner_name):
                    continue
                inner = producer.get(inner_name)
                if inner is None or inner.op_type != "Add" or self._sole_consumer(cons, inner_name) is not scale:
                    continue
                found = None
                for x in inner.inputs:
                    # 0.044715 x^3 in any association: c * x*x*x, x * (x * (c * x)) (JAX), c * Pow(x, 3)
                    mono = self._monomial(producer, cons, other(inner, x), x, inner)
                    if mono is not None and mono[0] == 3 and abs(mono[1] - 0.044715) <= 1e-4 * 0.044715:
                        found = (x, mono[2] + [inner])
                        break
                if found is None:
                    continue
                x, head, approx = found[0], found[1] + [scale], "tanh"
            add = self._sole_consumer(cons, f.outputs[0])
            if add is None or add.op_type != "Add" or self._scalar(other(add, f.outputs[0])) != 1.0:
                continue
            tail = self._gelu_tail(cons, add, x)
            if tail is None:
                continue
            out, rest = tail
            chain = head + [f, add] + rest
            gelu = Node(f.name + "_gelu", "Gelu", [x], [out], {"approximate": approx})
            idx = next(i for i, n in enumerate(self.nodes) if n is chain[-1])
            self.nodes[idx] = gelu
            dead += chain[:-1]
            dead_ids |= {id(n) for n in chain}
        self._remove(dead)

    def _monomial(self, producer: dict[str, Node], cons: dict, name: str, x: str,
                  user: Node) -> tuple[int, float, list[Node]] | None:
        """Value `name` (read by `user` only) as c * x^k built from Mul nodes and Pow(x, 2 | 3): (k, c, nodes).
        Every intermediate product must have that single reader, so the nodes can be removed."""
        if name == x:
            return 1, 1.0, []
        c = self._scalar(name)
        if c is not None:
            return 0, c, []
        p = producer.get(name)
        if p is None or self._sole_consumer(cons, name) is not user or len(p.inputs) != 2:
            return None
        if p.op_type == "Pow" and p.inputs[0] == x and self._scalar(p.inputs[1]) in (2.0, 3.0):
            return int(self._scalar(p.inputs[1])), 1.0, [p]
        if p.op_type != "Mul":
            return None
        if p.inputs[0] == p.inputs[1]:   # Mul(v, v): v is read twice by p, so not a "sole" reader
            if p.inputs[0] != x:
                return None
            return 2, 1.0, [p]
        left = self._monomial(producer, cons, p.inputs[0], x, p)
        right = self._monomial(producer, cons, p.inputs[1], x, p) if left is not None else None
        if right is None:
            return None
        return left[0] + right[0], left[1] * right[1], left[2] + right[2] + [p]

    def _trailing_axes(self, red: Node) -> tuple[int, ...] | None:
        """The axes of a keepdims ReduceMean if they are the last k axes counted from the end (-k..-1), else
        None (positive axes need the rank, which a dynamic graph does not give)."""
        if red.op_type != "ReduceMean" or not int(red.attrs.get("keepdims", 1)):
            return None
        axes = red.attrs.get("axes")
        if axes is None and len(red.inputs) > 1 and red.inputs[1]:
            c = self.consts.get(red.inputs[1])
            axes = None if c is None else [int(v) for v in c.reshape(-1)]
        if not axes:
            return None
        ax = tuple(sorted(int(a) for a in axes))
        return ax if ax == tuple(range(-len(ax), 0)) else None

    def fuse_layernorm(self) -> None:
        """Layer normalisation written out (PyTorch before opset 17, TF, Keras), matched by what it computes:

            m = ReduceMean(x, last k axes); d = x - m; v = ReduceMean(d * d | Pow(d, 2)); s = Sqrt(v + eps)
            y = d / s | d * Reciprocal(s) | d * Pow(v + eps, -0.5);  then optionally y * gamma, + beta

        ==> LayerNormalization(x, gamma, beta, axis=-k, epsilon=eps). gamma / beta must be constants over the
        normalised axes only (so they cannot broadcast the output to a bigger shape)."""
        changed = True
        while changed:
            changed = False
            cons = self._consumers()
            for m in self.nodes:
                axes = self._trailing_axes(m)
                if axes is None:
                    continue
                x = m.inputs[0]
                sub = self._sole_consumer(cons, m.outputs[0])
                if sub is None or sub.op_type != "Sub" or sub.inputs != [x, m.outputs[0]]:
                    continue
                d = sub.outputs[0]
                if d in self.outputs:
                    continue
                d_users = cons.get(d, [])
                sq = next((u for u in d_users if (u.op_type == "Mul" and u.inputs == [d, d]) or
                           (u.op_type == "Pow" and u.inputs[0] == d and self._scalar(u.inputs[1]) == 2.0)), None)
                if sq is None:
                    continue
                var = self._sole_consumer(cons, sq.outputs[0])
                if var is None or self._trailing_axes(var) != axes:
                    continue
                add = self._sole_consumer(cons, var.outputs[0])
                if add is None or add.op_type != "Add" or len(add.inputs) != 2:
                    continue
                eps = self._scalar(add.inputs[1] if add.inputs[0] == var.outputs[0] else add.inputs[0])
                if eps is None or eps < 0:
                    continue
                chain = [m, sub, sq, var, add]
                nxt = self._sole_consumer(cons, add.outputs[0])
                if nxt is not None and nxt.op_type == "Sqrt":
                    chain.append(nxt)
                    den = nxt.outputs[0]
                    nxt = self._sole_consumer(cons, den)
                    if nxt is not None and nxt.op_type == "Div" and nxt.inputs == [d, den]:
                        norm = nxt
                    elif nxt is not None and nxt.op_type == "Reciprocal":
                        chain.append(nxt)
                        norm = self._sole_consumer(cons, nxt.outputs[0])
                        if norm is None or norm.op_type != "Mul" or sorted(norm.inputs) != sorted([d, nxt.outputs[0]]):
                            continue
                    else:
                        continue
                elif nxt is not None and nxt.op_type == "Pow" and nxt.inputs[0] == add.outputs[0] and \
                        self._scalar(nxt.inputs[1]) == -0.5:
                    chain.append(nxt)
                    norm = self._sole_consumer(cons, nxt.outputs[0])
                    if norm is None or norm.op_type != "Mul" or sorted(norm.inputs) != sorted([d, nxt.outputs[0]]):
                        continue
                else:
                    continue
                if {id(u) for u in d_users} != {id(sq), id(norm)}:
                    continue   # d is used elsewhere too: it must stay
                chain.append(norm)
                out = norm.outputs[0]
                gamma = beta = ""
                for op in ("Mul", "Add"):
                    nxt = self._sole_consumer(cons, out)
                    if nxt is None or nxt.op_type != op or len(nxt.inputs) != 2:
                        break
                    c_name = nxt.inputs[1] if nxt.inputs[0] == out else nxt.inputs[0]
                    c = self.consts.get(c_name)
                    if c is None or c.dtype != np.float32 or c.ndim > len(axes) or c_name == out:
                        break
                    if op == "Mul":
                        gamma = c_name
                    else:
                        beta = c_name
                    chain.append(nxt)
                    out = nxt.outputs[0]
                if not gamma:
                    gamma = self._new_const(m.name + "_ln_gamma", np.ones((), np.float32))
                ln = Node(m.name + "_layernorm", "LayerNormalization", [x, gamma] + ([beta] if beta else []), [out],
                          {"axis": -len(axes), "epsilon": eps})
                idx = next(i for i, n in enumerate(self.nodes) if n is chain[-1])
                self.nodes[idx] = ln
                self._remove(chain[:-1])
                changed = True
                break

    def _mean_of(self, prod: dict[str, Node], cons: dict, v: str) -> tuple | None:
        """If value v is a mean over some axes: (input, axes, keepdims, factor, nodes), where the mean is
        ReduceMean (factor None) or ReduceSum times a scalar / divided by one (factor: what the sum is
        multiplied by; _MomentNorm checks at run time that it is 1/n). The nodes' inner values must have
        no other consumer."""
        p = prod.get(v)
        if p is None:
            return None
        nodes, factor = [p], None
        if p.op_type in ("Mul", "Div") and len(p.inputs) == 2:
            if p.op_type == "Mul":
                k = [i for i, name in enumerate(p.inputs) if self._scalar(name) is not None]
                if len(k) != 1:
                    return None
                factor, red_v = self._scalar(p.inputs[k[0]]), p.inputs[1 - k[0]]
            else:
                c = self._scalar(p.inputs[1])
                if c is None or c == 0.0:
                    return None
                factor, red_v = 1.0 / c, p.inputs[0]
            red = prod.get(red_v)
            if red is None or red.op_type != "ReduceSum" or self._sole_consumer(cons, red_v) is not p:
                return None
            nodes = [red, p]
        elif p.op_type == "ReduceMean":
            red = p
        else:
            return None
        axes = red.attrs.get("axes")
        if axes is None and len(red.inputs) > 1 and red.inputs[1]:
            c = self.consts.get(red.inputs[1])
            axes = None if c is None else [int(a) for a in c.reshape(-1)]
        if not axes:
            return None
        return red.inputs[0], tuple(int(a) for a in axes), int(red.attrs.get("keepdims", 1)), factor, nodes

    def _to_keepdims(self, cons: dict, v: str, keepdims: int,
                     rs: Node | None = None) -> tuple[str, list[str], list[Node]] | None:
        """A reduced value brought back to the keepdims shape before it broadcasts against x: nothing when
        the reduction kept its dims, else a Reshape (rs, or v's sole consumer) [then an Expand] whose shape
        values _MomentNorm checks at run time. Returns (value, shape values, nodes)."""
        if keepdims:
            return v, [], []
        rs = rs or self._sole_consumer(cons, v)
        if rs is None or rs.op_type != "Reshape" or rs.inputs[0] != v or int(rs.attrs.get("allowzero", 0)):
            return None
        out, shapes, nodes = rs.outputs[0], [rs.inputs[1]], [rs]
        ex = self._sole_consumer(cons, out)
        if ex is not None and ex.op_type == "Expand" and ex.inputs[0] == out:
            out, nodes = ex.outputs[0], nodes + [ex]
            shapes.append(ex.inputs[1])
        return out, shapes, nodes

    def fuse_layernorm_moments(self) -> None:
        """Layer normalisation from the raw moments, as JAX / Flax (via tf2onnx) writes it:

            m = E[x]; v = E[x * x] - m * m, optionally Max(v, 0) | Relu; r = 1 / sqrt(v + eps) | (v + eps)^-0.5
            y = (x - m) * (r [* gamma]) [* gamma] [+ beta]

        E[.] over any block of axes (Flax reduces over the axes it is told, not only the last), as ReduceMean
        or ReduceSum * 1/n, with keepdims or a Reshape [+ Expand] back to the keepdims shape.
        ==> _MomentNorm (ops/norm.py): one LayerNormalization over those axes. What the graph alone does not
        prove (the axes form one block, 1/n is the true count, the Reshapes restore the keepdims shape,
        gamma / beta vary over the normalised axes only) is checked at run time; the original nodes run
        when it does not hold. Not fused when an intermediate (the variance, the mean, x - m) is used
        elsewhere or is a graph output."""
        changed = True
        while changed:
            changed = False
            cons = self._consumers()
            prod = {o: n for n in self.nodes for o in n.outputs if o}
            for vs in self.nodes:
                if vs.op_type != "Sub" or len(vs.inputs) != 2:
                    continue
                found = self._match_moments(prod, cons, vs)
                if found is None:
                    continue
                chain, x, out, attrs = found
                ids = {id(n) for n in chain}
                inner = {o for n in chain for o in n.outputs if o}
                externals = []
                for n in chain:
                    for i in n.inputs:
                        if i and i not in inner and i not in self.consts and i not in externals:
                            externals.append(i)
                if x not in externals or any(o in self.outputs for o in inner - {out}) or \
                        any(id(u) not in ids for o in inner - {out} for u in cons.get(o, [])):
                    continue
                externals.remove(x)
                attrs["_nodes"] = [n for n in self.nodes if id(n) in ids]   # graph order: the fallback
                fused = Node(vs.name + "_momentnorm", "_MomentNorm", [x] + externals, [out], attrs)
                idx = max(i for i, n in enumerate(self.nodes) if id(n) in ids)
                self.nodes[idx] = fused
                self._remove(chain)
                changed = True
                break

    def _match_moments(self, prod: dict[str, Node], cons: dict, vs: Node) -> tuple | None:
        """The nodes of one moments layer norm around its variance node vs (see fuse_layernorm_moments):
        (nodes, x, output value, _MomentNorm attributes), or None."""
        ex2_v, msq_v = vs.inputs
        msq = prod.get(msq_v)
        if msq is None or not ((msq.op_type == "Mul" and msq.inputs[0] == msq.inputs[1]) or
                               (msq.op_type == "Pow" and self._scalar(msq.inputs[1]) == 2.0)):
            return None
        m_v = msq.inputs[0]
        mean = self._mean_of(prod, cons, m_v)
        msq_mean = self._mean_of(prod, cons, ex2_v)
        if mean is None or msq_mean is None:
            return None
        x, axes, keepdims, factor, m_nodes = mean
        sq = prod.get(msq_mean[0])
        if sq is None or msq_mean[1:4] != (axes, keepdims, factor) or \
                not ((sq.op_type == "Mul" and sq.inputs == [x, x]) or
                     (sq.op_type == "Pow" and sq.inputs[0] == x and self._scalar(sq.inputs[1]) == 2.0)):
            return None
        chain = [sq] + msq_mean[4] + m_nodes + [msq, vs]
        # the variance: optional clamp at 0, back to the keepdims shape, + eps, 1/sqrt
        v = vs.outputs[0]
        clamp = self._sole_consumer(cons, v)
        if clamp is not None and ((clamp.op_type == "Max" and len(clamp.inputs) == 2 and
                                   self._scalar(clamp.inputs[1] if clamp.inputs[0] == v else clamp.inputs[0]) == 0.0)
                                  or clamp.op_type == "Relu"):
            chain.append(clamp)
            v = clamp.outputs[0]
        kd = self._to_keepdims(cons, v, keepdims)
        if kd is None:
            return None
        v, shapes, nodes = kd
        chain += nodes
        add = self._sole_consumer(cons, v)
        if add is None or add.op_type != "Add" or len(add.inputs) != 2:
            return None
        eps = self._scalar(add.inputs[1] if add.inputs[0] == v else add.inputs[0])
        if eps is None or eps < 0:
            return None
        chain.append(add)
        nxt = self._sole_consumer(cons, add.outputs[0])
        if nxt is not None and nxt.op_type == "Sqrt":
            inv = self._sole_consumer(cons, nxt.outputs[0])
            if inv is None or not (inv.op_type == "Reciprocal" or
                                   (inv.op_type == "Div" and self._scalar(inv.inputs[0]) == 1.0 and
                                    inv.inputs[1] == nxt.outputs[0])):
                return None
            chain += [nxt, inv]
        elif nxt is not None and nxt.op_type == "Pow" and nxt.inputs[0] == add.outputs[0] and \
                self._scalar(nxt.inputs[1]) == -0.5:
            inv = nxt
            chain.append(inv)
        else:
            return None
        r = inv.outputs[0]
        gamma = beta = ""
        mul = self._sole_consumer(cons, r)
        if mul is not None and mul.op_type == "Mul" and len(mul.inputs) == 2:
            other = mul.inputs[1] if mul.inputs[0] == r else mul.inputs[0]
            c = self.consts.get(other)
            if c is not None and c.dtype == np.float32 and other != r:   # r * gamma first (Flax)
                gamma = other
                chain.append(mul)
                r = mul.outputs[0]
                mul = self._sole_consumer(cons, r)
        # the mean, back to the keepdims shape, subtracted from x; then times r
        m_users = [u for u in cons.get(m_v, []) if u is not msq]
        if len(m_users) != 1 or m_v in self.outputs:
            return None
        if keepdims:
            sub = m_users[0]
            m_b, m_shapes = m_v, []
        else:
            kd = self._to_keepdims(cons, m_v, keepdims, m_users[0])
            if kd is None:
                return None
            m_b, m_shapes, nodes = kd
            chain += nodes
            sub = self._sole_consumer(cons, m_b)
        if sub is None or sub.op_type != "Sub" or sub.inputs != [x, m_b]:
            return None
        d = sub.outputs[0]
        if mul is None or mul.op_type != "Mul" or sorted(mul.inputs) != sorted([d, r]) or \
                self._sole_consumer(cons, d) is not mul:
            return None
        chain += [sub, mul]
        out = mul.outputs[0]
        for op in ("Mul", "Add"):
            if op == "Mul" and gamma:
                continue
            nxt = self._sole_consumer(cons, out)
            if nxt is None or nxt.op_type != op or len(nxt.inputs) != 2:
                break
            c_name = nxt.inputs[1] if nxt.inputs[0] == out else nxt.inputs[0]
            c = self.consts.get(c_name)
            if c is None or c.dtype != np.float32 or c_name == out:
                break
            if op == "Mul":
                gamma = c_name
            else:
                beta = c_name
            chain.append(nxt)
            out = nxt.outputs[0]
        attrs = {"axes": list(axes), "epsilon": eps, "factor": factor, "gamma": gamma, "beta": beta,
                 "n_shapes": len(shapes + m_shapes), "_shape_values": shapes + m_shapes}
        return chain, x, out, attrs

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

    def _epilogue_ok(self, n: Node) -> bool:
        """Whether n is a Conv / Gemm / MatMul whose native kernel can take a fused activation."""
        if n.op_type not in ("Conv", "Gemm", "MatMul") or "_act" in n.attrs:
            return False
        if n.op_type == "MatMul":
            b = self.consts.get(n.inputs[1])
            if b is None or b.ndim != 2 or b.dtype != np.float32:
                return False
        if n.op_type == "Gemm" and len(n.inputs) > 2 and n.inputs[2]:
            c = self.consts.get(n.inputs[2])
            if c is None or c.ndim > 1 and c.shape[0] != 1:
                return False
        return True

    def fuse_silu(self) -> None:
        """Conv / Gemm / MatMul -> y; Sigmoid(y) -> s; Mul(y, s) ==> the product with a SiLU epilogue
        (YOLOv5/v8, YOLOX and EfficientNet write Swish this way: y has exactly the two consumers)."""
        cons = self._consumers()
        producer = {o: n for n in self.nodes for o in n.outputs if o}
        dead: list[Node] = []
        for sig in self.nodes:
            if sig.op_type != "Sigmoid":
                continue
            y = sig.inputs[0]
            n = producer.get(y)
            if n is None or not self._epilogue_ok(n) or y in self.outputs:
                continue
            users = cons.get(y, [])
            mul = self._sole_consumer(cons, sig.outputs[0])
            if len(users) != 2 or mul is None or mul.op_type != "Mul" or \
                    sorted(mul.inputs) != sorted([y, sig.outputs[0]]) or not any(u is mul for u in users):
                continue
            n.attrs.update({"_act": "silu", "_act_alpha": 0.0, "_act_beta": 0.0})
            n.outputs = [mul.outputs[0]]
            dead += [sig, mul]
        self._remove(dead)

    def fuse_activation(self) -> None:
        """Conv / Gemm / MatMul (const B) -> activation ==> fused epilogue."""
        cons = self._consumers()
        dead: list[Node] = []
        for n in self.nodes:
            if not self._epilogue_ok(n):
                continue
            act = self._sole_consumer(cons, n.outputs[0])
            if act is None or act.op_type not in ACT_NAMES:
                continue
            if act.op_type == "Gelu" and act.attrs.get("approximate", "none") not in ("none", b"none"):
                continue
            alpha = beta = 0.0
            if act.op_type == "Clip":
                bounds = self._clip_bounds(act)
                if bounds is None:
                    continue
                alpha, beta = bounds
            elif act.op_type == "LeakyRelu":
                alpha = float(act.attrs.get("alpha", 0.01))
            n.attrs.update({"_act": ACT_NAMES[act.op_type], "_act_alpha": alpha, "_act_beta": beta})
            n.outputs = [act.outputs[0]]
            dead.append(act)
        self._remove(dead)


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
