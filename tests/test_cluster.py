"""The shared fleet view and the pure decisions on it (routing, adoption, replica placement): no broker."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from edge_agent.cluster import routing
from edge_agent.cluster.placement import Candidate, assign_replicas, choose_adopter
from edge_agent.cluster.view import FleetView
from edge_agent.protocol.errors import DeployError
from edge_agent.protocol.messages import DeviceState, LoadReport, Manifest

KEY = ("m", 1, 0)


def state(device: str, *, online: bool = True, status: str | None = "ready", key=KEY, gflops: float = 10.0,
          extra_stages: int = 0) -> DeviceState:
    stages = [] if status is None else [{"model": key[0], "version": key[1], "stage": key[2], "status": status}]
    stages += [{"model": f"other{i}", "version": 1, "stage": 0, "status": "ready"} for i in range(extra_stages)]
    return DeviceState(device, "f", online, gflops=gflops, stages=stages)


def view_of(*states: DeviceState, loads: dict | None = None, clock=None) -> FleetView:
    v = FleetView(stale_after_s=8.0, clock=clock) if clock else FleetView()
    for st in states:
        v.update_state(st)
    for dev, (q, ms) in (loads or {}).items():
        v.update_load(LoadReport(dev, q, ms))
    return v


def test_pick_prefers_the_replica_with_the_earliest_expected_completion() -> None:
    v = view_of(state("a"), state("b"), loads={"a": (4, 10.0), "b": (1, 30.0)})
    assert routing.pick(v, KEY) == "a"       # (4+1) x 10 = 50 ms < (1+1) x 30 = 60 ms


def test_pick_counts_requests_sent_since_the_last_load_report() -> None:
    v = view_of(state("a"), state("b"), loads={"a": (0, 10.0), "b": (0, 10.0)})
    v.note_sent("a")
    assert routing.pick(v, KEY) == "b"


def test_pick_skips_offline_devices_and_devices_not_ready() -> None:
    v = view_of(state("a", online=False), state("b", status="fetching"), state("c", status="error"))
    assert routing.pick(v, KEY) is None
    v.update_state(state("d"))
    assert routing.pick(v, KEY) == "d"


def test_pick_includes_the_local_device_as_a_candidate() -> None:
    v = view_of(state("a"), loads={"a": (3, 5.0)})
    assert routing.pick(v, KEY, routing.Local("me", queue=0, service_ms=5.0)) == "me"
    assert routing.pick(v, KEY, routing.Local("me", queue=10, service_ms=5.0)) == "a"


def test_pick_breaks_ties_at_random_so_equal_replicas_share_load() -> None:
    v = view_of(state("a"), state("b"))
    rng = random.Random(1)
    assert {routing.pick(v, KEY, rng=rng) for _ in range(50)} == {"a", "b"}


def test_stale_devices_are_swept_once_and_not_routed_to_until_they_report_again() -> None:
    now = [100.0]
    v = view_of(state("a"), state("b"), clock=lambda: now[0])
    now[0] += 5.0
    v.update_state(state("b"))
    now[0] += 5.0                            # a: 10 s silent, b: 5 s
    assert [d for d, _ in v.sweep()] == ["a"]
    assert v.sweep() == []                   # reported once
    assert routing.pick(v, KEY) == "b" and not v.online("a")
    v.update_state(state("a"))
    assert v.online("a")


def test_adopter_is_the_device_with_fewest_stages_then_fastest_then_by_id() -> None:
    v = view_of(state("b", status=None, extra_stages=1), state("c", status=None, gflops=50.0),
                state("d", status=None, gflops=50.0))
    assert choose_adopter(v, KEY, Candidate("a", n_stages=2, gflops=100.0)) == "c"
    assert choose_adopter(v, KEY, Candidate("a", n_stages=0, gflops=100.0)) == "a"
    assert choose_adopter(v, KEY, Candidate("e", n_stages=0, gflops=50.0)) == "c"   # ties: by id


def test_adopter_rule_skips_devices_that_failed_the_stage_and_offline_ones() -> None:
    v = view_of(state("b", status="error"), state("c", status=None, online=False))
    assert choose_adopter(v, KEY, Candidate("z", n_stages=5, gflops=1.0)) == "z"


def test_every_agent_reaches_the_same_adopter_from_the_same_view() -> None:
    states = [state(d, status=None, gflops=g, extra_stages=n) for d, g, n in
              (("a", 10, 1), ("b", 20, 0), ("c", 20, 0), ("d", 5, 0))]
    chosen = set()
    for me in states:
        v = view_of(*[s for s in states if s.device_id != me.device_id])
        chosen.add(choose_adopter(v, KEY, Candidate(me.device_id, len(me.stages), me.gflops)))
    assert chosen == {"b"}


@dataclass
class Dev:
    id: str
    gflops: float


def test_replicas_go_to_unused_devices_first_heaviest_stage_first() -> None:
    devs = [Dev("a", 10), Dev("b", 10), Dev("c", 40), Dev("d", 10)]
    placement = assign_replicas(["a", "b"], [30.0, 10.0], devs, replicas=2)
    assert placement == [["a", "c"], ["b", "d"]]
    assert all(len(set(p)) == len(p) for p in placement)


def test_replicas_need_enough_devices() -> None:
    with pytest.raises(DeployError, match="3 replicas per stage need at least 3 devices"):
        assign_replicas(["a"], [1.0], [Dev("a", 1), Dev("b", 1)], replicas=3)


def test_only_manifest_replicas_may_serve_and_adopters_only_while_they_are_all_gone() -> None:
    from edge_agent.cluster.placement import permitted_holders
    claimer = DeviceState("rogue", "f", True, stages=[{"model": "m", "version": 1, "stage": 0, "status": "ready"}])
    adopter = DeviceState("adopt", "f", True, stages=[{"model": "m", "version": 1, "stage": 0, "status": "ready",
                                                       "role": "adopted"}])
    v = view_of(state("a"), claimer, adopter, loads={"rogue": (0, 0.001), "adopt": (0, 0.001), "a": (9, 50.0)})
    m = _manifest(["a"])
    allowed = permitted_holders(v, m, 0)
    assert allowed == {"a"} and routing.pick(v, KEY, allowed=allowed) == "a"
    assert routing.pick(v, KEY) in ("rogue", "adopt")          # what an unrestricted pick would do
    v.update_state(state("a", online=False))
    allowed = permitted_holders(v, m, 0)
    assert allowed == {"a", "adopt"} and routing.pick(v, KEY, allowed=allowed) == "adopt"
    assert permitted_holders(v, _manifest(["a"], failover=False), 0) == {"a"}
    # a manifest that names its standby devices: an adopter outside them gets nothing
    assert permitted_holders(v, _manifest(["a"], standby=["a", "b"]), 0) == {"a"}
    assert permitted_holders(v, _manifest(["a"], standby=["adopt"]), 0) == {"a", "adopt"}


def _manifest(replicas: list[str], failover: bool = True, standby: list[str] | None = None) -> Manifest:
    stage = {"index": 0, "shard_sha256": "0" * 64, "shard_size": 1, "chunk_size": 1, "chunk_sha256": ["0" * 64],
             "inputs": ["x"], "outputs": ["y"], "devices": replicas}
    return Manifest("m", 1, 0.0, "0" * 64, [], [], [stage], failover=failover, standby=standby)


def test_a_replica_lost_mid_deploy_beside_a_ready_one_does_not_fail_the_deploy() -> None:
    import threading

    from edge_agent.operator.status import wait_ready
    from edge_agent.protocol.errors import DeployError
    v = view_of(state("a"), state("b", online=False, status="fetching"))
    rows = wait_ready(v, threading.Condition(), _manifest(["a", "b"]), timeout=1)
    assert [(r["device"], r["online"], r["status"]) for r in rows] == [("a", True, "ready"), ("b", False, "fetching")]
    # the only replica of a stage going offline still fails it, with the reason
    with pytest.raises(DeployError, match="'b' failed: device went offline"):
        wait_ready(view_of(state("b", online=False, status="fetching")), threading.Condition(), _manifest(["b"]),
                   timeout=1)
