"""Property-based fuzzing of the agent's and the operator's message handlers on a real Mosquitto.

One in-process Agent (development mode) serves the zoo MLP deployed by a real Fleet. Every handler is
called directly with hypothesis-generated payloads: random bytes, valid messages of the handler's kind
mutated at the byte, field and descriptor level, and well-framed messages with wrong content (tensors,
model, version, stage, reply_to, manifests that cannot be installed). Then a batch of mutated payloads goes
through the broker to the agent's topics. Properties: no exception escapes a handler, every rejected
message is counted, every request someone can be answered gets an answer (a result or an error naming the
cause), and afterwards the model still answers exactly like ONNX Runtime.

Known product bugs are listed in KNOWN_BUGS, each with a strict-xfail reproducer at the end of the file.
While a bug is listed, the fuzzer steers clear of the inputs that would break the agent for the rest of
the module (dead worker threads, poisoned tables) and tolerates the exact exception of the others; when a
bug is fixed its reproducer passes (XPASS fails the run): then delete the entry and the marker, and the
fuzzer covers those inputs too.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.agent.daemon import Agent, AgentConfig
from edge_agent.operator.fleet import Fleet
from edge_agent.operator.requests import Pending
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import EdgeAgentError, ProtocolError
from edge_agent.transport.broker import Broker
from edge_agent.transport.mqtt import Transport
from models import zoo

from .conftest import wait_until
from .test_fuzz_messages import HOSTILE_INTS, INT_MAX, INT_MIN, MESSAGES, TENSOR, mutations_of

FLEET = "default"
DEVICE = "fz-dev"
MODEL = "m"
PROBE_ID = "fz-probe"
PROBE = topics.client_endpoint(FLEET, PROBE_ID)       # a reply_to whose answers this test collects
MLP = zoo.build("mlp")
INPUTS = zoo.sample_inputs(MLP)
IN_NAME = next(iter(INPUTS))
ATOL = RTOL = 1e-4

KNOWN_BUGS: dict[str, str] = {
    # id: what breaks (reproducer: the test of the same name at the end of this file). Empty: the ten bugs
    # this fuzzer found (wildcard/control characters in reply_to, malformed blob sha, NaN manifests, non-map
    # stage entries, unhashable result codes, uncounted states, unvalidated manifests in the Fleet) are fixed;
    # their reproducers below now run as ordinary regression tests.
}
# exceptions a handler may still raise while its bug is listed: bug id -> (exception type, message pattern)
TOLERATED = {
    "manifest_not_plain": (TypeError, r"cannot sign a non-finite float|is not plain data"),
    "result_code_unhashable": (TypeError, r"unhashable type"),
}

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------------------------- the lab

@dataclasses.dataclass
class Lab:
    broker: Broker
    agent: Agent
    fleet: Fleet
    manifest: wire.Manifest
    probe: Transport
    answers: dict[str, list[wire.InferResult]]
    blob_chunks: list[wire.BlobChunk]
    want: dict[str, np.ndarray]
    escaped: list[str]


class _EscapeLog(logging.Handler):
    """Collects exceptions that escaped a handler called by the transport or killed a thread."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and "handler for" in record.getMessage() and not tolerated(record.exc_info[1]):
            self.sink.append(f"{record.getMessage()}: {record.exc_info[1]!r}")


def tolerated(exc: BaseException | None) -> bool:
    """The exception is the signature of a bug still listed in KNOWN_BUGS."""
    return any(bug in KNOWN_BUGS and isinstance(exc, etype) and re.search(pattern, str(exc))
               for bug, (etype, pattern) in TOLERATED.items())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, mosquitto_available: str) -> Iterator[Lab]:
    tmp = Path(tmp_path_factory.mktemp("fuzz-agent"))
    escaped: list[str] = []
    catcher = _EscapeLog(escaped)
    logging.getLogger("edge_agent.transport").addHandler(catcher)
    old_hook = threading.excepthook

    def thread_died(args: Any) -> None:
        if not tolerated(args.exc_value):
            escaped.append(f"thread {getattr(args.thread, 'name', '?')} died: {args.exc_value!r}")

    threading.excepthook = thread_died
    with Broker.start("mosquitto", workdir=str(tmp / "broker")) as broker:
        agent = Agent(AgentConfig(name=DEVICE, broker=broker.url, data_dir=tmp / "agent", dev_mode=True,
                                  discovery=False, gflops=10.0, fetch_timeout_s=2.0)).start()
        fleet = Fleet(broker.url)
        answers: dict[str, list[wire.InferResult]] = {}
        chunks: list[wire.BlobChunk] = []

        def on_answer(topic: str, payload: bytes, retained: bool) -> None:
            res = wire.InferResult.from_bytes(payload)   # the agent must send well-formed answers
            answers.setdefault(res.request_id, []).append(res)

        probe = Transport(broker.url, client_id="fz-probe")
        probe.subscribe(topics.inbox_filter(PROBE, "out"), on_answer)
        probe.subscribe(topics.inbox_filter(PROBE, "blob"), lambda t, p, r: chunks.append(wire.BlobChunk.from_bytes(p)))
        probe.start(wait=10)
        try:
            fleet.wait_for_devices(1, timeout=30)
            dep = fleet.deploy(MLP, MODEL, stages=1, timeout=60)
            sess = ort.InferenceSession(MLP.SerializeToString(), providers=["CPUExecutionProvider"])
            want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, INPUTS)))
            yield Lab(broker, agent, fleet, dep.manifest, probe, answers, chunks, want, escaped)
        finally:
            threading.excepthook = old_hook
            logging.getLogger("edge_agent.transport").removeHandler(catcher)
            probe.close()
            fleet.close()
            agent.stop()


def call(handler: Callable[[str, bytes, bool], None], topic: str, payload: bytes, retained: bool = False) -> None:
    """Call a transport handler; an exception escaping it fails the test (unless it is a listed bug's)."""
    try:
        handler(topic, payload, retained)
    except Exception as exc:
        if tolerated(exc):
            return
        pytest.fail(f"{getattr(handler, '__qualname__', handler)} raised on topic {topic!r}, payload "
                    f"{payload[:300].hex()}{'...' if len(payload) > 300 else ''}:\n{traceback.format_exc()}")


def assert_still_serving(lab: Lab) -> None:
    """The deployed model answers like ONNX Runtime, the agent's worker threads live, its blob server
    answers, and nothing escaped a handler called by the transport."""
    agent = lab.agent
    alive = {t.name for t in threading.enumerate()}
    assert f"stage-worker-{DEVICE}" in alive and f"control-{DEVICE}" in alive
    assert agent.blob_server._thread.is_alive(), "the agent's blob server thread died"
    wait_until(lambda: lab.fleet.route(MODEL, lab.manifest.version, 0) == DEVICE, 20,
               what=f"the fleet to route {MODEL} to {DEVICE} again")
    got = lab.fleet.infer(MODEL, INPUTS, timeout=20)
    assert set(got) == set(lab.want)
    for name, want in lab.want.items():
        np.testing.assert_allclose(got[name], want, rtol=RTOL, atol=ATOL, err_msg=name)
    # the agent still serves the shard it holds to peers
    sha = lab.manifest.stages[0].shard_sha256
    before = len(lab.blob_chunks)
    req = wire.BlobRequest(sha, [0], int(lab.manifest.stages[0].chunk_size), PROBE, requester=PROBE)
    lab.probe.publish(topics.inbox(agent.endpoint, "cmd", PROBE_ID), req.to_bytes())
    wait_until(lambda: any(c.sha256 == sha and not c.error for c in lab.blob_chunks[before:]), 10,
               what="the agent to serve a chunk of its shard")
    assert not lab.escaped, lab.escaped


def rejects(agent: Agent) -> Counter:
    return Counter({k: v for k, v in agent.counters.items() if k.startswith("rejected_")})


# --------------------------------------------------------------------------------------------- strategies

def _wild(finite: bool) -> st.SearchStrategy[Any]:
    floats = st.floats(allow_nan=not finite, allow_infinity=not finite)
    scalars = (st.none() | st.booleans() | st.integers(INT_MIN, INT_MAX) | floats | st.text(max_size=8)
               | st.binary(max_size=8) | st.sampled_from(HOSTILE_INTS))
    if not finite:
        scalars |= st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    return st.recursive(scalars, lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=6), k,
                                                                                      max_size=3), max_leaves=6)


WILD = _wild(finite=False)
FINITE = _wild(finite=True)


def publishable(topic: str) -> bool:
    """What paho and Mosquitto accept as a publish topic: no wildcard, no NUL or other control character,
    no Unicode noncharacter, at most 65535 UTF-8 bytes."""
    return (not any(c in "+#" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or (ord(c) & 0xFFFE) == 0xFFFE
                    for c in topic) and len(topic.encode()) <= 65535)


def _topic_bug_listed(topic: str) -> bool:
    wildcard = any(c in "+#\0" for c in topic) or len(topic.encode()) > 65535
    return (wildcard and "reply_to_wildcard" in KNOWN_BUGS) or (
        not publishable(topic) and "reply_to_control_char" in KNOWN_BUGS)


SAFE_TOPIC_TEXT = st.text(max_size=12).filter(publishable)
TOPIC_TEXT = SAFE_TOPIC_TEXT if {"reply_to_wildcard", "reply_to_control_char"} & set(KNOWN_BUGS) \
    else st.text(max_size=12)
REPLY_TO = st.sampled_from([PROBE, PROBE, PROBE, topics.client_endpoint(FLEET, "nobody"), "", "x", "ea/v1",
                            "ea/v1/other/ctl/x", f"ea/v1/{FLEET}", topics.device_endpoint(FLEET, DEVICE)]) | \
    TOPIC_TEXT.map(lambda s: f"ea/v1/{FLEET}/{s}") | TOPIC_TEXT
if "reply_to_wildcard" not in KNOWN_BUGS:
    REPLY_TO |= st.sampled_from([f"ea/v1/{FLEET}/#", f"ea/v1/{FLEET}/+/x", f"ea/v1/{FLEET}/" + "a" * 70000])
if "reply_to_control_char" not in KNOWN_BUGS:
    REPLY_TO |= st.sampled_from([f"ea/v1/{FLEET}/\x01", f"ea/v1/{FLEET}/\x9f", f"ea/v1/{FLEET}/\uffff"])


@st.composite
def request_tensors(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """The right input, or it with the wrong dtype/rank/shape, NaN/Inf, zero batch, missing or extra."""
    x = INPUTS[IN_NAME]
    how = draw(st.sampled_from(["right", "batch", "dtype", "rank", "width", "nan", "missing", "extra",
                                "random"]))
    if how == "right":
        return dict(INPUTS)
    if how == "batch":
        n = draw(st.sampled_from([0, 2, 7]))
        return {IN_NAME: np.resize(x, (n, x.shape[1])).astype(x.dtype)}
    if how == "dtype":
        return {IN_NAME: x.astype(draw(st.sampled_from(["float64", "float16", "int32", "int64", "bool",
                                                        "uint8"])))}
    if how == "rank":
        return {IN_NAME: x.reshape(draw(st.sampled_from([(256,), (1, 1, 256), (1, 16, 16), (1, 256, 1)])))}
    if how == "width":
        return {IN_NAME: np.zeros((1, draw(st.sampled_from([0, 1, 255, 257]))), x.dtype)}
    if how == "nan":
        y = x.copy()
        y.flat[draw(st.integers(0, y.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38]))
        return {IN_NAME: y}
    if how == "missing":
        return {}
    if how == "extra":
        return {**INPUTS, draw(st.text(max_size=6)): draw(TENSOR)}
    return draw(st.dictionaries(st.text(max_size=6) | st.just(IN_NAME), TENSOR, max_size=3))


REQUESTS = st.builds(
    wire.InferRequest,
    request_id=st.uuids().map(str) | st.just("fz-dup"),
    model=st.sampled_from([MODEL, MODEL, "nope", "", "fz-0"]) | st.text(max_size=6),
    version=st.sampled_from([1, 1, 1, 0, 2, -1]) | st.sampled_from(HOSTILE_INTS),
    stage=st.sampled_from([0, 0, 0, 1, -1]) | st.sampled_from(HOSTILE_INTS),
    reply_to=REPLY_TO,
    tensors=request_tensors(),
    timings=st.lists(FINITE, max_size=2),
    attempt=st.integers(INT_MIN, INT_MAX),
    sent=st.floats(),
)
# aimed at the deployed stage: only the tensors are wrong (or right)
AIMED = st.builds(wire.InferRequest, request_id=st.uuids().map(str), model=st.just(MODEL), version=st.just(1),
                  stage=st.just(0), reply_to=st.just(PROBE), tensors=request_tensors())
INFER_PAYLOADS = st.one_of(AIMED.map(wire.InferRequest.to_bytes), AIMED.map(wire.InferRequest.to_bytes),
                           REQUESTS.map(wire.InferRequest.to_bytes), mutations_of(REQUESTS),
                           mutations_of(MESSAGES["infer"]), st.binary(max_size=200))


def _stage_mutation(draw: st.DrawFn, stage: wire.StageSpec) -> dict:
    stage = stage.to_dict()
    key = draw(st.sampled_from(["index", "shard_sha256", "shard_size", "chunk_size", "chunk_sha256", "inputs",
                                "outputs", "carry", "device", "devices", "nodes", None]))
    if key is None:
        return stage
    value = draw(st.sampled_from([[], [1], {}, "", None, -1, 0, 1 << 40, "a" * 64, ["x"], [DEVICE],
                                  ["ghost-1"], [IN_NAME], ["output"], "z" * 64]) | FINITE)
    if draw(st.integers(0, 4)) == 0:
        stage.pop(key, None)
    else:
        stage[key] = value
    return stage


@st.composite
def manifests(draw: st.DrawFn, base: wire.Manifest) -> tuple[str, bytes]:
    """(topic, payload): the real manifest renamed (so its shard is installable) with hostile fields, a
    mutated frame, garbage, or an empty (undeploy) payload. Never on the real model's own topic."""
    name = draw(st.sampled_from(["fz-0", "fz-1", "fz-2"]))
    channel = draw(st.sampled_from(["stable", "stable", "canary"]))
    topic = topics.deploy(FLEET, name, channel)
    values = FINITE if "manifest_not_plain" in KNOWN_BUGS else WILD
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    fields.update(name=name, channel=channel, version=draw(st.integers(1, 5) | st.sampled_from(HOSTILE_INTS)))
    fields["stages"] = [_stage_mutation(draw, s) for s in base.stages] * draw(st.sampled_from([1, 1, 2, 0]))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(fields)))
        fields[key] = draw(st.sampled_from([[], {}, "", 0, -1, 1 << 63, "#", [f"ea/v1/{FLEET}/#"], ["x"]])
                           | values)
    how = draw(st.sampled_from(["valid", "fields", "fields", "mutated", "random", "empty"]))
    if how == "valid":   # installable: the agent fetches nothing (it holds the shard) and serves it
        return topic, dataclasses.replace(base, name=name, channel=channel,
                                          version=draw(st.integers(1, 1000))).to_bytes()
    if how == "fields":
        try:
            return topic, wire.Manifest(**fields).to_bytes()
        except (ProtocolError, TypeError, ValueError, OverflowError):
            return topic, msgpack.packb(fields, default=repr)
    if how == "mutated":
        return topic, draw(mutations_of(st.just(dataclasses.replace(base, name=name, channel=channel))))
    if how == "random":
        return topic, draw(st.binary(max_size=200))
    return topic, b""


def _stage_entries() -> st.SearchStrategy[list]:
    entry = st.fixed_dictionaries({"model": st.sampled_from(["fz-0", "other", ""]), "version": FINITE,
                                   "stage": FINITE, "status": st.sampled_from(["ready", "error", "x"])})
    if "state_stage_not_map" in KNOWN_BUGS:
        return st.lists(entry | st.dictionaries(st.text(max_size=4), FINITE, max_size=3), max_size=3)
    return st.lists(entry | FINITE, max_size=3)


STATES = st.builds(
    wire.DeviceState,
    device_id=st.sampled_from(["ghost-1", "ghost-2", ""]) | SAFE_TOPIC_TEXT.filter(lambda s: s != DEVICE),
    fleet=st.sampled_from([FLEET, "other"]), online=st.booleans(), ts=st.floats(),
    gflops=st.floats(), stages=_stage_entries(), blobs=st.lists(FINITE, max_size=2),
    counters=st.dictionaries(st.text(max_size=6), FINITE, max_size=3), events=st.lists(FINITE, max_size=2),
    endpoint=st.sampled_from(["", topics.device_endpoint(FLEET, "ghost-1")]) | SAFE_TOPIC_TEXT,
)


def _state_is_poison(payload: bytes) -> bool:
    """A decodable state whose stages list holds a non-map (bug state_stage_not_map)."""
    try:
        st_ = wire.DeviceState.from_bytes(payload)
    except ProtocolError:
        return False
    return any(not isinstance(e, dict) for e in st_.stages)


def _blob_request_kills_server(payload: bytes) -> bool:
    """A BlobRequest the server queues and then dies on (bugs blob_request_bad_sha, reply_to_wildcard)."""
    try:
        req = wire.BlobRequest.from_bytes(payload)
    except ProtocolError:
        return False
    if not isinstance(req.chunks, list) or len(req.chunks) > 64 or not req.reply_to.startswith("ea/v1/"):
        return False
    bad_sha = not re.fullmatch(r"[0-9a-f]{64}", req.sha256)
    return (bad_sha and "blob_request_bad_sha" in KNOWN_BUGS) or _topic_bug_listed(req.reply_to + "/blob")


def _request_kills_worker(payload: bytes) -> bool:
    """A request queued for the worker whose answer cannot be published (reply_to bugs)."""
    try:
        req = wire.InferRequest.from_bytes(payload)
    except ProtocolError:
        return False
    return req.reply_to.startswith(f"ea/v1/{FLEET}/") and _topic_bug_listed(req.reply_to + "/out")


def _manifest_breaks_transport(payload: bytes) -> bool:
    """A manifest whose shard sources are not publishable topics (bug reply_to_control_char)."""
    try:
        m = wire.Manifest.from_bytes(payload)
    except ProtocolError:
        return False
    return any(isinstance(s, str) and _topic_bug_listed(s + "/cmd") for s in m.sources)


BLOB_REQUESTS = st.builds(
    wire.BlobRequest, sha256=st.sampled_from(["0" * 64, "f" * 64]) | st.text(max_size=66),
    chunks=st.lists(st.integers(-2, 3) | FINITE, max_size=70), chunk_size=st.sampled_from([0, -1, 1, 1 << 40])
    | st.integers(INT_MIN, INT_MAX), reply_to=REPLY_TO, requester=st.text(max_size=6))
BLOB_CHUNKS = st.builds(
    wire.BlobChunk, sha256=st.sampled_from(["0" * 64]) | st.text(max_size=66), index=st.sampled_from(HOSTILE_INTS),
    total_size=st.integers(INT_MIN, INT_MAX), chunk_size=st.integers(INT_MIN, INT_MAX), data=st.binary(max_size=64),
    sender=st.text(max_size=6), error=st.text(max_size=6))
LOADS = st.builds(wire.LoadReport, device_id=st.text(max_size=8), queue=st.integers(INT_MIN, INT_MAX),
                  service_ms=st.floats(), ts=st.floats())


def payloads(messages: st.SearchStrategy[wire.Message], kind: str) -> st.SearchStrategy[bytes]:
    return st.one_of(messages.map(lambda m: m.to_bytes()), mutations_of(messages), mutations_of(MESSAGES[kind]),
                     st.binary(max_size=200))


# --------------------------------------------------------------------------------------------- agent

def _expected_infer_reject(payload: bytes) -> str | None:
    try:
        req = wire.InferRequest.from_bytes(payload)
    except ProtocolError:
        return "rejected_malformed_request"
    if not topics.is_endpoint(req.reply_to, FLEET):   # only ea/v1/<fleet>/dev|ctl/<id> gets an answer
        return "rejected_bad_reply_to"
    return None


@pytest.mark.timeout(180)
def test_agent_answers_every_fuzzed_request_with_a_result_or_a_clear_error_and_keeps_serving(lab: Lab) -> None:
    agent = lab.agent
    outcome = {"queued": 0, "skipped": 0}
    to_probe: set[str] = set()
    served_before = sum(v for k, v in agent.counters.items() if k in ("served", "duplicates")
                        or k.startswith("error_"))

    @FUZZ
    @given(INFER_PAYLOADS)
    def run(payload: bytes) -> None:
        if _request_kills_worker(payload):
            outcome["skipped"] += 1
            return
        expect = _expected_infer_reject(payload)
        before = Counter(agent.counters)
        call(agent.handlers.on_infer, topics.inbox(agent.endpoint, "in", PROBE_ID), payload)
        if expect is not None:
            assert agent.counters[expect] == before[expect] + 1, expect
            return
        outcome["queued"] += 1
        req = wire.InferRequest.from_bytes(payload)
        if req.reply_to == PROBE:
            to_probe.add(req.request_id)

    run()
    assert outcome["queued"] > 20, outcome
    # every queued request is accounted for: served, answered from the de-duplication cache, or an error
    wait_until(lambda: sum(v for k, v in agent.counters.items() if k in ("served", "duplicates")
                           or k.startswith("error_")) - served_before >= outcome["queued"], 30,
               what="the agent to account for every queued request")
    # everyone who can be answered gets an answer: a result, or an error with a code and a message
    wait_until(lambda: to_probe <= set(lab.answers), 30, what="an answer to every request sent to the probe")
    for rid in to_probe:
        for res in lab.answers[rid]:
            assert res.ok or (res.error.get("code") and res.error.get("message")), res
    assert any(k.startswith("error_invalid_input") for k in agent.counters)
    assert_still_serving(lab)


@pytest.mark.timeout(180)
def test_agent_control_handlers_reject_fuzzed_payloads_count_them_and_keep_serving(lab: Lab) -> None:
    agent = lab.agent
    base = lab.manifest
    seen: Counter = Counter()

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        which = data.draw(st.sampled_from(["manifest", "state", "load", "blob_request", "blob_chunk"]))
        seen[which] += 1
        before = rejects(agent)
        if which == "manifest":
            topic, payload = data.draw(manifests(base))
            if _manifest_breaks_transport(payload):
                return
            call(agent.handlers.on_manifest, topic, payload)
            try:
                wire.Manifest.from_bytes(payload, max_bytes=agent.cfg.max_message_bytes)
            except ProtocolError:
                if payload:   # empty = undeploy
                    assert rejects(agent)["rejected_manifest"] == before["rejected_manifest"] + 1
        elif which == "state":
            payload = data.draw(payloads(STATES, "state"))
            if "state_stage_not_map" in KNOWN_BUGS and _state_is_poison(payload):
                return
            call(agent.handlers.on_state, topics.state(FLEET, "ghost-1"), payload, data.draw(st.booleans()))
        elif which == "load":
            payload = data.draw(payloads(LOADS, "load"))
            call(agent.handlers.on_load, topics.load(FLEET, "ghost-1"), payload)
            try:
                wire.LoadReport.from_bytes(payload, max_bytes=4096)
            except ProtocolError:
                assert rejects(agent)["rejected_load"] == before["rejected_load"] + 1
        elif which == "blob_request":
            payload = data.draw(payloads(BLOB_REQUESTS, "blob_req"))
            if _blob_request_kills_server(payload):
                return
            call(agent.blob_server.handle, topics.inbox(agent.endpoint, "cmd", PROBE_ID), payload)
            try:
                wire.BlobRequest.from_bytes(payload)
            except ProtocolError:
                assert rejects(agent)["rejected_blob_request"] == before["rejected_blob_request"] + 1
        else:
            payload = data.draw(payloads(BLOB_CHUNKS, "blob_chunk"))
            call(agent.fetcher.deliver, topics.inbox(agent.endpoint, "blob", PROBE_ID), payload)
            try:
                wire.BlobChunk.from_bytes(payload)
            except ProtocolError:
                assert rejects(agent)["rejected_blob_chunk"] == before["rejected_blob_chunk"] + 1

    run()
    assert all(seen[k] > 5 for k in ("manifest", "state", "load", "blob_request", "blob_chunk")), seen
    for key in ("rejected_manifest", "rejected_load", "rejected_blob_request", "rejected_blob_chunk"):
        assert agent.counters[key] > 0, key
    # the valid ones among the fuzzed manifests were installed from the shard the agent holds
    wait_until(lambda: any(k[0].startswith("fz-") for k in agent.stages.installed), 20,
               what="a fuzzed but valid manifest to be installed")
    assert_still_serving(lab)


# --------------------------------------------------------------------------------------------- fleet

# final codes first: hypothesis favours the first entries, and a retriable code leaves the request pending
RESULT_CODES = st.sampled_from(["invalid_input", "unknown_model", "run_failed", "", None, 3, "no_route",
                                "overloaded", "device_offline"])
if "result_code_unhashable" not in KNOWN_BUGS:
    RESULT_CODES |= st.sampled_from([[1], {"a": 1}])


@pytest.mark.timeout(180)
def test_fleet_handlers_survive_fuzzed_payloads_and_its_callers_get_results_or_clear_errors(lab: Lab) -> None:
    fleet = lab.fleet
    pending_ids = [f"fz-pending-{i}" for i in range(4)]
    outcomes: Counter = Counter()

    def arm(rid: str) -> Future:
        now = time.monotonic()
        # requests of the lab's deployment, answered (in the topic) by its device: the fuzzed results get
        # past the sender check into the result handling proper
        p = Pending(Future(), wire.InferRequest(rid, MODEL, lab.manifest.version, 0, fleet.endpoint), b"",
                    now + 3600, now + 3600, device=DEVICE)
        with fleet.requests.lock:
            fleet.requests.pending[rid] = p
        return p.future

    futures = {rid: arm(rid) for rid in pending_ids}
    results = st.builds(
        wire.InferResult, request_id=st.sampled_from(pending_ids) | st.sampled_from(pending_ids)
        | st.text(max_size=6),
        model=st.text(max_size=6), ok=st.sampled_from([True, False]),
        tensors=st.dictionaries(st.text(max_size=4), TENSOR, max_size=2),
        error=st.fixed_dictionaries({"code": RESULT_CODES}, optional={"message": FINITE, "stage": FINITE,
                                                                      "device": FINITE}) | FINITE.filter(
            lambda v: isinstance(v, dict)),
        timings=st.lists(FINITE, max_size=2))

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        which = data.draw(st.sampled_from(["state", "manifest", "result", "load", "rollout"]))
        outcomes[which] += 1
        if which == "state":
            payload = data.draw(payloads(STATES, "state"))
            if "state_stage_not_map" in KNOWN_BUGS and _state_is_poison(payload):
                return
            call(fleet._on_state, topics.state(FLEET, "ghost-1"), payload, data.draw(st.booleans()))
        elif which == "manifest":
            topic, payload = data.draw(manifests(lab.manifest))
            call(fleet.desired.on_manifest, topic, payload, True)
        elif which == "result":
            aimed = results.filter(lambda r: r.request_id in pending_ids).map(wire.InferResult.to_bytes)
            call(fleet._on_result, topics.inbox(fleet.endpoint, "out", DEVICE),
                 data.draw(st.one_of(aimed, aimed, payloads(results, "result"))))
        elif which == "load":
            call(fleet._on_load, topics.load(FLEET, "ghost-1"), data.draw(payloads(LOADS, "load")))
        else:
            rec = st.builds(wire.RolloutRecord, name=st.text(max_size=6), history=st.lists(FINITE, max_size=2),
                            good=st.lists(FINITE, max_size=2))
            call(fleet.desired.on_rollout, topics.rollout(FLEET, "fz-0"), data.draw(payloads(rec, "rollout")), True)
        # a caller whose request got a final answer sees its outputs or an edge-agent error with a message
        for rid, fut in list(futures.items()):
            if fut.done():
                exc = fut.exception()
                assert exc is None or (isinstance(exc, EdgeAgentError) and str(exc)), repr(exc)
                outcomes["answered"] += 1
                futures[rid] = arm(rid)

    try:
        run()
    finally:
        with fleet.requests.lock:
            for rid in pending_ids:
                fleet.requests.pending.pop(rid, None)
    assert outcomes["answered"] > 0 and outcomes["result"] > 5, outcomes
    assert fleet.devices() and fleet.status(MODEL)["stable"]["converged"]
    assert_still_serving(lab)


# --------------------------------------------------------------------------------------------- broker

@pytest.mark.timeout(180)
def test_mutated_payloads_through_the_broker_are_counted_and_the_agent_keeps_serving(lab: Lab) -> None:
    agent = lab.agent
    ep = agent.endpoint
    sent: list[tuple[str, bytes]] = []

    @settings(FUZZ, max_examples=25)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        for _ in range(8):
            which = data.draw(st.sampled_from(["in", "in", "cmd", "blob", "state", "load", "deploy"]))
            if which == "in":
                topic, payload = topics.inbox(ep, "in", PROBE_ID), data.draw(INFER_PAYLOADS)
                if _request_kills_worker(payload):
                    continue
            elif which == "cmd":
                topic, payload = topics.inbox(ep, "cmd", PROBE_ID), data.draw(payloads(BLOB_REQUESTS, "blob_req"))
                if _blob_request_kills_server(payload):
                    continue
            elif which == "blob":
                topic, payload = topics.inbox(ep, "blob", PROBE_ID), data.draw(payloads(BLOB_CHUNKS, "blob_chunk"))
            elif which == "state":
                topic, payload = topics.state(FLEET, "ghost-2"), data.draw(payloads(STATES, "state"))
                if "state_stage_not_map" in KNOWN_BUGS and _state_is_poison(payload):
                    continue
            elif which == "load":
                topic, payload = topics.load(FLEET, "ghost-2"), data.draw(payloads(LOADS, "load"))
            else:
                topic, payload = data.draw(manifests(lab.manifest))
                if _manifest_breaks_transport(payload):
                    continue
            sent.append((topic, payload))

    run()
    assert len(sent) > 100
    expected: Counter = Counter()
    for topic, payload in sent:
        kind = topic.rsplit("/", 1)[-1]
        decoder, counter = {"in": (wire.InferRequest, "rejected_malformed_request"),
                            "cmd": (wire.BlobRequest, "rejected_blob_request"),
                            "blob": (wire.BlobChunk, "rejected_blob_chunk"),
                            "load": (wire.LoadReport, "rejected_load")}.get(kind, (None, None))
        if decoder is not None:
            try:
                decoder.from_bytes(payload)
            except ProtocolError:
                expected[counter] += 1
    before = rejects(agent)
    for topic, payload in sent:
        lab.probe.publish(topic, payload, qos=0 if "/load" in topic else 1)
    wait_until(lambda: all(rejects(agent)[k] - before[k] >= n for k, n in expected.items()), 30,
               what=f"the agent to count the rejected payloads {dict(expected)}")
    assert_still_serving(lab)


# --------------------------------------------------------------------------------------------- regressions (bugs this fuzzer found, fixed)

@pytest.mark.timeout(60)
def test_request_with_wildcard_reply_to_is_rejected_and_the_worker_survives(lab: Lab) -> None:
    before = lab.agent.counters["rejected_bad_reply_to"]
    req = wire.InferRequest(uuid.uuid4().hex, MODEL, lab.manifest.version, 0, f"ea/v1/{FLEET}/#", tensors=INPUTS)
    call(lab.agent.handlers.on_infer, topics.inbox(lab.agent.endpoint, "in", PROBE_ID), req.to_bytes())
    time.sleep(0.5)
    assert f"stage-worker-{DEVICE}" in {t.name for t in threading.enumerate()}, "the stage worker died"
    assert lab.agent.counters["rejected_bad_reply_to"] == before + 1


@pytest.mark.timeout(60)
def test_blob_request_for_a_malformed_sha_is_answered_and_the_blob_server_survives(lab: Lab) -> None:
    before = len(lab.blob_chunks)
    call(lab.agent.blob_server.handle, topics.inbox(lab.agent.endpoint, "cmd", PROBE_ID),
         wire.BlobRequest("not-a-sha", [0], 1024, PROBE).to_bytes())
    time.sleep(0.5)
    assert lab.agent.blob_server._thread.is_alive(), "the blob server thread died"
    wait_until(lambda: any(c.error for c in lab.blob_chunks[before:]), 5, what="an error chunk")


@pytest.mark.timeout(60)
def test_manifest_with_a_nan_field_is_rejected_and_counted(lab: Lab) -> None:
    before = rejects(lab.agent)
    m = dataclasses.replace(lab.manifest, name="fz-nan", created=float("nan"), version=7)
    lab.agent.handlers.on_manifest(topics.deploy(FLEET, "fz-nan"), m.to_bytes(), False)
    # the gate runs on the agent's control thread, not on the network thread that delivered it
    wait_until(lambda: sum(rejects(lab.agent).values()) == sum(before.values()) + 1, 10,
               what="the agent to count the rejected manifest")


@pytest.mark.timeout(60)
def test_state_with_a_non_map_stage_entry_does_not_break_fleet_inference(lab: Lab) -> None:
    topic = topics.state(FLEET, "fz-poison")
    try:
        lab.fleet._on_state(topic, wire.DeviceState("fz-poison", FLEET, True, stages=[1]).to_bytes(), True)
        got = lab.fleet.infer(MODEL, INPUTS, timeout=10)
        np.testing.assert_allclose(got["output"], lab.want["output"], rtol=RTOL, atol=ATOL)
    finally:
        lab.fleet.view.forget("fz-poison")


@pytest.mark.timeout(60)
def test_error_result_with_a_list_code_fails_the_caller_with_an_inference_error(lab: Lab) -> None:
    fleet = lab.fleet
    now = time.monotonic()
    p = Pending(Future(), wire.InferRequest("fz-code", MODEL, lab.manifest.version, 0, fleet.endpoint), b"",
                now + 60, now + 60)
    with fleet.requests.lock:
        fleet.requests.pending["fz-code"] = p
    try:
        fleet._on_result(topics.inbox(fleet.endpoint, "out", DEVICE),
                         wire.InferResult("fz-code", MODEL, False, error={"code": [1]}).to_bytes(), False)
        assert isinstance(p.future.exception(timeout=1), EdgeAgentError)
    finally:
        with fleet.requests.lock:
            fleet.requests.pending.pop("fz-code", None)


@pytest.mark.timeout(60)
def test_malformed_state_is_counted_as_rejected(lab: Lab) -> None:
    before = sum(rejects(lab.agent).values())
    lab.agent.handlers.on_state(topics.state(FLEET, "ghost-1"), b"\x01\x02\x03\x04garbage", False)
    assert sum(rejects(lab.agent).values()) == before + 1


@pytest.mark.timeout(60)
def test_request_with_a_control_character_in_reply_to_does_not_disconnect_the_agent(
        tmp_path: Path, mosquitto_available: str) -> None:
    # its own broker and agent: under the bug the agent's connection flaps for good
    with Broker.start("mosquitto", workdir=str(tmp_path / "broker")) as broker:
        agent = Agent(AgentConfig(name="fz-flap", broker=broker.url, data_dir=tmp_path / "agent", dev_mode=True,
                                  discovery=False, gflops=10.0)).start()
        try:
            req = wire.InferRequest("r", MODEL, 1, 0, f"ea/v1/{FLEET}/\x01", tensors=INPUTS)
            agent.handlers.on_infer(topics.inbox(agent.endpoint, "in", PROBE_ID), req.to_bytes(), False)
            samples = []
            for _ in range(40):
                samples.append(agent.transport.connected.is_set())
                time.sleep(0.05)
            assert all(samples), "the agent lost its broker connection"
            assert agent.counters["rejected_bad_reply_to"] == 1
        finally:
            agent.stop()


@pytest.mark.timeout(60)
def test_structurally_invalid_manifest_gives_fleet_callers_a_clear_error(lab: Lab) -> None:
    fleet = lab.fleet
    topic = topics.deploy(FLEET, "fz-broken")
    fleet.desired.on_manifest(topic, _manifest_bytes_with_stages("fz-broken", [1]), True)
    try:
        for use in (lambda: fleet.status("fz-broken"), lambda: fleet.infer("fz-broken", INPUTS, timeout=2)):
            with pytest.raises(EdgeAgentError):
                use()
    finally:
        fleet.desired.on_manifest(topic, b"", True)


def _manifest_bytes_with_stages(name: str, stages: list) -> bytes:
    """A manifest frame whose stage list holds anything (the typed Manifest refuses to build one)."""
    frame = wire.Manifest(name, 1, 0.0, "", [], [], []).to_bytes()
    header, _ = wire.decode_frame(frame)
    header.update(inputs=[1], stages=stages)
    return wire.encode_frame(header)
