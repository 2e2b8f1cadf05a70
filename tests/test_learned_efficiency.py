"""LearnedEfficiency: a model's efficiency on a device, learned from the run times its agent reports (no I/O)."""

from __future__ import annotations

import pytest

from edge_agent.operator.telemetry import LearnedEfficiency
from models.planner import Calibration, Device


def test_efficiency_is_flops_over_run_time_at_burst_speed_and_predicts_that_run_back():
    le = LearnedEfficiency(alpha=1.0)
    # 0.2-core quota: sustained 20, burst 100 GFLOP/s; two stages of 50 and 30 MFLOP ran in 1.0 and 0.6 ms
    eff = le.observe("sha", "dev", [(50e6, 1.0, True), (30e6, 0.6, True)], sustained=20.0, peak=100.0)
    assert eff == pytest.approx(80e6 / (1.6e-3 * 100e9))
    assert le.for_model("sha") == {"dev": eff} and le.for_model("other") == {}
    d = Device("dev", 20.0, peak_gflops=100.0, efficiency=eff)
    cal = Calibration()
    assert d.at_peak().compute_ms(80e6, cal) == pytest.approx(1.6)        # alone: the run it reported
    assert d.compute_ms(80e6, cal) == pytest.approx(1.6 * 100 / 20)       # per request at the quota's rate


def test_a_run_time_ewma_longer_than_a_quota_period_allows_is_not_learned_a_full_speed_median_is():
    le = LearnedEfficiency(alpha=0.5)
    # 20 ms of budget per 100 ms period: an EWMA of 30 ms (an older agent) includes waits for the next period
    assert le.observe("sha", "dev", [(1e9, 30.0, False)], sustained=20.0, peak=100.0) is None
    assert le.for_model("sha") == {}
    # a median at full speed (CPU time of runs the quota cut) is the run itself, however long
    e0 = le.observe("sha", "dev", [(1e9, 30.0, True)], sustained=20.0, peak=100.0)
    assert e0 == pytest.approx(1e9 / (30e-3 * 100e9))
    # without a quota (burst not above sustained) any run time is the device's own
    e1 = le.observe("sha", "fast", [(1e9, 30.0, False)], sustained=50.0, peak=None)
    assert e1 == pytest.approx(1e9 / (30e-3 * 50e9))
    e2 = le.observe("sha", "fast", [(1e9, 20.0, False)], sustained=50.0, peak=50.0)
    assert e2 == pytest.approx(0.5 * e1 + 0.5 * 1e9 / (20e-3 * 50e9))
    # nothing to learn from: no FLOPs, no run time, no speed
    assert le.observe("sha", "dev", [(0.0, 1.0, True), (1e6, 0.0, True)], sustained=50.0, peak=None) is None
    assert le.observe("sha", "dev", [(1e6, 1.0, True)], sustained=0.0, peak=None) is None
    assert le.observe("", "dev", [(1e6, 1.0, True)], sustained=50.0, peak=None) is None


def test_a_run_at_full_speed_is_its_wall_time_when_it_had_the_cpu_else_its_thread_cpu_time():
    from edge_agent.agent.server import full_speed_ms

    class B:
        def __init__(self, threads: int = 1, paced: bool = False) -> None:
            self.threads, self.paced = threads, paced

    # had the CPU throughout (thread CPU >= 0.7 of the wall time): the wall time
    assert full_speed_ms(B(), 0.010, 0.0095, 0.009) == pytest.approx(10.0)
    # a quota's period ended mid-run: 9 ms of CPU over 85 ms of wall time is a 9 ms run
    assert full_speed_ms(B(), 0.085, 0.0095, 0.009) == pytest.approx(9.0)
    # the network thread's work during the run (process CPU) does not hide a wait of the run's own thread
    assert full_speed_ms(B(), 0.085, 0.070, 0.009) == pytest.approx(9.0)
    # several threads: unstretched by the pool's CPU, else unknown (idle workers may sleep)
    assert full_speed_ms(B(threads=2), 0.010, 0.019, 0.0095) == pytest.approx(10.0)
    assert full_speed_ms(B(threads=2), 0.085, 0.019, 0.0095) is None
    # a paced backend (the lab's slowdown sleeps to emulate a slower device): its wall time, always
    assert full_speed_ms(B(paced=True), 0.040, 0.010, 0.010) == pytest.approx(40.0)
    # a backend that does not say: one thread, not paced
    assert full_speed_ms(object(), 0.085, 0.0095, 0.009) == pytest.approx(9.0)


def test_load_reports_carry_the_median_run_time_and_older_six_value_entries_still_parse():
    from edge_agent.protocol.messages import LoadReport, load_stage_entries, load_stage_medians

    rep = LoadReport.from_bytes(LoadReport("d", 0, 1.0, stages=[
        ["m", 1, 0, 10, 0, 9.5, 2.25],      # EWMA stretched by one quota wait; the median is not
        ["m", 1, 1, 10, 0, 3.0],            # an older agent: no median
        ["m", 1, 2, 0, 0, 0.0, 0.0],        # never ran
        ["m", 1, 3, 5, 0, 1.0, "x"],        # malformed median: the entry still counts, the median does not
    ]).to_bytes())
    assert [e[:3] for e in load_stage_entries(rep)] == [("m", 1, 0), ("m", 1, 1), ("m", 1, 2), ("m", 1, 3)]
    assert load_stage_medians(rep) == {("m", 1, 0): 2.25}
