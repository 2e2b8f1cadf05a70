"""Streams end to end on a simulated fleet of real agent processes and a real Mosquitto: a device-hosted
synthetic camera through a 2-stage deployment checked against ONNX Runtime, backpressure under overload, a raw
PNG from a plain paho client, bad input, failover of the ingress, agent and broker restarts, and stop."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import paho.mqtt.client as mqtt
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edge_agent import Fleet
from edge_agent.lab.sim import SimFleet
from edge_agent.protocol.streams import StreamFrame, StreamResult, hosted_source
from edge_agent.transport.mqtt import BrokerURL, Transport

from .conftest import assert_matches, ort_reference, wait_until

DEVICES = ["dev-0", "dev-1", "dev-2"]
CAM = hosted_source("default", "cam-0", "cam")
MAX_MESSAGE = 1 << 20     # the devices' --max-message-mb 1: a bigger frame is "oversized"


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """1x3x16x16 -> conv, relu, conv, relu, global pool, dense -> 1x4 (6 nodes: two stages to cut)."""
    rng = np.random.default_rng(seed)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w("w1", 8, 3, 3, 3), w("b1", 8), w("w2", 8, 8, 3, 3), w("b2", 8), w("w3", 4, 8), w("b3", 4)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class Tap:
    """A client of the test that records frames on source topics and results on sink topics."""

    def __init__(self, url: str, patterns: list[str]) -> None:
        self.frames: dict[str, dict[str, StreamFrame]] = {}
        self.results: dict[str, list[StreamResult]] = {}
        self.lock = threading.Lock()
        self.t = Transport(url, client_id=f"tap-{os.getpid()}")
        for p in patterns:
            self.t.subscribe(p, self._on, qos=1)
        self.t.start()
        time.sleep(0.3)   # SUBACKs

    def _on(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            res = StreamResult.from_bytes(payload)
        except Exception:
            try:
                fr = StreamFrame.from_bytes(payload)
            except Exception:
                return
            with self.lock:
                self.frames.setdefault(topic, {})[fr.id] = fr
            return
        with self.lock:
            self.results.setdefault(res.stream, []).append(res)

    def got(self, stream: str) -> list[StreamResult]:
        with self.lock:
            return list(self.results.get(stream, []))

    def close(self) -> None:
        self.t.close()


def raw_client(url: str) -> mqtt.Client:
    """A plain paho client, as a camera or a sensor would use."""
    b = BrokerURL.parse(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"plain-{os.getpid()}", protocol=mqtt.MQTTv311)
    c.connect(b.host, b.port)
    c.loop_start()
    return c


@pytest.fixture(scope="module")
def sim(tmp_path_factory, mosquitto_available):
    with SimFleet(3, broker_kind="mosquitto", workdir=tmp_path_factory.mktemp("streams"), discovery=False,
                  persistence=True, gflops=[20.0, 20.0, 20.0], extra_args=["--max-message-mb", "1"]) as s:
        s.add_device("cam-0", gflops=1.0, extra_args=["--source", "cam=synthetic:fps=30,seed=7"])
        yield s


@pytest.fixture(scope="module")
def fleet(sim):
    with Fleet(sim.broker.url) as f:
        f.wait_for_devices(4, timeout=60)
        dep = f.deploy(tiny_cnn(), "tiny", stages=2, replicas=2, devices=DEVICES, timeout=120)
        assert len(dep.manifest.stages) == 2 and len(dep.manifest.stages[0].replicas) == 2
        yield f


@pytest.fixture(scope="module")
def tap(sim):
    t = Tap(sim.broker.url, [CAM, "results/#"])
    yield t
    t.close()


def _record(fleet: Fleet, name: str) -> dict | None:
    return next((r for r in fleet.streams() if r["name"] == name), None)


def test_device_source_through_two_stages_matches_onnxruntime_with_ids_and_stats(sim, fleet, tap) -> None:
    rec = fleet.stream_start("cam", "tiny", CAM, "results/cam", policy="latest", timeout=60)
    stage0 = fleet.manifest("tiny").stages[0].replicas
    assert rec.ingress_device in stage0
    wait_until(lambda: len(tap.got("cam")) >= 8, 30, what="8 results of the synthetic camera")
    model = tiny_cnn()
    checked = 0
    for res in tap.got("cam")[:8]:
        assert res.ok and res.model == "tiny" and res.device in stage0
        frame = tap.frames[CAM].get(res.id)
        if frame is None:
            continue   # the tap subscribed after this frame was published
        assert res.ts == frame.ts   # the source's timestamp travels with the result
        assert_matches(res.tensors, ort_reference(model, {"x": frame.tensors[""]}))
        checked += 1
    assert checked >= 5
    r = wait_until(lambda: (x := _record(fleet, "cam")) and x["fps_out"] > 0 and x["latency_ms"] and x, 15,
                   what="fps and latency in the stream report")
    assert r["model"] == "tiny" and r["sink"] == "results/cam" and r["ingress_device"] in stage0
    assert r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
    assert r["updated"] > time.time() - 30 and r["fps_in"] > 0 and r["errors"] == 0
    assert set(r) >= {"name", "model", "source", "sink", "policy", "batch", "ingress_device", "fps_in",
                      "fps_out", "dropped", "in_flight", "latency_ms", "updated"}


def _quiet(fleet: Fleet, name: str, sent: int) -> dict:
    """The stream's record once every frame it received is accounted for and nothing is left in flight."""
    def done() -> dict | None:
        r = _record(fleet, name)
        ok = r and r["frames_in"] == sent and r["in_flight"] == 0 and r["backlog"] == 0
        return r if ok else None
    return wait_until(done, 30, what=f"stream {name} to take in {sent} frames and drain")


@pytest.mark.parametrize("policy", ["latest", "queue:4"])
def test_overload_drops_by_policy_and_the_backlog_stays_bounded(sim, fleet, tap, policy) -> None:
    name = "burst-" + policy.replace(":", "")
    fleet.stream_start(name, "tiny", f"bursts/{name}", f"results/{name}", policy=policy, timeout=60)
    pub = raw_client(sim.broker.url)
    try:
        rng = np.random.default_rng(3)
        sent = 400
        for i in range(sent):   # as fast as one client can: far beyond what the pipeline takes
            x = rng.random((1, 3, 16, 16), dtype=np.float32)
            pub.publish(f"bursts/{name}", StreamFrame(str(i), time.time(), tensors={"x": x}).to_bytes(), qos=1)
        r = _quiet(fleet, name, sent)
    finally:
        pub.loop_stop()
        pub.disconnect()
    reason, bound = ("stale", 1) if policy == "latest" else ("queue_full", 4)
    assert r["frames_out"] + r["dropped"] + r["errors"] == sent          # every frame accounted for
    assert r["drop_reasons"].get(reason, 0) > 0 and set(r["drop_reasons"]) == {reason}
    assert r["backlog_max"] <= bound                                    # nothing grew without bound
    got = wait_until(lambda: (g := tap.got(name)) and len(g) == r["frames_out"] and g, 10,
                     what="every published result at the sink")
    ids = [int(x.id) for x in got]
    assert ids == sorted(ids)   # frames keep their order through the pipeline
    if policy == "latest":
        assert ids[-1] == sent - 1    # the newest frame is never the one dropped
    fleet.stream_stop(name)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_raw_png_is_preprocessed_and_bad_input_is_counted_while_the_stream_goes_on(sim, fleet, tap) -> None:
    fleet.stream_start("door", "tiny", "cams/door", "results/door", policy="queue:8",
                       preprocess="layout=NCHW,mean=127.5,scale=0.0078125", timeout=60)
    pixels = np.random.default_rng(5).integers(0, 256, (20, 24, 3), dtype=np.uint8)   # resized to 16x16
    cam = raw_client(sim.broker.url)
    try:
        cam.publish("cams/door", _png(pixels), qos=1).wait_for_publish(5)
        res = wait_until(lambda: tap.got("door"), 20, what="the PNG's result")[0]
        resized = np.asarray(Image.fromarray(pixels).resize((16, 16), Image.Resampling.BILINEAR), np.float32)
        x = ((resized - 127.5) * 0.0078125).transpose(2, 0, 1)[None].astype(np.float32)
        assert res.ok and res.id == "1"
        assert_matches(res.tensors, ort_reference(tiny_cnn(), {"x": x}))
        bad = [b"\x01garbage",                                                   # not a frame at all
               StreamFrame("wrong", tensors={"x": np.zeros((1, 3, 8, 8), np.float32)}).to_bytes(),   # shape
               _png(pixels)[:40],                                                # a truncated PNG
               b"\0" * (MAX_MESSAGE + 1024)]                                     # oversized
        for payload in bad:
            cam.publish("cams/door", payload, qos=1).wait_for_publish(5)
        good = StreamFrame("after-bad", tensors={"x": x}).to_bytes()
        cam.publish("cams/door", good, qos=1).wait_for_publish(5)
        wait_until(lambda: any(r.id == "after-bad" for r in tap.got("door")), 20, what="the frame after bad ones")
    finally:
        cam.loop_stop()
        cam.disconnect()
    r = wait_until(lambda: (x := _record(fleet, "door")) and x["errors"] == 4 and x, 10,
                   what="the four bad frames counted")
    assert r["error_reasons"] == {"malformed": 1, "shape": 1, "image": 1, "oversized": 1}
    assert r["frames_out"] == 2 and r["frames_in"] == 6
    fleet.stream_stop("door")


def _cli(sim, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGE_AGENT_BROKER": sim.broker.url}
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, f"edge-agent {' '.join(args)}: {r.stderr}"
    return r


def _results_from(tap: Tap, device: str, after: float) -> bool:
    return any(r.device == device and r.done > after for r in tap.got("cam"))


def test_a_folder_source_in_batches_of_two_matches_onnxruntime_frame_by_frame(sim, fleet, tmp_path) -> None:
    """``--source NAME=dir:/path`` on a device (.npy frames, looped) into a stream with ``--batch 2`` on a model
    with a dynamic batch dim: each request carries two frames, and each frame's own result comes back
    under its id and matches ONNX Runtime on that frame."""
    model = tiny_cnn(seed=3)
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"          # a dynamic batch dim
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(11)
    for i in range(5):
        np.save(frames / f"f{i}.npy", rng.random((1, 3, 16, 16), dtype=np.float32))
    sim.add_device("cam-1", gflops=1.0, extra_args=["--source", f"shelf=dir:{frames},fps=20"])
    fleet.wait_for_devices(5, timeout=60)
    fleet.deploy(model, "tinyb", stages=1, replicas=2, devices=DEVICES[:2], timeout=120)
    source = hosted_source("default", "cam-1", "shelf")
    shelf = Tap(sim.broker.url, [source, "results/shelf"])
    try:
        fleet.stream_start("shelf", "tinyb", source, "results/shelf", policy="queue:8", batch=2, timeout=60)
        got = wait_until(lambda: len(shelf.got("shelf")) >= 10 and shelf.got("shelf"), 30,
                         what="10 results of the folder source")
        checked = 0
        for res in got:
            frame = shelf.frames[source].get(res.id)
            if frame is None:
                continue   # published before the tap subscribed
            assert res.ok and res.model == "tinyb" and res.ts == frame.ts
            x = frame.tensors[""]
            assert x.shape == (1, 3, 16, 16)
            assert_matches(res.tensors, ort_reference(model, {"x": x}))
            checked += 1
        assert checked >= 6
        r = _record(fleet, "shelf")
        assert r["batch"] == 2 and r["errors"] == 0
        fleet.stream_stop("shelf", timeout=30)
        # batching takes up to 2 *waiting* frames per request: under a burst (frames wait) the devices run the
        # stage about half as often as frames come out; one run per frame would be `out` runs
        runs = lambda: sum(v[0] for (key, _dev, v) in fleet.stage_rates.latest() if key[0] == "tinyb")  # noqa: E731
        time.sleep(1.5)
        before = runs()
        fleet.stream_start("shelfburst", "tinyb", "bursts/shelf", "results/shelfburst", policy="queue:256", batch=2,
                           timeout=60)   # room for the whole burst: frames wait (and batch), none is dropped
        pub = raw_client(sim.broker.url)
        try:
            for i in range(200):
                x = rng.random((1, 3, 16, 16), dtype=np.float32)
                pub.publish("bursts/shelf", StreamFrame(str(i), time.time(), tensors={"x": x}).to_bytes(), qos=1)
            out = _quiet(fleet, "shelfburst", 200)["frames_out"]
        finally:
            pub.loop_stop()
            pub.disconnect()
        wait_until(lambda: runs() - before >= out // 2, 10, what="the devices' load reports to catch up")
        assert out >= 100 and runs() - before <= 0.75 * out + 2, (runs() - before, out)
        fleet.stream_stop("shelfburst", timeout=30)
    finally:
        for name in ("shelf", "shelfburst"):   # leave no stream behind for the tests that follow
            if any(r["name"] == name for r in fleet.streams()):
                fleet.stream_stop(name, timeout=30)
        shelf.close()
        sim.stop_device("cam-1")
        fleet.undeploy("tinyb")


def test_ingress_fails_over_survives_restarts_and_stops(sim, fleet, tap) -> None:
    if _record(fleet, "cam") is None:
        fleet.stream_start("cam", "tiny", CAM, "results/cam", timeout=60)
    first = wait_until(lambda: (r := _record(fleet, "cam")) and r["ingress_device"], 20, what="an ingress")
    stage0 = fleet.manifest("tiny").stages[0].replicas
    other = next(d for d in stage0 if d != first)
    sim.stop_device(first, kill=True)      # no goodbye: the Last Will tells the fleet
    t_kill = time.time()
    wait_until(lambda: (r := _record(fleet, "cam")) and r["ingress_device"] == other, 30,
               what=f"{other} to take the stream over from {first}")
    wait_until(lambda: _results_from(tap, other, t_kill), 20, what=f"results through {other}")

    sim.start_device(first)                 # the agent comes back: the stream keeps going (maybe moves back)
    wait_until(lambda: any(d.device_id == first and any(e.get("status") == "ready" for e in d.stages)
                           for d in fleet.devices()), 60, what=f"{first} serving again")
    t_back = time.time()
    wait_until(lambda: any(r.done > t_back + 1 for r in tap.got("cam")), 30, what="results after the restart")
    assert _record(fleet, "cam")["ingress_device"] in stage0

    sim.broker.restart()                    # retained definitions survive in Mosquitto's persistence
    t_broker = time.time()
    wait_until(lambda: any(r.done > t_broker + 1 for r in tap.got("cam")), 60,
               what="results after the broker restart")

    listed = json.loads(_cli(sim, "stream", "ls", "--json").stdout)
    assert [r["name"] for r in listed] == ["cam"] and listed[0]["ingress_device"] in stage0
    stats = json.loads(_cli(sim, "stream", "stats", "cam", "--json").stdout)
    assert stats[0]["frames_out"] > 0 and stats[0]["latency_ms"]["p99"] is not None
    _cli(sim, "stream", "stop", "cam")
    assert _record(fleet, "cam") is None
    wait_until(lambda: not fleet.stream_table.reporting("cam"), 10, what="no device running the stream")
    n = len(tap.got("cam"))
    time.sleep(1.0)
    assert len(tap.got("cam")) <= n + 1, "results kept coming after stream stop"
