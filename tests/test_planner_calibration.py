"""The planner's calibration on synthetic devices (no agents): fitted agent costs, the link's time beside
the agent's CPU, a device's measured efficiency, and exact tie-breaks."""

from __future__ import annotations

import dataclasses

import pytest

from models.partition import CostProfile
from models.planner import Calibration, Device, Observation, Shape, evaluate, fit_agent_costs, search

GFLOP = 1e9


def test_fit_recovers_per_hop_and_per_byte_costs_from_runs_of_different_sizes():
    hop, per_mb = 0.8, 3.0
    obs = [Observation(cpu_ms=run + hop + per_mb * nb / 1e6, run_ms=run, nbytes=nb)
           for run, nb in ((1.0, 6e4), (7.0, 2e5), (20.0, 1.6e6), (3.0, 8e5))]
    cal = fit_agent_costs(obs)
    assert cal.hop_ms == pytest.approx(hop, rel=1e-6) and cal.byte_ms_per_mb == pytest.approx(per_mb, rel=1e-6)
    assert cal.efficiency == Calibration().efficiency          # what was not fitted is kept


def test_fit_with_one_message_size_fits_the_hop_only_and_never_goes_negative():
    base = Calibration(byte_ms_per_mb=2.0)
    cal = fit_agent_costs([Observation(5.0, 3.0, 5e5), Observation(5.2, 3.0, 5e5)], base)
    assert cal.byte_ms_per_mb == 2.0 and cal.hop_ms == pytest.approx(2.1 - 0.5 * 2.0)   # mean overhead - bytes
    # an overhead that shrinks with bytes is noise: a constant, not a negative per-byte cost
    cal = fit_agent_costs([Observation(3.0, 1.0, 1e5), Observation(2.5, 1.0, 2e6)])
    assert cal.byte_ms_per_mb == 0.0 and cal.hop_ms == pytest.approx(1.75)
    with pytest.raises(ValueError, match="no observations"):
        fit_agent_costs([])
    with pytest.raises(ValueError, match="cpu_ms > 0"):
        fit_agent_costs([Observation(0.0, 1.0, 10.0)])


def test_a_probe_rate_that_is_the_agents_cpu_is_not_counted_twice_but_a_slow_network_still_binds():
    cal = Calibration()
    prof = CostProfile.synthetic([0.1 * GFLOP] * 4, [2e6, 1e5, 1e5, 1e5, 4e3])
    share = 20 / cal.ref_core_gflops
    # the burst echo took exactly the agent's CPU to send and receive every byte and the broker's to pass
    # them on: no link time is left (cpu:q and broker count those)
    per_mb = 2 * cal.byte_ms_per_mb / share + 2e9 / cal.broker_bytes_per_s
    cpu_bound = 1e9 / per_mb                              # bytes/s
    quota = Device("q", 20, link_bytes_per_s=cpu_bound)
    assert quota.wire_ms(2e6, cal) == pytest.approx(0.0, abs=1e-9)
    slow_net = Device("n", 20, link_bytes_per_s=1e6)        # 1 MB/s: 2 s for the input
    one = Shape((0, 4), (("q",),), ((1.0,),))
    p_quota = evaluate(prof, {"q": quota}, one, cal)
    p_net = evaluate(prof, {"n": slow_net}, Shape((0, 4), (("n",),), ((1.0,),)), cal)
    assert p_quota.bottleneck == "cpu:q" and p_net.bottleneck == "in:n"
    floor = max(2 * slow_net.byte_cost_ms(cal) + 2e3 / cal.broker_bytes_per_s, cal.echo_ms_per_mb / 1e6 / share)
    assert p_net.busy_ms["in:n"] == pytest.approx(2e3 - 2e6 * floor, rel=1e-6)
    # latency alone: CPU + what the link adds, so the CPU-bound probe adds only the broker's transfer
    assert p_quota.latency_ms < p_quota.busy_ms["cpu:q"] + 2e6 / quota.link_bytes_per_s * 1e3


def test_a_devices_measured_efficiency_replaces_the_assumed_one():
    cal = Calibration(efficiency=0.7)
    prof = CostProfile.synthetic([1 * GFLOP] * 4, [1e3] * 5)
    shape = Shape((0, 4), (("a",),), ((1.0,),))
    assumed = evaluate(prof, {"a": Device("a", 50)}, shape, cal)
    measured = evaluate(prof, {"a": Device("a", 50, efficiency=0.35)}, shape, cal)
    compute = 4 * GFLOP / (50e9 * 0.7) * 1e3
    assert measured.busy_ms["cpu:a"] - assumed.busy_ms["cpu:a"] == pytest.approx(compute, rel=1e-6)


def test_candidates_in_one_one_percent_bucket_are_ordered_by_their_exact_throughput():
    # two equal devices, tiny activations: replicas and a 2-stage pipeline land within 1 % of each other;
    # replicas save a hop, so they must win on the exact figure (not on the label's spelling)
    prof = CostProfile.synthetic([GFLOP] * 10, [1e4] + [1e3] * 9 + [4e3])
    devs = [Device("a", 20, link_bytes_per_s=1e9), Device("b", 20, link_bytes_per_s=1e9)]
    found = search(prof, devs)
    pipe = next(c for c in found.ranked if c.shape.kind == "pipeline")
    assert found.best.shape.kind == "replicas"
    assert found.best.prediction.throughput_rps > pipe.prediction.throughput_rps


def test_one_request_alone_on_a_quota_device_runs_at_full_speed_while_the_periods_quota_lasts():
    cal = Calibration(efficiency=0.5, quota_period_ms=100.0)
    one = Shape((0, 1), (("q",),), ((1.0,),))
    quota = Device("q", 20, peak_gflops=100)          # a fifth of a core: 20 ms of every 100 ms period
    full = quota.at_peak()

    def cpu(gflop: float) -> float:
        return full.compute_ms(gflop * GFLOP, cal) + full.hop_cost_ms(cal) + 2e3 * full.byte_cost_ms(cal)

    # ~11 ms fits in a period's 20 ms: arriving late in a period, it runs on into the next one's fresh quota
    assert quota.alone_ms(0.5 * GFLOP, 2e3, cal) == pytest.approx(cpu(0.5))
    # ~31 ms: more than a period's 20 ms, so nearly every arrival waits once; ~71 ms: three or four times
    mid, big = quota.alone_ms(1.5 * GFLOP, 2e3, cal), quota.alone_ms(3.5 * GFLOP, 2e3, cal)
    assert cpu(1.5) + 30 < mid < cpu(1.5) + 80
    assert cpu(3.5) + 3 * 60 < big < cpu(3.5) + 4 * 80
    # a device without a quota: its CPU time
    assert Device("d", 20).alone_ms(GFLOP, 0.0, cal) == pytest.approx(
        Device("d", 20).compute_ms(GFLOP, cal) + Device("d", 20).hop_cost_ms(cal))
    for gflop in (0.5, 1.5, 3.5):
        prof = CostProfile.synthetic([gflop * GFLOP], [1e3, 1e3])
        burst = evaluate(prof, {"q": quota}, one, cal)
        flat = evaluate(prof, {"q": Device("q", 20)}, one, cal)
        # the same sustained throughput; alone, the request is faster than at the sustained speed
        assert burst.throughput_rps == pytest.approx(flat.throughput_rps)
        assert burst.latency_ms < flat.latency_ms


def test_latency_counts_each_byte_once_along_its_path():
    """One request alone on a loopback-fast fleet: the device's CPU (compute, per hop, per byte), the broker's
    per byte and per message, the caller's, the round trips: and no link time on top of the CPU that the
    link probe's echo already was (the sum the earlier model made counted the bytes three times over)."""
    cal = Calibration()
    mb = 1e6
    prof = CostProfile.synthetic([0.0, 0.0], [mb, mb, mb])     # no compute: bytes only
    # the device's echo read what a loopback echo reads: a CPU-bound link
    per_mb = cal.echo_ms_per_mb
    d = Device("d", cal.ref_core_gflops, link_bytes_per_s=1e9 / per_mb, rtt_ms=0.3)
    p = evaluate(prof, {"d": d}, Shape((0, 2), (("d",),), ((1.0,),)), cal)
    device = cal.hop_ms + 2 * cal.byte_ms_per_mb + 0.3                     # 1 MB in, 1 MB out
    broker = 2 * (2 * mb / cal.broker_bytes_per_s * 1e3 + 2 * cal.broker_msg_ms)   # request and answer
    client = cal.client_hop_ms + 2 * cal.client_byte_ms_per_mb + cal.client_rtt_ms
    assert p.latency_ms == pytest.approx(device + broker + client, rel=1e-6)
    # a caller whose measured link is a slow network pays its wire time; a fast one adds nothing
    slow = dataclasses.replace(cal, client_link_bytes_per_s=10e6)             # 10 MB/s: 100 ms per MB
    q = evaluate(prof, {"d": d}, Shape((0, 2), (("d",),), ((1.0,),)), slow)
    # less what its echo reads where only CPU limits it (its CPU and the broker's, or the loopback echo's)
    wire = 2 * (100.0 - max(2 * cal.client_byte_ms_per_mb + 2e9 / cal.broker_bytes_per_s, cal.echo_ms_per_mb))
    assert q.latency_ms == pytest.approx(p.latency_ms + wire, rel=1e-6)
    fast = dataclasses.replace(cal, client_link_bytes_per_s=1e9 / cal.echo_ms_per_mb)   # a loopback echo
    assert evaluate(prof, {"d": d}, Shape((0, 2), (("d",),), ((1.0,),)), fast).latency_ms == pytest.approx(p.latency_ms)
