"""The dashboard's data without a broker: per-stage rates from load-report counters, this client's request log,
the snapshot builder, the chart history, and the operator's /metrics text parsed by the official parser."""

from __future__ import annotations

import json

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.cluster.view import FleetView
from edge_agent.dashboard.history import History
from edge_agent.dashboard.snapshot import DeploymentData, DeviceLoad, FleetData, build_snapshot
from edge_agent.operator.metrics import fleet_registry
from edge_agent.operator.records import DeviceStatus
from edge_agent.operator.status import stage_rows
from edge_agent.operator.telemetry import Completion, ErrorEvent, RequestLog, StageRate, StageRates
from edge_agent.protocol.messages import (
    MAX_LOAD_STAGES,
    DeviceState,
    LoadReport,
    Manifest,
    load_stage_entries,
)


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def manifest(name: str = "cnn", version: int = 3, devices: tuple[str, ...] = ("a", "b")) -> Manifest:
    stages = [{"index": i, "device": d, "shard_sha256": f"{i:064x}", "shard_size": 2_000_000, "chunk_size": 1 << 18,
               "chunk_sha256": [], "inputs": ["x" if i == 0 else f"t{i}"], "outputs": [f"t{i + 1}"],
               "flops": 1.5e9 * (i + 1), "est_ms": 4.0 + i, "n_nodes": 10 + i}
              for i, d in enumerate(devices)]
    return Manifest(name, version, 1000.0, "f" * 64, [{"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]}],
                    [{"name": "y", "dtype": "float32", "shape": [1, 10]}], stages,
                    plan={"reason": "two devices, cut after conv 3"})


def state(dev: str, online: bool = True, stages: list | None = None, **kw) -> DeviceState:
    return DeviceState(dev, "default", online, ts=990.0, isa="avx2", cores=2, ram_mb=4096, gflops=42.5,
                       version="0.1.0", stages=stages or [], dev_mode=kw.pop("dev_mode", True),
                       link_rtt_ms=0.8, link_mbps=900.0, **kw)


# ------------------------------------------------------------------------------------------ telemetry
def test_stage_rates_are_counter_differences_over_the_window_and_survive_restarts() -> None:
    clock = Clock()
    rates = StageRates(window_s=5.0, clock=clock)
    rates.observe("a", [("cnn", 3, 0, 100, 1, 4.0)])
    rates.observe("b", [("cnn", 3, 1, 50, 0, 6.0)])
    rates.observe("c", [])                                # has not run the stage yet
    clock.t += 2.0
    rates.observe("a", [("cnn", 3, 0, 140, 1, 5.0)])      # 40 runs in 2 s
    rates.observe("b", [("cnn", 3, 1, 10, 0, 6.0)])       # restarted: counts from 0 again
    rates.observe("c", [("cnn", 3, 0, 6, 0, 3.0)])        # its first 6 runs
    r = rates.rates()
    assert r[("cnn", 3, 0)].served_per_s == pytest.approx(23.0)
    assert r[("cnn", 3, 0)].run_ms == 4.0 and r[("cnn", 3, 0)].served == 146
    assert r[("cnn", 3, 1)].served_per_s == pytest.approx(5.0)   # 10 since the restart, not -40
    clock.t += 6.0                                         # both devices silent for longer than the window
    assert rates.rates() == {}
    assert [(k, d, v[0]) for k, d, v in rates.latest()] == [(("cnn", 3, 0), "a", 140), (("cnn", 3, 0), "c", 6),
                                                             (("cnn", 3, 1), "b", 10)]


def test_request_log_counts_buckets_and_keeps_errors_with_context() -> None:
    log = RequestLog(clock=Clock(500.0))
    log.record("cnn", 0.004, True)
    log.record("cnn", 0.2, True)
    log.record("cnn", 3.0, False, "timeout", "no result", device="b", stage=1)
    t = log.totals()["cnn"]
    assert t.requests == 3 and t.errors == {"timeout": 1} and sum(t.buckets) == 3
    assert t.sum_s == pytest.approx(3.204)
    (err,) = log.errors()
    assert (err.source, err.code, err.device, err.stage) == ("client", "timeout", "b", 1)
    assert [c.ok for c in log.recent(0.0)] == [True, True, False]


def test_load_report_stages_are_backward_compatible_and_bounded() -> None:
    old = LoadReport("a", 2, 3.5).to_bytes()     # what an agent without per-stage counters sends
    assert LoadReport.from_bytes(old).stages == []
    full = LoadReport("a", 1, 1.0, stages=[["m" * 64, 99, 9, 10**9, 10**6, 123.456]] * MAX_LOAD_STAGES)
    assert len(full.to_bytes()) < 4096          # older decoders refuse load reports over 4 KiB
    rep = LoadReport("a", 0, 1.0, stages=[["cnn", 3, 0, 7, 1, 2.5], ["bad"], ["x", "1", 0, 1, 1, 1.0],
                                          ["y", 1, 0, True, 0, 1.0]])
    assert load_stage_entries(LoadReport.from_bytes(rep.to_bytes())) == [("cnn", 3, 0, 7, 1, 2.5)]


# ------------------------------------------------------------------------------------------ snapshot
def fleet_data(now: float = 1000.0) -> FleetData:
    m = manifest()
    view = FleetView()
    view.update_state(state("a", stages=[{"model": "cnn", "version": 3, "stage": 0, "status": "ready",
                                          "backend": "ops_native"}], counters={"served": 40, "error_run_failed": 2}))
    view.update_state(state("b", stages=[{"model": "cnn", "version": 3, "stage": 1, "status": "loading"}],
                            dev_mode=False))
    view.update_state(state("c", online=False, events=[{"ts": 995.0, "kind": "manifest_signature", "model": "cnn",
                                                        "version": 4, "reason": "bad signature"}]))
    completions = [Completion(now - 5 + i * 0.5, "cnn", 10.0 + i, True) for i in range(8)]
    completions.append(Completion(now - 1, "cnn", 900.0, False, "timeout"))
    return FleetData(
        fleet="default", broker="mqtt://127.0.0.1:1883", now=now,
        devices=[DeviceStatus.from_state(s) for s in view.states()],
        online={"a": True, "b": True, "c": False},
        loads={"a": DeviceLoad(3, 4.2, True), "b": DeviceLoad(0, 6.0, False)},
        deployments=[DeploymentData(m, stage_rows(view, m), history=[
            {"version": 3, "channel": "canary", "status": "passed", "reason": "all gates passed",
             "metrics": {"p95_ms": 12.345678, "error_rate": 0.0, "max_abs_diff": 1e-6}, "ts": 900.0},
            {"version": 3, "channel": "stable", "status": "promoted", "reason": "all stages ready", "ts": 910.0}])],
        rates={("cnn", 3, 0): StageRate(21.0, 0.0, 4.2, 1, 140), ("cnn", 3, 1): StageRate(20.0, 0.5, 6.0, 1, 120)},
        completions=completions,
        client_errors=[ErrorEvent(now - 1, "client", "cnn", "timeout", "no result", "b", 1)],
        streams=[{"name": "cam", "model": "cnn", "source": "cam/in", "sink": "cam/out", "policy": "latest",
                  "batch": 1, "ingress_device": "a", "fps_in": 30.0, "fps_out": 24.5, "dropped": 11,
                  "in_flight": 2, "latency_ms": {"p50": 41.0, "p90": 55.0, "p99": 80.0}, "updated": now}])


def test_snapshot_shows_devices_pipeline_rates_history_streams_and_errors() -> None:
    snap = build_snapshot(fleet_data())
    json.dumps(snap, allow_nan=False)            # what the server sends must be plain JSON
    assert [d["id"] for d in snap["devices"]] == ["a", "b", "c"]          # online first
    a, b, c = snap["devices"]
    assert (a["online"], a["mode"], a["queue"], a["service_ms"], a["served"], a["errors"]) == \
        (True, "dev", 3, 4.2, 40, 2)
    assert b["mode"] == "signed" and b["service_ms"] is None               # no fresh load report
    assert c["online"] is False and c["queue"] == 0
    assert a["serves"] == [{"model": "cnn", "version": 3, "stage": 0, "status": "ready", "backend": "ops_native",
                            "role": ""}]
    (dep,) = snap["deployments"]
    assert [(s["index"], [r["device"] for r in s["replicas"]]) for s in dep["stages"]] == [(0, ["a"]), (1, ["b"])]
    assert [r["status"] for s in dep["stages"] for r in s["replicas"]] == ["ready", "loading"]
    assert dep["stages"][0]["mflop"] == 1500.0 and dep["stages"][1]["est_ms"] == 5.0
    assert dep["throughput_rps"] == 20.0                                  # the last stage's fleet-wide rate
    assert dep["converged"] is False
    assert dep["client"]["p50_ms"] == 14.0 and dep["client"]["errors"] == 1 and dep["client"]["rps"] == 0.9
    assert [h["status"] for h in dep["history"]] == ["promoted", "passed"]   # newest first
    assert dep["history"][1]["gates"] == {"p95_ms": 12.3457, "error_rate": 0.0, "max_abs_diff": 0.0}
    assert snap["summary"] == {"devices_online": 2, "devices": 3, "gflops_online": 85.0, "deployments": 1,
                               "streams": 1, "throughput_rps": 20.0, "client_rps": 0.9, "client_p95_ms": 17.0,
                               "errors": 2}
    assert [(e["source"], e["code"]) for e in snap["errors"]] == [("client", "timeout"),
                                                                  ("device", "manifest_signature")]
    (s,) = snap["streams"]
    assert (s["fps_in"], s["fps_out"], s["dropped"], s["p99_ms"]) == (30.0, 24.5, 11, 80.0)


def test_history_keeps_bounded_series_and_drops_gone_deployments() -> None:
    h = History(max_points=3)
    data = fleet_data()
    for i in range(5):
        data.now = 1000.0 + i
        data.rates[("cnn", 3, 1)] = StageRate(float(i), 0.0, 6.0, 1, 100 + i)
        h.add(build_snapshot(data))
    series = h.export()
    assert series["deployments"]["cnn"]["t"] == [1002.0, 1003.0, 1004.0]
    assert series["deployments"]["cnn"]["throughput_rps"] == [2.0, 3.0, 4.0]
    assert series["streams"]["cam"]["fps_out"] == [24.5] * 3
    data.deployments, data.streams = [], []
    h.add(build_snapshot(data))
    assert h.export() == {"deployments": {}, "streams": {}}


# ------------------------------------------------------------------------------------------ /metrics
class RecordedFleet:
    """The parts of a Fleet the collector reads, filled with recorded data (no broker)."""

    def __init__(self) -> None:
        d = fleet_data()
        self.view = FleetView()
        for st in (state("a", stages=[{"model": "cnn", "version": 3, "stage": 0, "status": "ready"}]),
                   state("b", stages=[{"model": "cnn", "version": 3, "stage": 1, "status": "ready"}]),
                   state("c", online=False)):
            self.view.update_state(st)
        self.view.update_load(LoadReport("a", 4, 2.5))
        self.manifests = {"cnn": manifest()}
        self.stage_rates = StageRates()
        self.stage_rates.observe("a", [("cnn", 3, 0, 140, 2, 4.0)])
        self.request_log = RequestLog()
        for lat in (0.003, 0.004, 0.2):
            self.request_log.record("cnn", lat, True)
        self.request_log.record("cnn", 5.5, False, "timeout", "late")
        self.stats = {"retries": 2, "duplicates": 1, "failovers": 0}
        self._streams = d.streams

    def deployments(self) -> list[Manifest]:
        return list(self.manifests.values())

    def current(self, name: str, channel: str = "stable") -> Manifest | None:
        return self.manifests.get(name) if channel == "stable" else None

    def streams(self) -> list[dict]:
        return self._streams


def test_operator_metrics_parse_with_the_official_parser() -> None:
    text = generate_latest(fleet_registry(RecordedFleet())).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(name: str, suffix: str = "") -> dict:
        return {tuple(sorted(s.labels.items())): s.value for s in fams[name].samples if s.name == name + suffix}

    p = "edge_agent_fleet"
    assert samples(f"{p}_devices") == {(("state", "online"),): 2.0, (("state", "offline"),): 1.0}
    assert samples(f"{p}_device_up")[(("device", "c"),)] == 0.0
    assert samples(f"{p}_device_gflops")[(("device", "a"),)] == 42.5
    assert samples(f"{p}_device_queue_depth")[(("device", "a"),)] == 4.0
    assert samples(f"{p}_device_link_rtt_seconds")[(("device", "b"),)] == pytest.approx(0.0008)
    assert samples(f"{p}_deployment_version") == {(("channel", "stable"), ("model", "cnn")): 3.0}
    assert samples(f"{p}_stage_replicas") == {
        (("model", "cnn"), ("stage", "0"), ("status", "ready"), ("version", "3")): 1.0,
        (("model", "cnn"), ("stage", "1"), ("status", "ready"), ("version", "3")): 1.0}
    assert samples(f"{p}_stage_served", "_total") == {
        (("device", "a"), ("model", "cnn"), ("stage", "0"), ("version", "3")): 140.0}
    assert samples(f"{p}_client_requests", "_total") == {(("model", "cnn"),): 4.0}
    assert samples(f"{p}_client_errors", "_total") == {(("code", "timeout"), ("model", "cnn")): 1.0}
    buckets = samples(f"{p}_client_request_duration_seconds", "_bucket")
    assert buckets[(("le", "0.005"), ("model", "cnn"))] == 2.0
    assert buckets[(("le", "+Inf"), ("model", "cnn"))] == 4.0
    assert samples(f"{p}_client_request_duration_seconds", "_count") == {(("model", "cnn"),): 4.0}
    assert samples(f"{p}_client_retries", "_total") == {(): 2.0}
    assert samples(f"{p}_stream_fps_out") == {(("stream", "cam"),): 24.5}
    assert samples(f"{p}_stream_dropped", "_total") == {(("stream", "cam"),): 11.0}
    assert samples(f"{p}_stream_latency_seconds")[(("quantile", "0.99"), ("stream", "cam"))] == pytest.approx(0.08)
