"""A session that dies without the socket noticing (a broker that lost it, a stalled path) is found by the
client's probe of itself through the broker and re-established: real Mosquitto behind the fault proxy."""

from __future__ import annotations

import threading

from edge_agent.lab.faultproxy import FaultProxy
from edge_agent.transport.mqtt import Transport

from .conftest import wait_until


def test_a_stalled_session_is_detected_by_the_probe_and_re_established(mosquitto) -> None:
    with FaultProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", mosquitto.port)) as proxy:
        # keepalive 60 s: without the probe paho would believe in the stalled connection for ~90 s
        client = Transport(f"mqtt://127.0.0.1:{proxy.port}", keepalive=60, probe_topic="ea/v1/t/dev/c/probe",
                           probe_every_s=0.25).start()
        sender = Transport(mosquitto.url).start()
        got = []
        arrived = threading.Event()

        def handler(topic: str, payload: bytes, retained: bool) -> None:
            got.append(payload)
            arrived.set()

        try:
            client.subscribe("ea/v1/t/dev/c/in", handler)
            wait_until(lambda: client._probe_seen > 0, 10, what="the first echo of the probe")
            proxy.drop = True                           # the path stalls; every socket stays open
            wait_until(lambda: client.stalls >= 1, 15, what="the probe to declare the session dead")
            proxy.drop = False
            wait_until(lambda: client.connected.is_set() and client.connect_count >= 2, 20,
                       what="a new session")
            sender.publish("ea/v1/t/dev/c/in", b"after", qos=1).wait_for_publish(5)
            assert arrived.wait(10) and got[-1] == b"after"
        finally:
            client.close()
            sender.close()


def test_an_identity_that_may_not_use_its_probe_topic_keeps_its_session(mosquitto) -> None:
    # no echo ever (here: nobody is subscribed because the topic is filtered out below): the probe stays passive
    client = Transport(mosquitto.url, probe_topic="ea/v1/t/dev/c/probe", probe_every_s=0.1)
    client.unsubscribe("ea/v1/t/dev/c/probe")
    client.start()
    try:
        threading.Event().wait(1.5)
        assert client.stalls == 0 and client.connected.is_set() and client.connect_count == 1
    finally:
        client.close()
