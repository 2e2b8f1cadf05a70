"""CPU the operator client (``Fleet``) spends per request, next to a raw paho client doing the same exchanges.

Two agents hold a 1-stage tiny model (one ``Add`` on 16 floats, both replicas), the client keeps ``INFLIGHT``
requests in flight through ``Fleet.submit`` for N requests, and its process CPU time (getrusage: every thread,
paho's network thread included) over those requests is divided by N. The baseline in the same run is a raw
paho client sending the same number of 4 KiB QoS 1 round trips through one raw relay process, also
``INFLIGHT`` at a time: what any MQTT client in Python pays per request-and-answer. At ~0.44 ms/request
(2026-12-03, before) the client capped the pool benchmark at ~400 req/s for a transformer.

``python -m benchmarks client [--quick] [--json out.json]``
"""

from __future__ import annotations

import resource
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_transport import chain_model
from benchmarks.common import RawRelayChain, console, fmt, fmt_ratio, parser, ratio, table, write_json
from edge_agent import Fleet
from edge_agent.lab.sim import SimFleet

INFLIGHT = 8
N_ELEMENTS = 16


def self_cpu_s() -> float:
    """This process's user + system CPU seconds (all threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def ours_cpu_ms(fleet: Fleet, name: str, n: int) -> tuple[float, float]:
    """(client CPU ms per request, requests per second) for ``n`` requests, INFLIGHT at a time."""
    x = np.ones(N_ELEMENTS, np.float32)
    slots = threading.Semaphore(INFLIGHT)
    futures: list[Future] = []
    c0, t0 = self_cpu_s(), time.perf_counter()
    for _ in range(n):
        slots.acquire()
        f = fleet.submit(name, {"x": x}, timeout=30.0)
        f.add_done_callback(lambda _f: slots.release())
        futures.append(f)
    wait(futures)
    c1, t1 = self_cpu_s(), time.perf_counter()
    for f in futures:
        f.result()   # every request answered (an error would make the CPU figure meaningless)
    return (c1 - c0) * 1e3 / n, n / (t1 - t0)


def raw_cpu_ms(raw: RawRelayChain, n: int) -> float:
    """Client CPU ms per raw paho round trip through one relay, INFLIGHT threads at a time."""
    payload = bytearray(4096)
    per = n // INFLIGHT

    def worker() -> None:
        for _ in range(per):
            raw.round_trip(1, payload)

    c0 = self_cpu_s()
    threads = [threading.Thread(target=worker) for _ in range(INFLIGHT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (self_cpu_s() - c0) * 1e3 / (per * INFLIGHT)


def measure(workdir: Path, n: int, rounds: int) -> dict[str, Any]:
    with SimFleet(2, workdir=workdir, discovery=False, threads=1) as sim, Fleet(sim.broker.url) as fleet:
        fleet.wait_for_devices(2, timeout=60)
        name = "bench-client-tiny"
        fleet.deploy(chain_model(1, N_ELEMENTS), name, stages=1, replicas=2, timeout=120)
        ours_cpu_ms(fleet, name, max(50, n // 10))   # warm-up
        ours, rates, raws = [], [], []
        with RawRelayChain(sim.broker.url, 1) as raw:
            raw_cpu_ms(raw, INFLIGHT * 10)
            for _ in range(rounds):           # interleaved: background load hits both alike
                ms, rate = ours_cpu_ms(fleet, name, n)
                ours.append(ms)
                rates.append(rate)
                raws.append(raw_cpu_ms(raw, n))
        fleet.undeploy(name)
    o, r = float(np.median(ours)), float(np.median(raws))
    return {"requests": n, "rounds": rounds, "inflight": INFLIGHT, "ours_cpu_ms_per_request": round(o, 4),
            "raw_cpu_ms_per_round_trip": round(r, 4), "ratio": ratio(o, r),
            "ours_req_per_s": round(float(np.median(rates)), 1),
            "ours_all": [round(v, 4) for v in ours], "raw_all": [round(v, 4) for v in raws]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ea-bench-client-") as tmp:
        res = measure(Path(tmp), 400 if args.quick else 2000, 2 if args.quick else 3)
    table("Operator client CPU per request (1-stage tiny model, 2 agents, 8 in flight)",
          ["ours ms/req", "raw paho ms/round trip", "ratio", "ours req/s"],
          [[fmt(res["ours_cpu_ms_per_request"]), fmt(res["raw_cpu_ms_per_round_trip"]), fmt_ratio(res["ratio"]),
            fmt(res["ours_req_per_s"], 1)]])
    console.print(f"ours per round: {res['ours_all']}  raw: {res['raw_all']}")
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
