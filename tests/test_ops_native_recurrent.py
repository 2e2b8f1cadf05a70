"""LSTM / GRU / RNN on ops_native against ONNX Runtime: random layers over directions, layouts, sequence
lengths, initial states, activations (with alpha / beta), clip, peepholes, input_forget,
linear_before_reset, output subsets, constant and run-time weights, 1 and 2 threads."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import ops_native

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
N_ACTS = {"LSTM": 3, "GRU": 2, "RNN": 1}
# activation sets ORT accepts, with the alpha / beta of the ones that take them
ACT_SETS = [
    [],
    ["Sigmoid", "Tanh", "Tanh"],
    ["HardSigmoid", "Softsign", "Relu"],
    ["Sigmoid", "ScaledTanh", "Elu"],
    ["Sigmoid", "LeakyRelu", "Affine"],
    ["Sigmoid", "ThresholdedRelu", "Softplus"],
]
ALPHAS = {"HardSigmoid": 0.3, "LeakyRelu": 0.05, "ThresholdedRelu": 0.2, "ScaledTanh": 1.2, "Elu": 0.9, "Affine": 0.7}
BETAS = {"HardSigmoid": 0.4, "ScaledTanh": 0.8, "Affine": 0.1}


def _model(kind: str, T: int, B: int, F: int, H: int, *, direction: str, layout: int, lens: bool, init: bool,
           peep: bool, acts: list[str], clip: float | None, extra: dict, const_weights: bool, outputs: tuple,
           rng: np.random.Generator, scale: float = 0.5) -> tuple[onnx.ModelProto, dict]:
    D, G = (2 if direction == "bidirectional" else 1), GATES[kind]
    x_shape = [B, T, F] if layout else [T, B, F]
    st_shape = [B, D, H] if layout else [D, B, H]
    y_shape = [B, T, D, H] if layout else [T, D, B, H]
    tensors = {
        "W": rng.uniform(-scale, scale, (D, G * H, F)).astype(np.float32),
        "R": rng.uniform(-scale, scale, (D, G * H, H)).astype(np.float32),
        "B": rng.uniform(-0.3, 0.3, (D, 2 * G * H)).astype(np.float32),
    }
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    names = ["X", "W", "R", "B"]
    if lens:
        feeds["seq"] = rng.integers(0, T + 1, B).astype(np.int32)  # 0: zero states, as ORT
        feeds["seq"][0] = T
    names.append("seq" if lens else "")
    if init:
        feeds["h0"] = rng.standard_normal(st_shape).astype(np.float32)
    names.append("h0" if init else "")
    if kind == "LSTM":
        if init:
            feeds["c0"] = rng.standard_normal(st_shape).astype(np.float32)
        names.append("c0" if init else "")
        if peep:
            tensors["P"] = rng.uniform(-0.5, 0.5, (D, 3 * H)).astype(np.float32)
        names.append("P" if peep else "")
    while names and not names[-1]:
        names.pop()
    attrs = dict(hidden_size=H, direction=direction, **extra)
    if layout:
        attrs["layout"] = 1
    if acts:
        acts = acts[:N_ACTS[kind]] * D
        attrs["activations"] = acts
        alphas = [ALPHAS[a] for a in acts if a in ALPHAS]
        betas = [BETAS[a] for a in acts if a in BETAS]
        if alphas:
            attrs["activation_alpha"] = alphas
        if betas:
            attrs["activation_beta"] = betas
    if clip is not None:
        attrs["clip"] = clip
    all_outs = ["Y", "Y_h", "Y_c"][:3 if kind == "LSTM" else 2]
    outs = [o if o in outputs else "" for o in all_outs]
    while outs and not outs[-1]:
        outs.pop()
    node = helper.make_node(kind, names, outs, **attrs)
    inits, inputs = [], [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    for n, v in tensors.items():
        if const_weights:
            inits.append(onnx.numpy_helper.from_array(v, n))
        else:
            inputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)))
            feeds[n] = v
    for n in ("seq", "h0", "c0"):
        if n in feeds:
            dt = TensorProto.INT32 if n == "seq" else TensorProto.FLOAT
            inputs.append(helper.make_tensor_value_info(n, dt, list(feeds[n].shape)))
    shapes = {"Y": y_shape, "Y_h": st_shape, "Y_c": st_shape}
    graph_outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outs if o]
    graph = helper.make_graph([node], "rnn", inputs, graph_outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model, feeds


def _check(model: onnx.ModelProto, feeds: dict, threads: int, where: str, layout1: onnx.ModelProto | None = None) -> None:
    """ops_native vs ORT on `model` (layout 0). With layout1 (the same layer, batch first), ops_native runs that
    one on transposed feeds instead: ORT's CPU kernels refuse layout 1."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    want = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    if layout1 is None:
        got = ops_native.InferenceSession(model, threads=threads).run(None, feeds)
    else:
        swap = {k: (v.transpose(1, 0, 2).copy() if k in ("X", "h0", "c0") else v) for k, v in feeds.items()}
        got = ops_native.InferenceSession(layout1, threads=threads).run(None, swap)
        got = [g.transpose(1, 2, 0, 3) if g.ndim == 4 else g.transpose(1, 0, 2) for g in got]
    assert len(got) == len(want), where
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"{where} output {k}: {g.shape} vs {w.shape}"
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"{where} output {k}")


def _cases() -> list:
    rng = np.random.default_rng(7)
    cases = []
    for kind in ("LSTM", "GRU", "RNN"):
        for direction in ("forward", "reverse", "bidirectional"):
            for layout in (0, 1):
                for lens in (False, True):
                    cases.append((kind, direction, layout, lens, int(rng.integers(1 << 30))))
    return cases


@pytest.mark.parametrize("kind,direction,layout,lens,seed", _cases())
@pytest.mark.parametrize("threads", [1, 2])
def test_recurrent_layer_matches_onnxruntime(kind: str, direction: str, layout: int, lens: bool, seed: int,
                                             threads: int) -> None:
    rng = np.random.default_rng(seed)
    T, B, F = int(rng.integers(1, 7)), int(rng.integers(1, 5)), int(rng.integers(1, 20))
    H = int(rng.choice([1, 5, 16, 24, 37]))
    acts = ACT_SETS[int(rng.integers(len(ACT_SETS)))]
    if kind != "LSTM" and "Softplus" in acts[:N_ACTS[kind]]:
        acts = []
    extra = {}
    if kind == "GRU":
        extra["linear_before_reset"] = int(rng.integers(2))
    if kind == "LSTM":
        extra["input_forget"] = int(rng.integers(2))
    opts = dict(lens=lens, init=bool(rng.integers(2)), peep=bool(rng.integers(2)), acts=acts,
                clip=float(rng.choice([0.0, 0.8])) or None, extra=extra, const_weights=bool(rng.integers(2)),
                outputs=("Y", "Y_h", "Y_c"))
    model_seed = int(rng.integers(1 << 30))
    model, feeds = _model(kind, T, B, F, H, direction=direction, layout=0, rng=np.random.default_rng(model_seed),
                          **opts)
    batch_first = _model(kind, T, B, F, H, direction=direction, layout=1, rng=np.random.default_rng(model_seed),
                         **opts)[0] if layout else None
    where = f"{kind} {direction} layout={layout} lens={lens} T={T} B={B} F={F} H={H} acts={acts} {extra} {opts}"
    _check(model, feeds, threads, where, batch_first)


@pytest.mark.parametrize("outputs", [("Y",), ("Y_h",), ("Y_c",), ("Y", "Y_c"), ("Y_h", "Y_c")])
def test_lstm_returns_any_subset_of_its_outputs(outputs: tuple) -> None:
    rng = np.random.default_rng(1)
    model, feeds = _model("LSTM", 4, 2, 3, 8, direction="bidirectional", layout=0, lens=True, init=True,
                          peep=False, acts=[], clip=None, extra={}, const_weights=True, outputs=outputs, rng=rng)
    _check(model, feeds, 1, f"outputs {outputs}")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_wide_bidirectional_layer_matches_onnxruntime_on_two_threads(kind: str) -> None:
    """The CRNN shape: hidden 256, the per-step products large enough to split, directions on their own threads."""
    rng = np.random.default_rng(3)
    model, feeds = _model(kind, 20, 2, 64, 256, direction="bidirectional", layout=0, lens=True, init=False,
                          peep=False, acts=[], clip=None, extra={}, const_weights=True, outputs=("Y", "Y_h"),
                          rng=rng, scale=1 / 16)  # 1 / sqrt(H), as trained layers: a chaotic one amplifies rounding
    for threads in (1, 2, 3):
        _check(model, feeds, threads, f"{kind} wide, {threads} threads")


def test_float64_layer_is_refused_as_unsupported() -> None:
    node = helper.make_node("RNN", ["X", "W", "R"], ["Y"], hidden_size=2)
    d = TensorProto.DOUBLE
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, d, s) for n, s in
                                            (("X", [1, 1, 2]), ("W", [1, 2, 2]), ("R", [1, 2, 2]))],
                              [helper.make_tensor_value_info("Y", d, [1, 1, 1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    sess = ops_native.InferenceSession(model)
    with pytest.raises(Exception, match="float32"):
        sess.run(None, {n: np.ones(s, np.float64) for n, s in (("X", (1, 1, 2)), ("W", (1, 2, 2)), ("R", (1, 2, 2)))})
