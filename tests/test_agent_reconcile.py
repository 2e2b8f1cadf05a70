"""The agent's pure decisions: which stages it should hold (:func:`desired`), which it retires, and the
stage server's de-duplication cache. No broker, no processes."""

from __future__ import annotations

from edge_agent.agent.reconcile import desired, retire
from edge_agent.agent.server import DedupCache
from edge_agent.cluster.placement import Candidate
from edge_agent.cluster.view import FleetView
from edge_agent.protocol.messages import DeviceState, Manifest


def manifest(name: str = "m", version: int = 1, placement=(("a",), ("b",)), failover: bool = True,
             channel: str = "stable") -> Manifest:
    stages = [{"index": i, "devices": list(devs), "device": devs[0], "shard_sha256": f"{i:02d}" * 32,
               "shard_size": 10, "chunk_size": 10, "chunk_sha256": [], "inputs": ["x"], "outputs": ["y"]}
              for i, devs in enumerate(placement)]
    return Manifest(name, version, 0.0, "", [], [], stages, failover=failover, channel=channel)


def dev(device: str, online: bool = True, *stages: tuple) -> DeviceState:
    return DeviceState(device, "f", online, stages=[{"model": m, "version": v, "stage": s, "status": st}
                                                    for m, v, s, st in stages])


def view_of(*states: DeviceState) -> FleetView:
    v = FleetView()
    for st in states:
        v.update_state(st)
    return v


ME = Candidate("c", n_stages=0, gflops=10.0)


def test_a_device_wants_exactly_the_stages_assigned_to_it() -> None:
    m = manifest(placement=(("a", "c"), ("b",)))
    d = desired(ME, {("stable", "m"): m}, view_of(dev("a"), dev("b")), set(), may_adopt=True)
    assert d.want == {("m", 1, 0)} and not d.adopt


def test_an_orphaned_stage_is_adopted_by_the_chosen_device_only() -> None:
    m = manifest()
    gone = view_of(dev("a", False), dev("b", True, ("m", 1, 1, "ready")))
    d = desired(ME, {("stable", "m"): m}, gone, set(), may_adopt=True)
    assert d.adopt == {("m", 1, 0)} and d.want == {("m", 1, 0)}
    # another device with fewer stages and the same view would take it instead
    busy = Candidate("c", n_stages=3, gflops=10.0)
    assert not desired(busy, {("stable", "m"): m}, view_of(dev("a", False), dev("b", True, ("m", 1, 1, "ready")),
                                                           dev("e")), set(), may_adopt=True).adopt


def test_only_a_standby_device_named_in_the_signed_manifest_adopts() -> None:
    gone = view_of(dev("a", False), dev("b", True, ("m", 1, 1, "ready")), dev("e"))
    outsider = manifest()
    outsider.standby = ["a", "b", "e"]          # "c" (this device) is not named: it never adopts...
    assert not desired(ME, {("stable", "m"): outsider}, gone, set(), may_adopt=True).adopt
    # ...and the adoption rule picks among the named ones, so a busier standby still takes the stage
    busy = Candidate("c", n_stages=3, gflops=10.0)
    named = manifest()
    named.standby = ["c"]
    assert desired(busy, {("stable", "m"): named}, gone, set(), may_adopt=True).adopt == {("m", 1, 0)}


def test_no_adoption_before_the_retained_states_are_in_or_without_failover_or_on_canary() -> None:
    gone = view_of(dev("a", False), dev("b"))
    for m, may in ((manifest(), False), (manifest(failover=False), True), (manifest(channel="canary"), True)):
        assert not desired(ME, {(m.channel, "m"): m}, gone, set(), may_adopt=may).adopt


def test_no_adoption_while_another_live_device_is_installing_the_stage() -> None:
    v = view_of(dev("a", False), dev("b"), dev("e", True, ("m", 1, 0, "fetching")))
    assert not desired(ME, {("stable", "m"): manifest()}, v, set(), may_adopt=True).adopt


def test_an_adopted_stage_is_released_when_its_assigned_device_is_ready_again() -> None:
    key = ("m", 1, 0)
    still_gone = view_of(dev("a", False), dev("b"))
    d = desired(ME, {("stable", "m"): manifest()}, still_gone, {key}, may_adopt=True)
    assert key in d.want and not d.release
    back = view_of(dev("a", True, ("m", 1, 0, "ready")), dev("b"))
    d = desired(ME, {("stable", "m"): manifest()}, back, {key}, may_adopt=True)
    assert d.release == {key} and key not in d.want


def test_a_replaced_version_keeps_serving_for_the_grace_period_then_retires() -> None:
    old, new = ("m", 1, 0), ("m", 2, 0)
    since: dict = {}
    status = {new: {"status": "ready"}, old: {"status": "ready"}}
    assert retire({old: 1, new: 1}, status, {new}, {}, view_of(), since, now=100.0, grace_s=10) == []
    assert retire({old: 1, new: 1}, status, {new}, {}, view_of(), since, now=111.0, grace_s=10) == [
        (old, "replaced")]


def test_a_stage_no_longer_deployed_retires_at_once() -> None:
    key = ("m", 1, 0)
    assert retire({key: 1}, {key: {"status": "ready"}}, set(), {}, view_of(), {}, now=0.0) == [
        (key, "no longer deployed here")]


def test_dedup_cache_is_bounded_in_entries_and_in_bytes() -> None:
    c = DedupCache(max_entries=3, max_bytes=100)
    for i in range(5):
        c.put((f"r{i}", 0), ("result", b"x" * 10, None))
    assert len(c) == 3 and c.get(("r0", 0)) is None and c.get(("r4", 0)) is not None
    c.put(("big", 0), ("result", b"x" * 95, None))
    assert len(c) == 1 and c.bytes == 95
