"""The planner's prediction against measurement on an emulated heterogeneous fleet (cgroup CPU quotas).

One fast device (``--fast`` cores of quota) and two slow ones (``--slow`` cores each), real Mosquitto, real
agents. For the zoo CNN (MobileNetV2) the planner ranks every shape; the benchmark deploys its throughput
choice, its latency choice and the best of each other kind (single device, pipeline, hybrid), and for each
measures throughput with ``IN_FLIGHT`` requests in flight and latency with one at a time. It reports the
prediction error of each and whether the chosen shape was also the best measured. Needs root (cgroups);
run it inside a network namespace (``nsenter --net=/run/netns/NAME``).

``python -m benchmarks planner [--quick] [--json out.json]``
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_pool import alone_latency, quota_lab, start_one_by_one
from benchmarks.common import console, fmt, parser, table, write_json
from edge_agent import Fleet
from edge_agent.lab.profiles import DeviceProfile, FleetEntry
from models import zoo

MODEL = "mobilenetv2"
IN_FLIGHT = 12


def throughput(fleet: Fleet, name: str, inputs: dict[str, np.ndarray], seconds: float) -> float:
    """Completed requests per second with ``IN_FLIGHT`` always in flight (after a warm-up)."""
    for _ in range(IN_FLIGHT):
        fleet.infer(name, inputs, timeout=60)
    done = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    window: list[Future] = [fleet.submit(name, inputs, timeout=60) for _ in range(IN_FLIGHT)]
    while window:
        f = window.pop(0)
        f.result(70)
        done += 1
        if time.perf_counter() < end:
            window.append(fleet.submit(name, inputs, timeout=60))
    return done / (time.perf_counter() - t0)


def latency(fleet: Fleet, name: str, inputs: dict[str, np.ndarray], n: int) -> float:
    """Median latency (ms) of ``n`` requests, each alone on the idle fleet
    (:func:`benchmarks.bench_pool.alone_latency`: one quota period between them)."""
    return alone_latency(fleet, name, inputs, n)["p50"]


def run(workdir: Path, fast: float, slow: float, seconds: float, n_latency: int) -> dict[str, Any]:
    devices = [FleetEntry("fast", DeviceProfile("fast", cpu=fast, threads=1)),
               FleetEntry("slow-0", DeviceProfile("slow", cpu=slow, threads=1)),
               FleetEntry("slow-1", DeviceProfile("slow", cpu=slow, threads=1))]
    model = zoo.build(MODEL)
    rng = np.random.default_rng(0)
    inputs = {i.name: rng.standard_normal([d.dim_value or 1 for d in i.type.tensor_type.shape.dim])
              .astype(np.float32) for i in model.graph.input}
    rows: list[dict[str, Any]] = []
    with quota_lab(workdir) as (sim, fleet, broker):
        start_one_by_one(sim, fleet, devices)
        caps = {d.device_id: (round(d.gflops, 1), round(d.link_mbps or 0), round(d.link_rtt_ms or 0, 2))
                for d in fleet.devices()}
        tp_search = fleet.plan_shapes(model, objective="throughput")
        lat_search = fleet.plan_shapes(model, objective="latency")
        picks: dict[str, Any] = {"throughput choice": tp_search.best, "latency choice": lat_search.best}
        for c in tp_search.ranked:   # the best of every other kind
            if not any(p.shape.label() == c.shape.label() for p in picks.values()):
                picks.setdefault(f"best {c.shape.kind}", c)
        for i, (role, cand) in enumerate(picks.items()):
            name = f"pl{i}"
            fleet.deploy(model, name, shape=cand.shape, timeout=180)
            tp = throughput(fleet, name, inputs, seconds)
            lat = latency(fleet, name, inputs, n_latency)
            fleet.undeploy(name)
            p = cand.prediction
            rows.append({"role": role, "shape": cand.shape.label(), "kind": cand.shape.kind,
                         "pred_rps": p.throughput_rps, "meas_rps": tp, "pred_ms": p.latency_ms,
                         "meas_ms": lat, "bottleneck": p.bottleneck,
                         "err_rps": tp / p.throughput_rps - 1, "err_ms": lat / p.latency_ms - 1})
    best_tp = max(rows, key=lambda r: r["meas_rps"])
    best_lat = min(rows, key=lambda r: r["meas_ms"])
    return {"model": MODEL, "fast_cores": fast, "slow_cores": slow, "in_flight": IN_FLIGHT, "devices": caps,
            "rows": rows, "throughput_choice_best_measured": best_tp["role"] == "throughput choice",
            "latency_choice_best_measured": best_lat["role"] == "latency choice",
            "best_measured_rps": best_tp["shape"], "best_measured_latency": best_lat["shape"]}


def show(res: dict[str, Any]) -> None:
    c = console
    c.print(f"devices (GFLOP/s, link Mbit/s, rtt ms): {res['devices']}")
    c.print(table(f"{res['model']}: predicted vs measured ({res['in_flight']} in flight for req/s; one at a "
                  "time for latency)",
                  ["role", "shape", "kind", "pred req/s", "meas req/s", "err", "pred ms", "meas ms", "err",
                   "bottleneck"],
                  [[r["role"], r["shape"], r["kind"], fmt(r["pred_rps"]), fmt(r["meas_rps"]),
                    f"{r['err_rps']:+.0%}", fmt(r["pred_ms"]), fmt(r["meas_ms"]), f"{r['err_ms']:+.0%}",
                    r["bottleneck"]] for r in res["rows"]]))
    c.print(f"throughput choice best measured: {res['throughput_choice_best_measured']} "
            f"(best measured: {res['best_measured_rps']}); latency choice best measured: "
            f"{res['latency_choice_best_measured']} (best measured: {res['best_measured_latency']})")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--fast", type=float, default=0.6, help="CPU quota of the fast device, cores")
    ap.add_argument("--slow", type=float, default=0.2, help="CPU quota of each slow device, cores")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        console.print("[yellow]bench_planner skipped: it needs root (cgroup CPU quotas)[/yellow]")
        return {"skipped": "needs root (cgroup CPU quotas)"}
    with tempfile.TemporaryDirectory(prefix="bench-planner-") as tmp:
        res = run(Path(tmp), args.fast, args.slow, seconds=3.0 if args.quick else 8.0,
                  n_latency=10 if args.quick else 30)
    show(res)
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
