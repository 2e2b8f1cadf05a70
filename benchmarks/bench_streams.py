"""Streams on a simulated fleet: throughput and end-to-end latency beside the single-request path, and what
each backpressure policy drops when the source is faster than the fleet.

Two agents (one core each), the MobileNetV2 zoo model in 2 stages (one per agent). In the same run:

1. the single-request path: sequential ``Fleet.infer`` latency, and throughput with as many requests in
   flight as a stream's ingress keeps (its window, 2 per stage);
2. a stream fed by a paced publisher at half the measured capacity: fps out and end-to-end latency (frame
   timestamp to the result's arrival at a sink subscriber, one machine so one clock);
3. overload: the publisher at 3x the capacity, once per policy (``latest``, ``queue:8``): fps out, frames
   dropped by reason and as a share of frames in, latency.

``python -m benchmarks streams [--quick] [--json out.json]``
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_pipeline import pipelined_throughput
from benchmarks.common import Latency, console, fmt, fmt_ratio, parser, ratio, table, write_json
from edge_agent import Fleet
from edge_agent.lab.sim import SimFleet
from edge_agent.operator.stats import latency_summary
from edge_agent.protocol.streams import StreamFrame, StreamResult
from edge_agent.transport.broker import find_mosquitto
from edge_agent.transport.mqtt import Transport
from models import zoo

MODEL = "mobilenetv2"
STAGES = 2
WINDOW = 2 * STAGES      # the ingress's in-flight window (edge_agent.agent.ingress: 2 per stage)


class SinkTap:
    """Subscribes to a sink: end-to-end latency of every result (arrival here minus the frame's ts)."""

    def __init__(self, url: str, topic: str) -> None:
        self.latency_ms: list[float] = []
        self.ids: list[str] = []
        self.lock = threading.Lock()
        self.t = Transport(url)
        self.t.subscribe(topic, self._on)
        self.t.start()
        time.sleep(0.3)

    def _on(self, topic: str, payload: bytes, retained: bool) -> None:
        now = time.time()
        res = StreamResult.from_bytes(payload)
        with self.lock:
            self.latency_ms.append((now - res.ts) * 1e3)
            self.ids.append(res.id)

    def count(self) -> int:
        with self.lock:
            return len(self.ids)

    def close(self) -> None:
        self.t.close()


def publish_paced(url: str, topic: str, x: np.ndarray, fps: float, seconds: float) -> int:
    """Publish frames of ``x`` at ``fps`` for ``seconds`` (QoS 0, like a camera); returns frames sent."""
    pub = Transport(url).start()
    try:
        n, t0 = 0, time.perf_counter()
        while True:
            due = t0 + n / fps
            now = time.perf_counter()
            if due - t0 >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            pub.publish(topic, StreamFrame(str(n), time.time(), tensors={"": x}).to_bytes(), qos=0)
            n += 1
        return n
    finally:
        time.sleep(0.2)
        pub.close()


def run_stream(fleet: Fleet, url: str, name: str, model: str, policy: str, x: np.ndarray, fps: float,
               seconds: float) -> dict[str, Any]:
    """One stream at ``fps`` for ``seconds``; the figures at the sink and the ingress's counters."""
    sink = f"bench/streams/{name}/out"
    tap = SinkTap(url, sink)
    try:
        fleet.stream_start(name, model, f"bench/streams/{name}/in", sink, policy=policy, timeout=60)
        t0 = time.perf_counter()
        sent = publish_paced(url, f"bench/streams/{name}/in", x, fps, seconds)
        elapsed = time.perf_counter() - t0

        def drained() -> dict | None:
            r = next((r for r in fleet.streams() if r["name"] == name), None)
            return r if r and r["frames_in"] >= sent * 0.99 and r["in_flight"] == 0 and r["backlog"] == 0 \
                else None

        end = time.monotonic() + 30
        rec = drained()
        while rec is None and time.monotonic() < end:
            time.sleep(0.2)
            rec = drained()
        rec = rec or next(r for r in fleet.streams() if r["name"] == name)
        got = tap.count()
        lat = latency_summary(tap.latency_ms)
        fleet.stream_stop(name)
    finally:
        tap.close()
    return {"policy": policy, "offered_fps": round(fps, 1), "sent": sent, "frames_in": rec["frames_in"],
            "frames_out": got, "fps_out": round(got / elapsed, 2), "dropped": rec["drop_reasons"],
            "dropped_share": round(rec["dropped"] / max(1, rec["frames_in"]), 3), "errors": rec["errors"],
            "backlog_max": rec["backlog_max"],
            "latency_ms": {"p50": lat["p50_ms"], "p99": lat["p99_ms"], "mean": lat["mean_ms"]}}


def run(workdir: Path, n_latency: int, n_throughput: int, seconds: float) -> dict[str, Any]:
    model = zoo.build(MODEL, seed=0)
    inputs = zoo.sample_inputs(model, seed=0)
    (_, x), = inputs.items()
    with SimFleet(STAGES, broker_kind="mosquitto" if find_mosquitto() else "embedded", workdir=workdir,
                  discovery=False, threads=1) as sim, Fleet(sim.broker_url) as fleet:
        fleet.wait_for_devices(STAGES, timeout=60)
        fleet.deploy(model, "bench-stream", stages=STAGES, devices=[f"dev-{i}" for i in range(STAGES)],
                     timeout=180)
        isa = sorted({d.isa for d in fleet.devices()})
        for _ in range(5):
            fleet.infer("bench-stream", inputs)
        seq = []
        for _ in range(n_latency):
            t0 = time.perf_counter()
            fleet.infer("bench-stream", inputs, timeout=60)
            seq.append((time.perf_counter() - t0) * 1e3)
        rps = pipelined_throughput(fleet, "bench-stream", inputs, n_throughput, WINDOW)
        single = {"latency": Latency.of(seq).to_dict(),
                  "p99_ms": latency_summary(seq)["p99_ms"], "throughput_rps": round(rps, 2), "in_flight": WINDOW}
        paced = run_stream(fleet, sim.broker_url, "paced", "bench-stream", "queue:8", x, 0.5 * rps, seconds)
        over = [run_stream(fleet, sim.broker_url, f"over-{p.replace(':', '')}", "bench-stream", p, x, 3 * rps,
                           seconds) for p in ("latest", "queue:8")]
    return {"model": MODEL, "stages": STAGES, "isa": isa, "input_shape": list(x.shape), "single": single,
            "stream_paced": paced, "stream_overload": over,
            "fps_ratio_overload_latest": ratio(over[0]["fps_out"], rps),
            "latency_ratio_paced_p50": ratio(paced["latency_ms"]["p50"] or 0.0, single["latency"]["p50_ms"])}


def render(res: dict[str, Any]) -> None:
    s = res["single"]
    console.print(f"ISA: {', '.join(res['isa'])}; {res['model']} {res['input_shape']} in {res['stages']} stages "
                  f"on {res['stages']} agents (1 thread each)")
    table("single-request path (Fleet.infer)", ["", "p50 ms", "p99 ms", "throughput req/s"],
          [["sequential", fmt(s["latency"]["p50_ms"]), fmt(s["p99_ms"]), ""],
           [f"{s['in_flight']} in flight", "", "", fmt(s["throughput_rps"])]])
    rows = []
    for r in [res["stream_paced"], *res["stream_overload"]]:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(r["dropped"].items())) or "none"
        rows.append([r["policy"], fmt(r["offered_fps"]), r["frames_in"], r["frames_out"], fmt(r["fps_out"]),
                     f"{drops} ({r['dropped_share']:.0%})", r["backlog_max"], fmt(r["latency_ms"]["p50"]),
                     fmt(r["latency_ms"]["p99"])])
    table("streams (end-to-end: frame timestamp to arrival at the sink)",
          ["policy", "offered fps", "in", "out", "fps out", "dropped", "backlog max", "p50 ms", "p99 ms"], rows,
          caption=f"first row: source at 0.5x the single-request throughput; others at 3x. "
                  f"fps out under overload (latest) / single-request req/s: "
                  f"{fmt_ratio(res['fps_ratio_overload_latest'])}; paced stream p50 / sequential infer p50: "
                  f"{fmt_ratio(res['latency_ratio_paced_p50'])}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    n_lat, n_tp, seconds = (20, 40, 3.0) if args.quick else (100, 200, 8.0)
    with tempfile.TemporaryDirectory(prefix="ea-bench-streams-") as tmp:
        res = run(Path(tmp), n_lat, n_tp, seconds)
    render(res)
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
