"""Manifests that fail the trust gate never steer anyone: not the devices, not the operator's client, not a
rollback; a refused deploy leaves the good manifest retained; a device restarts on its last good manifest.
Real Mosquitto, real agent processes trusting the fleet key, a second ("stolen broker identity") client."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Future

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent import DeployError, Fleet
from edge_agent.lab.sim import SimFleet
from edge_agent.operator.requests import Pending
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ManifestRejected
from edge_agent.protocol.messages import RolloutRecord
from edge_agent.security.keys import FleetKeys, generate_keys, sign_document
from models import zoo

from .conftest import wait_until


def _ort(model, x: dict) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, x)))


def _close(got: dict, want: dict) -> bool:
    return all(np.allclose(got[k], want[k], atol=1e-4, rtol=1e-4) for k in want)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    generate_keys(d)
    return d


@pytest.fixture(scope="module")
def sim(tmp_path_factory, keys, mosquitto_available):
    with SimFleet(2, broker_kind="mosquitto", workdir=tmp_path_factory.mktemp("gate"), discovery=False,
                  trust=str(keys / "fleet.pub")) as s:
        yield s


@pytest.fixture(scope="module")
def op(sim, keys):
    with Fleet(sim.broker_url, key=str(keys / "fleet.key")) as f:
        f.wait_for_devices(2, timeout=60)
        yield f


@pytest.fixture(scope="module")
def rogue(sim):
    """A client with the operator's broker identity but not its key (a leaked broker credential)."""
    with Fleet(sim.broker_url, key=FleetKeys.generate(), client_id="rogue") as f:
        yield f


def test_forged_replayed_and_empty_manifests_do_not_steer_the_operator(op: Fleet, rogue: Fleet) -> None:
    model = zoo.build("mlp", seed=21)
    x = zoo.sample_inputs(model)
    v1 = op.deploy(model, "steer", stages=1, timeout=120).manifest
    v2 = op.deploy(model, "steer", stages=2, timeout=120).manifest
    topic = topics.deploy(op.fleet, "steer")
    forged, _ = rogue.build_manifest(zoo.build("mlp", seed=22), "steer", stages=1, version=v2.version + 5)
    for payload, kind in ((rogue.publish_manifest(forged).to_bytes(), "signature"), (v1.to_bytes(), "replay"),
                          (b"", "unsigned_undeploy")):
        op.transport.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
        wait_until(lambda k=kind: (op.status("steer").get("rejected_manifest") or {}).get("kind") == k, 20,
                   what=f"the operator to refuse the {kind} manifest")
        assert op.manifest("steer").version == v2.version
        assert _close(op.infer("steer", x), _ort(model, x))
    op.transport.publish(topic, v2.to_bytes(), qos=1, retain=True).wait_for_publish(5)


def test_a_refused_deploy_leaves_the_good_manifest_retained(sim, op: Fleet, rogue: Fleet) -> None:
    model = zoo.build("mlp", seed=23)
    x = zoo.sample_inputs(model)
    good = op.deploy(model, "kept", stages=1, timeout=120).manifest
    wait_until(lambda: rogue.desired.retained("kept"), 10, what="the rogue client to see the retained manifest")
    assert rogue.current("kept") is None          # it cannot verify the fleet's signature, so it does not act
    with pytest.raises(ManifestRejected, match="signature"):
        rogue.deploy(zoo.build("mlp", seed=24), "kept", stages=1, timeout=60)
    # a client that connects now reads the retained manifest: it is the good one, and it serves
    with Fleet(sim.broker_url, key=op.keys, client_id="late") as late:
        assert late.manifest("kept").version == good.version
        assert _close(late.infer("kept", x), _ort(model, x))


def test_rollback_re_signs_only_what_it_can_verify(op: Fleet, keys) -> None:
    model = zoo.build("mlp", seed=25)
    op.deploy(model, "rb", stages=1, timeout=120)
    v2 = op.deploy(zoo.build("mlp", seed=26), "rb", stages=1, timeout=120).manifest
    # plant a "good v1" in the retained rollout record: unsigned, and one signed by another key
    rec = op.rollouts("rb")
    planted = []
    for signer in (None, FleetKeys.generate()):
        doc = {**rec.good[0], "sources": [topics.client_endpoint(op.fleet, "attacker")], "sig": {}}
        planted.append(sign_document({k: v for k, v in doc.items() if k != "sig"}, signer) if signer else doc)
    evil = RolloutRecord("rb", history=rec.history, good=planted)
    op.transport.publish(topics.rollout(op.fleet, "rb"), evil.to_bytes(), qos=1, retain=True).wait_for_publish(5)
    wait_until(lambda: op.rollouts("rb").good == planted, 10, what="the planted record to arrive")
    with pytest.raises(DeployError, match="no earlier good version"):
        op.rollback("rb", timeout=30)
    assert op.manifest("rb").version == v2.version


def test_a_device_restarts_on_its_last_good_manifest_when_the_broker_lost_it(sim, op: Fleet) -> None:
    model = zoo.build("mlp", seed=27)
    x = zoo.sample_inputs(model)
    dep = op.deploy(model, "persist", stages=1, devices=["dev-1"], timeout=120)
    sim.broker.restart()                      # no persistence: every retained message is gone
    sim.restart_device("dev-1")
    def serving_again() -> bool:
        st = op.view.state("dev-1")
        return bool(st and st.online and st.started > dep.manifest.created and any(
            e.get("model") == "persist" and e.get("status") == "ready" for e in st.stages))

    wait_until(serving_again, 60, what="dev-1 (restarted) to serve its stored manifest again")
    assert _close(op.infer("persist", x, timeout=30), _ort(model, x))


def test_state_and_load_are_believed_only_about_their_publisher(sim, op: Fleet, rogue: Fleet) -> None:
    """The broker's ACL lets an identity write only dev/<itself>/state|load; receivers take the identity
    from the topic. A state or load report about another device, under the publisher's own topic, is
    ignored by the operator and by the agents: it can neither mark dev-0 offline nor divert its traffic."""
    from edge_agent.protocol.messages import DeviceState, LoadReport
    model = zoo.build("mlp", seed=28)
    x = zoo.sample_inputs(model)
    op.deploy(model, "ident", stages=1, devices=["dev-0"], timeout=120)
    before = sum(d.counters.get("rejected_load", 0) for d in op.devices())
    rogue.transport.publish(topics.state(op.fleet, "intruder"),
                            DeviceState("dev-0", op.fleet, online=False).to_bytes(), qos=1).wait_for_publish(5)
    rogue.transport.publish(topics.load(op.fleet, "intruder"), LoadReport("dev-0", 10**6, 1e6).to_bytes(), qos=0)
    wait_until(lambda: sum(d.counters.get("rejected_load", 0) for d in op.devices()) > before, 10,
               what="the agents to refuse the load report about another device")
    assert op.view.online("dev-0") and op.view.load("dev-0").queue < 10**6
    assert _close(op.infer("ident", x), _ort(model, x))


def test_a_device_claiming_a_stage_it_was_not_given_gets_none_of_its_traffic(sim, op: Fleet, rogue: Fleet) -> None:
    """A stolen device identity reports (in its own, legitimate state topic) that it runs stage 0, with an
    empty queue and instant service: requests still go only to the replica named in the signed manifest."""
    from edge_agent.protocol.messages import DeviceState, LoadReport
    model = zoo.build("mlp", seed=29)
    x = zoo.sample_inputs(model)
    dep = op.deploy(model, "claimed", stages=1, devices=["dev-0"], timeout=120)
    entry = {"model": "claimed", "version": dep.version, "stage": 0, "status": "ready", "n_stages": 1}
    rogue.transport.publish(topics.state(op.fleet, "intruder"),
                            DeviceState("intruder", op.fleet, True, stages=[entry], gflops=1e6).to_bytes(),
                            qos=1, retain=True).wait_for_publish(5)
    rogue.transport.publish(topics.load(op.fleet, "intruder"), LoadReport("intruder", 0, 1e-3).to_bytes(), qos=0)
    wait_until(lambda: op.view.ready_holders(("claimed", dep.version, 0)) == ["dev-0", "intruder"], 10,
               what="the operator to see the claim")
    for _ in range(10):
        out, timings = op.infer("claimed", x, with_timings=True)
        assert [t["device"] for t in timings] == ["dev-0"] and _close(out, _ort(model, x))
    rogue.transport.publish(topics.state(op.fleet, "intruder"), b"", qos=1, retain=True).wait_for_publish(5)


def _pending(op: Fleet, req) -> Future:
    """Register ``req`` as in flight in the operator's table without sending it anywhere."""
    fut: Future = Future()
    now = time.monotonic()
    with op.requests.lock:
        op.requests.pending[req.request_id] = Pending(fut, req, req.to_bytes(), now + 60, now + 60)
    return fut


def test_tensors_for_a_later_stage_are_taken_only_from_a_device_of_the_stage_before(sim, op: Fleet,
                                                                                      rogue: Fleet) -> None:
    """A stolen identity that holds no stage hands the stage-1 device an activation of its choosing (under its
    own name in the topic, all the broker's ACL lets it write): the device refuses and counts it. The same
    message under the stage-0 device's name is served, so the sender is what was checked."""
    import uuid

    from edge_agent.protocol.messages import InferRequest
    model = zoo.build("mlp", seed=31)
    dep = op.deploy(model, "chain", stages=2, devices=["dev-0", "dev-1"], timeout=120)
    first, second = dep.manifest.stages[0].replicas[0], dep.manifest.stages[1].replicas[0]
    x = zoo.sample_inputs(model)
    _, timings = op.infer("chain", x, with_timings=True)
    assert [t["device"] for t in timings] == [first, second]
    activation = {name: np.zeros((1, 64), np.float32) for name in dep.manifest.stages[1].inputs}
    answers: list = []
    rogue.transport.subscribe(topics.inbox_filter(rogue.endpoint, "out"), lambda t, p, r: answers.append(t))
    before = _counter(op, second, "rejected_unexpected_sender")
    req = InferRequest(uuid.uuid4().hex, "chain", dep.version, 1, rogue.endpoint, tensors=activation)
    target = topics.device_endpoint(op.fleet, second)
    rogue.transport.publish(topics.inbox(target, "in", "intruder"), req.to_bytes(), qos=1).wait_for_publish(5)
    wait_until(lambda: _counter(op, second, "rejected_unexpected_sender") == before + 1, 15,
               what="the stage-1 device to refuse the intruder's tensor")
    assert not answers
    # control: written as the stage-0 device (which only a broker without ACLs lets anyone do) it is served
    req = InferRequest(uuid.uuid4().hex, "chain", dep.version, 1, rogue.endpoint, tensors=activation)
    rogue.transport.publish(topics.inbox(target, "in", first), req.to_bytes(), qos=1).wait_for_publish(5)
    wait_until(lambda: answers, 15, what="the control request's answer")
    assert topics.sender_of(answers[0]) == second
    op.undeploy("chain")


def test_a_result_is_taken_only_from_a_device_that_may_answer_it(sim, op: Fleet, rogue: Fleet) -> None:
    """A stolen identity that saw a request id answers it first, with tensors of its choosing: the operator
    ignores it (counted) and keeps waiting; the same answer from the deployment's last stage is taken."""
    import uuid

    from edge_agent.protocol.messages import InferRequest, InferResult
    model = zoo.build("mlp", seed=37)
    dep = op.deploy(model, "answered", stages=1, devices=["dev-1"], timeout=120)
    req = InferRequest(uuid.uuid4().hex, "answered", dep.version, 0, op.endpoint)
    fut = _pending(op, req)
    forged = InferResult(req.request_id, "answered", True, tensors={"output": np.full((1, 10), 7.0, np.float32)})
    before = op.stats["foreign_results"]
    rogue.transport.publish(topics.inbox(op.endpoint, "out", "intruder"), forged.to_bytes(), qos=1).wait_for_publish(5)
    wait_until(lambda: op.stats["foreign_results"] == before + 1, 10, what="the operator to ignore the forgery")
    assert not fut.done()
    rogue.transport.publish(topics.inbox(op.endpoint, "out", "dev-1"), forged.to_bytes(), qos=1).wait_for_publish(5)
    assert fut.result(timeout=10)[0]["output"][0, 0] == 7.0
    op.undeploy("answered")


def _counter(op: Fleet, device: str, key: str) -> int:
    d = next(d for d in op.devices(include_offline=True) if d.device_id == device)
    return d.counters.get(key, 0)


def test_an_expired_manifest_keeps_serving_while_freshness_statements_vouch_for_it(sim, op: Fleet, keys) -> None:
    """TUF's timestamp role: the manifest (signed for 8 s here, 30 days by default) expires; a device that
    restarts after that still serves it because the operator's short-lived signed statement names it.
    Without the statement (removed from the broker and the device's disk) the same restart drops it; and a
    statement naming a newer version than the broker holds shows the device is being held back (freeze)."""
    from edge_agent.security.freshness import make_statement
    from edge_agent.security.keys import load_private_key
    model = zoo.build("mlp", seed=41)
    x = zoo.sample_inputs(model)
    with Fleet(sim.broker_url, key=str(keys / "fleet.key"), manifest_ttl_s=8) as short:
        short.wait_for_devices(2, timeout=60)
        dep = short.deploy(model, "fresh", stages=1, devices=["dev-1"], timeout=120)
    wait_until(lambda: time.time() > dep.manifest.expires + 1, 30, what="the manifest to expire")

    def serving(since: float) -> bool:
        st = op.view.state("dev-1")
        return bool(st and st.online and st.started > since and any(
            e.get("model") == "fresh" and e.get("status") == "ready" for e in st.stages))

    t0 = time.time()
    sim.restart_device("dev-1")
    wait_until(lambda: serving(t0), 60, what="dev-1 to serve the expired but vouched-for manifest")
    assert _close(op.infer("fresh", x, timeout=30), _ort(model, x))
    assert op.view.state("dev-1").fresh["behind"] == [] and not op.view.state("dev-1").fresh["expired"]

    # freeze: the operator side says v+1 exists, the broker still holds v: dev-1 reports it is behind
    newer = dataclasses.replace(dep.manifest, version=dep.manifest.version + 1, sig={})
    statement = make_statement(op.fleet, [newer], load_private_key(keys / "fleet.key"))
    op.transport.publish(topics.freshness(op.fleet), statement.to_bytes(), qos=1, retain=True).wait_for_publish(5)
    wait_until(lambda: op.view.state("dev-1").fresh.get("behind") == ["stable/fresh"], 20,
               what="dev-1 to report that it is held back")

    # control: no statement anywhere, the same restart no longer serves the expired manifest
    op.transport.publish(topics.freshness(op.fleet), b"", qos=1, retain=True).wait_for_publish(5)
    sim.stop_device("dev-1")
    (sim.devices["dev-1"].data_dir / "freshness.msg").unlink()
    t1 = time.time()
    sim.start_device("dev-1")
    wait_until(lambda: (op.view.state("dev-1") and op.view.state("dev-1").online
                        and op.view.state("dev-1").started > t1), 60, what="dev-1 back online")
    time.sleep(3)
    assert not serving(t1)
    op.transport.publish(topics.deploy(op.fleet, "fresh"), b"", qos=1, retain=True).wait_for_publish(5)
