"""The lab's emulated slow device: a backend wrapper that stretches each run, and an entry point that takes
``edge-agent run``'s options plus ``--slowdown`` (which the production daemon no longer has)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from edge_agent.agent.backend import load_backend
from edge_agent.lab.device import SlowBackend, slowdown
from models import zoo


class FakeClock:
    """Returns the given instants in turn, so a 'measured' run time is known exactly."""

    def __init__(self, *instants: float) -> None:
        self.instants = list(instants)

    def __call__(self) -> float:
        return self.instants.pop(0)


def _mlp_backend():  # noqa: ANN202
    model = zoo.build("mlp", seed=2)
    return load_backend(model.SerializeToString(), threads=1), zoo.sample_inputs(model)


def test_slow_backend_sleeps_factor_minus_one_times_the_measured_run_and_returns_the_inner_outputs() -> None:
    inner, feeds = _mlp_backend()
    sleeps: list[float] = []
    slow = SlowBackend(inner, 6, clock=FakeClock(10.0, 10.004), sleep=sleeps.append)
    got = slow.run(feeds)
    want = inner.run(feeds)
    assert sleeps == [pytest.approx(5 * 0.004)]   # run 4 ms + sleep 20 ms = 6 x the run
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_slow_backend_with_factor_one_never_sleeps_and_below_one_is_refused() -> None:
    inner, feeds = _mlp_backend()
    sleeps: list[float] = []
    SlowBackend(inner, 1, clock=FakeClock(1.0, 2.0), sleep=sleeps.append).run(feeds)
    assert sleeps == []
    with pytest.raises(ValueError, match=">= 1"):
        SlowBackend(inner, 0.5)
    with pytest.raises(ValueError, match="--slowdown"):
        slowdown(0.5)


def test_slow_backend_shows_the_inner_backends_name_reason_io_and_warm_state() -> None:
    inner, _ = _mlp_backend()
    slow = slowdown(3)(inner)
    assert isinstance(slow, SlowBackend) and slow.factor == 3
    assert (slow.name, slow.reason, slow.inputs, slow.outputs, slow.warmed) == \
        (inner.name, inner.reason, inner.inputs, inner.outputs, inner.warmed)
    slow.warmed = False
    assert inner.warmed is False


def _long_options(*argv: str) -> set[str]:
    res = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", res.stdout))


def test_the_daemon_has_no_slowdown_flag_and_the_lab_device_has_every_run_flag_plus_slowdown() -> None:
    run_flags = _long_options("-m", "edge_agent.cli", "run")
    device_flags = _long_options("-m", "edge_agent.lab.device")
    assert "--slowdown" not in run_flags
    assert {"--name", "--broker", "--trust", "--dev", "--gflops"} <= run_flags
    assert device_flags == run_flags | {"--slowdown"}
