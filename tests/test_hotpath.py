"""The agent's per-request path: tensors carried through a stage stay bytes, decoding stays lazy but every
descriptor is still checked, routing plans are cached yet follow every change of the view and manifests, and
the store hashes each received byte once (against the signed chunk list) yet nothing unverified is used."""

from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent import Fleet
from edge_agent.agent.server import StageServer
from edge_agent.agent.stages import StageTable
from edge_agent.cluster.view import FleetView
from edge_agent.lab.sim import SimFleet
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ProtocolError, StoreError
from edge_agent.protocol.messages import (
    DeviceState,
    InferRequest,
    InferResult,
    Manifest,
    WireTensor,
    encode_frame,
)
from edge_agent.transport.blobs import BlobFetcher, BlobServer, TransferSpec
from edge_agent.transport.mqtt import Transport
from edge_agent.transport.store import BlobStore, chunk_digests, sha256_hex
from tests.conftest import wait_until


# ------------------------------------------------------------------------------------------- framing
def _request(**tensors: np.ndarray) -> InferRequest:
    return InferRequest("r1", "m", 1, 1, "ea/v1/f/dev/a", tensors=tensors)


def test_lazy_decode_checks_descriptors_and_reframes_carried_bytes_verbatim() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    z = np.arange(5, dtype=np.int64)
    payload = _request(x=x, z=z).to_bytes()
    lazy = InferRequest.from_bytes(payload, lazy=True)
    assert all(isinstance(t, WireTensor) for t in lazy.tensors.values())
    assert lazy.tensors["x"].shape == (2, 3, 4) and lazy.tensors["x"].dtype == np.float32
    # the wire tensor is a view of the received payload, not a copy...
    assert lazy.tensors["z"].data.obj is memoryview(payload).obj
    # ...and framing it again gives the same bytes as framing the array
    assert lazy.to_bytes() == InferRequest.from_bytes(payload).to_bytes()
    again = InferRequest.from_bytes(lazy.to_bytes())
    np.testing.assert_array_equal(again.tensors["x"], x)
    np.testing.assert_array_equal(again.tensors["z"], z)
    np.testing.assert_array_equal(lazy.tensors["x"].array(), x)


@pytest.mark.parametrize("bad, match", [
    ({"n": "x", "d": "float32", "s": [4], "o": 0, "l": 12}, "needs 16 bytes"),
    ({"n": "x", "d": "float32", "s": [4], "o": 0, "l": 16}, "truncated"),
    ({"n": "x", "d": "object", "s": [1], "o": 0, "l": 8}, "unsupported dtype"),
    ({"n": "x", "d": "uint8", "s": [-1], "o": 0, "l": 0}, "bad shape"),
])
def test_lazy_decode_still_refuses_bad_tensor_descriptors(bad: dict, match: str) -> None:
    header = {"k": "infer", "v": 1, "request_id": "r", "model": "m", "version": 1, "stage": 0,
              "reply_to": "ea/v1/f/dev/a", "tensors": [bad]}
    payload = encode_frame(header, [memoryview(b"\0" * 8)])
    for lazy in (True, False):
        with pytest.raises(ProtocolError, match=match):
            InferRequest.from_bytes(payload, lazy=lazy)


# ------------------------------------------------------------------------------------------- the agent
def _carry_model(n: int) -> onnx.ModelProto:
    """``y = (x + 1) * z``: cut in two, stage 0 reads only ``x`` and carries ``z`` to stage 1."""
    nodes = [helper.make_node("Add", ["x", "one"], ["h"], name="add"),
             helper.make_node("Mul", ["h", "z"], ["y"], name="mul")]
    graph = helper.make_graph(
        nodes, "carry", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n]),
                         helper.make_tensor_value_info("z", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
        [numpy_helper.from_array(np.ones((1,), np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_a_tensor_carried_through_a_stage_is_never_decoded_there(tmp_path, mosquitto_available) -> None:
    n, requests = 1024, 12
    with SimFleet(2, broker_kind="mosquitto", workdir=tmp_path, discovery=False) as sim, \
            Fleet(sim.broker.url) as fleet:
        fleet.wait_for_devices(2, timeout=60)
        dep = fleet.deploy(_carry_model(n), "carry", stages=2, devices=["dev-0", "dev-1"], timeout=120)
        first = dep.manifest.stages[0]
        assert "z" in first.forwards and "z" not in first.inputs, "the plan must carry z through stage 0"
        dev0 = first.replicas[0]

        def counters() -> dict:
            return next(d for d in fleet.devices() if d.device_id == dev0).counters

        before = counters()
        rng = np.random.default_rng(3)
        for _ in range(requests):
            x, z = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
            y = fleet.infer("carry", {"x": x, "z": z})["y"]
            np.testing.assert_array_equal(y, (x + np.float32(1)) * z)

        def delta() -> dict | None:
            c = counters()
            d = {k: c.get(k, 0) - before.get(k, 0) for k in ("served", "tensors_decoded", "tensors_carried")}
            return d if d["served"] >= requests else None

        d = wait_until(delta, 30, what="the stage-0 device to report its counters")
        # every request: x made into an array (the stage reads it), z re-framed from the received bytes
        assert d["tensors_carried"] == d["served"]
        assert d["tensors_decoded"] == d["served"]


def _add_one(n: int) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"], name="add")], "add1",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
                              [numpy_helper.from_array(np.ones((1,), np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_the_inline_hot_path_keeps_every_check(mosquitto, tmp_path) -> None:
    """Requests served on the network thread (the fast path): the result matches ONNX Runtime, a duplicate is
    answered from the cache and not run again, an input of the wrong dtype or shape, or missing, gets an error
    that says what was expected, an oversized message is refused unread."""
    import onnxruntime as ort

    from edge_agent.agent.daemon import Agent, AgentConfig
    n = 1024
    model = _add_one(n)
    agent = Agent(AgentConfig(name="hp", broker=mosquitto.url, data_dir=tmp_path / "agent", dev_mode=True,
                              discovery=False, gflops=10.0, recheck_every_s=0, max_message_bytes=64 * 1024)).start()
    answers: dict[str, list] = collections.defaultdict(list)
    raw: dict[str, list[bytes]] = collections.defaultdict(list)

    def on_answer(topic: str, payload: bytes, retained: bool) -> None:
        res = InferResult.from_bytes(payload)
        answers[res.request_id].append(res)
        raw[res.request_id].append(bytes(payload))

    me = topics.client_endpoint("default", "hp-probe")
    probe = Transport(mosquitto.url, client_id="hp-probe")
    probe.subscribe(topics.inbox_filter(me, "out"), on_answer)
    try:
        probe.start(wait=10)
        with Fleet(mosquitto.url) as fleet:
            fleet.wait_for_devices(1, timeout=30)
            ver = fleet.deploy(model, "add1", stages=1, timeout=60).manifest.version
            x = np.random.default_rng(5).standard_normal(n).astype(np.float32)
            for _ in range(5):     # the stage is timed: from now on it is cheap enough to serve inline
                fleet.infer("add1", {"x": x})
        topic = topics.inbox(agent.endpoint, "in", "hp-probe")

        def send(rid: str, **tensors: np.ndarray) -> None:
            agent.handlers.on_infer(topic, InferRequest(rid, "add1", ver, 0, me, tensors=tensors).to_bytes(), False)

        inline0, dup0 = agent.counters["served_inline"], agent.counters["duplicates"]
        send("ok", x=x)
        send("ok", x=x)                                   # a retry: resent from the cache, not run again
        send("dtype", x=x[: n // 2].astype(np.float64))   # the same bytes: inline like the others
        send("shape", x=x[: n // 2])
        send("name", z=x)
        before = agent.counters["rejected_oversized"]
        agent.handlers.on_infer(topic, InferRequest("big", "add1", ver, 0, me,
                                                    tensors={"x": np.zeros(32 * 1024, np.float32)}).to_bytes(), False)
        assert agent.counters["rejected_oversized"] == before + 1
        wait_until(lambda: {"ok", "dtype", "shape", "name"} <= set(answers) and len(answers["ok"]) == 2,
                   30, what="an answer to every request")
        assert agent.counters["served_inline"] - inline0 >= 5
        # the retry got the first answer again, byte for byte (a second run would carry new timings)
        assert agent.counters["duplicates"] - dup0 == 1 and raw["ok"][0] == raw["ok"][1]
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for res in answers["ok"]:
            assert res.ok
            np.testing.assert_allclose(res.tensors["y"], want, rtol=0, atol=1e-6)
        for rid, words in (("dtype", "expected dtype float32"), ("shape", "expected shape [1024]"),
                           ("name", "missing input 'x'")):
            (res,) = answers[rid]
            assert not res.ok and res.error["code"] == "invalid_input" and words in res.error["message"], res.error
        assert "big" not in answers
    finally:
        probe.close()
        agent.stop()


# ------------------------------------------------------------------------------------------- routing plans
def _two_stage_manifest(stage1: list[str], version: int = 1) -> Manifest:
    def stage(i: int, devices: list[str]) -> dict:
        return {"index": i, "shard_sha256": "0" * 64, "shard_size": 1, "chunk_size": 1, "chunk_sha256": ["0" * 64],
                "inputs": ["x"], "outputs": ["y"], "devices": devices}
    return Manifest("m", version, 0.0, "0" * 64, [], [], [stage(0, ["me"]), stage(1, stage1)], failover=False)


def _ready(device: str, online: bool = True) -> DeviceState:
    return DeviceState(device, "f", online, stages=[{"model": "m", "version": 1, "stage": 1, "status": "ready"}])


def test_cached_routing_plans_follow_view_and_manifest_changes() -> None:
    """Routing and the sender check of a stage are worked out once and reused, but a device going offline or
    coming back, and a manifest replaced, change them at the next request, as if nothing were cached."""
    view = FleetView()
    for d in ("a", "b", "c"):
        view.update_state(_ready(d))
    manifests = {("m", 1): _two_stage_manifest(["a", "b"])}
    server = StageServer("me", "f", transport=None, view=view, table=StageTable(),  # type: ignore[arg-type]
                         counters=collections.Counter(), on_reject=lambda why: None, max_message_bytes=1 << 20,
                         manifest_of=lambda model, version: manifests.get((model, version)))
    from_a = InferRequest("r", "m", 1, 1, "ea/v1/f/ctl/op")
    assert {server.route("m", 1, 1) for _ in range(50)} == {"a", "b"}
    assert server.may_send(from_a, "me") and server.may_send(from_a, "a") and not server.may_send(from_a, "c")
    generation = view.generation
    view.update_state(_ready("a"))                 # a heartbeat that changes nothing keeps the plans
    assert view.generation == generation
    view.update_state(_ready("a", online=False))
    assert {server.route("m", 1, 1) for _ in range(20)} == {"b"}
    view.update_state(_ready("b", online=False))
    assert server.route("m", 1, 1) is None
    view.update_state(_ready("b"))
    assert {server.route("m", 1, 1) for _ in range(20)} == {"b"}
    manifests[("m", 1)] = _two_stage_manifest(["c"])   # a new manifest object: the plan is rebuilt from it
    assert {server.route("m", 1, 1) for _ in range(20)} == {"c"}
    assert server.may_send(from_a, "c") and not server.may_send(from_a, "b")
    del manifests[("m", 1)]                        # no verified manifest: nothing cached decides
    assert server.route("m", 1, 1) is None and server.may_send(from_a, "anyone")


# ------------------------------------------------------------------------------------------- the store
def _chunks(data: bytes, cs: int) -> list[bytes]:
    return [data[i:i + cs] for i in range(0, len(data), cs)]


@pytest.mark.parametrize("order", ["in order", "shuffled"])
def test_chunks_verified_against_the_signed_list_are_not_hashed_again_at_assembly(tmp_path, order: str) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(5 * 4096 + 100)
    sha, shas = sha256_hex(data), chunk_digests(data, 4096)
    idx = list(range(len(shas)))
    if order == "shuffled":
        idx = [3, 0, 5, 1, 4, 2]
    for i in idx:
        store.put_chunk(sha, i, _chunks(data, 4096)[i], shas[i], 4096)
    store.assemble(sha, len(shas), shas, 4096, len(data))
    assert store.full_rehashes == 0
    assert store.get(sha) == data
    assert store.wait_synced(10)                  # made durable right after, off the transfer's path


def test_a_resumed_blob_is_assembled_from_chunks_verified_again_on_disk(tmp_path) -> None:
    data = os.urandom(4 * 4096)
    sha, shas = sha256_hex(data), chunk_digests(data, 4096)
    first = BlobStore(tmp_path)
    for i in (0, 1):
        first.put_chunk(sha, i, _chunks(data, 4096)[i], shas[i], 4096)
    second = BlobStore(tmp_path)              # a restart: what this object verified is gone...
    assert second.have_chunks(sha, shas, 4096) == {0, 1}   # ...until the fetcher's resume checks the disk
    for i in (2, 3):
        second.put_chunk(sha, i, _chunks(data, 4096)[i], shas[i], 4096)
    second.assemble(sha, 4, shas, 4096, len(data))
    assert second.full_rehashes == 0 and second.get(sha) == data


def test_a_blob_whose_chunks_were_not_all_verified_here_is_hashed_whole_at_assembly(tmp_path) -> None:
    data = os.urandom(4 * 4096)
    sha, shas = sha256_hex(data), chunk_digests(data, 4096)
    first = BlobStore(tmp_path)
    for i in (0, 1):
        first.put_chunk(sha, i, _chunks(data, 4096)[i], shas[i], 4096)
    second = BlobStore(tmp_path)              # a restart, and nobody re-verified chunks 0 and 1
    for i in (2, 3):
        second.put_chunk(sha, i, _chunks(data, 4096)[i], shas[i], 4096)
    second.assemble(sha, 4, shas, 4096, len(data))
    assert second.full_rehashes == 1 and second.get(sha) == data
    other = os.urandom(4 * 4096)
    osha = sha256_hex(other)
    for i in range(4):                        # no chunk list at assembly: the whole blob is checked
        second.put_chunk(osha, i, _chunks(other, 4096)[i], chunk_digests(other, 4096)[i], 4096)
    second.assemble(osha, 4)
    assert second.full_rehashes == 2


def test_bytes_appended_to_a_partial_file_behind_the_store_are_caught_at_assembly(tmp_path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(3 * 4096)
    sha, shas = sha256_hex(data), chunk_digests(data, 4096)
    for i in range(3):
        store.put_chunk(sha, i, _chunks(data, 4096)[i], shas[i], 4096)
    with open(store._part(sha), "ab") as f:    # bytes no chunk check saw
        f.write(b"junk")
    with pytest.raises(StoreError, match="the manifest says"):
        store.assemble(sha, 3, shas, 4096, len(data))
    assert not store.has(sha) and store.have_chunks(sha) == set()


def test_a_partial_file_changed_after_its_chunks_were_verified_is_caught_before_use(tmp_path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(3 * 4096)
    sha, shas = sha256_hex(data), chunk_digests(data, 4096)
    for i in range(3):
        store.put_chunk(sha, i, _chunks(data, 4096)[i], shas[i], 4096)
    with open(store._part(sha), "r+b") as f:   # a byte flipped in place after chunk 1 was verified
        f.seek(4096 + 7)
        b = f.read(1)
        f.seek(4096 + 7)
        f.write(bytes([b[0] ^ 1]))
    store.assemble(sha, 3, shas, 4096, len(data))
    with pytest.raises(StoreError, match="corrupt"):   # what loading a shard (and serving it) calls
        store.get(sha)
    assert not store.has(sha)


def test_a_chunk_list_that_does_not_add_up_to_the_signed_blob_is_refused_before_use(tmp_path) -> None:
    """A manifest whose chunk list describes other bytes than its shard sha256 (a signer's bug): the chunks
    pass their checks, but the blob's own sha256 is checked before anything loads or serves it."""
    store = BlobStore(tmp_path)
    data, other = os.urandom(3 * 4096), os.urandom(3 * 4096)
    sha, wrong = sha256_hex(data), chunk_digests(other, 4096)
    for i in range(3):
        store.put_chunk(sha, i, _chunks(other, 4096)[i], wrong[i], 4096)
    store.assemble(sha, 3, wrong, 4096, len(other))
    with pytest.raises(StoreError, match="corrupt"):
        store.get(sha)
    assert not store.has(sha)


def _endpoints():
    return topics.client_endpoint("t", "server"), topics.device_endpoint("t", "client")


def test_a_truncated_partial_file_is_detected_and_only_its_lost_chunks_refetched(mosquitto, tmp_path) -> None:
    cs = 64 * 1024
    data = os.urandom(5 * cs)
    sha, shas = sha256_hex(data), chunk_digests(data, cs)
    old = BlobStore(tmp_path / "client")
    for i in range(4):
        old.put_chunk(sha, i, _chunks(data, cs)[i], shas[i], cs)
    os.truncate(old._part(sha), cs + cs // 2)     # a crash lost the tail: chunks 1..3 are listed but torn
    server_ep, client_ep = _endpoints()
    with Transport(mosquitto.url) as st, Transport(mosquitto.url) as ct:
        st.start()
        ct.start()
        server = BlobServer(st, server_ep)
        st.subscribe(topics.inbox_filter(server_ep, "cmd"), server.handle)
        store = BlobStore(tmp_path / "client")
        fetcher = BlobFetcher(ct, client_ep, store)
        ct.subscribe(topics.inbox_filter(client_ep, "blob"), fetcher.deliver)
        server.add(data)
        fetcher.fetch(TransferSpec(sha, len(data), cs, shas), [server_ep], timeout=60)
        assert store.get(sha) == data
        assert server.served_chunks == 4           # chunk 0 was kept; 1, 2, 3 (torn) and 4 were fetched
        server.close()


def test_a_store_blob_is_verified_once_and_a_changed_one_is_no_longer_served(mosquitto, tmp_path) -> None:
    cs = 64 * 1024
    data = os.urandom(3 * cs)
    sha, shas = sha256_hex(data), chunk_digests(data, cs)
    holder = BlobStore(tmp_path / "holder")
    holder.put(data)
    server_ep, client_ep = _endpoints()
    with Transport(mosquitto.url) as st, Transport(mosquitto.url) as ct:
        st.start()
        ct.start()
        server = BlobServer(st, server_ep, store=holder)
        st.subscribe(topics.inbox_filter(server_ep, "cmd"), server.handle)
        store = BlobStore(tmp_path / "client")
        fetcher = BlobFetcher(ct, client_ep, store)
        ct.subscribe(topics.inbox_filter(client_ep, "blob"), fetcher.deliver)
        fetcher.fetch(TransferSpec(sha, len(data), cs, shas), [server_ep], timeout=60)
        assert store.get(sha) == data
        holder.path(sha).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))   # rotted on the holder's disk
        store.remove(sha)
        with pytest.raises(StoreError, match="no source holds it"):
            fetcher.fetch(TransferSpec(sha, len(data), cs, shas), [server_ep], timeout=30)
        assert not holder.has(sha)                 # found corrupt when it changed, and removed
        server.close()
