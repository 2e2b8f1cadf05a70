"""Device profiles and their parser, cgroup detection and the fallback, and the pure parts of measured
capabilities (the windowed GFLOP/s rate, when to measure again, the link probe's bookkeeping). Fast: no
agent processes."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from edge_agent.agent.capability import rechecks_due, windowed_rate
from edge_agent.lab import cgroups
from edge_agent.lab.profiles import PROFILES, fleet_from_arg, load_fleet_file, parse_fleet_spec
from edge_agent.lab.sim import SimFleet
from edge_agent.transport.linkprobe import LinkProbe


def test_fleet_spec_names_devices_by_profile_and_count():
    fleet = parse_fleet_spec("rpi4:3,gateway:1, phone")
    assert [e.name for e in fleet] == ["rpi4-0", "rpi4-1", "rpi4-2", "gateway-0", "phone-0"]
    assert fleet[0].profile is PROFILES["rpi4"] and fleet[3].profile.name == "gateway"


@pytest.mark.parametrize("spec, words", [("rpi9:2", "unknown device profile 'rpi9'"), ("rpi4:0", "count"),
                                         ("rpi4:x", "PROFILE[:COUNT]"), ("", "empty fleet spec")])
def test_fleet_spec_errors_say_what_is_wrong(spec, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_fleet_spec(spec)


def test_shipped_profiles_are_slower_than_one_core_here_and_state_a_source():
    for name in ("rpi4", "rpi5", "jetson-nano-cpu", "gateway", "phone"):
        p = PROFILES[name]
        assert 0 < p.cpu < 1 and p.source, name
    assert PROFILES["jetson-nano-cpu"].cpu < PROFILES["rpi4"].cpu < PROFILES["rpi5"].cpu


def test_yaml_fleet_file_with_custom_profile_and_overrides(tmp_path):
    pytest.importorskip("yaml")
    f = tmp_path / "fleet.yaml"
    f.write_text("profiles:\n  slow-pi: {base: rpi4, cpu: 0.05}\n"
                 "devices:\n  - {profile: slow-pi, count: 2}\n  - {name: gw, profile: gateway, link_mbit: 100}\n")
    fleet = fleet_from_arg(str(f))
    assert [e.name for e in fleet] == ["slow-pi-0", "slow-pi-1", "gw"]
    assert fleet[0].profile.cpu == 0.05 and fleet[0].profile.memory_mb == PROFILES["rpi4"].memory_mb
    assert fleet[2].profile.link_mbit == 100 and fleet[2].profile.cpu == PROFILES["gateway"].cpu


def test_json_fleet_file_rejects_unknown_fields(tmp_path):
    f = tmp_path / "fleet.json"
    f.write_text(json.dumps({"devices": [{"profile": "rpi4", "cpus": 2}]}))
    with pytest.raises(ValueError, match=r"unknown fields \['cpus'\]"):
        load_fleet_file(f)


def test_cgroup_detection_reads_v1_and_v2_mounts():
    v1 = ("30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
          "31 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n")
    own = "4:memory:/box/1\n1:cpu:/\n0::/\n"
    if os.geteuid() != 0:
        pytest.skip("detection refuses without root")
    lay = cgroups.detect(v1, own)
    assert (lay.version, lay.cpu_dir, lay.memory_dir) == (1, Path("/sys/fs/cgroup/cpu"),
                                                         Path("/sys/fs/cgroup/memory/box/1"))
    with pytest.raises(cgroups.CgroupUnavailable, match="nsenter"):
        cgroups.detect("", own)   # what `ip netns exec` leaves: no cgroup mount at all


def test_unwritable_cgroups_fall_back_to_a_slowed_backend_with_a_clear_message(tmp_path, caplog):
    layout = cgroups.CgroupLayout(1, Path("/proc/edge-agent-not-writable"), None)
    with pytest.raises(cgroups.CgroupUnavailable, match="cannot create cgroup /proc/edge-agent-not-writable"):
        cgroups.create("x", cpu=0.25, layout=layout)
    sim = SimFleet(0, broker_url="mqtt://127.0.0.1:1", workdir=tmp_path, cgroup_layout=layout)
    dev = sim.add_device("pi", profile="rpi4", start=False)
    assert dev.cgroup is None
    assert "FALLBACK: cgroups unavailable" in dev.emulation and "not-writable" in dev.emulation
    assert "edge_agent.lab.device" in dev.argv
    factor = float(dev.argv[dev.argv.index("--slowdown") + 1])
    threads = int(dev.argv[dev.argv.index("--threads") + 1])
    assert factor == pytest.approx(threads / PROFILES["rpi4"].cpu)
    assert "FALLBACK" in caplog.text
    sim.close()


def test_windowed_rate_sees_the_quota_not_the_burst():
    # one completion a ms while running, 25 ms of each 100 ms period (a 25 % quota), over 1 s
    times = [p * 0.1 + k * 0.001 for p in range(10) for k in range(25)]
    rate = windowed_rate(times, 0.3)
    assert rate == pytest.approx(250, rel=0.05)            # not the 1000/s burst
    assert windowed_rate([i * 0.001 for i in range(1000)], 0.3) == pytest.approx(1000, rel=0.01)


def test_rechecks_link_at_start_then_only_when_idle():
    kw = dict(every_s=60, idle_after_s=10, gflops_fixed=False)
    assert rechecks_due(100, last_link=None, last_gflops=0, idle_for=0, **kw) == (True, False)
    assert rechecks_due(100, last_link=0, last_gflops=0, idle_for=5, **kw) == (False, False)     # busy
    assert rechecks_due(100, last_link=0, last_gflops=0, idle_for=20, **kw) == (True, True)
    assert rechecks_due(100, last_link=0, last_gflops=90, idle_for=20, **kw) == (True, False)
    assert rechecks_due(100, last_link=0, last_gflops=0, idle_for=20, **{**kw, "gflops_fixed": True}) == (True, False)
    assert rechecks_due(100, last_link=0, last_gflops=0, idle_for=99, **{**kw, "every_s": 0}) == (False, False)


def test_link_probe_measures_an_echo_path_and_ignores_stale_runs():
    """A loop-back 'broker' that echoes after a fixed delay on another thread."""
    clock = {"t": 0.0}
    lock = threading.Lock()
    probe: LinkProbe

    def publish(payload: bytes) -> None:
        with lock:
            clock["t"] += 0.002 + len(payload) / 10e6    # 2 ms round trip, 10 MB/s
        probe.on_echo(payload)

    probe = LinkProbe(publish, clock=lambda: clock["t"])
    assert not probe.on_echo(b"")                          # a session probe, not ours
    stats = probe.measure(rtt_count=3, burst_bytes=256 << 10, chunk_bytes=64 << 10, timeout_s=5)
    assert stats.rtt_ms == pytest.approx(2.0, rel=0.05)
    assert stats.mbps > 0


def test_link_probe_does_not_time_making_its_payload(monkeypatch):
    """Making a burst's random bytes is the probe's own work, not the link's: with a generator that takes a
    second per message, the rate is still the echo path's (10 MB/s plus 2 ms per message here)."""
    import edge_agent.transport.linkprobe as linkprobe

    clock = {"t": 0.0}
    real_urandom = linkprobe.os.urandom

    def slow_urandom(n: int) -> bytes:
        clock["t"] += 1.0
        return real_urandom(n)

    probe: LinkProbe

    def publish(payload: bytes) -> None:
        clock["t"] += 0.002 + len(payload) / 10e6
        probe.on_echo(payload)

    monkeypatch.setattr(linkprobe.os, "urandom", slow_urandom)
    probe = LinkProbe(publish, clock=lambda: clock["t"])
    stats = probe.measure(rtt_count=3, burst_bytes=256 << 10, chunk_bytes=64 << 10, timeout_s=30)
    # 4 x (2 ms + 6.55 ms) less one round trip: 262144 B in 32.2 ms = 65 Mbit/s; timing the generator: < 1
    assert stats.mbps == pytest.approx(65.1, rel=0.05)


def test_link_probe_reports_the_best_of_its_bursts():
    """The first burst meets other work (each message 3 ms later); the link's rate is the later bursts'."""
    clock = {"t": 0.0, "n": 0}
    probe: LinkProbe

    def publish(payload: bytes) -> None:
        clock["n"] += 1
        slow = 0.003 if 3 < clock["n"] <= 7 else 0.0          # after 3 round trips, the first burst's 4
        clock["t"] += 0.002 + len(payload) / 10e6 + slow
        probe.on_echo(payload)

    probe = LinkProbe(publish, clock=lambda: clock["t"])
    stats = probe.measure(rtt_count=3, burst_bytes=256 << 10, chunk_bytes=64 << 10, timeout_s=30, bursts=3)
    assert stats.mbps == pytest.approx(65.1, rel=0.05)         # not the first burst's ~47
    one = LinkProbe(publish, clock=lambda: clock["t"])
    clock["n"] = 0
    probe = one
    assert one.measure(rtt_count=3, burst_bytes=256 << 10, chunk_bytes=64 << 10, timeout_s=30,
                       bursts=1).mbps < 50
