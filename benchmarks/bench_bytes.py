"""Latency and CPU against payload size: what one request's bytes cost on the way, measured beside the
planner's prediction.

A model that does almost nothing (``Relu`` chains on a ``[1, n]`` float tensor) is deployed at several
payload sizes, as one stage on one device and as a two-stage pipeline over two devices, real Mosquitto and
real agents. For each size it measures:

- latency: one request alone on the idle fleet (median; :func:`benchmarks.bench_pool.alone_latency`);
- CPU per request of the client (this process), the broker and each agent (from /proc, over a run of
  back-to-back requests), i.e. the per-byte and per-message costs the planner's calibration stands for;
- the planner's predicted latency for the same shape, and its error.

Devices: ``full`` (no CPU quota) and ``slow`` (``--slow`` cores of quota). Run it on a quiet machine: the
latency of a 4 MiB message is a few ms, and other load on the two cores shows directly. Needs root (cgroups);
run it inside a network namespace (``nsenter --net=/run/netns/NAME``).

``python -m benchmarks bytes [--quick] [--json out.json]``
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from benchmarks.bench_pool import alone_latency, quota_lab, start_one_by_one
from benchmarks.common import console, fmt, parser, process_cpu_s, table, write_json
from edge_agent.lab.profiles import DeviceProfile, FleetEntry
from edge_agent.operator.manifests import calibration_for, model_device
from models.graph import load_model
from models.partition import profile_model
from models.planner import Shape, evaluate

SIZES_KIB = (4, 64, 256, 1024, 4096)


def relu_chain(n: int, nodes: int = 2) -> onnx.ModelProto:
    """``nodes`` Relus in a row on ``[1, n]`` float32: almost no compute, so the bytes are what is timed."""
    names = ["x", *[f"t{i}" for i in range(nodes - 1)], "y"]
    graph = helper.make_graph(
        [helper.make_node("Relu", [names[i]], [names[i + 1]]) for i in range(nodes)], "relu_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cpu_per_request(fleet: Any, name: str, inputs: dict[str, np.ndarray], n: int,
                    pids: dict[str, int]) -> dict[str, float]:
    """CPU ms per request of each watched process and of this client, over ``n`` back-to-back requests."""
    before = {k: process_cpu_s(p) for k, p in pids.items()}
    c0 = time.process_time()
    for _ in range(n):
        fleet.infer(name, inputs, timeout=60)
    out = {k: (process_cpu_s(p) - before[k]) * 1e3 / n for k, p in pids.items()}
    out["client"] = (time.process_time() - c0) * 1e3 / n
    return out


def run(workdir: Path, sizes_kib: Sequence[int], slow: float, n_latency: int, n_cpu: int) -> dict[str, Any]:
    entries = [FleetEntry("full-0", DeviceProfile("full", cpu=None, threads=1)),
               FleetEntry("full-1", DeviceProfile("full", cpu=None, threads=1)),
               FleetEntry("slow-0", DeviceProfile("slow", cpu=slow, threads=1))]
    rows: list[dict[str, Any]] = []
    with quota_lab(workdir) as (sim, fleet, broker):
        start_one_by_one(sim, fleet, entries)
        live = {d.device_id: d for d in fleet.devices()}
        devices = {k: model_device(d) for k, d in live.items()}
        client = fleet.client_link()
        cal = calibration_for(list(live.values()), client)
        caps = {k: {"gflops": round(d.gflops, 1), "burst_gflops": d.burst_gflops, "link_mbps": d.link_mbps,
                    "rtt_ms": d.link_rtt_ms} for k, d in live.items()}
        if client is not None:
            caps["client"] = {"link_mbps": round(client.mbps, 1), "rtt_ms": round(client.rtt_ms, 3)}
        pids = {n: d.proc.pid for n, d in sim.devices.items() if d.proc is not None}
        pids["broker"] = broker.proc.pid
        plans = [("full-0", Shape((0, 2), (("full-0",),), ((1.0,),))),
                 ("slow-0", Shape((0, 2), (("slow-0",),), ((1.0,),))),
                 ("full-0 > full-1", Shape((0, 1, 2), (("full-0",), ("full-1",)), ((1.0,), (1.0,))))]
        for kib in sizes_kib:
            n = kib * 1024 // 4
            model = relu_chain(n)
            prof = profile_model(load_model(model))
            x = {"x": np.random.default_rng(0).standard_normal((1, n)).astype(np.float32)}
            for i, (label, shape) in enumerate(plans):
                name = f"b{kib}p{i}"
                fleet.deploy(model, name, shape=shape, timeout=120)
                try:
                    alone = alone_latency(fleet, name, x, n_latency, gap_s=0.1 if "slow" in label else 0.02)
                    lat, lat_mean = alone["p50"], alone["mean"]
                    cpu = cpu_per_request(fleet, name, x, n_cpu, pids)
                finally:
                    fleet.undeploy(name)
                p = evaluate(prof, devices, shape, cal)
                rows.append({"kib": kib, "plan": label, "meas_ms": lat, "meas_ms_mean": lat_mean,
                             "pred_ms": p.latency_ms, "err_ms": lat / p.latency_ms - 1,
                             "cpu_ms": {k: round(v, 3) for k, v in cpu.items()},
                             "load": round(os.getloadavg()[0], 2)})
                console.print(f"  {kib} KiB {label}: {lat:.2f} ms (pred {p.latency_ms:.2f}), CPU ms/request "
                              + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v > 0.005)
                              + f", load {rows[-1]['load']}")
    return {"devices": caps, "slow_cores": slow, "rows": rows, "fit": fit_costs(rows), "calibration": {
        "hop_ms": cal.hop_ms, "byte_ms_per_mb": cal.byte_ms_per_mb, "client_hop_ms": cal.client_hop_ms,
        "client_byte_ms_per_mb": cal.client_byte_ms_per_mb, "broker_ms_per_mb": 1e9 / cal.broker_bytes_per_s}}


def fit_costs(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-request and per-MB CPU of the agent, the client and the broker, least squares (relative) over the sizes of the
    one-stage full-core plan (request in and answer out, same size): the agent and the client each receive
    and send ``2 x size`` bytes; the broker takes in and passes on ``4 x size``."""
    single = [r for r in rows if r["plan"] == "full-0"]
    out: dict[str, dict[str, float]] = {}
    if len(single) < 2:
        return out
    for proc, key, times in (("agent", "full-0", 2), ("client", "client", 2), ("broker", "broker", 4)):
        mb = np.array([times * r["kib"] * 1024 / 1e6 for r in single])
        cpu = np.array([r["cpu_ms"].get(key, 0.0) for r in single])
        # relative residuals: the 4 MiB point would otherwise decide the per-request term alone
        per_mb, fixed = np.polyfit(mb, cpu, 1, w=1.0 / np.maximum(cpu, 0.1))
        out[proc] = {"ms_per_request": round(float(fixed), 3), "ms_per_mb": round(float(per_mb), 3)}
    return out


def show(res: dict[str, Any]) -> None:
    console.print(f"devices: {res['devices']}")
    procs = sorted({k for r in res["rows"] for k in r["cpu_ms"]})
    console.print(table("latency alone and CPU per request against payload size",
                        ["KiB", "plan", "meas ms", "pred ms", "err", *[f"{k} CPU ms" for k in procs], "load"],
                        [[r["kib"], r["plan"], fmt(r["meas_ms"]), fmt(r["pred_ms"]), f"{r['err_ms']:+.0%}",
                          *[fmt(r["cpu_ms"].get(k, 0.0)) for k in procs], r["load"]] for r in res["rows"]]))
    cal = res["calibration"]
    for proc, f in res["fit"].items():
        model = {"agent": (cal["hop_ms"], cal["byte_ms_per_mb"]),
                 "client": (cal["client_hop_ms"], cal["client_byte_ms_per_mb"]),
                 "broker": (2 * 0.05, cal["broker_ms_per_mb"])}[proc]
        console.print(f"{proc}: CPU {f['ms_per_request']:.2f} ms per request + {f['ms_per_mb']:.2f} ms per MB "
                      f"(the model's calibration: {model[0]:.2f} + {model[1]:.2f})")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--slow", type=float, default=0.2, help="CPU quota of the slow device, cores")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES_KIB)), help="payload sizes, KiB")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        console.print("[yellow]bench_bytes skipped: it needs root (cgroup CPU quotas)[/yellow]")
        return {"skipped": "needs root (cgroup CPU quotas)"}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="bench-bytes-") as tmp:
        res = run(Path(tmp), sizes, args.slow, n_latency=9 if args.quick else 21, n_cpu=20 if args.quick else 60)
    show(res)
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
