"""End-to-end pipeline latency and throughput of the MobileNetV2 zoo model on 3 simulated agents.

For K = 1, 2, 3 stages (one stage per agent, placed with ``devices=[...]``): sequential request latency
(p50/p95) and throughput with 8 requests in flight, beside in-process ONNX Runtime running the whole model
(one intra-op thread, like each agent) measured interleaved with our requests. A second reference line is
ONNX Runtime with two single-threaded sessions running in parallel (timed right after each of our
throughput runs): the throughput ceiling of this 2-core machine.

``python -m benchmarks pipeline [--quick] [--json out.json]``
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.common import Latency, console, fmt, fmt_ratio, parser, ratio, table, write_json
from edge_agent import Fleet
from edge_agent.lab.sim import SimFleet
from edge_agent.transport.broker import find_mosquitto
from models import zoo

MODEL = "mobilenetv2"
KS = (1, 2, 3)
IN_FLIGHT = 8


def ort_session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_parallel_throughput(model: onnx.ModelProto, inputs: dict[str, np.ndarray], workers: int,
                            seconds: float) -> float:
    """Requests/s of ``workers`` single-threaded sessions running back to back for about ``seconds``."""
    sessions = [ort_session(model) for _ in range(workers)]
    for s in sessions:
        s.run(None, inputs)
    counts = [0] * workers
    start = threading.Barrier(workers + 1)
    end_at = [0.0]

    def work(i: int) -> None:
        start.wait()
        while time.perf_counter() < end_at[0]:
            sessions[i].run(None, inputs)
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    end_at[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def pipelined_throughput(fleet: Fleet, name: str, inputs: dict[str, np.ndarray], n: int,
                         in_flight: int = IN_FLIGHT) -> float:
    """Requests/s for ``n`` requests with ``in_flight`` of them outstanding at any time."""
    window: deque[Future] = deque()
    t0 = time.perf_counter()
    sent = 0
    while sent < n or window:
        while sent < n and len(window) < in_flight:
            window.append(fleet.submit(name, inputs, timeout=120))
            sent += 1
        window.popleft().result(150)
    return n / (time.perf_counter() - t0)


def run_pipeline(workdir: Path, n_latency: int, n_throughput: int, ks: Sequence[int] = KS,
                 broker_kind: str = "mosquitto", ort_2w_seconds: float = 1.5) -> dict[str, Any]:
    """Deploy the model with each K, measure, undeploy; returns rows per K and the ORT references."""
    model = zoo.build(MODEL, seed=0)
    inputs = zoo.sample_inputs(model, seed=0)
    ref_sess = ort_session(model)
    want = ref_sess.run(None, inputs)
    out_names = [o.name for o in ref_sess.get_outputs()]
    rows = []
    ort_all: list[float] = []
    with SimFleet(max(ks), broker_kind=broker_kind, workdir=workdir / "pipeline", discovery=False,
                  threads=1) as sim, Fleet(sim.broker.url) as fleet:
        fleet.wait_for_devices(max(ks), timeout=60)
        for k in ks:
            name = f"bench-{MODEL}-k{k}"
            devices = [f"dev-{i}" for i in range(k)]
            t0 = time.perf_counter()
            dep = fleet.deploy(model, name, stages=k, devices=devices, timeout=180)
            deploy_s = time.perf_counter() - t0
            placed = [st.device for st in dep.manifest.stages]
            if sorted(placed) != devices:
                raise RuntimeError(f"{name}: planner placed stages on {placed}, wanted one on each of {devices}")
            got, timings = fleet.infer(name, inputs, with_timings=True)
            for o, w in zip(out_names, want):
                if not np.allclose(got[o], w, rtol=1e-3, atol=1e-4):
                    raise RuntimeError(f"{name}: output {o} differs from ONNX Runtime")
            ours: list[float] = []
            ort_ms: list[float] = []
            stage_run: list[list[float]] = []
            warmup = max(3, n_latency // 10)
            for i in range(warmup + n_latency):
                t0 = time.perf_counter()
                _, timings = fleet.infer(name, inputs, timeout=60, with_timings=True)
                t1 = time.perf_counter()
                ref_sess.run(None, inputs)
                t2 = time.perf_counter()
                if i >= warmup:
                    ours.append((t1 - t0) * 1e3)
                    ort_ms.append((t2 - t1) * 1e3)
                    stage_run.append([t["run_ms"] for t in timings])
            pipelined_throughput(fleet, name, inputs, IN_FLIGHT)  # warm the queues
            rps = pipelined_throughput(fleet, name, inputs, n_throughput)
            # the machine's ceiling, measured right after ours so the same background load applies
            ort_2w = ort_parallel_throughput(model, inputs, workers=2, seconds=ort_2w_seconds)
            fleet.undeploy(name)
            lo, lr = Latency.of(ours), Latency.of(ort_ms)
            ort_all += ort_ms
            ort_rps = 1e3 / lr.mean
            rows.append({
                "k": k, "devices": placed, "deploy_s": round(deploy_s, 3),
                "backends": [t["backend"] for t in timings],
                "stage_run_ms_p50": [round(float(v), 3) for v in np.median(np.asarray(stage_run), axis=0)],
                "ours": lo.to_dict(), "ort_1thread": lr.to_dict(),
                "latency_ratio_p50": ratio(lo.p50, lr.p50),
                "throughput_rps": round(rps, 2), "in_flight": IN_FLIGHT, "ort_1thread_rps": round(ort_rps, 2),
                "throughput_ratio": ratio(rps, ort_rps),
                "ort_2sessions_rps": round(ort_2w, 2), "throughput_ratio_2sessions": ratio(rps, ort_2w),
            })
    return {"model": MODEL, "input_shapes": {k: list(v.shape) for k, v in inputs.items()},
            "requests_latency": n_latency, "requests_throughput": n_throughput, "per_k": rows,
            "ort_1thread": Latency.of(ort_all).to_dict()}


def _short_backend(name: str) -> str:
    return {"ops_native": "native", "onnxruntime": "ort"}.get(name, name)


def print_pipeline(res: dict[str, Any]) -> None:
    ref = res["ort_1thread"]
    title = f"{res['model']} {res['input_shapes']} on {max(r['k'] for r in res['per_k'])} agents"
    rows = [[r["k"], "+".join(_short_backend(b) for b in r["backends"]), fmt(r["ours"]["p50_ms"]),
             fmt(r["ours"]["p95_ms"]), fmt(r["ort_1thread"]["p50_ms"]), fmt_ratio(r["latency_ratio_p50"]),
             " + ".join(fmt(v) for v in r["stage_run_ms_p50"])] for r in res["per_k"]]
    rows.append(["ORT", "in-process, 1 thread", fmt(ref["p50_ms"]), fmt(ref["p95_ms"]), "", "", ""])
    table(f"{title}: sequential latency (ms)",
          ["K", "backend per stage", "ours p50", "ours p95", "ORT p50", "ratio p50", "stage run p50"], rows,
          caption="ORT = in-process ONNX Runtime, 1 intra-op thread (like each agent), timed interleaved with "
                  "our requests; ratio = ours / ORT (lower is better)")
    rows = [[r["k"], fmt(r["throughput_rps"]), fmt(r["ort_1thread_rps"]), fmt_ratio(r["throughput_ratio"]),
             fmt(r["ort_2sessions_rps"]), fmt_ratio(r["throughput_ratio_2sessions"]), fmt(r["deploy_s"])]
            for r in res["per_k"]]
    table(f"{title}: throughput with {IN_FLIGHT} requests in flight (req/s)",
          ["K", "ours", "ORT 1 thread", "ratio", "ORT 2 sessions", "ratio", "deploy s"], rows,
          caption="ratio = ours / ORT (higher is better). Broker, agents and this client share 2 cores: "
                  "'ORT 2 sessions' (two single-threaded sessions in parallel, timed right after ours) is "
                  "the machine's ceiling.")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the pipeline benchmark, print the table, return (and optionally write) the results."""
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    kind = "mosquitto" if find_mosquitto() else "embedded"
    n_lat, n_tp = (25, 24) if args.quick else (100, 96)
    console.print(f"[bold]pipeline[/bold] {MODEL} on 3 agents ({kind}): {n_lat} sequential + {n_tp} pipelined "
                  "requests per K ...")
    t0 = time.monotonic()
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="ea-bench-pipeline-") as tmp:
        res = run_pipeline(Path(tmp), n_lat, n_tp, broker_kind=kind)
    res["broker"] = kind
    res["load_avg_1m_at_start"] = load
    res["seconds"] = round(time.monotonic() - t0, 1)
    print_pipeline(res)
    out = {"pipeline": res}
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
