"""Hosts with real networks between them: agents in their own network namespaces joined by a bridge,
discovery by real multicast, and faults injected with nftables, link state and a TCP proxy.

Lab layout (one lab for the module): h0 runs Mosquitto, h1..h3 run dev-0..dev-2 (the 3-stage pipeline),
h4 is for an agent reaching the broker through a FaultProxy. The test process talks to the broker through
the lab's loopback forward. Skipped only where network namespaces cannot be created.
"""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from edge_agent import Fleet, InferenceTimeout, StageUnavailableError
from edge_agent.lab.faultproxy import FaultProxy
from edge_agent.lab.netlab import LabFleet, NetLab, list_netns, netns_supported
from models import zoo

from .conftest import assert_matches, ort_reference, wait_until

STAGE_DEVICES = ["dev-0", "dev-1", "dev-2"]
FAULT_WAIT = 45      # keepalive 10 s: the broker gives up after 15 s; reconnects back off to 2 s


@pytest.fixture(scope="module")
def netns() -> None:
    ok, reason = netns_supported()
    if not ok:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def lab(netns, mosquitto_available):
    with NetLab(5) as lab:
        yield lab


@pytest.fixture(scope="module")
def lab_fleet(lab: NetLab, tmp_path_factory):
    with LabFleet(lab, 3, agent_hosts=[1, 2, 3], gflops=[10.0, 10.0, 10.0],
                  workdir=tmp_path_factory.mktemp("netlab")) as lf:
        yield lf


@pytest.fixture(scope="module")
def fleet(lab_fleet: LabFleet):
    with Fleet(lab_fleet.broker_url) as f:
        wait_until(lambda: len(f.devices()) >= 3 or lab_fleet.exited(), 60, what="3 agents online")
        assert not lab_fleet.exited(), f"agents exited: {lab_fleet.exited()}"
        yield f


@pytest.fixture(scope="module")
def mlp3(fleet: Fleet):
    """A 3-stage MLP, one stage per host: (model, inputs, ORT outputs, deployment)."""
    model = zoo.build("mlp", seed=11)
    x = zoo.sample_inputs(model, seed=1)
    dep = deploy_fixed(fleet, model, "mlp3", STAGE_DEVICES)
    yield model, x, ort_reference(model, x), dep


@pytest.fixture
def clean_hosts(lab: NetLab):
    """Whatever a test breaks is repaired afterwards, even when it fails."""
    yield
    for h in lab.hosts:
        h.clear_faults()


def deploy_fixed(fleet: Fleet, model, name: str, devices: list[str]):
    """Deploy one stage per device and keep it there: a lost stage must fail requests, not move."""
    kw = {"failover": False} if "failover" in inspect.signature(fleet.deploy).parameters else {}
    return fleet.deploy(model, name, stages=len(devices), devices=devices, timeout=120, **kw)




def online(fleet: Fleet, device: str) -> bool:
    return any(d.device_id == device for d in fleet.devices())


def serving(fleet: Fleet, model: str, n: int) -> bool:
    rows = [e for d in fleet.devices() for e in d.stages if e.get("model") == model]
    return len(rows) == n and all(e.get("status") == "ready" for e in rows)


# ------------------------------------------------------------------------------------------ the lab itself
def test_lab_namespaces_are_removed_on_close_and_stale_ones_on_start(netns) -> None:
    prefix = f"eastale{os.getpid()}"
    crashed = NetLab(2, prefix=prefix)
    crashed._closed = True           # as if the process died: nothing cleaned up
    names = set(crashed.namespaces)
    assert names <= set(list_netns())
    with NetLab(1, prefix=prefix) as again:   # same prefix: the leftovers go first
        assert set(list_netns()) & names == {again.bridge_ns, again.host(0).ns}
        assert again.host(0).addr == "10.231.0.10"
    assert not set(list_netns()) & names


def test_agents_in_separate_namespaces_discover_each_other_by_multicast_across_the_bridge(
        fleet: Fleet, lab_fleet: LabFleet) -> None:
    wait_until(lambda: all(set(d.peers) == set(STAGE_DEVICES) - {d.device_id} for d in fleet.devices()), 30,
               what="every agent to list the 2 others as mDNS peers")
    hosts = {lab_fleet.host_of(name).ns for name in STAGE_DEVICES}
    assert len(hosts) == 3 and lab_fleet.broker_host.ns not in hosts   # really three different hosts
    for name in STAGE_DEVICES:
        others = [lab_fleet.host_of(n).addr for n in STAGE_DEVICES if n != name]
        log = lab_fleet.log(name)
        assert all(addr in log for addr in others), f"{name} did not resolve its peers at {others}:\n{log}"


def test_three_stage_pipeline_across_three_hosts_matches_onnxruntime(fleet: Fleet, mlp3) -> None:
    model, x, want, dep = mlp3
    placed = [st.device for st in dep.manifest.stages]   # the planner orders them (measured links differ)
    assert sorted(placed) == STAGE_DEVICES
    futures = [fleet.submit("mlp3", zoo.sample_inputs(model, seed=s), timeout=60) for s in range(4)]
    for s, fut in enumerate(futures):
        outputs, timings = fut.result(90)
        assert_matches(outputs, ort_reference(model, zoo.sample_inputs(model, seed=s)))
        assert [t["device"] for t in timings] == placed


# ------------------------------------------------------------------------------------------ faults
def _fails_clearly(call, device: str) -> Exception:
    """``call()`` raises StageUnavailableError or InferenceTimeout naming ``device`` (and does not hang)."""
    with pytest.raises((StageUnavailableError, InferenceTimeout)) as info:
        call()
    assert device in str(info.value)
    return info.value


def test_partitioned_stage_host_goes_offline_fails_requests_clearly_and_serves_after_heal(
        fleet: Fleet, lab_fleet: LabFleet, mlp3, clean_hosts) -> None:
    model, x, want, dep = mlp3
    victim = dep.manifest.stages[1].device
    host = lab_fleet.host_of(victim)
    host.partition()
    in_flight = fleet.submit("mlp3", x, timeout=60)
    wait_until(lambda: not online(fleet, victim), FAULT_WAIT, interval=0.2,
               what=f"the broker's Last Will to report partitioned {victim} offline")
    err = _fails_clearly(lambda: in_flight.result(90), victim)
    assert isinstance(err, StageUnavailableError) and err.stage == 1
    _fails_clearly(lambda: fleet.infer("mlp3", x, timeout=5), victim)   # while cut off
    assert host.dropped_packets() > 0

    host.heal()
    wait_until(lambda: online(fleet, victim) and serving(fleet, "mlp3", 3), FAULT_WAIT, interval=0.2,
               what=f"{victim} to reconnect by itself after the partition healed")
    assert_matches(fleet.infer("mlp3", x, timeout=30), want)
    assert "reconnected to broker" in lab_fleet.log(victim)


def test_requests_complete_correctly_under_20_percent_random_loss(
        fleet: Fleet, lab_fleet: LabFleet, mlp3, clean_hosts) -> None:
    model, x, want, dep = mlp3
    host = lab_fleet.host_of(dep.manifest.stages[2].device)
    host.loss(20)
    done = 0
    while done < 10 or (host.dropped_packets() == 0 and done < 60):
        assert_matches(fleet.infer("mlp3", zoo.sample_inputs(model, seed=done), timeout=60),
                       ort_reference(model, zoo.sample_inputs(model, seed=done)))
        done += 1
    assert host.dropped_packets() > 0, "the loss rule never dropped a packet"
    host.loss(0)
    assert host.dropped_packets() == 0


def test_link_down_on_first_stage_host_refuses_requests_and_link_up_recovers(
        fleet: Fleet, lab_fleet: LabFleet, mlp3, clean_hosts) -> None:
    model, x, want, dep = mlp3
    victim = dep.manifest.stages[0].device
    host = lab_fleet.host_of(victim)
    host.link_down()
    in_flight = fleet.submit("mlp3", x, timeout=60)
    wait_until(lambda: not online(fleet, victim), FAULT_WAIT, interval=0.2,
               what=f"{victim} to go offline with its link down")
    _fails_clearly(lambda: in_flight.result(90), victim)
    with pytest.raises(StageUnavailableError, match="stage 0") as info:
        fleet.submit("mlp3", x)                                     # refused at once, no hang
    assert victim in str(info.value)

    host.link_up()
    wait_until(lambda: online(fleet, victim) and serving(fleet, "mlp3", 3), FAULT_WAIT, interval=0.2,
               what=f"{victim} to reconnect by itself after its link came back")
    assert_matches(fleet.infer("mlp3", x, timeout=30), want)


def test_agent_behind_a_50ms_delay_proxy_serves_and_reconnects_after_sever(
        lab: NetLab, fleet: Fleet, lab_fleet: LabFleet, mlp3) -> None:
    h = lab.host(4)
    broker = (lab_fleet.broker_host.addr, lab_fleet.broker_port)
    # the proxy's sockets live in h4: the agent dials 127.0.0.1 there, the proxy dials the broker across
    # the bridge, with 50 ms added each way
    with FaultProxy(("127.0.0.1", 0), broker, delay_ms=50, jitter_ms=5, listen_netns=h.ns,
                    target_netns=h.ns) as proxy:
        lab_fleet.add_device("dev-slow", 4, broker_url=f"mqtt://127.0.0.1:{proxy.port}", gflops=10.0)
        try:
            wait_until(lambda: online(fleet, "dev-slow"), 60, what="dev-slow online through the proxy")
            model = zoo.build("mlp", seed=12)
            xs = [zoo.sample_inputs(model, seed=s) for s in range(3)]
            deploy_fixed(fleet, model, "slow2", ["dev-slow", "dev-0"])
            for x in xs:
                assert_matches(fleet.infer("slow2", x, timeout=30), ort_reference(model, x))
            assert proxy.accepted == 1

            assert proxy.sever() == 1
            wait_until(lambda: proxy.accepted >= 2 and proxy.connections == 1, 30,
                       what="dev-slow to reconnect through the proxy after sever()")
            wait_until(lambda: online(fleet, "dev-slow") and serving(fleet, "slow2", 2), 30,
                       what="dev-slow to report its stage again")
            for x in xs:
                assert_matches(fleet.infer("slow2", x, timeout=30), ort_reference(model, x))
            assert "reconnected to broker" in lab_fleet.log("dev-slow")
            fleet.undeploy("slow2")
        finally:
            lab_fleet.stop_device("dev-slow")


# ------------------------------------------------------------------------------------------ the proxy alone
@pytest.fixture
def echo_server():
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()
    stop.set()
    t.join()
    srv.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def test_fault_proxy_forwards_bytes_intact_blackholes_on_drop_and_severs(echo_server) -> None:
    payload = np.random.default_rng(0).bytes(1_000_000)
    with FaultProxy(("127.0.0.1", 0), echo_server, delay_ms=5, jitter_ms=5) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as c:
            threading.Thread(target=c.sendall, args=(payload,), daemon=True).start()
            assert _recv_exactly(c, len(payload)) == payload          # in order despite jitter
            proxy.drop = True
            c.sendall(b"lost")
            c.settimeout(0.5)
            with pytest.raises(TimeoutError):
                c.recv(10)
            proxy.drop = False
            c.settimeout(20)
            c.sendall(b"kept")
            assert _recv_exactly(c, 4) == b"kept"
            assert proxy.sever() == 1
            with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
                if not c.recv(10):
                    raise ConnectionAbortedError("closed")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as c:  # still listening
            c.sendall(b"again")
            assert _recv_exactly(c, 5) == b"again"
    dead = socket.create_server(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    with FaultProxy(("127.0.0.1", 0), ("127.0.0.1", port)) as proxy:
        # The proxy resets the client as soon as the target refuses; depending on timing the client sees
        # that as EOF, a reset on recv, or even EPIPE/ECONNRESET from connect() itself. All mean "cut".
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as c:
                c.settimeout(20)
                assert c.recv(10) == b""
        except ConnectionError:
            pass
        wait_until(lambda: proxy.failed == 1, 10, what="the unreachable target to be counted")


def test_fault_proxy_cli_takes_delay_drop_and_sever_commands(echo_server) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.lab.faultproxy", "--listen", "127.0.0.1:0",
                             "--target", f"{echo_server[0]}:{echo_server[1]}", "--delay-ms", "20"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])

        def command(text: str) -> str:
            proc.stdin.write(text + "\n")
            proc.stdin.flush()
            return proc.stdout.readline().strip()

        with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
            c.sendall(b"ping")
            assert _recv_exactly(c, 4) == b"ping"
            assert command("delay 5 1") == "ok delay 5 jitter 1"
            assert command("stats").startswith("ok connections 1 accepted 1")
            assert command("sever") == "ok severed 1"
            assert command("bogus").startswith("error: unknown command 'bogus'")
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------------------------------ failover
def test_partitioned_stage_fails_over_to_another_host_and_requests_complete(
        fleet: Fleet, lab_fleet: LabFleet, clean_hosts) -> None:
    """With failover on (the default), a stage whose only host is cut off moves: another host adopts it
    from its prefetched copy of the shard, in-flight requests are resent and complete exactly once; when the
    partition heals, the stage goes back to its assigned host."""
    model = zoo.build("mlp", seed=12)
    xs = [zoo.sample_inputs(model, seed=s) for s in range(4)]
    want = [ort_reference(model, x) for x in xs]
    dep = fleet.deploy(model, "mlp3f", stages=3, devices=STAGE_DEVICES, timeout=120)
    shas = {st.shard_sha256 for st in dep.manifest.stages}
    wait_until(lambda: all(shas <= set(d.blobs) for d in fleet.devices() if d.device_id in STAGE_DEVICES), 60,
               what="every stage host to hold a copy of every shard")
    victim = dep.manifest.stages[1].device
    host = lab_fleet.host_of(victim)
    host.partition()
    try:
        futures = [fleet.submit("mlp3f", x, timeout=90) for x in xs]
        wait_until(lambda: not online(fleet, victim), FAULT_WAIT, interval=0.2, what=f"{victim} offline")
        for fut, w in zip(futures, want):
            outputs, timings = fut.result(120)
            assert_matches(outputs, w)
            assert victim not in [t["device"] for t in timings]
        adopters = [d.device_id for d in fleet.devices() for e in d.stages
                    if e["model"] == "mlp3f" and e["stage"] == 1 and e.get("role") == "adopted"]
        assert len(adopters) == 1 and adopters[0] in STAGE_DEVICES and adopters[0] != victim
    finally:
        host.heal()
    wait_until(lambda: online(fleet, victim), FAULT_WAIT, interval=0.2, what=f"{victim} back")
    wait_until(lambda: not any(e.get("role") == "adopted" for d in fleet.devices() for e in d.stages
                               if e["model"] == "mlp3f"), FAULT_WAIT, what="the adoption to be dropped")
    assert_matches(fleet.infer("mlp3f", xs[0], timeout=30), want[0])
    fleet.undeploy("mlp3f")
