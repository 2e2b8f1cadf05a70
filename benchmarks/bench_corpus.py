"""The real-model corpus (and the zoo extras) on ops_native vs ONNX Runtime, plus the deploy helpers.

    python -m benchmarks.bench_corpus [--quick] [--runs N] [--models a,b] [--json out.json]

For every corpus entry that is installed and every ``models.zoo_extra`` model: file size, opset/IR,
the ops ops_native lacks; where it runs, the max abs/rel error against ORT at both representative
shapes and the time ratio ours / ORT at 1 thread (both warmed, median of paired blocks, shape 0).
Also tries what a deploy does with the model, without a fleet: ``with_static_shapes`` (dynamic
dims become 1), ``plan_pipeline`` + ``split_model`` into 2 stages with and without the shape-0
``input_shapes``, and runs the 2-stage shards (cut at shape 0) in ORT at shape 1. Failures are
recorded, not fixed. A model slower than 0.9x ORT at either thread count gets a last column, what limits
it: both runtimes' profiles summed by kind of op (``benchmarks.opprofile``), the kinds where ours loses most.
This is where docs/corpus.md comes from.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from rich.table import Table

import ops_native
from benchmarks.bench_models import paired_median_ms
from benchmarks.bench_models import profile as profile_ops
from benchmarks.common import console, parser, write_json
from benchmarks.opprofile import describe, limits
from models import corpus, zoo_extra
from models.extract import split_model
from models.graph import with_static_shapes
from models.partition import DeviceSpec, plan_pipeline

THREADS = (1, 2)


def _ort(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _compare(ours: list[np.ndarray], ref: list[np.ndarray]) -> tuple[float, float]:
    abs_err, rel_err = 0.0, 0.0
    for a, b in zip(ours, ref):
        if a.shape != b.shape:
            raise ValueError(f"shape {a.shape} vs ORT {b.shape}")
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        d = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
        abs_err = max(abs_err, d)
        rel_err = max(rel_err, d / max(float(np.max(np.abs(b64))) if b.size else 0.0, 1e-12))
    return abs_err, rel_err


def _chain(shards: list[onnx.ModelProto], feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    values = dict(feeds)
    for s in shards:
        sess = _ort(s)
        want = {i.name for i in sess.get_inputs()}
        outs = sess.run(None, {k: v for k, v in values.items() if k in want})
        values.update(zip([o.name for o in sess.get_outputs()], outs))
    return [values[n] for n in names]


def _deploy_checks(model: onnx.ModelProto, shapes0: dict, feeds1: dict, ref1: list[np.ndarray],
                   out_names: list[str]) -> dict[str, str]:
    res: dict[str, str] = {}
    try:
        with_static_shapes(model)
        res["with_static_shapes"] = "ok"
    except Exception as e:  # noqa: BLE001 - recorded
        res["with_static_shapes"] = _err(e)
    devices = [DeviceSpec("a", gflops=50.0), DeviceSpec("b", gflops=50.0)]
    for label, shapes in (("plan_no_shapes", None), ("plan_shape0", shapes0)):
        try:
            plan = plan_pipeline(model, devices, stages=2, input_shapes=shapes)
            shards = split_model(model, plan)
            res[label] = "ok"
        except Exception as e:  # noqa: BLE001
            res[label] = _err(e)
            continue
        if label == "plan_shape0":
            try:
                got = _chain(shards, feeds1, out_names)
                a, r = _compare(got, ref1)
                res["shards_at_shape1"] = "ok" if r < 1e-4 else f"differ: max abs {a:.3g}, rel {r:.3g}"
            except Exception as e:  # noqa: BLE001
                res["shards_at_shape1"] = _err(e)
    return res


def _timed(model: onnx.ModelProto, feeds: dict[str, np.ndarray], runs: int, repeats: int,
           native: bool) -> dict[str, Any]:
    """Per thread count: ours and ORT ms and their ratio, each the median over `repeats` paired
    measurements (every one warms both runtimes and alternates blocks of runs)."""
    out: dict[str, Any] = {}
    for threads in THREADS:
        ref = _ort(model, threads)
        if not native:
            out[f"ort_ms_{threads}t"] = float(np.median(
                [paired_median_ms([lambda r=ref: r.run(None, feeds)], runs)[0] for _ in range(repeats)]))
            continue
        ours = ops_native.InferenceSession(model, threads=threads)
        pairs = [paired_median_ms([lambda s=ours: s.run(None, feeds), lambda r=ref: r.run(None, feeds)], runs)
                 for _ in range(repeats)]
        ratios = [a / b for a, b in pairs]
        out[f"ours_ms_{threads}t"] = float(np.median([a for a, _ in pairs]))
        out[f"ort_ms_{threads}t"] = float(np.median([b for _, b in pairs]))
        out[f"ratio_{threads}t"] = float(np.median(ratios))
        out[f"ratio_range_{threads}t"] = (min(ratios), max(ratios))
    return out


LIMIT_ABOVE = 0.9  # a model slower than this ratio at either thread count gets the profile comparison


def measure(name: str, model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], runs: int,
            deploy: bool = True, repeats: int = 1, profile: bool = False, limit: bool = True) -> dict[str, Any]:
    """All measurements of one model (feeds: the two representative inputs). With ``limit``, a model above
    LIMIT_ABOVE x ORT at 1 or 2 threads also gets both runtimes' profiles by kind of op
    (:func:`benchmarks.opprofile.limits`, 1 thread, shape 0): what limits it."""
    row: dict[str, Any] = {"model": name, "ir": model.ir_version,
                           "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import}}
    ref_sess = _ort(model)
    out_names = [o.name for o in ref_sess.get_outputs()]
    refs = [ref_sess.run(None, f) for f in feeds]
    row["unsupported"] = ops_native.unsupported_ops(model)
    if not row["unsupported"]:
        try:
            ours = ops_native.InferenceSession(model, threads=1)
            errs = [_compare(ours.run(None, f), r) for f, r in zip(feeds, refs)]
            row["max_abs"] = max(e[0] for e in errs)
            row["max_rel"] = max(e[1] for e in errs)
            row.update(_timed(model, feeds[0], runs, repeats, native=True))
            if profile:
                row["profile"] = profile_ops(model, feeds[0], runs)
            if limit and max(row.get(f"ratio_{t}t", 0.0) for t in THREADS) > LIMIT_ABOVE:
                lim = limits(model, feeds[0], max(runs, 10))
                row["limit"] = {k: lim[k] for k in ("steps", "ort_nodes", "ours_ms", "ort_ms", "kinds")}
                row["limit_text"] = describe(lim)
        except Exception as e:  # noqa: BLE001 - recorded
            row["native_error"] = _err(e)
            console.print(f"[dim]{traceback.format_exc(limit=3)}[/dim]")
    else:
        row.update(_timed(model, feeds[0], runs, repeats, native=False))
    if deploy:
        shapes0 = {k: tuple(v.shape) for k, v in feeds[0].items()}
        row["deploy"] = _deploy_checks(model, shapes0, feeds[1], refs[1], out_names)
    return row


def _ratio_cell(row: dict[str, Any], threads: int) -> str:
    r = row.get(f"ratio_{threads}t")
    if r is None:
        return ""
    style = "green" if r <= 1.0 else "red"
    return f"[{style}]{r:.2f}x[/{style}]"


def workloads(selected: list[str] | None) -> list[tuple[str, Any]]:
    """(name, corpus Entry or zoo_extra name) for each selected model."""
    out: list[tuple[str, Any]] = [(e.name, e) for e in corpus.entries()]
    out += [(f"zoo_extra/{n}", n) for n in zoo_extra.names()]
    return [w for w in out if selected is None or w[0] in selected]


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the measurements, print the table, return the results."""
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 10, quick 3)")
    p.add_argument("--models", default=None, help="comma-separated subset (corpus names, zoo_extra/NAME)")
    p.add_argument("--no-deploy", action="store_true", help="skip the deploy-helper checks")
    p.add_argument("--repeats", type=int, default=None,
                   help="paired measurements per model and thread count, median ratio (default 3, quick 1)")
    p.add_argument("--profile", action="store_true", help="our time per op type at 1 thread")
    p.add_argument("--no-limits", action="store_true",
                   help=f"skip the ours-vs-ORT profile by kind of op for models above {LIMIT_ABOVE}x ORT")
    args = p.parse_args(argv)
    runs = args.runs or (3 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    ort.set_default_logger_severity(3)  # the shape helpers' own ORT runs log every failure they then report
    selected = args.models.split(",") if args.models else None
    table = Table(title=f"corpus: ops_native vs ONNX Runtime at 1 and 2 threads (ratio = ours / ORT, median of "
                        f"{repeats} x {runs} runs, ISA {ops_native.isa()})")
    cols = ["model", "missing ops", "max abs", "max rel"]
    for t in THREADS:
        cols += [f"ours ms {t}t", f"ORT ms {t}t", f"ratio {t}t"]
    cols.append(f"limited by (1t profile, ours vs ORT, above {LIMIT_ABOVE}x)")
    for col in cols:
        table.add_column(col, justify="right" if col.startswith(("max", "ours", "ORT", "ratio")) else "left")
    results: dict[str, Any] = {"isa": ops_native.isa(), "runs": runs, "repeats": repeats, "rows": []}
    for name, src in workloads(selected):
        if isinstance(src, corpus.Entry):
            reason = corpus.unavailable_reason(src)
            if reason:
                results["rows"].append({"model": name, "unavailable": reason})
                table.add_row(name, f"[yellow]{reason}[/yellow]", *[""] * (len(cols) - 2))
                continue
            model = corpus.load(src)
            feeds = [corpus.sample_inputs(src, k) for k in (0, 1)]
        else:
            model = zoo_extra.build(src)
            feeds = [zoo_extra.sample_inputs(src, k) for k in (0, 1)]
        row = measure(name, model, feeds, runs, deploy=not args.no_deploy, repeats=repeats, profile=args.profile,
                      limit=not (args.no_limits or args.quick))
        results["rows"].append(row)
        fmt = (lambda k, f, r=row: f.format(r[k]) if k in r else "")  # noqa: E731
        cells = [fmt("max_abs", "{:.2g}"), fmt("max_rel", "{:.2g}")]
        for t in THREADS:
            cells += [fmt(f"ours_ms_{t}t", "{:.2f}"), fmt(f"ort_ms_{t}t", "{:.2f}"), _ratio_cell(row, t)]
        cells.append(row.get("limit_text", ""))
        table.add_row(name, ", ".join(row["unsupported"]) or row.get("native_error", "-"), *cells)
        console.print(f"[dim]{name}: { {k: v for k, v in row.items() if k not in ('profile', 'limit')} }[/dim]")
    console.print(table)
    for row in results["rows"]:
        if row.get("profile"):
            pt = Table(title=f"{row['model']}: time per op type (ours, 1 thread)")
            for col in ("op", "ms/run", "share"):
                pt.add_column(col, justify="right" if col != "op" else "left")
            for op, ms, share in row["profile"][:12]:
                pt.add_row(op, f"{ms:.2f}", f"{share * 100:.1f}%")
            console.print(pt)
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
