"""Soak: thousands of requests through a 3-stage pipeline with replicas while devices are killed (SIGKILL,
no goodbye) and restarted at random. Reports lost, duplicated, wrong, latency percentiles, throughput and
the time to recover after each kill, beside the same stream with no kills in the same run (baseline).

    python -m benchmarks.bench_soak [--requests 2000] [--kills 6] [--quick] [--json out.json]

Recovery after a kill = time from the kill until the first request *sent after the kill* completes (the
fleet has noticed the death, re-routed or re-placed the stage, and serves again). Target: 0 lost,
0 duplicated, recovery within 5 s.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent import Fleet
from edge_agent.lab.sim import SimFleet
from edge_agent.operator.stats import latency_summary
from models import zoo


def _stream(fleet: Fleet, name: str, xs: list[dict], want: list[dict], n: int, concurrency: int,
            timeout: float, events: list | None = None) -> dict:
    sent_at: dict[int, float] = {}
    done_at: dict[int, float] = {}
    lat, lost, wrong, seen = [], [], 0, set()
    inflight: deque = deque()
    i = 0
    t0 = time.perf_counter()
    while i < n or inflight:
        while i < n and len(inflight) < concurrency:
            sent_at[i] = time.perf_counter()
            inflight.append((i, fleet.submit(name, xs[i % len(xs)], timeout=timeout)))
            i += 1
        k, fut = inflight.popleft()
        try:
            outputs, _ = fut.result(timeout + 10)
        except Exception as exc:  # noqa: BLE001 - a lost request is a result of the soak, not a crash
            lost.append(repr(exc)[:200])
            continue
        done_at[k] = time.perf_counter()
        lat.append((done_at[k] - sent_at[k]) * 1e3)
        if k in seen:
            raise AssertionError(f"request {k} delivered twice")
        seen.add(k)
        ref = want[k % len(want)]
        if not all(np.allclose(outputs[o], ref[o], atol=1e-4, rtol=1e-4) for o in ref):
            wrong += 1
    wall = time.perf_counter() - t0
    lat.sort()
    summary = latency_summary(lat)

    def pct(q: str) -> float:
        return round(summary[q], 2) if lat else float("nan")

    recovery = []
    for ev in events or []:
        after = [done_at[k] - ev["t"] for k in done_at if sent_at[k] >= ev["t"]]
        recovery.append(round(min(after), 3) if after else None)
    return {"requests": n, "ok": len(lat), "lost": len(lost), "wrong": wrong,
            "duplicated_to_caller": 0, "p50_ms": pct("p50_ms"), "p95_ms": pct("p95_ms"), "p99_ms": pct("p99_ms"),
            "max_ms": round(lat[-1], 2) if lat else None, "throughput_rps": round(len(lat) / wall, 1),
            "seconds": round(wall, 2), "recovery_s": recovery, "lost_examples": lost[:3]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--model", default="transformer")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.kills = min(args.requests, 500), min(args.kills, 3)
    model = zoo.build(args.model, seed=0)
    xs = [zoo.sample_inputs(model, seed=i) for i in range(8)]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = [dict(zip([o.name for o in sess.get_outputs()], sess.run(None, x))) for x in xs]
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="ea-soak-") as tmp, \
            SimFleet(args.devices, broker_kind="mosquitto", workdir=Path(tmp), discovery=False,
                     persistence=True) as sim, Fleet(sim.broker_url) as fleet:
        fleet.wait_for_devices(args.devices, timeout=60)
        dep = fleet.deploy(model, "soak", stages=3, replicas=2, timeout=180)
        placement = {st.index: st.devices for st in dep.manifest.stages}
        baseline = _stream(fleet, "soak", xs, want, max(200, args.requests // 4), args.concurrency, 60)

        events: list[dict] = []
        stop = threading.Event()

        def chaos() -> None:
            time.sleep(1.0)
            for _ in range(args.kills):
                if stop.is_set():
                    return
                victim = rng.choice(sorted(sim.devices))
                events.append({"t": time.perf_counter(), "device": victim})
                sim.stop_device(victim, kill=True)
                if stop.wait(rng.uniform(0.8, 1.5)):
                    return
                sim.start_device(victim)
                if stop.wait(rng.uniform(1.0, 2.0)):
                    return

        killer = threading.Thread(target=chaos, daemon=True)
        killer.start()
        soak = _stream(fleet, "soak", xs, want, args.requests, args.concurrency, 60, events)
        stop.set()
        killer.join(30)
        soak["kills"] = [e["device"] for e in events]
        soak["late_duplicates_dropped"] = fleet.stats["duplicates"]
        soak["retries"] = fleet.stats["retries"]
        soak["failovers"] = fleet.stats["failovers"]
    result = {"model": args.model, "devices": args.devices, "stages": 3, "replicas": 2,
              "placement": placement, "baseline": baseline, "soak": soak,
              "p50_ratio_vs_baseline": round(soak["p50_ms"] / baseline["p50_ms"], 2),
              "throughput_ratio_vs_baseline": round(soak["throughput_rps"] / baseline["throughput_rps"], 2)}
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def _print(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"soak: {r['model']}, 3 stages x 2 replicas on {r['devices']} devices")
    cols = ("run", "requests", "ok", "lost", "wrong", "dup", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s")
    for c in cols:
        t.add_column(c)
    for key in ("baseline", "soak"):
        s = r[key]
        t.add_row(key, str(s["requests"]), str(s["ok"]), str(s["lost"]), str(s["wrong"]),
                  str(s["duplicated_to_caller"]), str(s["p50_ms"]), str(s["p95_ms"]), str(s["p99_ms"]),
                  str(s["max_ms"]), str(s["throughput_rps"]))
    con = Console(width=130)
    con.print(t)
    s = r["soak"]
    con.print(f"kills: {s['kills']}; recovery after each (s): {s['recovery_s']}; retries {s['retries']}, "
              f"failover events {s['failovers']}, late duplicates dropped {s['late_duplicates_dropped']}")


if __name__ == "__main__":
    main()
