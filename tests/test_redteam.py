"""Red-team rows of docs/security.md that need a whole running fleet: a fleet made by `fleet init` (Mosquitto with
the generated TLS config and ACLs), real agent processes with their own certificates trusting the fleet key, an
operator with its credential and key, and the `gw-01` device credential treated as stolen (it runs no agent).

- a stolen device credential floods a device with expensive requests: the operator's requests are still served,
  none of them even answered "overloaded" (per-sender fairness at the receiver);
- a stolen device credential claims to hold a shard and serves one chunk, then nothing: the fetching device
  drops it (stall rule) and finishes the transfer from the operator;
- a local user on a device: the data directory and everything in it are private; a shard replaced on disk is
  detected at load and fetched again; an agent refuses a credentials file others may read.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_agent import DeployError, Fleet
from edge_agent.lab.sim import SimFleet
from edge_agent.protocol import topics
from edge_agent.protocol.messages import InferRequest
from edge_agent.security.keys import generate_keys
from edge_agent.security.pki import Credentials, FleetInitError, init_fleet
from edge_agent.transport.broker import free_port, wait_port
from edge_agent.transport.mqtt import Transport
from models import zoo

from .conftest import assert_matches, ort_reference, wait_until

FLOOD = 400           # expensive requests from the stolen identity, all at the broker before the operator sends
QUEUE = 64            # the flooded device's request queue (--max-queued-requests): a flood fills it for sure
LEGIT = 20


@dataclass
class TlsFleet:
    broker_dir: Path
    url: str
    keys: Path
    sim: SimFleet
    op: Fleet

    def cred(self, name: str) -> Credentials:
        return Credentials.from_file(self.broker_dir / f"{name}.cred")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, mosquitto_available) -> Iterator[TlsFleet]:
    keys = tmp_path_factory.mktemp("keys")
    generate_keys(keys)
    port = free_port()
    # under /tmp, not pytest's 0700 tree: Mosquitto started as root reads its files as user mosquitto
    broker_dir = Path(tempfile.mkdtemp(prefix="ea-redteam-"))
    res = init_fleet(broker_dir, ["cam-01", "cam-02", "gw-01"], port=port, viewers=["dash"])
    proc = subprocess.Popen([mosquitto_available, "-c", str(res.conf_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port("127.0.0.1", port, 10, proc)
        url = f"mqtts://127.0.0.1:{port}"
        with SimFleet(0, workdir=tmp_path_factory.mktemp("redteam"), discovery=False, broker_url=url,
                      trust=str(keys / "fleet.pub"), credentials_dir=broker_dir,
                      extra_args=["--max-queued-requests", str(QUEUE)]) as sim:
            sim.add_device("cam-01")
            sim.add_device("cam-02")
            with Fleet(credentials=res.creds["operator"], key=str(keys / "fleet.key")) as op:
                op.wait_for_devices(2, timeout=60)
                yield TlsFleet(broker_dir, url, keys, sim, op)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(broker_dir, ignore_errors=True)


def _counter(op: Fleet, device: str, name: str) -> int:
    st = op.view.state(device)
    return int((st.counters or {}).get(name, 0)) if st is not None else 0


def test_a_flooding_device_identity_does_not_starve_the_operators_requests(fleet: TlsFleet) -> None:
    op = fleet.op
    # a CNN: each request costs the device milliseconds on any machine, so none is cheap enough to be served
    # inline on the network thread (INLINE_MAX_MS) and the flood must queue (a small MLP did not, when quiet)
    model = zoo.build("mobilenetv2", seed=41)
    m = op.deploy(model, "flooded", stages=1, devices=["cam-01"], timeout=120).manifest
    stolen = fleet.cred("gw-01")
    flooder = Transport(stolen.broker_url, client_id="gw-01", **stolen.transport_kwargs()).start()
    try:
        rng = np.random.default_rng(0)
        heavy = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in zoo.sample_inputs(model).items()}
        inbox = topics.inbox(topics.device_endpoint(op.fleet, "cam-01"), "in", "gw-01")
        reply_to = topics.device_endpoint(op.fleet, "gw-01")
        infos = [flooder.publish(inbox, InferRequest(f"flood-{i}", "flooded", m.version, 0, reply_to,
                                                     tensors=heavy).to_bytes(), qos=1) for i in range(FLOOD)]
        for info in infos:                 # every flood request is at the broker before the operator sends
            info.wait_for_publish(30)
        x = zoo.sample_inputs(model)
        want = ort_reference(model, x)
        futures = [op.submit("flooded", x, timeout=60) for _ in range(LEGIT)]
        for f in futures:
            assert_matches(f.result(90)[0], want)
    finally:
        flooder.close()
    # the flood did fill the queue (its excess was shed), yet not one operator request was even refused once
    wait_until(lambda: _counter(op, "cam-01", "overloaded_shed") > 0, 20, what="cam-01 to report shed requests")
    assert op.requests.retried_errors["overloaded"] == 0, dict(op.requests.retried_errors)


def _state_dir(sim: SimFleet, name: str) -> Path:
    return sim.devices[name].data_dir


@pytest.mark.parametrize("behaviour", [["--serve-chunks", "1"], ["--serve-chunks", "1", "--trickle", "4"]],
                         ids=["stops-mid-transfer", "trickles"])
def test_a_peer_that_stalls_mid_transfer_is_dropped_and_the_shard_comes_from_the_others(fleet: TlsFleet,
                                                                                      tmp_path, behaviour) -> None:
    """A stolen identity claims to hold the shard (peers are asked before the operator, so it is asked first)
    and serves one chunk, then nothing, or one chunk every 4 s (inside the 5 s stall window)."""
    op = fleet.op
    model = zoo.build("mlp", seed=42 if behaviour[-1] == "1" else 46)
    name = "stalled" if behaviour[-1] == "1" else "trickled"
    m, _ = op.build_manifest(model, name, stages=1, devices=["cam-02"])
    sha = m.stages[0].shard_sha256
    assert m.stages[0].shard_size > m.stages[0].chunk_size, "the shard must take several chunks"
    shard = tmp_path / "shard.onnx"
    shard.write_bytes(op.blob_server._memory[sha])
    count = tmp_path / "requests"
    rogue = subprocess.Popen([sys.executable, "-m", "edge_agent.lab.rogue_peer", "--credentials",
                              str(fleet.broker_dir / "gw-01.cred"), "--blob", f"{sha}={shard}", *behaviour,
                              "--count", str(count)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        wait_until(lambda: (st := op.view.state("gw-01")) is not None and sha in st.blobs, 30,
                   what="the rogue peer to claim the shard")
        before = _counter(op, "cam-02", "rejected_stalled_source")
        op.publish_manifest(m)
        op.wait_ready(m, 60)
        x = zoo.sample_inputs(model)
        assert_matches(op.infer(name, x), ort_reference(model, x))
        assert int(count.read_text() or 0) >= 1, "the rogue peer was never asked: the test shows nothing"
        wait_until(lambda: _counter(op, "cam-02", "rejected_stalled_source") > before, 20,
                   what="cam-02 to report the stalled source")
    finally:
        rogue.terminate()
        rogue.wait(10)


def test_a_local_user_finds_the_data_private_and_cannot_swap_a_shard_undetected(fleet: TlsFleet) -> None:
    op, sim = fleet.op, fleet.sim
    model = zoo.build("mlp", seed=43)
    x = zoo.sample_inputs(model)
    m = op.deploy(model, "private", stages=1, devices=["cam-02"], timeout=120).manifest
    data = _state_dir(sim, "cam-02")
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    loose = [str(p) for p in data.rglob("*") if p.stat().st_mode & 0o077]
    assert not loose, f"files others may read or write: {loose}"
    shard = next(p for p in data.rglob(m.stages[0].shard_sha256) if p.is_file())
    # same size, other weights: what a local user with write access would do
    size = shard.stat().st_size
    os.chmod(shard, 0o600)
    shard.write_bytes(os.urandom(size))
    before = _counter(op, "cam-02", "corrupt_shard_on_disk")
    sim.restart_device("cam-02")
    wait_until(lambda: _counter(op, "cam-02", "corrupt_shard_on_disk") > before, 60,
               what="cam-02 to detect the swapped shard at load")
    wait_until(lambda: any(e.get("model") == "private" and e.get("status") == "ready"
                           for e in (op.view.state("cam-02").stages or [])), 60, what="cam-02 to serve again")
    assert_matches(op.infer("private", x), ort_reference(model, x))


def test_an_agent_refuses_a_credentials_file_others_can_read(fleet: TlsFleet, tmp_path) -> None:
    cred = tmp_path / "cam-09.cred"
    shutil.copy(fleet.broker_dir / "cam-01.cred", cred)
    for name in ("cam-01.key", "cam-01.crt", "ca.crt"):
        shutil.copy(fleet.broker_dir / name, tmp_path / name)
    os.chmod(tmp_path / "cam-01.key", 0o600)
    os.chmod(cred, 0o644)
    argv = [sys.executable, "-m", "edge_agent.cli", "run", "--name", f"cam-{uuid.uuid4().hex[:4]}", "--credentials",
            str(cred), "--trust", str(fleet.keys / "fleet.pub"), "--data-dir", str(tmp_path / "data"),
            "--no-discovery", "--interface", "127.0.0.1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "chmod 600" in out.stderr + out.stdout, (out.returncode, out.stderr[-2000:])
    # the client key is checked the same way (in process: the same call agent_config makes)
    os.chmod(cred, 0o600)
    os.chmod(tmp_path / "cam-01.key", 0o640)
    with pytest.raises(FleetInitError, match=r"cam-01\.key .*chmod 600"):
        Credentials.from_file(cred).check_private(cred)
    os.chmod(tmp_path / "cam-01.key", 0o600)
    Credentials.from_file(cred).check_private(cred)


def test_a_viewer_identity_sees_the_fleet_but_cannot_deploy(fleet: TlsFleet) -> None:
    """A dashboard's identity (fleet init --viewer): a Fleet client on it lists the devices and the signed
    deployments; a deploy with it (even holding the fleet key) never reaches the devices."""
    op = fleet.op
    op.deploy(zoo.build("mlp", seed=44), "seen", stages=1, devices=["cam-01"], timeout=120)
    with Fleet(credentials=fleet.broker_dir / "dash.cred", key=str(fleet.keys / "fleet.key")) as dash:
        dash.wait_for_devices(2, timeout=30)
        wait_until(lambda: dash.current("seen") is not None, 20, what="the viewer to verify the deployment")
        with pytest.raises(DeployError):
            dash.deploy(zoo.build("mlp", seed=45), "viewer-deploy", stages=1, devices=["cam-02"], timeout=5)
    assert op.current("viewer-deploy") is None and not op.desired.retained("viewer-deploy")
