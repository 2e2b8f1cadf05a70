"""LearnedEfficiency: a model's efficiency on a device, learned from the run times its agent reports (no I/O)."""

from __future__ import annotations

import pytest

from edge_agent.operator.telemetry import LearnedEfficiency
from models.planner import Calibration, Device


def test_efficiency_is_flops_over_run_time_at_burst_speed_and_predicts_that_run_back():
    le = LearnedEfficiency(alpha=1.0)
    # 0.2-core quota: sustained 20, burst 100 GFLOP/s; two stages of 50 and 30 MFLOP ran in 1.0 and 0.6 ms
    eff = le.observe("sha", "dev", [(50e6, 1.0), (30e6, 0.6)], sustained=20.0, peak=100.0)
    assert eff == pytest.approx(80e6 / (1.6e-3 * 100e9))
    assert le.for_model("sha") == {"dev": eff} and le.for_model("other") == {}
    d = Device("dev", 20.0, peak_gflops=100.0, efficiency=eff)
    cal = Calibration()
    assert d.at_peak().compute_ms(80e6, cal) == pytest.approx(1.6)        # alone: the run it reported
    assert d.compute_ms(80e6, cal) == pytest.approx(1.6 * 100 / 20)       # per request at the quota's rate


def test_runs_longer_than_a_quota_period_allows_are_not_learned_and_reports_are_averaged():
    le = LearnedEfficiency(alpha=0.5)
    # 20 ms of budget per 100 ms period: a 30 ms wall time includes a wait for the next period
    assert le.observe("sha", "dev", [(1e9, 30.0)], sustained=20.0, peak=100.0) is None
    assert le.for_model("sha") == {}
    # without a quota (burst not above sustained) any run time is the device's own
    e1 = le.observe("sha", "dev", [(1e9, 30.0)], sustained=50.0, peak=None)
    assert e1 == pytest.approx(1e9 / (30e-3 * 50e9))
    e2 = le.observe("sha", "dev", [(1e9, 20.0)], sustained=50.0, peak=50.0)
    assert e2 == pytest.approx(0.5 * e1 + 0.5 * 1e9 / (20e-3 * 50e9))
    # nothing to learn from: no FLOPs, no run time, no speed
    assert le.observe("sha", "dev", [(0.0, 1.0), (1e6, 0.0)], sustained=50.0, peak=None) is None
    assert le.observe("sha", "dev", [(1e6, 1.0)], sustained=0.0, peak=None) is None
    assert le.observe("", "dev", [(1e6, 1.0)], sustained=50.0, peak=None) is None


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
