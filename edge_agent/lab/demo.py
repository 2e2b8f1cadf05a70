"""``make demo`` / ``edge-agent demo``: 3 simulated devices, a CNN split in 3 stages, checked against ONNX Runtime.

Starts a broker (the embedded one by default: no system package needed), 3 agent processes that find each
other by mDNS on loopback, deploys the model through the Fleet API, prints where each layer runs and why,
runs a batch of pipelined requests and compares every output with ONNX Runtime on the whole model.
Exits non-zero if any output differs beyond tolerance. With ``dashboard_port`` (``DEMO_DASHBOARD=1 make demo``)
it then serves the dashboard with a light load running, prints its URL and keeps the fleet up until Ctrl-C.
"""

from __future__ import annotations

import time

import numpy as np

from edge_agent.cli.render import console, placement
from edge_agent.operator.stats import latency_summary

ATOL = 1e-4
RTOL = 1e-4


def run_demo(model: str = "mobilenetv2", stages: int = 3, requests: int = 64, broker_kind: str = "embedded",
             devices: int = 3, concurrency: int = 8, dashboard_port: int | None = None) -> int:
    import onnxruntime as ort
    from rich.table import Table

    from edge_agent.lab.sim import SimFleet
    from edge_agent.operator.fleet import Fleet
    from models import zoo

    con = console()
    con.rule(f"edge-agent demo: {model} in {stages} stages on {devices} simulated devices")
    proto = zoo.build(model, seed=0)
    inputs = [zoo.sample_inputs(proto, seed=i) for i in range(8)]
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in ref.get_outputs()]
    expected = [dict(zip(out_names, ref.run(None, x))) for x in inputs]

    t_start = time.perf_counter()
    with SimFleet(devices, broker_kind=broker_kind) as sim:
        con.print(f"broker: {sim.broker.kind} on {sim.broker.url}; agent logs in {sim.workdir}")
        with Fleet(sim.broker.url) as fleet:
            fleet.wait_for_devices(devices, timeout=60)
            _wait_peers(fleet, devices, timeout=20)
            t = Table(title="devices (found each other by mDNS, live by MQTT presence)")
            for col in ("device", "ISA", "cores", "GFLOP/s (measured)", "mDNS peers"):
                t.add_column(col)
            for d in fleet.devices():
                t.add_row(d.device_id, d.isa, str(d.cores), f"{d.gflops:.1f}", ", ".join(d.peers))
            con.print(t)

            dep = fleet.deploy(proto, name=model, stages=stages, timeout=120)
            placement(dep)

            # one request: per-stage timing
            outs, timings = fleet.infer(model, inputs[0], with_timings=True)
            for tm in timings:
                con.print(f"  stage {tm['stage']} on {tm['device']} ({tm['backend']}): run {tm['run_ms']:.2f} ms, "
                          f"queue+transfer {tm['queue_ms']:.2f} ms")

            # a batch with several requests in flight: stages work in parallel
            lat, max_diff, bad = [], 0.0, 0
            pending: list = []
            t0 = time.perf_counter()
            for i in range(requests):
                k = i % len(inputs)
                pending.append((k, time.perf_counter(), fleet.submit(model, inputs[k], timeout=60)))
                while len(pending) >= concurrency or (i == requests - 1 and pending):
                    k2, ts, fut = pending.pop(0)
                    got, _ = fut.result(70)
                    lat.append((time.perf_counter() - ts) * 1e3)
                    for name in out_names:
                        diff = float(np.max(np.abs(got[name] - expected[k2][name])))
                        max_diff = max(max_diff, diff)
                        if not np.allclose(got[name], expected[k2][name], atol=ATOL, rtol=RTOL):
                            bad += 1
            wall = time.perf_counter() - t0
            if dashboard_port is not None:
                serve_dashboard(fleet, model, inputs, dashboard_port)
            fleet.undeploy(model)
            stats = dict(fleet.stats)

    summary = latency_summary(lat)
    t = Table(title=f"{requests} requests, {concurrency} in flight")
    for col in ("p50 ms", "p95 ms", "mean ms", "throughput req/s", "max |diff| vs ORT", "retries", "duplicates"):
        t.add_column(col)
    t.add_row(f"{summary['p50_ms']:.2f}", f"{summary['p95_ms']:.2f}", f"{summary['mean_ms']:.2f}",
              f"{requests / wall:.1f}", f"{max_diff:.2e}", str(stats["retries"]), str(stats["duplicates"]))
    con.print(t)
    con.print(f"total demo time {time.perf_counter() - t_start:.1f} s")
    if bad:
        con.print(f"[red]FAIL[/red]: {bad} output(s) differ from ONNX Runtime beyond atol={ATOL}, rtol={RTOL}")
        return 1
    con.print(f"[green]OK[/green]: all {requests} results match ONNX Runtime (atol={ATOL}, rtol={RTOL})")
    return 0


def serve_dashboard(fleet, model: str, inputs: list, port: int, rate_hz: float = 20.0) -> None:  # noqa: ANN001
    """The dashboard of the demo fleet with ``rate_hz`` requests a second flowing, until Ctrl-C or SIGTERM."""
    import threading

    from edge_agent.dashboard.server import Dashboard
    from edge_agent.lab.simrun import hold

    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.wait(1.0 / rate_hz):
            try:
                fleet.submit(model, inputs[i % len(inputs)], timeout=30)
            except Exception:   # the dashboard shows failures; the load goes on
                pass
            i += 1

    worker = threading.Thread(target=load, name="demo-load", daemon=True)
    with Dashboard(fleet, "127.0.0.1", port) as dash:
        worker.start()
        con = console()
        con.rule("dashboard")
        con.print(f"dashboard: [bold]{dash.url}[/bold]  (Prometheus: {dash.url}metrics)")
        con.print(f"{rate_hz:.0f} requests/s keep flowing through {model}; Ctrl-C to stop")
        try:
            hold()
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            worker.join(5)


def _wait_peers(fleet, n: int, timeout: float) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(len(d.peers) >= n - 1 for d in fleet.devices()):
            return
        time.sleep(0.1)
