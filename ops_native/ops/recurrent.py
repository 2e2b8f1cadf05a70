"""Recurrent layers on the native sequence kernel (on_rnn.h): LSTM, GRU, RNN.

The builder reads the ONNX attributes (direction, layout, clip, activations with their alpha / beta,
input_forget, linear_before_reset) and, when W, R, B and P are constants, packs the weights once into an
``_core.RnnLayer``: W of all directions as one matrix (one GEMM projects every step), R per direction, and
the biases split between the two products (a GRU's recurrent h bias stays with R when
linear_before_reset = 1, because the reset gate multiplies it). A run is one C call for the whole
sequence. Weights computed at run time are packed per call.
"""

from __future__ import annotations

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
    register,
)

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
N_ACTS = {"LSTM": 3, "GRU": 2, "RNN": 1}
DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
# activations that read alpha / beta, and their defaults (as the ONNX op of the same name; ORT's rule:
# the activation_alpha / activation_beta lists are consumed in order by the activations that take one)
_ALPHA = {"HardSigmoid": 0.2, "LeakyRelu": 0.01, "ThresholdedRelu": 1.0, "ScaledTanh": 1.0, "Elu": 1.0,
          "Affine": 1.0}
_BETA = {"HardSigmoid": 0.5, "ScaledTanh": 1.0, "Affine": 0.0}


def _activations(node: Node, ndir: int) -> list[list[tuple[int, float, float]]]:
    """Per direction, three (kind, alpha, beta) triples (f, g, h; padded with Tanh where the op has fewer)."""
    kind = node.op_type
    n = N_ACTS[kind]
    names = [a.decode() if isinstance(a, bytes) else a for a in node.attrs.get("activations", [])]
    if not names:
        names = DEFAULT_ACTS[kind] * ndir
    if len(names) != n * ndir:
        raise OpBuildError(f"{kind}: {len(names)} activations, expected {n * ndir} ({n} per direction)")
    alphas = list(node.attrs.get("activation_alpha", []))
    betas = list(node.attrs.get("activation_beta", []))
    lookup = {k.lower(): k for k in _core.RNN_ACTIVATIONS}
    out = []
    for d in range(ndir):
        trip = []
        for name in names[d * n:(d + 1) * n]:
            canon = lookup.get(name.lower())
            if canon is None:
                raise OpNotSupported(f"{kind}: activation {name!r} is not one of {sorted(_core.RNN_ACTIVATIONS)}")
            alpha = float(alphas.pop(0)) if canon in _ALPHA and alphas else _ALPHA.get(canon, 0.0)
            beta = float(betas.pop(0)) if canon in _BETA and betas else _BETA.get(canon, 0.0)
            trip.append((_core.RNN_ACTIVATIONS[canon], alpha, beta))
        trip += [(_core.RNN_ACTIVATIONS["Tanh"], 0.0, 0.0)] * (3 - n)
        out.append(trip)
    return out


def _f32(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype != F32:
        raise OpNotSupported(f"{what} is {a.dtype}: expected float32")
    return np.ascontiguousarray(a)


class _Spec:
    """The attributes of one recurrent node, checked once."""

    def __init__(self, node: Node, ctx: BuildContext) -> None:
        at = node.attrs
        self.kind = node.op_type
        self.direction = attr_str(at, "direction", "forward")
        if self.direction not in ("forward", "reverse", "bidirectional"):
            raise OpBuildError(f"{self.kind}: direction {self.direction!r}")
        self.ndir = 2 if self.direction == "bidirectional" else 1
        self.layout = int(at.get("layout", 0))
        if self.layout not in (0, 1):
            raise OpBuildError(f"{self.kind}: layout {self.layout}")
        self.clip = float(at["clip"]) if "clip" in at else 0.0
        if "clip" in at and self.clip <= 0:
            raise OpBuildError(f"{self.kind}: clip must be positive, got {self.clip}")
        self.input_forget = bool(at.get("input_forget", 0))
        self.lbr = bool(at.get("linear_before_reset", 0))
        self.hidden = int(at["hidden_size"]) if "hidden_size" in at else None
        self.acts = _activations(node, self.ndir)

    def layer(self, w: np.ndarray, r: np.ndarray, b: np.ndarray | None, p: np.ndarray | None) -> object:
        """Pack W [D, G*H, I], R [D, G*H, H], B [D, 2*G*H], P [D, 3H] into an RnnLayer."""
        kind, D, G = self.kind, self.ndir, GATES[self.kind]
        w, r = _f32(w, f"{kind} W"), _f32(r, f"{kind} R")
        if w.ndim != 3 or r.ndim != 3 or w.shape[0] != D or r.shape[0] != D:
            raise OpBuildError(f"{kind}: W {list(w.shape)} and R {list(r.shape)} must be [{D}, G*H, .]")
        H = r.shape[2]
        if self.hidden is not None and self.hidden != H:
            raise OpBuildError(f"{kind}: hidden_size {self.hidden} but R is {list(r.shape)}")
        if w.shape[1] != G * H or r.shape[1] != G * H:
            raise OpBuildError(f"{kind}: W {list(w.shape)} / R {list(r.shape)} need {G * H} rows for hidden {H}")
        gh = G * H
        wb = np.zeros((D, gh), F32) if b is None else _f32(b, f"{kind} B").reshape(D, 2 * gh)[:, :gh]
        rb = np.zeros((D, gh), F32) if b is None else _f32(b, f"{kind} B").reshape(D, 2 * gh)[:, gh:]
        gru_lbr = kind == "GRU" and self.lbr
        x_bias = wb + rb
        r_bias = None
        if gru_lbr and b is not None:   # r * (H R_h^T + Rb_h): Rb_h belongs to the recurrent product
            x_bias = x_bias.copy()
            x_bias[:, 2 * H:] = wb[:, 2 * H:]
            r_bias = [np.concatenate([np.zeros(2 * H, F32), rb[d, 2 * H:]]) for d in range(D)]
        if kind == "GRU" and not self.lbr:
            r_mats = [r[d, :2 * H] for d in range(D)]
            rh_mats = [r[d, 2 * H:] for d in range(D)]
        else:
            r_mats = [r[d] for d in range(D)]
            rh_mats = None
        peep = None
        if p is not None:
            p = _f32(p, f"{kind} P").reshape(D, 3 * H)
            peep = [p[d] for d in range(D)]
        return _core.RnnLayer(kind, w.reshape(D * gh, w.shape[2]), r_mats, rh_mats,
                              None if b is None else np.ascontiguousarray(x_bias.reshape(-1)), r_bias, peep,
                              self.acts, clip=self.clip, input_forget=self.input_forget,
                              linear_before_reset=self.lbr, reverse=self.direction == "reverse", layout=self.layout)


@register("LSTM", "GRU", "RNN")
def _build_recurrent(node: Node, ctx: BuildContext) -> Fn:
    spec = _Spec(node, ctx)
    kind, threads, pool = spec.kind, ctx.threads, ctx.pool
    ins = list(node.inputs) + [""] * (8 - len(node.inputs))
    # LSTM: X W R B sequence_lens initial_h initial_c P; GRU / RNN: X W R B sequence_lens initial_h
    p_index = 7 if kind == "LSTM" else None
    weight_names = [ins[1], ins[2], ins[3]] + ([ins[p_index]] if p_index else [])
    static = None
    if all(not n or ctx.const(n) is not None for n in weight_names):
        consts = [ctx.const(n) if n else None for n in weight_names]
        static = spec.layer(consts[0], consts[1], consts[2], consts[3] if p_index else None)
    outs = list(node.outputs) + [""] * (3 - len(node.outputs))
    want_y, want_h, want_c = bool(outs[0]), bool(outs[1]), kind == "LSTM" and bool(outs[2])
    n_out = len(node.outputs)

    def fn(args: list) -> list:
        args = list(args) + [None] * (8 - len(args))
        x = args[0]
        if x.dtype != F32:
            raise OpNotSupported(f"{kind} on {x.dtype}: expected float32")
        layer = static if static is not None else spec.layer(args[1], args[2], args[3],
                                                            args[p_index] if p_index else None)
        if x.ndim != 3:
            raise OpBuildError(f"{kind}: X must be 3-D, got {list(x.shape)}")
        D, H = layer.num_directions, layer.hidden
        if spec.layout:
            B, T = x.shape[0], x.shape[1]
            y_shape, st_shape = (B, T, D, H), (B, D, H)
        else:
            T, B = x.shape[0], x.shape[1]
            y_shape, st_shape = (T, D, B, H), (D, B, H)
        lens = args[4]
        h0 = None if args[5] is None else _f32(args[5], f"{kind} initial_h")
        c0 = None if kind != "LSTM" or args[6] is None else _f32(args[6], f"{kind} initial_c")
        y = pool.empty(y_shape) if want_y else None
        yh = pool.empty(st_shape) if want_h else None
        yc = pool.empty(st_shape) if want_c else None
        layer.run(np.ascontiguousarray(x), lens, h0, c0, y, yh, yc, threads)
        return [y, yh, yc][:n_out]

    return fn
