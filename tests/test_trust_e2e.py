"""Fleet lifecycle with trust, on real Mosquitto and real agent processes: signed manifests and what
devices reject, version order across restarts, signed undeploy, rollback, canary rollouts with gates,
peer-to-peer shards, convergence of devices that were offline, and the whole stack over TLS with ACLs."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent import DeployError, Fleet
from edge_agent.lab.sim import SimFleet
from edge_agent.protocol import topics
from edge_agent.security.keys import generate_keys
from models import zoo

from .conftest import wait_until


def ort_run(model, x: dict) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, x)))


def close(got: dict, want: dict) -> bool:
    return set(got) == set(want) and all(np.allclose(got[k], want[k], atol=1e-4, rtol=1e-4) for k in want)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "keys", "init", "--out", str(d)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (d / "fleet.key").stat().st_mode & 0o077 == 0  # the private key is not readable by others
    return d


@pytest.fixture(scope="module")
def sim(tmp_path_factory, keys, mosquitto_available):
    with SimFleet(3, broker_kind="mosquitto", workdir=tmp_path_factory.mktemp("tfleet"), discovery=False,
                  trust=str(keys / "fleet.pub")) as s:
        yield s


@pytest.fixture(scope="module")
def op(sim, keys):
    with Fleet(sim.broker_url, key=str(keys / "fleet.key")) as f:
        f.wait_for_devices(3, timeout=60)
        yield f


def _device(fleet: Fleet, name: str):
    return next(d for d in fleet.devices(include_offline=True) if d.device_id == name)


def _counter(fleet: Fleet, device: str, key: str) -> int:
    return _device(fleet, device).counters.get(key, 0)


def test_devices_refuse_to_start_without_trust_or_explicit_dev_mode(sim) -> None:
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--name", "x", "--broker", sim.broker_url,
                        "--no-discovery"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--trust" in r.stderr and "--dev" in r.stderr


def test_signed_deploy_runs_and_devices_report_signed_mode(op: Fleet) -> None:
    model = zoo.build("mlp", seed=1)
    x = zoo.sample_inputs(model)
    dep = op.deploy(model, "signed", stages=2, timeout=120)
    assert dep.manifest.sig["alg"] == "ed25519" and dep.manifest.expires > time.time()
    assert close(op.infer("signed", x), ort_run(model, x))
    assert not any(d.dev_mode for d in op.devices())
    op.undeploy("signed")


def test_unsigned_foreign_and_expired_manifests_are_rejected_with_reasons(sim, op: Fleet, tmp_path) -> None:
    model = zoo.build("mlp", seed=2)
    with Fleet(sim.broker_url) as unsigned:
        with pytest.raises(DeployError, match="rejected: .*manifest_unsigned"):
            unsigned.deploy(model, "nokey", stages=1, timeout=30)
    generate_keys(tmp_path / "other")
    with Fleet(sim.broker_url, key=str(tmp_path / "other" / "fleet.key")) as foreign:
        with pytest.raises(DeployError, match="unknown key id"):
            foreign.deploy(model, "foreign", stages=1, timeout=30)
    with Fleet(sim.broker_url, key=op.keys, manifest_ttl_s=-60) as stale:
        with pytest.raises(DeployError, match="expired"):
            stale.deploy(model, "stale", stages=1, timeout=30)
    counters = {k: sum(_counter(op, d, k) for d in sim.devices) for k in
                ("rejected_manifest_unsigned", "rejected_manifest_signature", "rejected_manifest_expired")}
    assert all(v >= 1 for v in counters.values()), counters
    assert not any(e["model"] in ("nokey", "foreign", "stale") for d in op.devices() for e in d.stages)


def test_tampered_manifest_is_rejected(op: Fleet) -> None:
    model = zoo.build("mlp", seed=3)
    m, _ = op.build_manifest(model, "tampered", stages=1)
    op.publish_manifest(m)  # signed and valid...
    wait_until(lambda: op.stage_rows(m)[0]["status"] == "ready", 60, what="the signed version to run")
    evil = dataclasses.replace(m, version=m.version + 1, stages=[{**m.stages[0].to_dict(), "carry": ["x"]}])  # old sig
    device = m.stages[0].device
    before = _counter(op, device, "rejected_manifest_signature")
    op.transport.publish(topics.deploy(op.fleet, "tampered"), evil.to_bytes(), retain=True).wait_for_publish(5)
    wait_until(lambda: _counter(op, device, "rejected_manifest_signature") > before, 30,
               what="the tampered manifest to be rejected")
    ev = [e for e in _device(op, device).events if e["model"] == "tampered"]
    assert ev and "bad signature" in ev[-1]["reason"]
    op.publish_manifest(dataclasses.replace(m, version=m.version + 2, created=time.time()))
    op.undeploy("tampered")


def test_replayed_older_manifest_is_rejected_even_after_a_restart(sim, op: Fleet) -> None:
    model = zoo.build("mlp", seed=4)
    v1 = op.deploy(model, "replay", stages=1, devices=["dev-2"], timeout=120).manifest
    op.deploy(zoo.build("mlp", seed=5), "replay", stages=1, devices=["dev-2"], timeout=120)
    sim.restart_device("dev-2")
    wait_until(lambda: any(e["model"] == "replay" and e["status"] == "ready" for e in _device(op, "dev-2").stages)
               and _device(op, "dev-2").online, 60, what="dev-2 back with v2")
    before = _counter(op, "dev-2", "rejected_manifest_replay")
    op.transport.publish(topics.deploy(op.fleet, "replay"), v1.to_bytes(), retain=True).wait_for_publish(5)
    wait_until(lambda: _counter(op, "dev-2", "rejected_manifest_replay") > before, 30,
               what="the replayed v1 to be rejected by the restarted device")
    assert [e["version"] for e in _device(op, "dev-2").stages if e["model"] == "replay"] == [v1.version + 1]
    op.deploy(zoo.build("mlp", seed=5), "replay", stages=1, devices=["dev-2"], timeout=120)  # restore retained
    op.undeploy("replay")


def test_unsigned_undeploy_is_ignored_and_a_signed_tombstone_undeploys(sim, op: Fleet) -> None:
    op.deploy(zoo.build("mlp", seed=6), "tomb", stages=1, devices=["dev-0"], timeout=120)
    before = _counter(op, "dev-0", "rejected_unsigned_undeploy")
    op.transport.publish(topics.deploy(op.fleet, "tomb"), b"", retain=True).wait_for_publish(5)
    wait_until(lambda: _counter(op, "dev-0", "rejected_unsigned_undeploy") > before, 30, what="ignored undeploy")
    assert any(e["model"] == "tomb" for e in _device(op, "dev-0").stages)  # still serving
    # the operator's signed tombstone (a new version with no stages) does undeploy
    op.deploy(zoo.build("mlp", seed=6), "tomb", stages=1, devices=["dev-0"], timeout=120)
    op.undeploy("tomb")
    assert not any(e["model"] == "tomb" for e in _device(op, "dev-0").stages)


def test_rollback_restores_the_previous_good_version_as_a_new_signed_version(op: Fleet, keys) -> None:
    good, bad = zoo.build("mlp", seed=7), zoo.build("mlp", seed=8)
    x = zoo.sample_inputs(good)
    v1 = op.deploy(good, "rb", stages=2, timeout=120).version
    v2 = op.deploy(bad, "rb", stages=2, timeout=120).version
    assert close(op.infer("rb", x), ort_run(bad, x))
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "rollback", "rb", "--key", str(keys / "fleet.key")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "EDGE_AGENT_BROKER": op.broker})
    assert r.returncode == 0, r.stderr
    wait_until(lambda: op.manifest("rb").version > v2, 20, what="the rollback manifest")
    m = op.manifest("rb")
    assert m.rollback and m.version == v2 + 1 and m.sig and m.plan["restores"] == v1
    wait_until(lambda: all(r["status"] == "ready" for r in op.stage_rows(m)), 60, what="rollback to converge")
    assert close(op.infer("rb", x), ort_run(good, x))
    history = [h["status"] for h in op.status("rb")["history"]]
    assert history[-1] == "rolled_back"
    op.undeploy("rb")


def test_canary_that_fails_its_gate_is_withdrawn_and_status_says_why(op: Fleet, tmp_path) -> None:
    stable, candidate = zoo.build("mlp", seed=9), zoo.build("mlp", seed=10)
    xs = [zoo.sample_inputs(stable, seed=i) for i in range(4)]
    check = tmp_path / "check.npz"
    name = next(iter(xs[0]))
    refs = [ort_run(stable, x) for x in xs]
    np.savez(check, **{name: np.concatenate([x[name] for x in xs])[:, None, :] if xs[0][name].ndim == 1 else
                       np.stack([x[name] for x in xs])},
             **{f"expected:{k}": np.stack([r[k] for r in refs]) for k in refs[0]})
    v1 = op.deploy(stable, "can", stages=1, timeout=120).version
    with pytest.raises(DeployError, match=r"canary gate failed \(max_abs_diff = .* violates max_abs_diff<=0.001"):
        op.deploy(candidate, "can", stages=1, canary=1, gates="max_abs_diff<=1e-3,error_rate<=0",
                  check_data=str(check), timeout=120)
    st = op.status("can")
    assert st["stable"]["version"] == v1 and "canary" not in st
    last = st["history"][-1]
    assert last["status"] == "rolled_back" and "max_abs_diff" in last["reason"]
    assert close(op.infer("can", xs[0]), refs[0])  # the fleet never left v1
    # the same version with a correct model passes its gates and reaches the whole fleet
    dep = op.deploy(stable, "can", stages=2, canary="34%", gates="max_abs_diff<=1e-3,error_rate<=0,p95_ms<=60000",
                    check_data=str(check), timeout=120)
    assert dep.version > v1 and len(dep.manifest.stages) == 2
    statuses = [h["status"] for h in op.status("can")["history"]]
    assert statuses[-3:] == ["started", "passed", "promoted"]
    assert close(op.infer("can", xs[1]), refs[1])
    op.undeploy("can")


def test_device_joining_later_gets_shards_from_peers_not_the_operator(sim, op: Fleet) -> None:
    model = zoo.build("transformer", seed=11)
    x = zoo.sample_inputs(model)
    op.deploy(model, "p2p", stages=1, devices=["dev-0"], timeout=120)
    served = op.blob_server.served_chunks
    sim.add_device("late-1")
    wait_until(lambda: any(d.device_id == "late-1" for d in op.devices()), 60, what="late-1 online")
    dep = op.deploy(model, "p2p", stages=1, devices=["late-1"], timeout=120)
    assert dep.manifest.stages[0].devices == ["late-1"]
    assert op.blob_server.served_chunks == served  # every chunk came from dev-0
    assert close(op.infer("p2p", x), ort_run(model, x))
    assert "blob" not in sim.log("late-1").lower() or "corrupt" not in sim.log("late-1").lower()
    op.undeploy("p2p")


def test_device_offline_during_a_deploy_converges_when_it_returns(sim, op: Fleet) -> None:
    model = zoo.build("mlp", seed=12)
    x = zoo.sample_inputs(model)
    sim.stop_device("dev-1")
    wait_until(lambda: not _device(op, "dev-1").online, 30, what="dev-1 offline")
    dep = op.deploy(model, "conv", stages=1, devices=["dev-0", "dev-1"], replicas=2, include_offline=True,
                    timeout=120)
    rows = {r["device"]: r for r in dep.stage_status}
    assert rows["dev-0"]["status"] == "ready" and not rows["dev-1"]["online"]
    assert not op.status("conv")["stable"]["converged"]
    sim.start_device("dev-1")
    wait_until(lambda: op.status("conv")["stable"]["converged"], 60, what="dev-1 to converge after return")
    assert close(op.infer("conv", x), ort_run(model, x))
    op.undeploy("conv")


def test_whole_stack_over_tls_with_device_certificates_and_acls(tmp_path, keys, mosquitto_available) -> None:
    import shutil
    import tempfile
    from pathlib import Path

    from edge_agent.security.pki import init_fleet
    from edge_agent.transport.broker import free_port, wait_port

    port = free_port()
    # under /tmp, not pytest's 0700 tree: Mosquitto started as root reads its files as user mosquitto
    broker_dir = Path(tempfile.mkdtemp(prefix="ea-tls-"))
    res = init_fleet(broker_dir, ["cam-01", "cam-02", "cam-03"], port=port)   # cam-03: a stolen, idle credential
    proc = subprocess.Popen([mosquitto_available, "-c", str(res.conf_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", port, 10, proc)
        model = zoo.build("mlp", seed=13)
        x = zoo.sample_inputs(model)
        with SimFleet(0, workdir=tmp_path / "fleet", discovery=False, trust=str(keys / "fleet.pub"),
                      broker_url=f"mqtts://127.0.0.1:{port}", credentials_dir=broker_dir) as s:
            s.add_device("cam-01")
            s.add_device("cam-02")
            with Fleet(credentials=res.creds["operator"], key=str(keys / "fleet.key")) as f:
                f.wait_for_devices(2, timeout=60)
                f.deploy(model, "tls", stages=2, timeout=120)
                assert close(f.infer("tls", x), ort_run(model, x))
            # a device identity cannot deploy: the broker drops its publish on deploy/# (ACL). Not a running
            # device's: one identity is one connection (the broker's client id), the two would kick each other
            with Fleet(credentials=broker_dir / "cam-03.cred", key=str(keys / "fleet.key")) as rogue:
                with pytest.raises(DeployError):
                    rogue.deploy(model, "rogue", stages=1, timeout=8)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(broker_dir, ignore_errors=True)


def test_manifest_signed_for_another_fleet_is_refused(op: Fleet) -> None:
    m, _ = op.build_manifest(zoo.build("mlp", seed=14), "elsewhere", stages=1)
    m.fleet = "other-fleet"       # validly signed, but for another fleet (a cross-fleet replay)
    op.publish_manifest(m)
    device = m.stages[0].device
    wait_until(lambda: _counter(op, device, "rejected_manifest_foreign_fleet") > 0, 30,
               what="the foreign-fleet manifest to be refused")
    assert not any(e["model"] == "elsewhere" for e in _device(op, device).stages)
    op.transport.publish(topics.deploy(op.fleet, "elsewhere"), b"", retain=True).wait_for_publish(5)
