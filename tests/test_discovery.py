"""Tests for discovery/: TXT encoding, interface resolution, and real mDNS on 127.0.0.1
between real processes (each child runs ``python -m discovery advertise`` and reports its
peer events as JSON lines)."""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from zeroconf import ServiceInfo

from discovery import (
    MAX_TXT_BYTES,
    SERVICE_TYPE,
    DeviceInfo,
    Discovery,
    DuplicateDeviceError,
    Peer,
    PeerTable,
    find_broker,
    resolve_interfaces,
)
from discovery.txt import txt_size

REPO = Path(__file__).resolve().parents[1]
WAIT = 15.0  # generous upper bound for anything to show up; polled, never slept
POLL = 0.05


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


def unique(prefix: str) -> str:
    """Names unique per test run, so parallel runs on this host never see each other's devices."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


class AgentProcess:
    """A child process advertising one device and browsing its fleet."""

    def __init__(self, device_id: str, fleet: str, **fields: Any) -> None:
        self.device_id = device_id
        args = [sys.executable, "-m", "discovery", "--fleet", fleet, "advertise", "--id", device_id]
        for key, value in fields.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._lock:
                self.events.append(event)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def wait_event(self, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.snapshot() if match(e)), None)

        return wait_until(find, what=f"{self.device_id}: {what} (events so far: {self.snapshot()})")

    def wait_ready(self) -> None:
        event = self.wait_event(lambda e: e["event"] in ("ready", "error"), "ready")
        assert event["event"] == "ready", event

    def peers(self) -> dict[str, dict[str, Any]]:
        """Current peer view reconstructed from the add/update/remove events."""
        table: dict[str, dict[str, Any]] = {}
        for event in self.snapshot():
            if event["event"] in ("add", "update"):
                table[event["peer"]["info"]["device_id"]] = event["peer"]
            elif event["event"] == "remove":
                table.pop(event["peer"]["info"]["device_id"], None)
        return table

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> int:
        """Ask the child to send goodbyes and exit; returns its exit status."""
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.stdin.close()  # type: ignore[union-attr]
            except (BrokenPipeError, OSError):
                pass
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""


@pytest.fixture
def spawn() -> Iterator[Callable[..., AgentProcess]]:
    children: list[AgentProcess] = []

    def start(device_id: str, fleet: str, **fields: Any) -> AgentProcess:
        child = AgentProcess(device_id, fleet, **fields)
        children.append(child)
        return child

    yield start
    for child in children:
        child.close()


# ---------------------------------------------------------------------------------------------
# DeviceInfo TXT encoding


def full_info(**overrides: Any) -> DeviceInfo:
    fields: dict[str, Any] = dict(
        device_id="gw-07",
        fleet="plant-3",
        broker="mqtt://192.168.10.2:1883",
        isa="x86_64-avx2",
        cores=8,
        ram_mb=16384,
        gflops=93.25,
        version="0.1.0",
        role="broker",
        extra={"zone": "a4"},
    )
    fields.update(overrides)
    return DeviceInfo(**fields)


def test_device_info_txt_round_trip_preserves_every_field() -> None:
    info = full_info()
    txt = info.to_txt()
    assert txt["id"] == "gw-07" and txt["br"] == "mqtt://192.168.10.2:1883" and txt["gf"] == "93.25"
    assert DeviceInfo.from_txt(txt) == info
    # Through zeroconf's own wire encoding and back (bytes keys and values).
    service = ServiceInfo(SERVICE_TYPE, f"gw-07.{SERVICE_TYPE}", port=1, properties=txt)
    assert len(service.text) == txt_size(txt) <= MAX_TXT_BYTES
    decoded = ServiceInfo(SERVICE_TYPE, f"gw-07.{SERVICE_TYPE}", properties=service.text)
    assert DeviceInfo.from_txt(decoded.properties) == info


def test_device_info_defaults_round_trip_with_a_minimal_record() -> None:
    info = DeviceInfo("tiny")
    assert info.to_txt() == {"tv": "1", "id": "tiny"}
    assert DeviceInfo.from_txt(info.to_txt()) == info


def test_device_info_over_200_byte_txt_raises_value_error() -> None:
    info = full_info(broker="mqtt://" + "b" * 150 + ":1883")
    with pytest.raises(ValueError, match="over the 200-byte limit"):
        info.to_txt()


def test_device_info_from_txt_tolerates_junk_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    junk = {
        b"id": b"cam-1",
        b"c": b"eight",
        b"ram": b"-5",
        b"gf": b"nan",
        b"r": b"overlord",
        b"fl": b"bad fleet!",
        b"zz": b"unknown key",
        b"flag": None,
        "isa": "aarch64-neon",
        b"br": b"\xffmqtt://x",
    }
    with caplog.at_level(logging.WARNING, logger="discovery"):
        info = DeviceInfo.from_txt(junk)
    assert (info.device_id, info.cores, info.ram_mb, info.gflops) == ("cam-1", 0, 0, 0.0)
    assert (info.role, info.fleet, info.isa) == ("agent", "default", "aarch64-neon")
    assert info.broker.endswith("mqtt://x")
    warned = " ".join(record.getMessage() for record in caplog.records)
    for what in ("core count", "RAM size", "GFLOP/s", "role", "fleet"):
        assert what in warned


def test_device_info_from_txt_without_id_raises() -> None:
    with pytest.raises(ValueError, match="no device id"):
        DeviceInfo.from_txt({b"fl": b"x", b"gf": b"1.0"})


def test_device_info_rejects_ids_that_are_not_one_dns_label() -> None:
    for bad in ("", "has.dot", "sp ace", "x" * 64, "-lead"):
        with pytest.raises(ValueError, match="invalid device id"):
            DeviceInfo(bad)


# ---------------------------------------------------------------------------------------------
# Interfaces


def test_resolve_interfaces_maps_lo_to_loopback_address() -> None:
    assert resolve_interfaces("lo") == ["127.0.0.1"]
    assert resolve_interfaces(["lo", "127.0.0.1"]) == ["127.0.0.1"]


def test_resolve_interfaces_defaults_to_loopback() -> None:
    assert resolve_interfaces(None) == ["127.0.0.1"]
    assert resolve_interfaces("") == ["127.0.0.1"]


def test_resolve_interfaces_unknown_name_raises_naming_it_and_listing_available() -> None:
    with pytest.raises(ValueError, match=r"'nosuchif0'.*available: .*lo \(127\.0\.0\.1\)"):
        resolve_interfaces("nosuchif0")


def test_resolve_interfaces_rejects_foreign_address() -> None:
    with pytest.raises(ValueError, match="203.0.113.77"):
        resolve_interfaces("203.0.113.77")


def test_resolve_interfaces_refuses_all_unless_explicitly_allowed() -> None:
    with pytest.raises(ValueError, match="all interfaces"):
        resolve_interfaces("all")
    assert "127.0.0.1" in resolve_interfaces("all", allow_all=True)


# ---------------------------------------------------------------------------------------------
# PeerTable


def test_peer_table_fires_update_only_when_info_changes() -> None:
    table = PeerTable()
    events: list[tuple[str, str, float]] = []
    table.subscribe(lambda event, peer: events.append((event, peer.device_id, peer.info.gflops)))
    name = f"p1.{SERVICE_TYPE}"
    table.add(Peer(DeviceInfo("p1", gflops=1.0), ["127.0.0.1"], 9, name, 1.0, 1.0))
    table.add(Peer(DeviceInfo("p1", gflops=1.0), ["127.0.0.1"], 9, name, 2.0, 2.0))
    table.update(Peer(DeviceInfo("p1", gflops=2.0), ["127.0.0.1"], 9, name, 3.0, 3.0))
    peer = table.get("p1")
    assert peer is not None and (peer.first_seen, peer.last_seen) == (1.0, 3.0)
    assert table.remove("p1") is not None and table.remove("p1") is None
    assert events == [("add", "p1", 1.0), ("update", "p1", 2.0), ("remove", "p1", 2.0)]
    assert len(table) == 0


def test_peer_table_survives_a_failing_subscriber() -> None:
    table = PeerTable()
    seen: list[str] = []

    def broken(event: str, peer: Peer) -> None:
        raise RuntimeError("boom")

    table.subscribe(broken)
    table.subscribe(lambda event, peer: seen.append(event))
    table.add(Peer(DeviceInfo("p2"), [], 0, f"p2.{SERVICE_TYPE}", 0.0, 0.0))
    assert seen == ["add"]


# ---------------------------------------------------------------------------------------------
# Real mDNS between processes on 127.0.0.1


@pytest.fixture(scope="module")
def fleet_of_five() -> Iterator[tuple[str, list[AgentProcess]]]:
    fleet = unique("f5")
    children = [
        AgentProcess(
            f"{fleet}-n{i}",
            fleet,
            broker="mqtt://127.0.0.1:1883",
            isa="x86_64-avx2",
            cores=i + 1,
            ram_mb=1024 * (i + 1),
            gflops=10.5 + i,
            version="0.1.0",
            port=7000 + i,
        )
        for i in range(5)
    ]
    try:
        for child in children:
            child.wait_ready()
        yield fleet, children
    finally:
        for child in children:
            child.close()


def test_five_processes_each_list_the_other_four_with_their_txt_fields(
    fleet_of_five: tuple[str, list[AgentProcess]],
) -> None:
    fleet, children = fleet_of_five
    ids = {child.device_id for child in children}
    for child in children:
        others = ids - {child.device_id}
        wait_until(lambda child=child, others=others: set(child.peers()) == others, what=f"{child.device_id} peers")
        for device_id, peer in child.peers().items():
            i = int(device_id.rsplit("-n", 1)[1])
            assert peer["info"] == {
                "device_id": device_id,
                "fleet": fleet,
                "broker": "mqtt://127.0.0.1:1883",
                "isa": "x86_64-avx2",
                "cores": i + 1,
                "ram_mb": 1024 * (i + 1),
                "gflops": 10.5 + i,
                "version": "0.1.0",
                "role": "agent",
                "extra": {},
            }
            assert peer["port"] == 7000 + i and peer["addresses"] == ["127.0.0.1"]


def test_gflops_update_in_one_process_reaches_the_others_as_update(
    fleet_of_five: tuple[str, list[AgentProcess]],
) -> None:
    _, children = fleet_of_five
    source, others = children[0], children[1:4]
    for child in others:
        wait_until(lambda child=child: source.device_id in child.peers(), what=f"{child.device_id} sees source")
    source.send("update gflops=77.5")
    for child in others:
        event = child.wait_event(
            lambda e: e["event"] == "update" and e["peer"]["info"]["device_id"] == source.device_id,
            "update event from source",
        )
        assert event["peer"]["info"]["gflops"] == 77.5
        assert child.peers()[source.device_id]["info"]["cores"] == 1  # other fields unchanged


def test_closing_one_process_sends_remove_to_the_others(fleet_of_five: tuple[str, list[AgentProcess]]) -> None:
    _, children = fleet_of_five
    leaving, staying = children[-1], children[:-1]
    for child in staying:
        wait_until(lambda child=child: leaving.device_id in child.peers(), what=f"{child.device_id} sees leaver")
    assert leaving.close() == 0
    for child in staying:
        child.wait_event(
            lambda e: e["event"] == "remove" and e["peer"]["info"]["device_id"] == leaving.device_id,
            "remove event",
        )
        assert leaving.device_id not in child.peers()


def test_find_broker_prefers_the_broker_role_url(spawn: Callable[..., AgentProcess]) -> None:
    fleet = unique("fb")
    agent = spawn(f"{fleet}-agent", fleet, broker="mqtt://10.0.0.9:1883")
    broker = spawn(f"{fleet}-broker", fleet, broker="mqtt://127.0.0.1:18830", role="broker")
    agent.wait_ready()
    broker.wait_ready()
    assert find_broker(fleet, timeout=WAIT) == "mqtt://127.0.0.1:18830"


def test_find_broker_accepts_an_agent_that_knows_the_broker(spawn: Callable[..., AgentProcess]) -> None:
    fleet = unique("fa")
    agent = spawn(f"{fleet}-agent", fleet, broker="mqtt://127.0.0.1:18831")
    agent.wait_ready()
    assert find_broker(fleet, timeout=WAIT) == "mqtt://127.0.0.1:18831"


def test_find_broker_returns_none_when_nothing_advertises() -> None:
    assert find_broker(unique("empty"), timeout=1.0) is None


def test_duplicate_device_id_raises_in_process_and_fails_a_second_process(
    spawn: Callable[..., AgentProcess],
) -> None:
    fleet = unique("fd")
    device_id = f"{fleet}-same"
    first = spawn(device_id, fleet)
    first.wait_ready()
    with Discovery(fleet=fleet) as discovery:
        with pytest.raises(DuplicateDeviceError, match=device_id) as raised:
            discovery.advertise(DeviceInfo(device_id, fleet=fleet))
        assert f"fleet {fleet}" in str(raised.value) and raised.value.device_id == device_id
    second = spawn(device_id, fleet)
    event = second.wait_event(lambda e: e["event"] in ("ready", "error"), "ready or error")
    assert event["event"] == "error" and event["error"] == "DuplicateDeviceError"
    assert second.proc.wait(timeout=WAIT) == 3
    # The original keeps its name: it never saw itself removed or renamed.
    assert first.proc.poll() is None
    assert all(e["event"] != "remove" for e in first.snapshot())


def test_browser_ignores_peers_of_another_fleet(spawn: Callable[..., AgentProcess]) -> None:
    fleet_a, fleet_b = unique("fa"), unique("fb")
    a = spawn(f"{fleet_a}-a", fleet_a)
    b = spawn(f"{fleet_b}-b", fleet_b)
    a.wait_ready()
    b.wait_ready()
    with Discovery(fleet=fleet_a) as filtered, Discovery(fleet=None) as everything:
        only_a = filtered.browse()
        both = everything.browse()
        wait_until(lambda: {a.device_id, b.device_id} <= {p.device_id for p in both.peers()}, what="both")
        wait_until(lambda: a.device_id in only_a, what="fleet A peer")
        # b's records reached this host (the unfiltered browser has them); give the filtered
        # browser a full resolve window to prove it keeps them out, rather than racing it.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert b.device_id not in only_a
            time.sleep(POLL)
    assert {p.info.fleet for p in only_a.peers()} == {fleet_a}


def test_own_service_is_not_listed_as_a_peer_and_close_is_idempotent() -> None:
    fleet = unique("fo")
    events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
    discovery = Discovery(interfaces="lo", fleet=fleet)
    with Discovery(fleet=fleet) as watcher:
        seen = watcher.browse()
        table = discovery.browse(lambda event, peer: events.put((event, peer.device_id)))
        discovery.advertise(DeviceInfo(f"{fleet}-me", fleet=fleet), port=1)
        wait_until(lambda: f"{fleet}-me" in seen, what="watcher sees us")
        assert len(table) == 0 and events.empty()
        discovery.close()
        discovery.close()
        wait_until(lambda: f"{fleet}-me" not in seen, what="watcher gets our goodbye")
    with pytest.raises(RuntimeError, match="closed"):
        discovery.advertise(DeviceInfo(f"{fleet}-me", fleet=fleet))


def test_advertise_rejects_device_of_another_fleet() -> None:
    with Discovery(fleet="alpha") as discovery:
        with pytest.raises(ValueError, match="fleet 'beta'"):
            discovery.advertise(DeviceInfo("x1", fleet="beta"))


def test_device_restarted_after_a_crash_can_reuse_its_id(spawn: Callable[..., AgentProcess]) -> None:
    fleet = unique("fc")
    device_id = f"{fleet}-phoenix"
    watcher = spawn(f"{fleet}-watcher", fleet)
    crashed = spawn(device_id, fleet, gflops=1.0)
    crashed.wait_ready()
    wait_until(lambda: device_id in watcher.peers(), what="watcher sees the first incarnation")
    crashed.proc.kill()  # no goodbye: the watcher still caches the old records
    crashed.proc.wait(timeout=WAIT)
    reborn = spawn(device_id, fleet, gflops=2.0)
    reborn.wait_ready()
    watcher.wait_event(
        lambda e: e["event"] == "update" and e["peer"]["info"]["gflops"] == 2.0, "update to the new incarnation"
    )


def test_late_browse_subscriber_gets_add_for_known_peers(spawn: Callable[..., AgentProcess]) -> None:
    fleet = unique("fl")
    peer = spawn(f"{fleet}-p", fleet)
    peer.wait_ready()
    with Discovery(fleet=fleet) as discovery:
        table = discovery.browse()
        wait_until(lambda: peer.device_id in table, what="peer in table")
        late: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        assert discovery.browse(lambda event, p: late.put((event, p.device_id))) is table
        assert late.get(timeout=WAIT) == ("add", peer.device_id)
