"""Recurrent models on ops_native vs ONNX Runtime at 1 and 2 threads: the whole model and its recurrent layers alone.

    python -m benchmarks.bench_rnn [--quick] [--runs N] [--models a,b] [--json out.json]

Models: corpus ``ddddocr_ocr`` (bidirectional LSTM, hidden 512) and the zoo extras ``crnn_bilstm`` (two
bidirectional LSTMs) and ``gru_kws`` (two GRUs), at their first representative shape. "layers" times every
LSTM / GRU / RNN node of the model alone (one single-node model per layer, fed the input ORT computes for it,
weights as constants), summed, so the recurrent kernel is measured apart from the convolutions around it.
Times: median of paired blocks (ours and ORT alternate), ratios ours / ORT from the same run; the ISA is printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

import ops_native
from benchmarks.bench_models import paired_median_ms
from benchmarks.common import parser, table, write_json
from models import corpus, zoo_extra

MODELS = ("ddddocr_ocr", "zoo_extra/crnn_bilstm", "zoo_extra/gru_kws")
RECURRENT = ("LSTM", "GRU", "RNN")


def _ort(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _load(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    if name.startswith("zoo_extra/"):
        n = name.split("/", 1)[1]
        return zoo_extra.build(n), zoo_extra.sample_inputs(n, 0)
    e = corpus.get(name)
    reason = corpus.unavailable_reason(e)
    if reason:
        raise RuntimeError(f"{name}: {reason}")
    return corpus.load(e), corpus.sample_inputs(e, 0)


def recurrent_layers(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[tuple[onnx.ModelProto, dict]]:
    """Each recurrent node as a one-node model (constant weights) with the X ORT computes for it."""
    nodes = [n for n in model.graph.node if n.op_type in RECURRENT]
    if not nodes:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inits = {i.name: i for i in model.graph.initializer}
    known = {o.name for o in probe.graph.output} | set(inits)
    for n in nodes:   # X, and weights computed in the graph (ddddocr's come out of Constant / Unsqueeze nodes)
        for name in n.input:
            if name and name not in known:
                probe.graph.output.append(helper.make_empty_tensor_value_info(name))
                known.add(name)
    names = [o.name for o in probe.graph.output]
    values = dict(zip(names, _ort(probe, 1).run(None, feeds)))
    out = []
    for k, n in enumerate(nodes):
        x = values[n.input[0]]
        weights = []
        for name in n.input[1:]:
            if not name:
                continue
            weights.append(inits[name] if name in inits else onnx.numpy_helper.from_array(values[name], name))
        outs = [o for o in n.output]
        graph = helper.make_graph(
            [n], f"layer{k}", [helper.make_tensor_value_info(n.input[0], onnx.TensorProto.FLOAT, list(x.shape))],
            [helper.make_empty_tensor_value_info(o) for o in outs if o], weights)
        m = helper.make_model(graph, opset_imports=list(model.opset_import))
        m.ir_version = model.ir_version
        shapes = [y.shape for y in _ort(m, 1).run(None, {n.input[0]: x})]   # typed outputs for onnx.checker
        del m.graph.output[:]
        m.graph.output.extend(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, list(sh))
                              for o, sh in zip([o for o in outs if o], shapes))
        out.append((m, {n.input[0]: x}))
    return out


def _pair(model: onnx.ModelProto, feeds_list: list[dict], threads: int, runs: int) -> tuple[float, float]:
    """(ours ms, ORT ms) of running every (model, feeds) once."""
    ours = [ops_native.InferenceSession(m, threads=threads) for m in model]
    refs = [_ort(m, threads) for m in model]
    t_ours, t_ort = paired_median_ms([lambda: [s.run(None, f) for s, f in zip(ours, feeds_list)],
                                      lambda: [s.run(None, f) for s, f in zip(refs, feeds_list)]], runs)
    return t_ours, t_ort


def main(argv: Sequence[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 30, quick 6)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    args = p.parse_args(argv)
    runs = args.runs or (6 if args.quick else 30)
    isa = ops_native.isa()
    results: dict[str, Any] = {"isa": isa, "runs": runs, "rows": []}
    rows = []
    for name in args.models.split(","):
        model, feeds = _load(name)
        layers = recurrent_layers(model, feeds)
        for threads in (1, 2):
            whole = _pair([model], [feeds], threads, runs)
            rec = _pair([m for m, _ in layers], [f for _, f in layers], threads, runs)
            row = {"model": name, "threads": threads, "ours_ms": whole[0], "ort_ms": whole[1],
                   "ratio": whole[0] / whole[1], "layers_ours_ms": rec[0], "layers_ort_ms": rec[1],
                   "layers_ratio": rec[0] / rec[1], "layers": len(layers)}
            results["rows"].append(row)
            rows.append([name, threads, f"{whole[0]:.3f}", f"{whole[1]:.3f}", f"{row['ratio']:.2f}x",
                         f"{rec[0]:.3f}", f"{rec[1]:.3f}", f"{row['layers_ratio']:.2f}x"])
    table(f"recurrent models: ops_native vs ONNX Runtime (median of {runs}, ISA {isa})",
          ["model", "threads", "ours ms", "ORT ms", "ratio", "layers ours ms", "layers ORT ms", "layers ratio"], rows)
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
