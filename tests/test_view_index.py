"""FleetView's stage index (stage -> holders) stays equal to a scan of every device's state across state
updates, stages moving between devices, offline and stale devices, and forget(): no broker."""

from __future__ import annotations

import random

from edge_agent.cluster import routing
from edge_agent.cluster.view import LIVE_STATUSES, FleetView, stage_report
from edge_agent.protocol.messages import DeviceState

KEYS = [("m", 1, 0), ("m", 1, 1), ("m", 2, 0), ("n", 1, 0)]
STATUSES = ["ready", "fetching", "loading", "error", "removing"]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def scan(v: FleetView, key: tuple[str, int, int], statuses: tuple[str, ...]) -> list[str]:
    """What the holders are by definition: every online, not stale device whose state reports ``key``."""
    return sorted(st.device_id for st in v.states() if v.online(st.device_id)
                  and (e := stage_report(st, key)) is not None and e.get("status") in statuses)


def random_state(rng: random.Random, device: str) -> DeviceState:
    stages = [{"model": k[0], "version": k[1], "stage": k[2], "status": rng.choice(STATUSES)}
              for k in rng.sample(KEYS, rng.randint(0, len(KEYS)))]
    if stages and rng.random() < 0.2:   # the same stage listed twice: the first entry is the one reported
        stages.append(dict(stages[0], status="error"))
    return DeviceState(device, "f", rng.random() < 0.8, gflops=1.0, stages=stages)


def check(v: FleetView) -> None:
    devices = [st.device_id for st in v.states()] + ["ghost"]
    for key in KEYS + [("absent", 1, 0)]:
        assert v.ready_holders(key) == scan(v, key, ("ready",))
        assert v.live_holders(key) == scan(v, key, LIVE_STATUSES)
        for d in devices:
            assert v.report(d, key) == stage_report(v.state(d), key)


def test_index_matches_a_full_scan_across_updates_offline_stale_and_forget() -> None:
    rng = random.Random(7)
    clock = Clock()
    v = FleetView(stale_after_s=5.0, clock=clock)
    devices = [f"d{i}" for i in range(6)]
    for _ in range(400):
        op = rng.random()
        d = rng.choice(devices)
        if op < 0.6:
            v.update_state(random_state(rng, d))
        elif op < 0.75:
            v.forget(d)
        elif op < 0.9:
            clock.t += rng.choice([1.0, 6.0])
            v.sweep()
        else:
            # a malformed entry (a list for a name) matches no stage and breaks nothing
            v.update_state(DeviceState(d, "f", True, gflops=1.0,
                                       stages=[{"model": ["m"], "version": 1, "stage": 0, "status": "ready"}]))
        check(v)


def test_a_stage_that_moves_to_another_device_is_routed_only_there() -> None:
    key = KEYS[0]
    v = FleetView()
    entry = {"model": key[0], "version": key[1], "stage": key[2], "status": "ready"}
    v.update_state(DeviceState("a", "f", True, stages=[entry]))
    assert routing.pick(v, key) == "a"
    v.update_state(DeviceState("a", "f", True, stages=[]))          # a dropped it...
    v.update_state(DeviceState("b", "f", True, stages=[entry]))     # ...b took it over
    assert v.ready_holders(key) == ["b"] and routing.pick(v, key) == "b"
    v.update_state(DeviceState("b", "f", False, stages=[entry]))    # b went offline, its stage list unchanged
    assert routing.pick(v, key) is None
    v.update_state(DeviceState("b", "f", True, stages=[entry]))
    v.forget("b")
    assert v.ready_holders(key) == [] and v.report("b", key) is None
