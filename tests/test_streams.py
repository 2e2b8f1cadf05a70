"""Streams without a fleet: topic rules, policies, preprocessing of real PNG/JPEG bytes, the ingress choice,
the signed-definition gate, hosted-source options and the broker ACL; and the stream metrics of one real
agent scraped over HTTP with the official Prometheus parser."""

from __future__ import annotations

import io
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from edge_agent import Fleet
from edge_agent.agent import imaging
from edge_agent.agent.daemon import Agent, AgentConfig
from edge_agent.agent.sources import SourceSpec
from edge_agent.cluster.ingress import choose_ingress, ingress_candidates
from edge_agent.cluster.view import FleetView
from edge_agent.protocol.errors import ProtocolError
from edge_agent.protocol.messages import DeviceState
from edge_agent.protocol.streams import (
    Policy,
    Preprocess,
    StreamFrame,
    StreamSpec,
    check_sink,
    check_source,
    validate_stream,
)
from edge_agent.security.broker_config import acl_text
from edge_agent.security.gate import ManifestGate
from edge_agent.security.keys import FleetKeys, sign_document
from edge_agent.transport.broker import free_port
from edge_agent.transport.mqtt import Transport
from models import zoo

from .conftest import wait_until


# ------------------------------------------------------------------------------------------ rules
@pytest.mark.parametrize("topic", ["results/cam", "a/b/c", "ea/v1/default/src/_out/cam"])
def test_sink_accepts_plain_topics_and_the_out_subtree(topic: str) -> None:
    assert check_sink("default", topic) == topic


@pytest.mark.parametrize("topic", ["results/+", "results/#", "ea/v1/default/dev/d/in", "ea/v1/default/deploy/m",
                                   "ea/v1/default/src/dev-0/cam", "ea/v1/other/src/_out/x", "$SYS/x", "", "a\x00b"])
def test_sink_refuses_wildcards_control_tree_and_broker_topics(topic: str) -> None:
    with pytest.raises(ValueError):
        check_sink("default", topic)


@pytest.mark.parametrize("topic", ["cams/+/frames", "cams/#", "ea/v1/default/src/+/cam"])
def test_source_filters_may_use_wildcards_outside_the_control_tree(topic: str) -> None:
    assert check_source("default", topic) == topic


@pytest.mark.parametrize("topic", ["#", "+/#", "ea/#", "+/v1/default/dev/x/in", "a/b#", "a/+b",
                                   "ea/v1/default/stream/x"])
def test_source_refuses_everything_filters_and_the_control_tree(topic: str) -> None:
    with pytest.raises(ValueError):
        check_source("default", topic)


def test_a_stream_whose_sink_feeds_its_own_source_is_refused() -> None:
    with pytest.raises(ProtocolError, match="own output"):
        validate_stream(StreamSpec("loop", 1, "m", "cams/#", "cams/out"), "default")


def test_policies_parse_and_bound() -> None:
    assert Policy.parse("latest") == Policy("latest", 1)
    assert Policy.parse("queue:8") == Policy("queue", 8) and str(Policy.parse("queue:8")) == "queue:8"
    for bad in ("queue:0", "queue:", "fifo", "queue:99999999"):
        with pytest.raises(ValueError):
            Policy.parse(bad)


# ------------------------------------------------------------------------------------------ images
def _encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_png_is_decoded_resized_normalised_and_laid_out() -> None:
    pixels = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3)
    pre = imaging.resolve(Preprocess.parse("layout=NHWC,mean=10/20/30,scale=0.5,color=BGR"), [1, 8, 6, 3],
                          "float32")
    out = imaging.decode(_encoded(pixels, "PNG"), pre)
    want = ((pixels[:, :, ::-1].astype(np.float32) - [10, 20, 30]) * 0.5)[None]
    assert out.shape == (1, 8, 6, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, want)
    nchw = imaging.decode(_encoded(pixels, "JPEG"), imaging.resolve(None, [1, 3, 4, 4], "float32"))
    assert nchw.shape == (1, 3, 4, 4) and 0.0 <= nchw.min() and nchw.max() <= 1.0
    gray = imaging.decode(_encoded(pixels, "PNG"), imaging.resolve(None, [1, 1, 8, 6], "uint8"))
    assert gray.shape == (1, 1, 8, 6) and gray.dtype == np.uint8


def test_bad_images_are_refused_with_a_reason() -> None:
    pre = imaging.resolve(None, [1, 3, 4, 4], "float32")
    png = _encoded(np.zeros((4, 4, 3), np.uint8), "PNG")
    for data in (png[:30], b"\x89PNG\r\n\x1a\n" + b"x" * 50, _encoded(np.zeros((4, 4, 3), np.uint8), "BMP")):
        with pytest.raises(imaging.ImageError):
            imaging.decode(data, pre)
    with pytest.raises(imaging.ImageError, match="does not look like an image"):
        imaging.resolve(None, [1, 10], "float32")
    with pytest.raises(ValueError):
        Preprocess.parse("layout=CHW")
    with pytest.raises(ValueError):
        Preprocess.parse("mean=1/2")


# ------------------------------------------------------------------------------------------ ingress choice
def _state(dev: str, stages: list[dict], online: bool = True) -> DeviceState:
    return DeviceState(dev, "default", online=online, stages=stages)


def _ready(key: tuple[str, int, int], role: str = "assigned") -> dict:
    return {"model": key[0], "version": key[1], "stage": key[2], "status": "ready", "role": role}


def test_every_device_picks_the_same_ingress_and_the_next_holder_takes_over() -> None:
    key = ("m", 1, 0)
    replicas = ["a", "b", "c"]
    views = {}
    for me in replicas:    # each device's own view lacks itself
        v = FleetView()
        for d in replicas:
            if d != me:
                v.update_state(_state(d, [_ready(key)]))
        views[me] = v
    picks = {me: choose_ingress("cam", ingress_candidates(views[me], key, replicas, True, me=me, me_ready=True))
             for me in replicas}
    assert len(set(picks.values())) == 1
    winner = picks["a"]
    survivors = [d for d in replicas if d != winner]
    for me in survivors:
        views[me].update_state(_state(winner, [], online=False))
    after = {choose_ingress("cam", ingress_candidates(views[me], key, replicas, True, me=me, me_ready=True))
             for me in survivors}
    assert len(after) == 1 and after.pop() in survivors
    # streams spread over the holders
    assert len({choose_ingress(f"s{i}", replicas) for i in range(32)}) == 3


def test_only_permitted_ready_holders_may_be_ingress() -> None:
    key = ("m", 1, 0)
    v = FleetView()
    v.update_state(_state("rogue", [_ready(key)]))            # claims the stage, not in the manifest
    v.update_state(_state("a", [{**_ready(key), "status": "fetching"}]))
    assert ingress_candidates(v, key, ["a"], True) == set()
    v.update_state(_state("a", [], online=False))
    v.update_state(_state("adopter", [_ready(key, role="adopted")]))
    assert ingress_candidates(v, key, ["a"], True) == {"adopter"}
    assert ingress_candidates(v, key, ["a"], False) == set()


# ------------------------------------------------------------------------------------------ signed definitions
def test_stream_definitions_pass_the_manifest_gate_only_when_signed_and_newer() -> None:
    keys = FleetKeys.generate()
    gate = ManifestGate("default", [keys.public_only()])
    spec = StreamSpec("cam", 2, "m", "cams/a", "results/a", fleet="default", expires=time.time() + 60)
    assert gate.check(spec).kind == "unsigned"
    spec.sig = sign_document(spec.signed_fields(), keys)["sig"]
    decoded = StreamSpec.from_bytes(spec.to_bytes())
    assert gate.admit(decoded) is None
    forged = StreamSpec.from_bytes(spec.to_bytes())
    forged.sink = "elsewhere/x"
    assert gate.check(forged).kind == "signature"
    old = StreamSpec("cam", 1, "m", "cams/a", "results/a", fleet="default")
    old.sig = sign_document(old.signed_fields(), keys)["sig"]
    assert gate.check(old).kind == "replay"
    other = ManifestGate("default", [FleetKeys.generate().public_only()])
    assert other.check(decoded).kind == "signature"


# ------------------------------------------------------------------------------------------ options, ACL
def test_hosted_source_options(tmp_path) -> None:
    s = SourceSpec.parse("cam=synthetic:fps=15,shape=1x3x8x8,dtype=float16,seed=4")
    assert (s.kind, s.fps, s.shape, s.dtype, s.seed) == ("synthetic", 15.0, (1, 3, 8, 8), "float16", 4)
    assert SourceSpec.parse("c=synthetic").fps == 10.0
    assert SourceSpec.parse(f"d=dir:{tmp_path},fps=2").path == tmp_path
    for bad in ("cam", "cam=webcam:0", "cam=synthetic:fps=0", f"d=dir:{tmp_path / 'nope'}",
                "bad/name=synthetic", "cam=synthetic:dtype=complex64"):
        with pytest.raises(ValueError):
            SourceSpec.parse(bad)


def test_acl_grants_streams_least_privilege() -> None:
    acl = acl_text("default", stream_topics=["cams/#"])
    device_part = acl.split("\nuser ")[0]
    for line in ("pattern read ea/v1/default/stream/#", "pattern read ea/v1/default/dev/%u/out/+",
                 "pattern write ea/v1/default/dev/%u/streams", "pattern write ea/v1/default/src/%u/#",
                 "pattern read ea/v1/default/src/#", "pattern write ea/v1/default/src/_out/#",
                 "pattern readwrite cams/#"):
        assert line in device_part.splitlines()
    assert "ea/v1/default/stream/#" not in [ln.split()[-1] for ln in device_part.splitlines()
                                            if ln.startswith("pattern write")]
    for bad in ("#", "ea/v1/default/#", "$SYS/#", "+/x"):
        with pytest.raises(ValueError):
            acl_text("default", stream_topics=[bad])


# ------------------------------------------------------------------------------------------ metrics
def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_stream_metrics_count_frames_drops_errors_and_latency(mosquitto, tmp_path) -> None:
    port = free_port()
    agent = Agent(AgentConfig(name="s-dev", broker=mosquitto.url, data_dir=tmp_path / "a", dev_mode=True,
                              discovery=False, gflops=25.0, metrics_port=port)).start()
    pub = Transport(mosquitto.url).start()
    try:
        model = zoo.build("mlp", seed=2)
        x = zoo.sample_inputs(model)
        (name, arr), = x.items()
        with Fleet(mosquitto.url) as fleet:
            fleet.wait_for_devices(1, timeout=30)
            fleet.deploy(model, "mm", stages=1, timeout=120)
            fleet.stream_start("ms", "mm", "sensors/mm", "results/mm", policy="queue:2", timeout=30)
            pub.publish("sensors/mm", b"junk", qos=1)    # first, into an empty queue: decoded, refused
            for i in range(50):
                pub.publish("sensors/mm", StreamFrame(str(i), tensors={name: arr}).to_bytes(), qos=1)

            def settled() -> dict | None:
                m = _scrape(port)
                fin = {s.labels["stream"]: s.value for s in m["edge_agent_stream_frames_in"].samples
                       if s.name.endswith("_total")}
                return m if fin.get("ms") == 51 and not any(
                    s.value for s in m["edge_agent_stream_in_flight"].samples) else None

            m = wait_until(settled, 20, what="51 frames in and none in flight")
        out = [s.value for s in m["edge_agent_stream_frames_out"].samples if s.name.endswith("_total")]
        dropped = {(s.labels["policy"], s.labels["reason"]): s.value
                   for s in m["edge_agent_stream_dropped"].samples if s.name.endswith("_total")}
        errors = {s.labels["reason"]: s.value for s in m["edge_agent_stream_errors"].samples
                  if s.name.endswith("_total")}
        assert errors == {"malformed": 1.0}
        assert out[0] + sum(dropped.values()) + 1 == 51 and set(dropped) <= {("queue:2", "queue_full")}
        count = [s.value for s in m["edge_agent_stream_latency_seconds"].samples
                 if s.name.endswith("_count") and s.labels == {"stream": "ms"}]
        assert count == [out[0]] and out[0] > 0
    finally:
        pub.close()
        agent.stop()
