"""The planner on a simulated fleet of emulated heterogeneous devices: real Mosquitto, real agents (one fast, two
slow, under CPU quotas where cgroups are writable, else the slowed backend), `deploy --objective throughput` and
`--objective latency` choose the shapes the model predicts from the same device states, the answers match ONNX
Runtime, and `status` sets the prediction beside measured figures (this client's requests; the agents' reports
through the CLI). The advertised GFLOP/s are pinned (`--gflops`) so the planner's input is the same on any
machine load; the quotas make the devices really that unequal. Run inside a network namespace entered with
`nsenter --net` (agents and mDNS; cgroups stay visible)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort

from edge_agent.lab import cgroups
from edge_agent.lab.profiles import DeviceProfile
from edge_agent.lab.sim import SimFleet
from edge_agent.operator.fleet import Fleet
from models import zoo
from tests.conftest import wait_until

FAST, SLOW = 60.0, 15.0   # GFLOP/s the devices advertise; quotas in the same ratio (93 GFLOP/s per core)


def _layout() -> cgroups.CgroupLayout | None:
    if os.geteuid() != 0:
        return None
    try:
        return cgroups.detect()
    except Exception:  # no writable cgroup tree: SimFleet falls back to the slowed backend
        return None


def _ort(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_throughput_and_latency_objectives_deploy_the_predicted_different_shapes_and_status_compares(
        mosquitto, tmp_path):
    model = zoo.build("mlp")
    path = tmp_path / "mlp.onnx"
    path.write_bytes(model.SerializeToString())
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    expected = _ort(model).run(None, {"input": x})[0]

    sim = SimFleet(broker_url=mosquitto.url, workdir=tmp_path / "sim", discovery=False, devices=[],
                   cgroup_layout=_layout(), extra_args=["--recheck-every", "0"])
    try:
        sim.add_device("fast", gflops=FAST, profile=DeviceProfile("fast", cpu=round(FAST / 93, 2), threads=1))
        for i in range(2):
            sim.add_device(f"slow-{i}", gflops=SLOW, profile=DeviceProfile("slow", cpu=round(SLOW / 93, 2), threads=1))
        with Fleet(mosquitto.url) as fleet:
            wait_until(lambda: len(fleet.devices()) == 3 and all(d.link_mbps for d in fleet.devices()), 120,
                       interval=0.2, what="three devices with a measured link")
            tp_search = fleet.plan_shapes(model, objective="throughput")
            lat_search = fleet.plan_shapes(model, objective="latency")
            # the caller's terms come from this client's own measured link (round trip and burst echo)
            mine = fleet.client_link()
            assert mine is not None and mine.rtt_ms > 0 and mine.mbps > 0
            assert fleet.client_link() is mine                      # measured once, not per plan
            from edge_agent.operator.manifests import calibration_for
            cal = calibration_for(fleet.devices(), mine)
            assert cal.client_rtt_ms == mine.rtt_ms and cal.client_link_bytes_per_s == mine.mbps * 1e6 / 8
            tp_shape, lat_shape = tp_search.best.shape, lat_search.best.shape
            # what the model predicts: more devices for throughput, the fast one alone for latency
            assert lat_shape.label() == "fast"
            assert len(tp_shape.devices) == 3 and tp_shape.label() != lat_shape.label()
            assert tp_search.best.prediction.throughput_rps > lat_search.best.prediction.throughput_rps
            assert lat_search.best.prediction.latency_ms < tp_search.best.prediction.latency_ms

            dep = fleet.deploy(model, "tp", objective="throughput", timeout=120)
            assert [st.replicas for st in dep.manifest.stages] == [list(g) for g in tp_shape.groups]
            weights = [st.weights or [1.0] for st in dep.manifest.stages]
            assert weights == [list(w) for w in tp_shape.weights]
            pred = dep.manifest.plan["predicted"]
            assert pred["objective"] == "throughput" and pred["shape"] == tp_shape.label()
            assert {r["shape"] for r in pred["alternatives"]} >= {tp_shape.label(), "fast"}

            futures = [fleet.submit("tp", {"input": x}) for _ in range(24)]
            served_by = set()
            for f in futures:
                out, timings = f.result(60)
                np.testing.assert_allclose(out["output"], expected, rtol=1e-4, atol=1e-5)
                served_by.update(t["device"] for t in timings)
            assert served_by == set(tp_shape.devices), "requests are spread over every replica"
            # the efficiency the model reached on each device is learned from the agents' run times, and the
            # next plan of the same model predicts their compute from it (and says so)
            sha = dep.manifest.model_sha256
            wait_until(lambda: set(fleet.learned.for_model(sha)) == set(tp_shape.devices), 15, interval=0.2,
                       what="an efficiency learned for every replica")
            for dev, eff in fleet.learned.for_model(sha).items():
                assert 0 < eff < 5, (dev, eff)
            _, again = fleet.build_manifest(model, "tp-again", objective="throughput")
            assert any("reached before" in n for n in again.notes), again.notes
            perf = fleet.status("tp")["performance"]
            assert perf["predicted"]["throughput_rps"] == pred["throughput_rps"]
            assert perf["measured"]["source"] == "this client" and perf["measured"]["requests"] >= 24
            assert perf["measured"]["throughput_rps"] > 0 and perf["measured"]["latency_ms"] > 0

        env = {**os.environ, "EDGE_AGENT_BROKER": mosquitto.url}

        def cli(*args: str) -> str:
            r = subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                               env=env, timeout=180)
            assert r.returncode == 0, f"edge-agent {' '.join(args)} failed: {r.stderr}"
            return r.stdout

        dep = json.loads(cli("deploy", str(path), "--name", "lat", "--objective", "latency", "--json"))
        assert [s["devices"] for s in dep["stages"]] == [["fast"]]
        assert dep["plan"]["predicted"]["objective"] == "latency"
        with Fleet(mosquitto.url) as fleet:
            for _ in range(5):
                out = fleet.infer("lat", {"input": x})
                np.testing.assert_allclose(out["output"], expected, rtol=1e-4, atol=1e-5)

            def agents_report() -> dict | None:
                m = fleet.status("lat")["performance"].get("measured_by_agents")
                return m if m and m["requests"] >= 5 else None
            wait_until(agents_report, 15, interval=0.2, what="the agent's measured figures in its state")
        status = json.loads(cli("status", "lat", "--json"))["performance"]
        assert status["predicted"]["shape"] == "fast" and status["predicted"]["latency_ms"] > 0
        assert status["measured"]["source"] == "agents" and status["measured"]["requests"] >= 5
        assert status["measured"]["latency_ms"] > 0
        table = cli("status", "lat")
        assert "predicted" in table and "measured" in table
    finally:
        sim.close()
