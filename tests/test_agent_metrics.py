"""Prometheus metrics of an agent, scraped over HTTP and parsed with the official parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from edge_agent import Fleet
from edge_agent.agent.daemon import Agent, AgentConfig
from edge_agent.transport.broker import free_port
from models import zoo

from .conftest import wait_until


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_agent_metrics_count_requests_latency_stages_and_rejections(mosquitto, tmp_path) -> None:
    port = free_port()
    agent = Agent(AgentConfig(name="m-dev", broker=mosquitto.url, data_dir=tmp_path / "a", dev_mode=True,
                              discovery=False, gflops=25.0, metrics_port=port)).start()
    try:
        model = zoo.build("mlp", seed=41)
        x = zoo.sample_inputs(model)
        with Fleet(mosquitto.url) as fleet:
            fleet.wait_for_devices(1, timeout=30)
            fleet.deploy(model, "metered", stages=1, timeout=120)
            for _ in range(3):
                fleet.infer("metered", x)
            fleet.transport.publish("ea/v1/default/dev/m-dev/in/tester", b"\x01garbage", qos=1).wait_for_publish(5)
            m = _scrape(port)
        runs = [(s.labels, s.value) for s in m["edge_agent_requests"].samples if s.name == "edge_agent_requests_total"]
        assert ({"model": "metered", "version": "1", "stage": "0"}, 3.0) in runs
        count = [s.value for s in m["edge_agent_request_duration_seconds"].samples
                 if s.name.endswith("_count") and s.labels == {"model": "metered", "stage": "0"}]
        assert count == [3.0]
        stage = [s.labels for s in m["edge_agent_stage_info"].samples]
        assert {"model": "metered", "version": "1", "stage": "0", "status": "ready", "backend": "ops_native",
                "role": "assigned"} in stage
        assert m["edge_agent_gflops"].samples[0].value == 25.0
        assert m["edge_agent_shard_bytes_fetched"].samples[0].value > 0
        assert "edge_agent_queue_depth" in m and "edge_agent_broker_reconnects" in m

        def rejected() -> dict:
            return {s.labels["reason"]: s.value for s in _scrape(port)["edge_agent_rejected"].samples}

        wait_until(lambda: rejected().get("malformed_request") == 1, 10, what="the malformed request counted")
    finally:
        agent.stop()


def test_metrics_are_off_by_default_and_bind_loopback(mosquitto, tmp_path) -> None:
    agent = Agent(AgentConfig(name="m-off", broker=mosquitto.url, data_dir=tmp_path / "b", dev_mode=True,
                              discovery=False, gflops=5.0))
    assert agent.cfg.metrics_port is None and agent.cfg.metrics_host == "127.0.0.1"
    agent.start()
    try:
        assert agent.metrics is None
    finally:
        agent.stop()
