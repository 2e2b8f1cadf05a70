"""No silent downgrade: credentials are never sent over plain MQTT unless asked for, and a broker found over
mDNS must prove it is the fleet's (its certificate signed by the fleet CA). Real sockets, real Mosquitto,
real mDNS on loopback, real credentials from `fleet init`."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from edge_agent import Fleet
from edge_agent.protocol.errors import BrokerError
from edge_agent.security.pki import Credentials, init_fleet
from edge_agent.transport.broker import free_port, wait_port


class Listener:
    """A plain TCP server that records every byte a client sends (a fake broker)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(0.5)
            try:
                while data := conn.recv(4096):
                    self.received += data
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def fleet_dir():
    d = Path(tempfile.mkdtemp(prefix="ea-resolve-"))
    res = init_fleet(d, ["cam-01"], port=free_port())
    yield d, res
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake() -> Listener:
    lst = Listener()
    yield lst
    lst.close()


def test_plain_broker_url_with_credentials_is_refused_and_nothing_is_sent(fleet_dir, fake: Listener) -> None:
    d, res = fleet_dir
    with pytest.raises(BrokerError, match=r"refusing .*password in clear.*--insecure"):
        Fleet(f"mqtt://127.0.0.1:{fake.port}", credentials=res.creds["operator"], connect_timeout=2)
    assert fake.connections == 0 and not fake.received


def test_plain_url_from_the_environment_is_refused_too(fleet_dir, fake: Listener, monkeypatch) -> None:
    d, res = fleet_dir
    monkeypatch.setenv("EDGE_AGENT_BROKER", f"mqtt://127.0.0.1:{fake.port}")
    with pytest.raises(BrokerError, match="from \\$EDGE_AGENT_BROKER"):
        Fleet(credentials=res.creds["operator"], connect_timeout=2)
    assert fake.connections == 0


def test_cli_refuses_the_downgrade_and_insecure_is_explicit(fleet_dir, fake: Listener) -> None:
    d, res = fleet_dir
    cred = str(res.creds["operator"])
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_BROKER"}
    base = [sys.executable, "-m", "edge_agent.cli", "fleet", "ls", "--credentials", cred,
            "--broker", f"mqtt://127.0.0.1:{fake.port}"]
    r = subprocess.run(base, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "refusing" in r.stderr and fake.connections == 0
    # --insecure: the operator accepted it; the (fake) broker then sees the identity in clear
    subprocess.run(base + ["--insecure"], capture_output=True, text=True, env=env, timeout=60)
    assert fake.connections >= 1 and b"operator" in bytes(fake.received)


def test_a_broker_advertised_over_mdns_without_the_fleet_ca_is_not_trusted(fleet_dir, mosquitto_available) -> None:
    """A rogue TLS broker (its own CA) advertised on loopback: a client whose credentials name no broker finds
    it by mDNS, and the TLS handshake against the fleet CA fails: no session, no credentials used."""
    from discovery import DeviceInfo, Discovery
    d, res = fleet_dir
    rogue_dir = Path(tempfile.mkdtemp(prefix="ea-rogue-"))
    port = free_port()
    rogue = init_fleet(rogue_dir, ["x"], port=port)
    proc = subprocess.Popen([mosquitto_available, "-c", str(rogue.conf_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    disc = Discovery(interfaces=["127.0.0.1"], fleet="default")
    try:
        wait_port("127.0.0.1", port, 10, proc)
        disc.advertise(DeviceInfo(device_id="rogue-broker", fleet="default", broker=f"mqtts://127.0.0.1:{port}",
                                  role="broker", version="x"), port=port)
        creds = dataclasses.replace(Credentials.from_file(res.creds["operator"]), broker_url="", plain_url="")
        with pytest.raises(BrokerError, match="no connection"):
            Fleet(credentials=creds, connect_timeout=4)
    finally:
        disc.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(rogue_dir, ignore_errors=True)
