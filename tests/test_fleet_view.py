"""A new operator client sees the whole fleet the broker holds, however many devices, however busy the
machine and however far the broker: `Fleet()` returns only after every retained device state has been
handled (a sync marker through the broker, not a quiet period). Real Mosquitto, real retained messages."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt

from edge_agent.lab.faultproxy import FaultProxy
from edge_agent.operator.fleet import Fleet
from edge_agent.protocol import topics
from edge_agent.protocol.messages import DeviceState

N_DEVICES = 1500   # enough that handling their retained states takes longer than any quiet period


def _plant_retained_states(url: str, fleet: str, n: int) -> None:
    host, port = url.removeprefix("mqtt://").split(":")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="planter")
    c.connect(host, int(port))
    c.loop_start()
    try:
        infos = [c.publish(topics.state(fleet, f"dev-{i:04d}"),
                           DeviceState(f"dev-{i:04d}", fleet, True, isa="avx2", cores=1, ram_mb=512,
                                       gflops=10.0 + i % 7, peers=[f"dev-{j:04d}" for j in range(i % 40)],
                                       endpoint=topics.device_endpoint(fleet, f"dev-{i:04d}")).to_bytes(),
                           qos=1, retain=True) for i in range(n)]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        c.loop_stop()
        c.disconnect()


def test_a_new_client_lists_every_device_whose_state_the_broker_retains(mosquitto):
    _plant_retained_states(mosquitto.url, "default", N_DEVICES)
    for _ in range(2):   # twice: the second client meets a broker that is already warm
        t0 = time.monotonic()
        with Fleet(mosquitto.url) as fleet:
            settled_s = time.monotonic() - t0
            devs = fleet.devices()
        print(f"{len(devs)} of {N_DEVICES} devices listed right after connecting ({settled_s:.2f} s)")
        assert len(devs) == N_DEVICES
        assert {d.device_id for d in devs} == {f"dev-{i:04d}" for i in range(N_DEVICES)}


def test_a_client_behind_a_slow_link_waits_for_the_retained_states_not_for_a_quiet_moment(mosquitto):
    """250 ms each way: every round trip is longer than the quiet period the client used to wait for."""
    _plant_retained_states(mosquitto.url, "default", 50)
    host, port = mosquitto.url.removeprefix("mqtt://").split(":")
    with FaultProxy(("127.0.0.1", 0), (host, int(port)), delay_ms=250) as proxy:
        with Fleet(f"mqtt://127.0.0.1:{proxy.port}") as fleet:
            assert len(fleet.devices()) == 50


def test_sync_reports_false_rather_than_hanging_when_the_broker_is_gone(mosquitto):
    with Fleet(mosquitto.url) as fleet:
        assert fleet.transport.sync(5.0)
        mosquitto.stop()
        assert not fleet.transport.sync(0.5)
