"""The performance model and its search on synthetic devices and links (no broker, milliseconds each)."""

from __future__ import annotations

import random

import pytest

from edge_agent.cluster.routing import pick
from edge_agent.cluster.view import FleetView
from edge_agent.protocol.errors import ProtocolError
from edge_agent.protocol.manifest import StageSpec
from edge_agent.protocol.messages import DeviceState
from models.partition import CostProfile
from models.planner import Calibration, Device, Shape, evaluate, search

# a 10-node chain of 1 GFLOP each
GFLOP = 1e9


def chain(input_bytes: float, act_bytes: float, out_bytes: float = 4e3, n: int = 10,
          flops: float = GFLOP) -> CostProfile:
    return CostProfile.synthetic([flops] * n, [input_bytes] + [act_bytes] * (n - 1) + [out_bytes])


def test_two_equal_devices_replicas_beat_two_stages_when_the_input_is_big_and_links_slow():
    prof = chain(input_bytes=8e6, act_bytes=2e6)
    devs = [Device("a", 20, link_bytes_per_s=5e6), Device("b", 20, link_bytes_per_s=5e6)]
    found = search(prof, devs)
    assert found.best.shape.kind == "replicas" and sorted(found.best.shape.devices) == ["a", "b"]
    pipe = next(c for c in found.ranked if c.shape.kind == "pipeline")
    assert pipe.prediction.throughput_rps < found.best.prediction.throughput_rps
    assert found.best.prediction.bottleneck.startswith("in:")   # the link, not the CPU, binds
    assert found.best.shape.weights == ((0.5, 0.5),)


def test_two_equal_devices_with_fast_links_and_small_activations_pipeline_and_replicas_tie_on_compute():
    prof = chain(input_bytes=1e4, act_bytes=1e3)
    devs = [Device("a", 20, link_bytes_per_s=1e9), Device("b", 20, link_bytes_per_s=1e9)]
    found = search(prof, devs)
    by_kind = {c.shape.kind: c.prediction for c in found.ranked}
    # both keep both devices busy; replicas save a hop per request, so they win by a little
    assert found.best.shape.kind == "replicas"
    assert by_kind["pipeline"].throughput_rps == pytest.approx(by_kind["replicas"].throughput_rps, rel=0.1)
    assert by_kind["single"].throughput_rps < 0.6 * by_kind["replicas"].throughput_rps


def test_one_device_4x_faster_keeps_most_of_the_work_and_gets_the_largest_share():
    prof = chain(input_bytes=1e5, act_bytes=1e5)
    devs = [Device("fast", 80), Device("s1", 20), Device("s2", 20), Device("s3", 20)]
    best = search(prof, devs).best
    # every slow device adds rate here: the fast device serves beside them, with a share by its rate
    assert "fast" in best.shape.devices and len(best.shape.devices) == 4
    shares = dict(zip(best.shape.groups[0], best.shape.weights[0]))
    assert best.shape.kind == "replicas" and shares["fast"] > 2 * max(shares["s1"], shares["s2"], shares["s3"])


def test_slow_devices_behind_a_slow_link_get_a_share_by_their_rate_and_latency_keeps_the_fast_one_alone():
    # requests split by rate, so a slow device never lowers throughput; behind a 1 MB/s link its rate is tiny
    prof = chain(input_bytes=4e6, act_bytes=4e6, flops=0.2 * GFLOP)
    devs = [Device("fast", 80, link_bytes_per_s=1e9), Device("s1", 20, link_bytes_per_s=1e6),
            Device("s2", 20, link_bytes_per_s=1e6)]
    found = search(prof, devs)
    alone = next(c for c in found.ranked if c.shape.label() == "fast")
    best = found.best
    shares = dict(zip(best.shape.groups[0], best.shape.weights[0]))
    assert shares["fast"] > 0.95
    assert best.prediction.throughput_rps < alone.prediction.throughput_rps * 1.1
    assert search(prof, devs, objective="latency").best.shape.label() == "fast"


def test_latency_objective_picks_fewer_hops_than_throughput():
    prof = chain(input_bytes=1e5, act_bytes=1e5)
    devs = [Device("a", 40), Device("b", 40), Device("c", 40)]
    tp = search(prof, devs, objective="throughput").best
    lat = search(prof, devs, objective="latency").best
    assert len(lat.shape.groups) == 1                # no hop between stages
    assert lat.prediction.latency_ms <= tp.prediction.latency_ms
    assert tp.prediction.throughput_rps > lat.prediction.throughput_rps or len(tp.shape.devices) == 3
    # equal devices as replicas cost no latency, so the latency plan keeps them (throughput for free)
    assert len(lat.shape.devices) == 3


def test_latency_objective_on_mixed_devices_takes_the_fastest_alone():
    prof = chain(input_bytes=1e5, act_bytes=1e5)
    devs = [Device("fast", 80), Device("s1", 20), Device("s2", 20)]
    lat = search(prof, devs, objective="latency").best
    assert lat.shape.label() == "fast"
    tp = search(prof, devs, objective="throughput").best
    assert tp.shape.label() != "fast" and tp.prediction.throughput_rps > lat.prediction.throughput_rps


def test_the_broker_bound_caps_throughput_whatever_the_devices_add():
    prof = chain(input_bytes=4e6, act_bytes=4e6, flops=0.01 * GFLOP)
    cal = Calibration(broker_bytes_per_s=50e6)   # 2 x 4 MB in and out per message: 6 req/s at most
    devs = [Device(f"d{i}", 80, link_bytes_per_s=1e9) for i in range(4)]
    found = search(prof, devs, cal)
    best = found.best
    assert best.prediction.bottleneck == "broker"
    per_message = [2 * size / 50e6 * 1e3 + 2 * 0.05 for size in (4e6, 4e3)]   # the request and the answer
    assert best.prediction.throughput_rps == pytest.approx(1e3 / sum(per_message), rel=1e-6)
    # more devices cannot help, so the tie goes to the lower latency: no extra stage
    assert len(best.shape.groups) == 1
    assert all(c.prediction.throughput_rps <= best.prediction.throughput_rps * 1.0101 for c in found.ranked)


def test_hybrid_two_stages_by_two_replicas_when_one_stage_cannot_fit_in_memory():
    # 10 nodes; a device holds at most 6 of them: two stages are needed, and 2 x 2 uses all four devices
    n = 10
    prof = chain(input_bytes=1e4, act_bytes=1e4, n=n)
    for a in range(n + 1):
        for b in range(a + 1, n + 1):
            prof.mem_bytes[a, b] = (b - a) * 1e9
    devs = [Device(f"d{i}", 20, ram_bytes=int(6e9)) for i in range(4)]
    best = search(prof, devs).best
    assert best.shape.kind == "hybrid"
    assert [len(g) for g in best.shape.groups] == [2, 2]
    assert best.shape.cuts[1] in (4, 5, 6)


def test_evaluate_counts_a_device_holding_two_stages_once_per_resource():
    prof = chain(input_bytes=1e4, act_bytes=1e4)
    devs = {"a": Device("a", 20), "b": Device("b", 20)}
    cal = Calibration()
    both = evaluate(prof, devs, Shape((0, 5, 10), (("a", "b"), ("a", "b")), ((0.5, 0.5), (0.5, 0.5))), cal)
    single = evaluate(prof, devs, Shape((0, 10), (("a", "b"),), ((0.5, 0.5),)), cal)
    # same compute on each device, one extra hop: slightly more busy, never double
    assert single.busy_ms["cpu:a"] < both.busy_ms["cpu:a"] < 1.5 * single.busy_ms["cpu:a"]


def test_search_rejects_bad_devices_and_objectives():
    prof = chain(1e4, 1e4)
    with pytest.raises(ValueError, match="objective"):
        search(prof, [Device("a", 1)], objective="cheap")
    with pytest.raises(ValueError, match="non-positive"):
        search(prof, [Device("a", 0)])
    with pytest.raises(ValueError, match="duplicate"):
        search(prof, [Device("a", 1), Device("a", 2)])
    with pytest.raises(ValueError, match="no devices"):
        search(prof, [])


def test_alternatives_show_each_kind_and_the_reason_names_the_runner_up():
    prof = chain(input_bytes=1e5, act_bytes=1e5)
    found = search(prof, [Device("fast", 80), Device("s1", 20), Device("s2", 20)])
    rows = [c.row() for c in found.alternatives()]
    assert rows[0]["shape"] == found.best.shape.label()
    assert {r["kind"] for r in rows} >= {"single", "replicas", "pipeline"}
    assert "next best" in found.why() and found.best.prediction.bottleneck in found.why()


# ---------------------------------------------------------------------------- weights in the manifest and routing


def _stage(**kw) -> StageSpec:
    return StageSpec(index=0, shard_sha256="0" * 64, shard_size=1, chunk_size=1, chunk_sha256=["0" * 64],
                     inputs=["x"], outputs=["y"], **kw)


def test_stage_weights_round_trip_and_are_checked():
    st = _stage(device="a", devices=["a", "b"], weights=[0.75, 0.25])
    back = StageSpec.from_dict(st.to_dict())
    assert back.weight_of() == {"a": 0.75, "b": 0.25}
    assert "weights" not in _stage(device="a").to_dict()      # old manifests keep their exact bytes
    with pytest.raises(ProtocolError, match="weights"):
        StageSpec.from_dict({**st.to_dict(), "weights": ["x", 1]})
    with pytest.raises(ProtocolError, match="2 replicas"):
        _stage(device="a", devices=["a", "b"], weights=[1.0]).check("stage 0")


def _view(devices: list[str], key) -> FleetView:
    view = FleetView()
    for d in devices:
        view.update_state(DeviceState(d, "f", True, stages=[{"model": key[0], "version": key[1],
                                                              "stage": key[2], "status": "ready"}]))
    return view


def test_pick_splits_requests_by_the_planned_weights():
    key = ("m", 1, 0)
    view = _view(["fast", "slow"], key)
    rng = random.Random(1)
    sent = {"fast": 0, "slow": 0}
    for _ in range(400):
        d = pick(view, key, rng=rng, weights={"fast": 0.8, "slow": 0.2})
        sent[d] += 1
        view.note_sent(d)
    assert sent["fast"] == pytest.approx(320, abs=2) and sent["slow"] == pytest.approx(80, abs=2)


def test_pick_without_weights_for_every_candidate_falls_back_to_service_time():
    key = ("m", 1, 0)
    view = _view(["a", "adopter"], key)
    # "adopter" has no planned weight: the planned shares cannot rank it, so the usual rule applies
    got = {pick(view, key, rng=random.Random(i), weights={"a": 1.0}) for i in range(20)}
    assert got == {"a", "adopter"}


def test_build_manifest_refuses_an_unknown_objective_naming_the_known_ones():
    from types import SimpleNamespace

    from edge_agent.operator.manifests import build_manifest
    from edge_agent.protocol.errors import DeployError
    from models import zoo

    dev = SimpleNamespace(device_id="a", gflops=10.0, ram_mb=1024)
    added: list[bytes] = []
    with pytest.raises(DeployError, match="throughput, latency"):
        build_manifest(zoo.build("mlp"), "m", [dev], add_shard=added.append, version=1, fleet="f", operator="op",
                       sources=[], objective="fastest")
    assert added == []   # nothing was cut or stored


def test_build_manifest_puts_the_planned_shape_weights_and_prediction_in_the_manifest():
    from types import SimpleNamespace

    from edge_agent.operator.manifests import build_manifest
    from models import zoo

    devs = [SimpleNamespace(device_id="fast", gflops=60.0, ram_mb=1024, link_mbps=800.0, link_rtt_ms=0.5),
            SimpleNamespace(device_id="slow", gflops=15.0, ram_mb=1024, link_mbps=800.0, link_rtt_ms=0.5)]
    m, plan = build_manifest(zoo.build("mlp"), "m", devs, add_shard=lambda b: "0" * 64, version=1, fleet="f",
                             operator="op", sources=[], objective="throughput")
    pred = m.plan["predicted"]
    assert pred["shape"] == "+".join(m.stages[0].replicas) and len(m.stages) == 1
    assert m.stages[0].weight_of()["fast"] > m.stages[0].weight_of()["slow"]
    assert pred["throughput_rps"] > 0 and pred["latency_ms"] > 0 and len(pred["alternatives"]) >= 2
    m2, _ = build_manifest(zoo.build("mlp"), "m", devs, add_shard=lambda b: "0" * 64, version=1, fleet="f",
                           operator="op", sources=[], stages=2)
    assert m2.plan["predicted"]["objective"] == "given" and m2.plan["predicted"]["kind"] == "pipeline"


def test_latency_splits_into_the_model_runs_and_the_path_and_a_quota_wait_counts_as_run():
    prof = chain(input_bytes=1e4, act_bytes=1e3, n=4, flops=0.4 * GFLOP)
    cal = Calibration(efficiency=0.5)
    plain = Device("a", 20, link_bytes_per_s=1e9)
    p = evaluate(prof, {"a": plain}, Shape((0, 4), (("a",),), ((1.0,),)), cal)
    assert p.run_ms == pytest.approx(1.6e9 / (20e9 * 0.5) * 1e3)        # 160 ms of compute alone
    assert 0 < p.latency_ms - p.run_ms < 10                             # hop, bytes, broker, client, round trips
    # a 0.2-core quota at full speed 100 GFLOP/s: 32 ms of compute is more than a period's 20 ms, so the idle
    # device runs 20 ms at full speed and waits for the next period (unless it arrived near a period's end)
    quota = Device("a", 20, link_bytes_per_s=1e9, peak_gflops=100)
    q = evaluate(prof, {"a": quota}, Shape((0, 4), (("a",),), ((1.0,),)), cal)
    assert 32.0 + 40.0 < q.run_ms < p.run_ms
    assert q.latency_ms - q.run_ms < p.latency_ms - p.run_ms            # the path's CPU is at full speed too
