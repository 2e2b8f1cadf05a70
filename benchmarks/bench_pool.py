"""Pool scaling: throughput of 1, 2, 4 and 6 emulated devices of one profile, and of a heterogeneous mix.

Every device is a real agent under a cgroup CPU quota (``--slow`` cores each, default 0.2: six of them
use 1.2 cores of this 2-core machine, so the devices' compute is the bottleneck, not the broker or this
client). For the zoo CNN (MobileNetV2), PP-OCRv4 det (at ``--det-size``) and the zoo transformer:

- scaling: the planner's throughput choice over the first N slow devices (what it chose is printed:
  replicas / stages), ``--per-device`` requests in flight per device, req/s over a fixed window; the ratio is
  to N = 1 measured in the same run (goal >= 0.9 x N up to N = 4);
- mix: one fast device (``--fast`` cores) + three slow ones; each alone, then together; ratio = mix /
  sum(alone) (goal >= 0.85);
- for every plan: predicted vs measured throughput and latency (one request alone on the idle fleet, a
  quota period after the previous answer), and this client's CPU (cores, from its process CPU time over the
  window: it shares the two cores with everything else);
- a calibration from the same run: the agents' per-hop and per-byte CPU fitted to the single-device runs
  (their CPU per request beside the model run alone in this process), the model's efficiency measured
  in-process (its FLOP/s over the GEMM probe's), and every plan predicted again with them.

Client and broker run in a lab cgroup of their own without a quota (the operator's machine and the broker's
are not the devices), weighted like the devices so that other work on the machine does not starve them.

Needs root (cgroups); run it inside a network namespace (``nsenter --net=/run/netns/NAME``).

``python -m benchmarks pool [--quick] [--json out.json] [--models mobilenetv2,transformer]``
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing as mp
import os
import platform
import queue
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from benchmarks.common import console, fmt, parser, process_cpu_s, table, write_json
from edge_agent import Fleet
from edge_agent.agent.capability import measure_gflops
from edge_agent.lab import cgroups
from edge_agent.lab.profiles import DeviceProfile, FleetEntry
from edge_agent.lab.sim import SimFleet
from edge_agent.operator.manifests import calibration_for, model_device
from edge_agent.transport.broker import Broker
from edge_agent.transport.store import sha256_hex
from models import zoo
from models.graph import load_model
from models.partition import CostProfile, profile_model
from models.planner import Calibration, Observation, Shape, evaluate, fit_agent_costs

NS = (1, 2, 4, 6)
N_SLOW = max(NS)
MIX_SLOW = 3


def load_workload(name: str, det_size: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict]:
    """(model, one request's inputs, the input shapes planning and deploying fix)."""
    rng = np.random.default_rng(0)
    if name == "ppocr_det":
        from models.ppocr import load_det_model
        model = load_det_model()
        inp = model.graph.input[0].name
        shape = (1, 3, det_size, det_size)
        return model, {inp: rng.standard_normal(shape).astype(np.float32)}, {inp: shape}
    model = zoo.build(name)
    inputs = zoo.sample_inputs(model, seed=0)
    return model, inputs, {k: tuple(v.shape) for k, v in inputs.items()}


@dataclasses.dataclass
class ModelRun:
    """The model run alone on one full core of this machine (native core, 1 thread), beside the GEMM probe
    measured the same way: the model's efficiency is its FLOP/s over the probe's."""

    flops: float
    nbytes: float        # the request's input plus its answer
    run_ms: float
    probe_gflops: float

    @property
    def efficiency(self) -> float:
        return self.flops / (self.probe_gflops * 1e9 * self.run_ms / 1e3)


def model_run(model: onnx.ModelProto, inputs: dict[str, np.ndarray], prof: CostProfile) -> ModelRun:
    import ops_native
    sess = ops_native.InferenceSession(model.SerializeToString(), threads=1)
    for _ in range(3):
        sess.run(None, inputs)
    ts = []
    for _ in range(10):
        t = time.perf_counter()
        sess.run(None, inputs)
        ts.append((time.perf_counter() - t) * 1e3)
    probe, _ = measure_gflops(1.0, 1)
    # the fastest run: other sessions' load on this machine only ever adds to it (the probe takes the median
    # of windows for the same reason)
    return ModelRun(float(prof.flops_prefix[-1]), float(prof.carry_bytes[0] + prof.carry_bytes[-1]),
                    float(np.min(ts)), probe)


def _window(fleet: Fleet, name: str, inputs: dict[str, np.ndarray], in_flight: int, start_at: float,
            end_at: float) -> dict[str, Any]:
    """One client's share of :func:`drive`: keep ``in_flight`` requests outstanding, count the answers that
    arrive between the wall-clock instants ``start_at`` and ``end_at`` (the requests before are the warm-up,
    at least twice the window), then drain. Returns the count, this process's CPU seconds over the window
    and the per-request device timings.

    A new request goes out as soon as *any* request completes. (Refilling in submission order instead waits
    for the oldest request: behind one on a slow device, the fast device's finished requests are not
    replaced and it idles; that capped a fast + 3 slow mix at 0.6 of the sum of its devices.)"""
    done: queue.SimpleQueue[Future] = queue.SimpleQueue()

    def submit() -> None:
        fleet.submit(name, inputs, timeout=120).add_done_callback(done.put)

    for _ in range(in_flight):
        submit()
    warm = 0
    while warm < 2 * in_flight or time.time() < start_at:     # warm-up: fill every replica's queue
        done.get(timeout=150).result()
        warm += 1
        submit()
    c0 = time.process_time()
    n, runs = 0, []
    while time.time() < end_at:
        _, timings = done.get(timeout=150).result()
        n += 1
        runs.append(timings)
        submit()
    cpu = time.process_time() - c0
    for _ in range(in_flight):                     # drain so the next run starts with empty queues
        done.get(timeout=150).result()
    return {"n": n, "cpu_s": cpu, "runs": runs}


def _client_process(broker_url: str, name: str, inputs: dict[str, np.ndarray], in_flight: int, start_at: float,
                    end_at: float, conn: Any) -> None:
    """A further operator client (its own process, Fleet and broker connection) for :func:`drive`."""
    try:
        with Fleet(broker_url) as fleet:
            conn.send(_window(fleet, name, inputs, in_flight, start_at, end_at))
    except BaseException as e:                     # noqa: BLE001 - reported to the parent
        conn.send({"error": repr(e)})
    finally:
        conn.close()


def drive(fleet: Fleet, name: str, inputs: dict[str, np.ndarray], in_flight: int, seconds: float,
          pids: dict[str, int], clients: int = 1, broker_url: str | None = None) -> dict[str, Any]:
    """Keep ``in_flight`` requests outstanding for ``seconds`` (after a warm-up): req/s, the clients' and every
    watched process's CPU (cores) over the window, and per-device run time medians.

    ``clients`` > 1 spreads the window over that many operator processes (this one and ``clients - 1``
    spawned, each with its own Fleet on ``broker_url``), all counting over the same wall-clock window. A pool
    serves many clients; one Python client tops out at a few hundred requests a second (0.4-0.5 ms of CPU per
    request, all under one GIL), which is below what six devices answer for a small model."""
    clients = max(1, min(clients, in_flight))
    shares = [in_flight // clients + (1 if i < in_flight % clients else 0) for i in range(clients)]
    warmup = 3.0 if clients > 1 else 0.0           # the spawned clients import, connect and warm up meanwhile
    start_at = time.time() + warmup
    end_at = start_at + seconds
    ctx = mp.get_context("spawn")                  # not fork: this process runs paho and zeroconf threads
    children = []
    for share in shares[1:]:
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_client_process, args=(broker_url, name, inputs, share, start_at, end_at, child_end),
                           daemon=True)
        proc.start()
        child_end.close()
        children.append((proc, parent_end))
    cpu0 = {k: process_cpu_s(p) for k, p in pids.items()}
    t0 = time.time()
    mine = _window(fleet, name, inputs, shares[0], start_at, end_at)
    procs = {k: (process_cpu_s(p) - cpu0[k]) / (time.time() - t0) for k, p in pids.items()}
    results = [mine]
    for proc, conn in children:
        results.append(conn.recv() if conn.poll(180) else {"error": "no answer from a client process"})
        proc.join(30)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"client process failed: {errors[0]}")
    per_dev: dict[str, list[float]] = {}
    for r in results:
        for timings in r["runs"]:
            for t in timings:
                per_dev.setdefault(t["device"], []).append(float(t["run_ms"]))
    return {"rps": sum(r["n"] for r in results) / seconds, "clients": clients,
            "client_cores": sum(r["cpu_s"] for r in results) / seconds, "proc_cores": procs,
            "run_ms": {d: float(np.median(v)) for d, v in per_dev.items()},
            "served": {d: len(v) for d, v in per_dev.items()}}


def alone_latency(fleet: Fleet, name: str, inputs: dict[str, np.ndarray], n: int,
                  gap_s: float = 0.1) -> dict[str, float]:
    """Latency (ms) of ``n`` requests, each alone on an idle fleet (after two warm-ups): median and mean, and
    the median of its two parts, the stages' model runs (the agents' own timings) and the rest (the path:
    client, broker, agents' framing and hand-offs); ``inbound``, the path's part before the first stage's
    run starts (the caller's send, the broker, the agent's receive and checks; on this machine's one clock).

    Each is sent 1-2 ``gap_s`` (a CPU-quota period) after the previous answer: a device under a quota spends
    its quota at full speed and then waits for the next period, so back-to-back requests would measure how
    much quota the previous ones left, not one request alone. The median is the figure compared with the
    prediction: the agent's own background work (state, load reports) sometimes leaves a request a
    period's wait, which moves the mean of 15 by several ms."""
    lat: list[float] = []
    run: list[float] = []
    inbound: list[float] = []
    rng = np.random.default_rng(1)
    for i in range(n + 2):
        time.sleep(gap_s * (1 + rng.random()))   # arrivals at random points of the quota's period
        t = time.perf_counter()
        _, timings = fleet.infer(name, inputs, timeout=120, with_timings=True)
        if i >= 2:
            lat.append((time.perf_counter() - t) * 1e3)
            run.append(sum(float(x.get("run_ms", 0.0)) for x in timings if isinstance(x, dict)))
            inbound.append(float(timings[0].get("queue_ms", 0.0)) if timings and isinstance(timings[0], dict) else 0.0)
    return {"p50": float(np.median(lat)), "mean": float(np.mean(lat)), "run": float(np.median(run)),
            "path": float(np.median(np.subtract(lat, run))), "inbound": float(np.median(inbound))}


def measure_plan(fleet: Fleet, model: onnx.ModelProto, tag: str, inputs: dict[str, np.ndarray],
                 shapes: dict | None, devices: list[str], per_device: int, seconds: float, n_latency: int,
                 pids: dict[str, int], broker_url: str, client_rps: float) -> dict[str, Any]:
    """Plan over ``devices`` (throughput objective), deploy the choice, measure it, undeploy. The load comes
    from one client process per ``client_rps`` of predicted throughput (at least one; 0: always one)."""
    # after the first plan of a model, its devices' efficiency is learned from their run times
    learned = sorted(fleet.learned.for_model(sha256_hex(load_model(model).SerializeToString())))
    search = fleet.plan_shapes(model, devices=devices, objective="throughput", input_shapes=shapes)
    cand = search.best
    p = cand.prediction
    clients = max(1, math.ceil(p.throughput_rps / client_rps)) if client_rps > 0 else 1
    fleet.deploy(model, tag, shape=cand.shape, input_shapes=shapes, timeout=300)
    try:
        m = drive(fleet, tag, inputs, per_device * len(devices), seconds, pids, clients, broker_url)
        alone = alone_latency(fleet, tag, inputs, n_latency)
    finally:
        fleet.undeploy(tag)
    all_learned = not set(cand.shape.devices) - set(learned)
    return {"devices": devices, "shape": cand.shape.label() + (" *" if all_learned else ""),
            "learned": learned, "kind": cand.shape.kind,
            "stages": len(cand.shape.groups), "replicas": [len(g) for g in cand.shape.groups],
            "pred_rps": p.throughput_rps, "meas_rps": m["rps"], "err_rps": m["rps"] / p.throughput_rps - 1,
            "pred_ms": p.latency_ms, "meas_ms": alone["p50"], "meas_ms_mean": alone["mean"],
            "err_ms": alone["p50"] / p.latency_ms - 1,
            "pred_run_ms": p.run_ms, "meas_run_ms": alone["run"], "pred_path_ms": p.latency_ms - p.run_ms,
            "meas_path_ms": alone["path"], "meas_inbound_ms": alone["inbound"],
            "bottleneck": p.bottleneck, "clients": m["clients"], "client_cores": m["client_cores"],
            "broker_cores": m["proc_cores"].get("broker", 0.0),
            "agent_cores": {k: v for k, v in m["proc_cores"].items() if k != "broker"},
            "run_ms": m["run_ms"], "served": m["served"],
            "pred_busy_ms": {k: round(v, 3) for k, v in p.busy_ms.items()}, "_shape": cand.shape}


@contextlib.contextmanager
def infrastructure(layout: cgroups.CgroupLayout) -> Iterator[cgroups.DeviceCgroup]:
    """A lab group without a quota for this client and the broker (the operator's machine and the broker's,
    which in a real fleet are not the devices): at the lab's weight, so that other work on this shared
    machine does not starve them into being the bottleneck. This process joins it until the end."""
    group = cgroups.create("infra", cpu=None, layout=layout)
    group.add(os.getpid())
    try:
        yield group
    finally:
        # back to the group this process came from (the groups were made below it), with the helpers it
        # started that are still alive (multiprocessing's resource tracker lives until this process exits and
        # kept the group from being removed), then remove
        for d in group.dirs:
            for pid in {os.getpid(), *group.pids()}:
                try:
                    (d.parent.parent / "cgroup.procs").write_text(str(pid))
                except OSError:   # exited meanwhile
                    pass
        group.remove()


@contextlib.contextmanager
def quota_lab(workdir: Path) -> Iterator[tuple[SimFleet, Fleet, Broker]]:
    """A Mosquitto broker and this client in the :func:`infrastructure` group, an empty simulated fleet whose
    devices get cgroup quotas (add them with :func:`start_one_by_one`), and an operator client on it."""
    layout = cgroups.detect()
    with infrastructure(layout) as infra, Broker.start("mosquitto", workdir=str(workdir / "broker")) as broker:
        infra.add(broker.proc.pid)
        sim = SimFleet(broker_url=broker.url, workdir=workdir / "sim", discovery=False, devices=[],
                       cgroup_layout=layout, extra_args=["--recheck-every", "0"])
        try:
            with Fleet(broker.url) as fleet:
                yield sim, fleet, broker
        finally:
            sim.close()


def start_one_by_one(sim: SimFleet, fleet: Fleet, entries: Sequence[FleetEntry], timeout: float = 60.0) -> None:
    """Start the devices one at a time, each once the previous one reported its measured link: agents
    started together run their GFLOP/s probes at once, and on two cores their quotas then add up to more
    than the machine has (a 0.6-core device measured a 0.2-core one's rate)."""
    for e in entries:
        sim.add_device(e.name, profile=e.profile)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = next((d for d in fleet.devices() if d.device_id == e.name), None)
            if d is not None and d.link_mbps:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"device {e.name} did not come up within {timeout:g} s:\n{sim.log(e.name)[-2000:]}")


def run(workdir: Path, models: Sequence[str], slow: float, fast: float, det_size: int, per_device: int,
        seconds: float, n_latency: int, ns: Sequence[int], client_rps: float = 0.0) -> dict[str, Any]:
    slow_names = [f"slow-{i}" for i in range(max(max(ns), MIX_SLOW))]
    entries = [FleetEntry(n, DeviceProfile("slow", cpu=slow, threads=1)) for n in slow_names]
    entries.append(FleetEntry("fast", DeviceProfile("fast", cpu=fast, threads=1)))
    out: dict[str, Any] = {"slow_cores": slow, "fast_cores": fast, "per_device_in_flight": per_device,
                           "seconds": seconds, "client_rps": client_rps, "models": {}}
    with quota_lab(workdir) as (sim, fleet, broker):
        start_one_by_one(sim, fleet, entries)
        out["devices"] = {d.device_id: {"gflops": round(d.gflops, 1), "burst_gflops": d.burst_gflops,
                                        "link_mbps": round(d.link_mbps or 0),
                                        "rtt_ms": round(d.link_rtt_ms or 0, 2)} for d in fleet.devices()}
        pids = {n: d.proc.pid for n, d in sim.devices.items() if d.proc is not None}
        pids["broker"] = broker.proc.pid
        live = fleet.devices()
        planner_devices = {d.device_id: model_device(d) for d in live}
        base_cal = calibration_for(live, fleet.client_link())
        obs: list[Observation] = []
        evals: list[tuple[dict, CostProfile, float]] = []
        for mi, mname in enumerate(models):
            model, inputs, shapes = load_workload(mname, det_size)
            prof = profile_model(model, shapes, model_name=mname)
            mrun = model_run(model, inputs, prof)
            console.print(f"[bold]{mname}[/bold] (load {os.getloadavg()[0]:.2f})")
            scaling = []
            # N = 1 first and again last: the baseline is their mean, so that a change of the
            # machine's background load during the sequence does not tilt every ratio one way
            for i, n in enumerate([*ns, 1]):
                r = measure_plan(fleet, model, f"p{mi}n{n}r{i}", inputs, shapes, slow_names[:n],
                                 per_device, seconds, n_latency, pids, broker.url, client_rps)
                r["n"] = n
                r["load"] = round(os.getloadavg()[0], 2)
                scaling.append(r)
                console.print(f"  N={n}: {r['shape']} {r['meas_rps']:.1f} req/s (pred "
                              f"{r['pred_rps']:.1f}), {r['clients']} client(s) {r['client_cores']:.2f} cores, load {r['load']}")
            base = float(np.mean([r["meas_rps"] for r in scaling if r["n"] == 1]))
            for r in scaling:
                r["speedup"] = r["meas_rps"] / base
                r["efficiency"] = r["speedup"] / r["n"]
            alone = [next(r for r in scaling if r["n"] == 1)]
            alone[0] = {**alone[0], "role": "alone"}
            for dev in [*slow_names[1:MIX_SLOW], "fast"]:
                r = measure_plan(fleet, model, f"p{mi}a{dev}", inputs, shapes, [dev], per_device,
                                 seconds, n_latency, pids, broker.url, client_rps)
                alone.append({**r, "role": "alone", "load": round(os.getloadavg()[0], 2)})
            mix = measure_plan(fleet, model, f"p{mi}mix", inputs, shapes, ["fast", *slow_names[:MIX_SLOW]],
                               per_device, seconds, n_latency, pids, broker.url, client_rps)
            mix["load"] = round(os.getloadavg()[0], 2)
            total = sum(r["meas_rps"] for r in alone)
            mix["role"] = "mix"
            mix["sum_alone_rps"] = total
            mix["ratio"] = mix["meas_rps"] / total
            console.print(f"  mix: {mix['shape']} {mix['meas_rps']:.1f} req/s vs sum alone {total:.1f} "
                          f"({mix['ratio']:.2f})")
            # the calibration's measurements: every device alone at saturation, its CPU per request
            # in full cores, beside the model run alone on one full core
            for r in alone:
                dev = r["devices"][0]
                cores = r["agent_cores"].get(dev, 0.0)
                if cores > 0:
                    obs.append(Observation(cores * 1e3 / r["meas_rps"], mrun.run_ms, mrun.nbytes))
            evals += [(r, prof, mrun.efficiency) for r in [*scaling, *alone[1:], mix]]
            out["models"][mname] = {"input_shapes": {k: list(v.shape) for k, v in inputs.items()},
                                    "flops": mrun.flops, "run_ms_1core": mrun.run_ms,
                                    "probe_gflops": mrun.probe_gflops, "efficiency": mrun.efficiency,
                                    "scaling": scaling, "alone": alone, "mix": mix}
        if obs:
            cal = fit_agent_costs(obs, base_cal)
            out["calibration"] = {"hop_ms": cal.hop_ms, "byte_ms_per_mb": cal.byte_ms_per_mb,
                                  "observations": [o._asdict() for o in obs]}
            for r, prof, eff in evals:
                devs = {k: dataclasses.replace(v, efficiency=eff) for k, v in planner_devices.items()}
                recalibrated(r, prof, devs, cal)
    for m in out["models"].values():          # the shapes were for re-evaluation only, not for JSON
        for r in [*m["scaling"], *m["alone"], m["mix"]]:
            r.pop("_shape", None)
    return out


def recalibrated(r: dict[str, Any], prof: CostProfile, devices: dict, cal: Calibration) -> None:
    """Add the prediction of plan ``r`` with the fitted calibration and the model's measured efficiency."""
    shape: Shape = r["_shape"]
    p = evaluate(prof, devices, shape, cal)
    r.update({"cal_rps": p.throughput_rps, "cal_ms": p.latency_ms, "cal_err_rps": r["meas_rps"] / p.throughput_rps - 1,
              "cal_err_ms": r["meas_ms"] / p.latency_ms - 1, "cal_bottleneck": p.bottleneck})


def show(res: dict[str, Any]) -> None:
    console.print(f"ISA {platform.machine()}, {os.cpu_count()} cores; devices (GFLOP/s, link Mbit/s, rtt ms): "
                  f"{res['devices']}")
    for mname, m in res["models"].items():
        rows = [[r["n"], r["shape"], fmt(r["meas_rps"]), f"{r['speedup']:.2f}x", f"{r['efficiency']:.2f}",
                 r.get("clients", 1), fmt(r["client_cores"], 2), fmt(r["broker_cores"], 2), r["load"]]
                for r in m["scaling"]]
        table(f"{mname} {m['input_shapes']}: scaling on {res['slow_cores']:g}-core devices "
              f"({res['per_device_in_flight']} in flight per device)",
              ["N", "plan", "req/s", "vs N=1 (mean of both)", "/ N (goal >= 0.9)", "clients", "client cores",
               "broker cores", "load"], rows)
        mix = m["mix"]
        rows = [[r["devices"][0], fmt(r["meas_rps"])] for r in m["alone"]]
        rows.append([f"mix: {mix['shape']}", fmt(mix["meas_rps"])])
        table(f"{mname}: heterogeneous mix, ratio mix / sum(alone) = {mix['ratio']:.2f} (goal >= 0.85)",
              ["devices", "req/s"], rows)
        plans = [*m["scaling"], *m["alone"][1:], mix]
        table(f"{mname}: predicted (as deployed; * every device's efficiency learned from earlier plans' run "
              f"times) vs measured, every plan",
              ["plan", "pred req/s", "meas req/s", "err", "pred ms", "meas ms (p50)", "err", "mean ms",
               "run pred / meas", "path pred / meas", "bottleneck"],
              [[r["shape"], fmt(r["pred_rps"]), fmt(r["meas_rps"]), f"{r['err_rps']:+.0%}", fmt(r["pred_ms"]),
                fmt(r["meas_ms"]), f"{r['err_ms']:+.0%}", fmt(r["meas_ms_mean"]),
                f"{fmt(r['pred_run_ms'])} / {fmt(r['meas_run_ms'])}",
                f"{fmt(r['pred_path_ms'])} / {fmt(r['meas_path_ms'])}", r["bottleneck"]] for r in plans])
        if "cal_rps" in plans[0]:
            table(f"{mname}: calibrated prediction (fitted agent costs, efficiency {m['efficiency']:.2f} "
                  f"measured in-process) vs measured",
                  ["plan", "cal req/s", "meas req/s", "err", "cal ms", "meas ms", "err", "bottleneck"],
                  [[r["shape"], fmt(r["cal_rps"]), fmt(r["meas_rps"]), f"{r['cal_err_rps']:+.0%}", fmt(r["cal_ms"]),
                    fmt(r["meas_ms"]), f"{r['cal_err_ms']:+.0%}", r["cal_bottleneck"]] for r in plans])
    if "calibration" in res:
        c = res["calibration"]
        console.print(f"fitted agent costs (one full core): {c['hop_ms']:.2f} ms per hop, "
                      f"{c['byte_ms_per_mb']:.2f} ms per MB, from {len(c['observations'])} single-device runs")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenetv2,ppocr_det,transformer",
                    help="comma-separated: zoo names or ppocr_det")
    ap.add_argument("--slow", type=float, default=0.2, help="CPU quota of each device of the profile, cores")
    ap.add_argument("--fast", type=float, default=0.6, help="CPU quota of the mix's fast device, cores")
    ap.add_argument("--det-size", type=int, default=320, help="PP-OCRv4 det input side (pixels)")
    ap.add_argument("--per-device", type=int, default=6, help="requests in flight per device")
    ap.add_argument("--ns", default=",".join(map(str, NS)), help="device counts to scale over")
    ap.add_argument("--client-rps", type=float, default=200.0,
                    help="one operator client process per this many predicted req/s (0: always one client)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        console.print("[yellow]bench_pool skipped: it needs root (cgroup CPU quotas)[/yellow]")
        return {"skipped": "needs root (cgroup CPU quotas)"}
    load0 = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        res = run(Path(tmp), [m for m in args.models.split(",") if m], args.slow, args.fast, args.det_size,
                  args.per_device, seconds=4.0 if args.quick else 10.0, n_latency=5 if args.quick else 15,
                  ns=[int(x) for x in args.ns.split(",")], client_rps=args.client_rps)
    res["isa"] = platform.machine()
    res["load_avg_1m_at_start"] = load0
    res["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    show(res)
    console.print(f"load average at start {load0}, at end {res['load_avg_1m_at_end']}")
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
