"""Fixed costs of ops_native's executor against ONNX Runtime: per node, per If entered, per session call.

    python -m benchmarks.bench_overhead [--quick] [--json out.json]

Chains of 40 nodes on a 4-element tensor (its size dynamic in the model), so the arithmetic is nothing and the time is the executor's own:
Identity, Relu, Unsqueeze+Squeeze with constant axes, a shape chain (Shape -> Gather -> Equal -> Cast),
and If nodes on a runtime condition (each branch one node). Each chain is timed against a 1-node model in
the same process, (chain - single) / nodes gives the cost of one node; ORT runs the same models; the ratio is
ours / ORT. Times are process CPU time (robust to other load on a shared machine), median of interleaved
blocks; 1 thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import ops_native
from benchmarks.common import parser, table, write_json

F = TensorProto.FLOAT
N_NODES = 40


def _model(kind: str, n: int) -> onnx.ModelProto:
    """x [4] (and c, a bool) -> n nodes of `kind` -> y."""
    nodes: list = []
    inits = {"ax": np.array([0], np.int64), "k0": np.array([0], np.int64), "four": np.array([4], np.int64)}
    prev = "x"
    for i in range(n):
        out = f"v{i}"
        if kind == "If":
            t = helper.make_graph([helper.make_node("Identity", [prev], [f"t{i}"])], f"t{i}", [],
                                  [helper.make_tensor_value_info(f"t{i}", F, None)])
            e = helper.make_graph([helper.make_node("Neg", [prev], [f"e{i}"])], f"e{i}", [],
                                  [helper.make_tensor_value_info(f"e{i}", F, None)])
            nodes.append(helper.make_node("If", ["c"], [out], then_branch=t, else_branch=e))
        elif kind == "Unsqueeze+Squeeze":
            nodes.append(helper.make_node("Unsqueeze" if i % 2 == 0 else "Squeeze", [prev, "ax"], [out]))
        elif kind == "shape chain":
            # Shape -> Gather -> Equal -> Cast(float) -> Add to x: 4 nodes a round
            nodes += [helper.make_node("Shape", [prev], [f"s{i}"]),
                      helper.make_node("Gather", [f"s{i}", "k0"], [f"g{i}"], axis=0),
                      helper.make_node("Equal", [f"g{i}", "four"], [f"e{i}"]),
                      helper.make_node("Cast", [f"e{i}"], [f"f{i}"], to=F),
                      helper.make_node("Add", [prev, f"f{i}"], [out])]
        else:
            nodes.append(helper.make_node(kind, [prev], [out]))
        prev = out
    # x's size is left dynamic, so that neither runtime folds the shape chain away at load
    g = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", F, ["n"]),
                                        helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info(prev, F, [1, "n"] if kind == "Unsqueeze+Squeeze" and n % 2 else ["n"])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _per_call_us(fns: list[Callable[[], Any]], calls: int, blocks: int) -> list[float]:
    """Median process-CPU microseconds per call of each fn, blocks interleaved."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        for _ in range(20):
            fn()
    for _ in range(blocks):
        for k, fn in enumerate(fns):
            t0 = time.process_time()
            for _ in range(calls):
                fn()
            times[k].append((time.process_time() - t0) / calls * 1e6)
    return [float(np.median(t)) for t in times]


def main(argv: Sequence[str] | None = None) -> dict:
    """Measure, print the table, return the results."""
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    calls, blocks = (200, 3) if args.quick else (1000, 7)
    feeds = {"x": np.ones(4, np.float32), "c": np.array(True)}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3   # ORT drops each chain's unused initializers, with a warning
    rows = []
    for kind in ("Identity", "Relu", "Unsqueeze+Squeeze", "shape chain", "If"):
        n = N_NODES // 5 if kind == "shape chain" else N_NODES
        nodes = n * 5 if kind == "shape chain" else n
        sessions = []
        for m in (_model(kind, n), _model(kind, 1 if kind != "Unsqueeze+Squeeze" else 2)):
            sessions.append(ops_native.InferenceSession(m))
            sessions.append(ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]))
        ours_n, ort_n, ours_1, ort_1 = _per_call_us([lambda s=s: s.run(None, feeds) for s in sessions], calls, blocks)
        small = 5 if kind == "shape chain" else (2 if kind == "Unsqueeze+Squeeze" else 1)
        ours_node = (ours_n - ours_1) / (nodes - small)
        ort_node = (ort_n - ort_1) / (nodes - small)
        rows.append({"chain": kind, "nodes": nodes, "ours_us_per_node": ours_node, "ort_us_per_node": ort_node,
                     "ratio": ours_node / ort_node, "ours_us_call": ours_1, "ort_us_call": ort_1})
    table(f"per-node and per-call fixed costs, ops_native vs ORT (1 thread, process CPU us, ISA {ops_native.isa()})",
          ["chain", "nodes", "ours us/node", "ORT us/node", "ratio", "ours us/call (1 node)", "ORT us/call"],
          [[r["chain"], r["nodes"], f"{r['ours_us_per_node']:.2f}", f"{r['ort_us_per_node']:.2f}", f"{r['ratio']:.2f}x",
            f"{r['ours_us_call']:.1f}", f"{r['ort_us_call']:.1f}"] for r in rows])
    results = {"isa": ops_native.isa(), "rows": rows}
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
