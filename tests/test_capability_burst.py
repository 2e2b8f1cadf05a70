"""The GEMM probe under a CPU quota: sustained and burst rates (fake clock, no cgroup)."""

from __future__ import annotations

import pytest

from edge_agent.agent import capability


def test_probe_reports_the_quota_as_sustained_and_full_speed_as_burst(monkeypatch):
    # each GEMM takes 1 ms while running; the quota allows 25 ms of every 100 ms period
    flops = 1e8
    monkeypatch.setattr(capability, "_gemm_step", lambda threads: ((lambda: None), flops, "fake"))
    times = iter([p * 0.1 + k * 0.001 for p in range(40) for k in range(25)])
    sustained, burst, source = capability.measure_gflops_burst(seconds=3.0, clock=lambda: next(times))
    assert source == "fake"
    assert sustained == pytest.approx(250 * flops / 1e9, rel=0.05)     # 25 % of the full speed
    assert burst == pytest.approx(1000 * flops / 1e9, rel=0.01)        # one GEMM at full speed
    # the two-value probe the agent used before still answers with the sustained rate
    times = iter([p * 0.1 + k * 0.001 for p in range(40) for k in range(25)])
    assert capability.measure_gflops(seconds=3.0, clock=lambda: next(times)) == (sustained, "fake")
