"""Emulated devices: a real agent whose stages run slower, for fleets of unequal devices on one machine.

The production daemon has no such flag; the lab injects a backend wrapper through
``AgentConfig.wrap_backend``. Run it like ``edge-agent run``, with one more option::

    python -m edge_agent.lab.device --name slow --broker mqtt://127.0.0.1:1883 --dev --slowdown 6

Every stage run then takes 6 times as long as it really does (the run, then a sleep of 5 times its
duration), and the device advertises its measured GFLOP/s divided by 6 unless ``--gflops`` is given.
``SimFleet.add_device(..., slowdown=6)`` starts such a device.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.agent.backend import Backend
from edge_agent.cli.main import run_command, setup_logging
from edge_agent.cli.options import add_common_arguments, add_run_arguments
from edge_agent.cli.serve import agent_config, serve_agent
from models.graph import TensorSpec

if TYPE_CHECKING:
    from edge_agent.agent.daemon import Agent


class SlowBackend:
    """Wraps a stage backend so each run takes ``factor`` times as long: it runs the inner backend, then
    sleeps ``(factor - 1) x`` the measured run time. Name, reason, inputs, outputs, threads and ``warmed`` are
    the inner backend's. It is *paced*: its wall time is the emulated device's speed, although most of it is
    sleep (the agent learns its speed from that, not from CPU time). ``clock`` and ``sleep`` are injectable
    for tests."""

    paced = True

    def __init__(self, inner: Backend, factor: float, *, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if factor < 1.0:
            raise ValueError(f"slowdown factor must be >= 1 (a device cannot be made faster), got {factor}")
        self.inner = inner
        self.factor = float(factor)
        self._clock = clock
        self._sleep = sleep

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def reason(self) -> str:
        return self.inner.reason

    @property
    def threads(self) -> int:
        return int(getattr(self.inner, "threads", 1))

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.inner.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.inner.outputs

    @property
    def warmed(self) -> bool:
        return self.inner.warmed

    @warmed.setter
    def warmed(self, value: bool) -> None:
        self.inner.warmed = value

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = self._clock()
        outs = self.inner.run(feeds)
        elapsed = self._clock() - t0
        if self.factor > 1.0:
            self._sleep((self.factor - 1.0) * elapsed)
        return outs


def slowdown(factor: float) -> Callable[[Backend], Backend]:
    """The ``AgentConfig.wrap_backend`` that makes every stage of a device ``factor`` times slower."""
    if factor < 1.0:
        raise ValueError(f"--slowdown must be >= 1, got {factor}")

    def wrap(backend: Backend) -> Backend:
        return SlowBackend(backend, factor)

    return wrap


def build_parser() -> argparse.ArgumentParser:
    """``edge-agent run``'s options (shared with the CLI, not copied) plus ``--slowdown``."""
    p = argparse.ArgumentParser(prog="python -m edge_agent.lab.device",
                                description="An emulated (slower) device: `edge-agent run` plus --slowdown.")
    add_common_arguments(p)
    add_run_arguments(p)
    p.add_argument("--slowdown", type=float, default=1.0,
                   help="each stage run takes N times longer; measured GFLOP/s are divided by N")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    factor = args.slowdown

    def run(args: argparse.Namespace) -> int:
        cfg = agent_config(args)
        cfg.wrap_backend = slowdown(factor)

        def scale_gflops(agent: Agent) -> None:
            if args.gflops is None:
                agent.gflops /= factor
                if agent.burst_gflops is not None:   # every run is slowed, the first one too
                    agent.burst_gflops /= factor
                agent.gflops_source = f"{agent.gflops_source} / {factor:g} (lab slowdown)"
                probe = agent.gflops_probe

                def slowed(seconds: float, threads: int) -> tuple:   # idle re-measurements
                    *values, source = probe(seconds, threads)
                    return (*(v / factor for v in values), f"{source} / {factor:g} (lab slowdown)")

                agent.gflops_probe = slowed  # type: ignore[method-assign]

        return serve_agent(cfg, prepare=scale_gflops)

    return run_command(run, args)


if __name__ == "__main__":
    raise SystemExit(main())
