"""Keep serving through failures: replicas balanced by load, replica loss, broker restarts mid-stream and
mid-deploy (Mosquitto with persistence), exactly-once delivery under all of it."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
import onnxruntime as ort

from edge_agent import Fleet
from edge_agent.lab.sim import SimFleet
from models import zoo

from .conftest import wait_until


def ort_run(model, x: dict) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, x)))


def stream(fleet: Fleet, name: str, xs: list[dict], want: list[dict], n: int, concurrency: int = 6,
           timeout: float = 60.0, at: tuple[int, object] | None = None) -> dict:
    """Send n requests (bounded in flight); check every result against its reference. ``at`` = (i, fn):
    start fn in a thread once result i has arrived (a fault injected mid-stream)."""
    wrong = []

    def check(i: int, outputs: dict, timings: list) -> None:
        if at is not None and i == at[0]:
            threading.Thread(target=at[1]).start()
        ref = want[i % len(want)]
        if not all(np.allclose(outputs[k], ref[k], atol=1e-4, rtol=1e-4) for k in ref):
            wrong.append(i)
        devices[i] = [t["device"] for t in timings]

    devices: dict[int, list[str]] = {}
    res = _run(fleet, name, xs, n, concurrency, timeout, check)
    res["wrong"] = wrong
    res["devices"] = devices
    return res


def _run(fleet, name, xs, n, concurrency, timeout, on_result) -> dict:
    lost, inflight, sent = [], collections.deque(), 0
    while sent < n or inflight:
        while sent < n and len(inflight) < concurrency:
            inflight.append((sent, fleet.submit(name, xs[sent % len(xs)], timeout=timeout)))
            sent += 1
        i, fut = inflight.popleft()
        try:
            outputs, timings = fut.result(timeout + 10)
            on_result(i, outputs, timings)
        except Exception as exc:  # noqa: BLE001 - counted as lost and reported
            lost.append((i, repr(exc)))
    return {"lost": lost}


def test_replicas_are_balanced_by_load_so_a_slow_device_gets_less_work(tmp_path, mosquitto_available) -> None:
    model = zoo.build("mobilenetv2", seed=1)
    xs = [zoo.sample_inputs(model, seed=i) for i in range(4)]
    want = [ort_run(model, x) for x in xs]
    with SimFleet(2, broker_kind="mosquitto", workdir=tmp_path, discovery=False, gflops=[20.0, 20.0]) as s:
        s.add_device("slow", gflops=20.0, slowdown=6)
        with Fleet(s.broker_url) as f:
            f.wait_for_devices(3, timeout=60)
            dep = f.deploy(model, "bal", stages=1, replicas=3, timeout=120)
            assert sorted(dep.manifest.stages[0].devices) == ["dev-0", "dev-1", "slow"]
            res = stream(f, "bal", xs, want, 90, concurrency=6)
            assert not res["lost"] and not res["wrong"]
            served = collections.Counter(d[0] for d in res["devices"].values())
            assert served["slow"] < served["dev-0"] and served["slow"] < served["dev-1"], served
            assert served["slow"] > 0  # it still works, just gets less


def test_losing_a_replica_mid_stream_loses_no_request(tmp_path, mosquitto_available) -> None:
    model = zoo.build("transformer", seed=2)
    xs = [zoo.sample_inputs(model, seed=i) for i in range(4)]
    want = [ort_run(model, x) for x in xs]
    with SimFleet(4, broker_kind="mosquitto", workdir=tmp_path, discovery=False) as s, Fleet(s.broker_url) as f:
        f.wait_for_devices(4, timeout=60)
        dep = f.deploy(model, "rep", stages=2, replicas=2, timeout=120)
        victim = dep.manifest.stages[1].devices[0]
        res = stream(f, "rep", xs, want, 150, concurrency=6, at=(30, lambda: s.stop_device(victim, kill=True)))
        assert not res["lost"], res["lost"][:3]
        assert not res["wrong"]
        assert len(res["devices"]) == 150   # every request answered exactly once
        late = [d for i, d in res["devices"].items() if i > 120]
        assert all(victim not in d for d in late)


def test_broker_restart_mid_stream_loses_no_request(tmp_path, mosquitto_available) -> None:
    model = zoo.build("mlp", seed=3)
    xs = [zoo.sample_inputs(model, seed=i) for i in range(4)]
    want = [ort_run(model, x) for x in xs]
    with SimFleet(3, broker_kind="mosquitto", workdir=tmp_path, discovery=False, persistence=True) as s, \
            Fleet(s.broker_url) as f:
        f.wait_for_devices(3, timeout=60)
        f.deploy(model, "bmid", stages=3, timeout=120)
        res = stream(f, "bmid", xs, want, 300, concurrency=8, timeout=60,
                     at=(50, lambda: s.broker.restart(kill=True)))
        assert not res["lost"], res["lost"][:3]
        assert not res["wrong"] and len(res["devices"]) == 300
        assert f.transport.connect_count >= 2  # the restart really happened mid-stream


def test_broker_restart_mid_deploy_completes_the_deploy(tmp_path, mosquitto_available) -> None:
    model = zoo.build("mobilenetv2", seed=4)   # ~24 MB of shards: the restart lands mid-transfer
    x = zoo.sample_inputs(model)
    with SimFleet(3, broker_kind="mosquitto", workdir=tmp_path, discovery=False, persistence=True) as s, \
            Fleet(s.broker_url) as f:
        f.wait_for_devices(3, timeout=60)
        restarted = threading.Event()

        def restart_when_fetching(dev: str, row: dict) -> None:
            if row["status"] == "fetching" and not restarted.is_set():
                restarted.set()
                threading.Thread(target=s.broker.restart, kwargs={"kill": True}).start()

        dep = f.deploy(model, "bdep", stages=3, timeout=120, progress=restart_when_fetching)
        assert restarted.is_set()
        wait_until(lambda: f.transport.connect_count >= 2, 20, what="the operator to reconnect")
        got = f.infer("bdep", x, timeout=60)
        want = ort_run(model, x)
        assert all(np.allclose(got[k], want[k], atol=1e-4, rtol=1e-4) for k in want)
        assert len(dep.manifest.stages) == 3
        assert time.time() - dep.manifest.created < 300
