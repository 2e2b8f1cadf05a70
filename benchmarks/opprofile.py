"""Where a model's time goes in ops_native and in ONNX Runtime, side by side, by kind of op.

    python -m benchmarks.opprofile MODEL.onnx|corpus-name|zoo_extra/NAME [--runs N] [--threads T]

The two runtimes name their steps differently (ORT fuses Conv+activation into ``FusedConv``, inserts
``ReorderInput``/``ReorderOutput`` for its blocked layout; ops_native names a fused step ``Conv+relu`` or an
internal op by what it replaced), so each runtime's per-op-type time is summed into one of a few *kinds*
(convolution, matrix product, normalisation, pooling, elementwise, data movement, layout conversion,
recurrent, quantisation, control flow, other). The kind where ops_native spends the most time beyond ORT
is what limits the model; :func:`limits` returns the kinds ranked that way.

Both profiles are wall time per node, summed per type and divided by the runs, at the given thread count,
each session warmed first. ORT's profiler records each kernel's own time; ours times each step from the
Python loop (``InferenceSession.enable_profiling``), which adds ~1 us per step: a model of many tiny steps
reads a little slow in our profile, so the per-step cost is reported as well (steps and ORT nodes counted).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import ops_native

# op type (either runtime's, fused suffixes and domains stripped) -> kind
_KINDS: dict[str, tuple[str, ...]] = {
    "conv": ("Conv", "FusedConv", "NchwcConv", "ConvTranspose", "ConvInteger", "QLinearConv", "Conv(stride)"),
    "matmul": ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "QLinearMatMul",
               "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "Attention", "Einsum", "MatMulNBits"),
    "norm": ("BatchNormalization", "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
             "InstanceNormalization", "GroupNormalization", "LRN", "LayerNorm(moments)", "Mul+Add",
             "Softmax", "LogSoftmax"),
    "pool": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "NchwcMaxPool",
             "NchwcAveragePool", "NchwcGlobalAveragePool", "LpPool"),
    "layout": ("ReorderInput", "ReorderOutput", "NCHWc8->NCHW", "ToBlocked", "FromBlocked"),
    "recurrent": ("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"),
    "quantize": ("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"),
    "control": ("If", "Loop", "Scan"),
    "data": ("Concat", "Split", "Slice", "Reshape", "Transpose", "Gather", "GatherElements", "GatherND",
             "Squeeze", "Unsqueeze", "Flatten", "Expand", "Tile", "Pad", "Resize", "Upsample", "Identity",
             "Shape", "Size", "Cast", "ConstantOfShape", "Range", "ScatterND", "ScatterElements", "DepthToSpace",
             "SpaceToDepth", "Dropout", "Reshape+Transpose+Reshape", "shape subgraph", "ConcatBuffer", "Subsample",
             "TopK", "NonZero", "NonMaxSuppression", "Where", "OneHot", "CumSum", "MemcpyFromHost",
             "MemcpyToHost"),
}
_KIND_OF = {op: kind for kind, ops in _KINDS.items() for op in ops}
_REDUCE = ("Reduce", "ArgMax", "ArgMin")


def kind_of(op_type: str) -> str:
    """The kind of an op type as either runtime's profile names it (``Conv+silu``, ``com.microsoft.X``...)."""
    base = op_type.split("+")[0] if not op_type.startswith("Mul+Add") else op_type
    base = base.rsplit(".", 1)[-1].lstrip("_")
    if op_type in _KIND_OF:
        return _KIND_OF[op_type]
    if base in _KIND_OF:
        return _KIND_OF[base]
    if base.startswith(_REDUCE):
        return "reduce"
    return "elementwise" if base else "other"


def ours_by_type(model: onnx.ModelProto, feeds: dict[str, np.ndarray], runs: int, threads: int = 1
                 ) -> tuple[dict[str, float], int]:
    """(ms per run per op type, number of steps) of ops_native."""
    sess = ops_native.InferenceSession(model, threads=threads)
    sess.run(None, feeds)
    sess.enable_profiling()
    for _ in range(runs):
        sess.run(None, feeds)
    prof = sess.profile()
    return {op: t / runs * 1e3 for op, t in prof.items()}, len(sess._plan.steps)  # noqa: SLF001 - step count


def ort_by_type(model: onnx.ModelProto, feeds: dict[str, np.ndarray], runs: int, threads: int = 1
                ) -> tuple[dict[str, float], int]:
    """(ms per run per op type, number of kernel nodes) of ONNX Runtime's own profiler, all optimisations on."""
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        warm = 2
        for _ in range(warm + runs):
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    # the profile covers every run of the session: keep the node events from the first timed run on
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    t0 = starts[warm] if len(starts) > warm else 0
    per: dict[str, float] = defaultdict(float)
    nodes: set[str] = set()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and e["ts"] >= t0:
            per[e["args"]["op_name"]] += e["dur"]
            nodes.add(e["name"])
    return {op: us / runs / 1e3 for op, us in per.items()}, len(nodes)


def by_kind(per_type: dict[str, float]) -> dict[str, float]:
    """Sum a per-op-type profile into kinds."""
    out: dict[str, float] = defaultdict(float)
    for op, ms in per_type.items():
        out[kind_of(op)] += ms
    return dict(out)


def limits(model: onnx.ModelProto, feeds: dict[str, np.ndarray], runs: int, threads: int = 1) -> dict[str, Any]:
    """Both profiles by kind and the kinds ranked by our excess time over ORT's (ms per run)."""
    ours, steps = ours_by_type(model, feeds, runs, threads)
    theirs, nodes = ort_by_type(model, feeds, runs, threads)
    k_ours, k_theirs = by_kind(ours), by_kind(theirs)
    kinds = sorted(set(k_ours) | set(k_theirs), key=lambda k: -(k_ours.get(k, 0.0) - k_theirs.get(k, 0.0)))
    return {
        "threads": threads, "steps": steps, "ort_nodes": nodes,
        "ours_ms": sum(ours.values()), "ort_ms": sum(theirs.values()),
        "kinds": [(k, k_ours.get(k, 0.0), k_theirs.get(k, 0.0)) for k in kinds],
        "ours_types": sorted(ours.items(), key=lambda kv: -kv[1]),
        "ort_types": sorted(theirs.items(), key=lambda kv: -kv[1]),
    }


def describe(lim: dict[str, Any], top: int = 2) -> str:
    """One line: the kinds where ops_native loses most, with both times, and the step counts."""
    parts = []
    for kind, a, b in lim["kinds"][:top]:
        if a - b <= 0.02 * max(lim["ort_ms"], 1e-9):
            break
        parts.append(f"{kind} {a:.2f} vs {b:.2f} ms")
    head = "; ".join(parts) if parts else "no kind slower than ORT's by > 2 %"
    return f"{head} ({lim['steps']} steps vs {lim['ort_nodes']} ORT nodes)"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Print both profiles of one model by kind and by op type."""
    from rich.table import Table

    from benchmarks.common import console, parser, write_json
    from models import corpus, zoo_extra

    p = parser(__doc__.splitlines()[0])
    p.add_argument("model", help="an .onnx path, a corpus entry name, or zoo_extra/NAME")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shape", type=int, default=0, help="which representative input (0 or 1)")
    args = p.parse_args(argv)
    if args.model.startswith("zoo_extra/"):
        name = args.model.split("/", 1)[1]
        model, feeds = zoo_extra.build(name), zoo_extra.sample_inputs(name, args.shape)
    elif args.model.endswith(".onnx"):
        model = onnx.load(args.model)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            dtype = np.float32 if "float" in i.type else np.int64
            feeds[i.name] = rng.standard_normal(shape).astype(dtype) if dtype == np.float32 else np.zeros(shape, dtype)
    else:
        entry = next(e for e in corpus.entries() if e.name == args.model)
        model, feeds = corpus.load(entry), corpus.sample_inputs(entry, args.shape)
    lim = limits(model, feeds, args.runs, args.threads)
    t = Table(title=f"{args.model}: ms per run by kind, {args.threads} thread(s), ISA {ops_native.isa()} "
                    f"(ours {lim['ours_ms']:.2f}, ORT {lim['ort_ms']:.2f}; {describe(lim)})")
    for col in ("kind", "ours ms", "ORT ms", "ours - ORT"):
        t.add_column(col, justify="left" if col == "kind" else "right")
    for kind, a, b in lim["kinds"]:
        t.add_row(kind, f"{a:.3f}", f"{b:.3f}", f"{a - b:+.3f}")
    console.print(t)
    for label, key in (("ours", "ours_types"), ("ORT", "ort_types")):
        tt = Table(title=f"{label}: ms per run by op type")
        tt.add_column("op")
        tt.add_column("kind")
        tt.add_column("ms", justify="right")
        for op, ms in lim[key][:15]:
            tt.add_row(op, kind_of(op), f"{ms:.3f}")
        console.print(tt)
    write_json(args.json, {"model": args.model, **lim})
    return lim


if __name__ == "__main__":
    main()
