"""Scale on one machine: many emulated agents (small CPU quotas) on a real Mosquitto broker.

Measures, for N agents (default 50; ``--quick`` 12):

* presence: time until the operator sees all N online (retained states), and until every agent lists the
  N - 1 others as mDNS peers (discovery on loopback);
* ``edge-agent fleet ls --json`` lists all N (the CLI, as a user runs it);
* memory: resident set size per idle agent, and its CPU use while idle (heartbeats, session probes, the
  periodic link and GFLOP/s rechecks; both from /proc, over ``--idle`` seconds);
* a model replicated to all N (``replicas=N``): time until every replica is ready, and how many bytes left
  the operator against the shard size (holders serve a blob to a few requesters at a time, the rest fetch
  it from peers: a tree, not a star);
* requests spread: 4 x N requests in flight, how many distinct devices served them; answers checked against
  ONNX Runtime.

No timing here is a pass/fail threshold; the numbers go in the issue note. Prints the ISA it ran on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import wait as wait_futures
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.common import console, machine_info, process_cpu_s, write_json
from edge_agent import Fleet
from edge_agent.lab.profiles import DeviceProfile, FleetEntry
from edge_agent.lab.sim import SimFleet
from models import zoo


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _until(cond, timeout: float, step: float = 0.5) -> float | None:
    """Seconds until ``cond()`` holds, or None after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--cpu", type=float, default=0.1, help="CPU quota of each agent, in cores of this machine")
    ap.add_argument("--model", default="transformer")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle over which agent CPU is measured")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    n = min(args.devices, 12) if args.quick else args.devices
    from ops_native import _core as core

    info = {**machine_info(), "isa": core.isa()}
    console.print(f"[bold]scale[/bold]: {n} agents, CPU quota {args.cpu:g} core each, ISA {info.get('isa')}")
    profile = DeviceProfile("scale-node", cpu=args.cpu, threads=1, source="bench_scale: a small device")
    model = zoo.build(args.model, seed=3)
    x = zoo.sample_inputs(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, x)))
    res: dict = {"devices": n, "cpu_quota": args.cpu, "model": args.model}
    with tempfile.TemporaryDirectory(prefix="ea-scale-") as tmp:
        t_start = time.monotonic()
        entries = [FleetEntry(f"n{i:02d}", profile) for i in range(n)]
        with SimFleet(devices=entries, broker_kind="mosquitto", workdir=Path(tmp)) as sim, \
                Fleet(sim.broker_url) as fleet:
            names = set(sim.devices)
            t_online = _until(lambda: len(fleet.devices()) == n, 600)
            res["online_s"] = None if t_online is None else round(time.monotonic() - t_start, 1)
            t_peers = _until(lambda: all(set(d.peers) >= names - {d.device_id} for d in fleet.devices())
                             and len(fleet.devices()) == n, 600)
            res["mdns_converged_s"] = None if t_peers is None else round(time.monotonic() - t_start, 1)
            out = subprocess.run([sys.executable, "-m", "edge_agent.cli", "fleet", "ls", "--json", "--broker",
                                  sim.broker_url], capture_output=True, text=True, timeout=120)
            listed = json.loads(out.stdout) if out.returncode == 0 else []
            res["fleet_ls_listed"] = len(listed)
            pids = [d.proc.pid for d in sim.devices.values() if d.proc is not None]
            idle_s = min(args.idle, 10.0) if args.quick else args.idle
            cpu0, t_idle = [process_cpu_s(p) for p in pids], time.monotonic()
            time.sleep(idle_s)   # idle: nothing deployed, nothing asked
            used = np.array([process_cpu_s(p) for p in pids]) - np.array(cpu0)
            pct = 100.0 * used / (time.monotonic() - t_idle)
            res["idle_cpu_pct_per_agent"] = round(float(np.nanmedian(pct)), 2)
            res["idle_cpu_pct_max"] = round(float(np.nanmax(pct)), 2)
            rss = [_rss_mb(p) for p in pids]
            res["rss_mb_per_idle_agent"] = round(float(np.nanmedian(rss)), 1)
            res["rss_mb_max"] = round(float(np.nanmax(rss)), 1)

            # every device online now (a heartbeat late on this loaded machine can drop one for a moment)
            _until(lambda: len(fleet.devices()) == n, 120)
            live = len(fleet.devices())
            res["replicas"] = live
            console.print(f"  {live} online; presence {res['online_s']} s, mDNS {res['mdns_converged_s']} s, "
                          f"fleet ls {res['fleet_ls_listed']}, RSS {res['rss_mb_per_idle_agent']} MB per idle agent")
            t0 = time.monotonic()
            try:
                dep = fleet.deploy(model, "everywhere", stages=1, replicas=live, timeout=900)
                res["deploy_error"] = None
            except Exception as exc:   # e.g. a starved device missed its heartbeats: say so, measure the rest
                res["deploy_error"] = f"{type(exc).__name__}: {exc}"
                console.print(f"  [red]deploy failed:[/red] {exc}")
                dep = None
            res["replicate_s"] = round(time.monotonic() - t0, 1)
            m = dep.manifest if dep is not None else fleet.current("everywhere")
            size = m.stages[0].shard_size if m is not None else 1
            res["shard_bytes"] = size
            res["ready_replicas"] = sum(1 for d in fleet.devices() for e in d.stages
                                        if e.get("model") == "everywhere" and e.get("status") == "ready")
            res["operator_uploaded_x_shard"] = round(fleet.blob_server.served_bytes / size, 2)
            res["operator_busy_refusals"] = fleet.blob_server.busy_refusals
            console.print(f"  replicated to {res['ready_replicas']} in {res['replicate_s']} s; operator uploaded "
                          f"{res['operator_uploaded_x_shard']}x the shard")

            futures = [fleet.submit("everywhere", x, timeout=120) for _ in range(4 * n)]
            wait_futures(futures, timeout=300)
            served, ok = set(), 0
            for fut in futures:
                try:
                    out_t = fut.result(timeout=0)
                except Exception:   # counted as not ok
                    continue
                outputs, timings = out_t if isinstance(out_t, tuple) else (out_t, [])
                ok += all(np.allclose(outputs[k], want[k], rtol=1e-4, atol=1e-4) for k in want)
                served.update(t.get("device") for t in timings)
            res["requests"], res["requests_ok"], res["devices_that_served"] = len(futures), ok, len(served)

    table = [("agents", n), ("online (all states seen), s", res["online_s"]),
             ("mDNS peers converged, s", res["mdns_converged_s"]), ("fleet ls lists", res["fleet_ls_listed"]),
             ("RSS per idle agent, MB (median / max)", f"{res['rss_mb_per_idle_agent']} / {res['rss_mb_max']}"),
             (f"CPU per idle agent over {idle_s:g} s, % of a core (median / max)",
              f"{res['idle_cpu_pct_per_agent']} / {res['idle_cpu_pct_max']}"),
             (f"replicate {args.model} ({res['shard_bytes'] / 1e6:.2f} MB) to {res['replicas']}, s",
              res["replicate_s"]),
             ("replicas ready", res["ready_replicas"]),
             ("deploy error", res["deploy_error"] or "-"),
             ("operator uploaded, x shard size", res["operator_uploaded_x_shard"]),
             ("requests ok / sent", f"{res['requests_ok']} / {res['requests']}"),
             ("devices that served", res["devices_that_served"])]
    from rich.table import Table
    t = Table(title=f"scale: {n} emulated agents on one machine (ISA {info.get('isa')})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k, v in table:
        t.add_row(k, str(v))
    console.print(t)
    write_json(args.json, {"scale": res})
    return res


if __name__ == "__main__":
    main()
