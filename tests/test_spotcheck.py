"""Spot-checking: a device that returns wrong results is found by re-running a sample of requests on ONNX
Runtime, reported in status, and taken out of the operator's routing. Real Mosquitto, a real agent process
and an in-process agent whose backend lies (the lab's kind of wrapper, injected through AgentConfig)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent import Fleet
from edge_agent.agent.daemon import Agent, AgentConfig
from edge_agent.lab.sim import SimFleet
from edge_agent.operator.spotcheck import Tolerance
from models import zoo

from .conftest import ort_reference


class LyingBackend:
    """Runs the real stage, then adds 1 to every float output."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.name, self.reason, self.inputs, self.outputs = inner.name, inner.reason, inner.inputs, inner.outputs
        self.warmed = inner.warmed

    def run(self, feeds: dict) -> dict:
        return {k: v + 1 if v.dtype.kind == "f" else v for k, v in self.inner.run(feeds).items()}


def test_tolerance_is_relative_to_the_output_scale() -> None:
    tol = Tolerance(rtol=1e-3, atol=1e-4)
    w = {"y": np.array([1000.0, 0.0])}
    assert tol.differs({"y": np.array([1000.5, 0.05])}, w) == ""
    assert "off by" in tol.differs({"y": np.array([1000.0, 0.5])}, w)
    assert "shape" in tol.differs({"y": np.zeros(3)}, w)


@pytest.mark.timeout(240)
def test_a_lying_replica_is_found_reported_and_routed_around(tmp_path, mosquitto_available) -> None:
    model = zoo.build("mlp", seed=31)
    x = zoo.sample_inputs(model)
    want = ort_reference(model, x)
    with SimFleet(1, broker_kind="mosquitto", workdir=tmp_path / "fleet", discovery=False) as sim:
        liar = Agent(AgentConfig(name="liar", broker=sim.broker_url, data_dir=tmp_path / "liar", dev_mode=True,
                                 discovery=False, gflops=50.0, wrap_backend=LyingBackend)).start()
        try:
            with Fleet(sim.broker_url) as fleet:
                fleet.wait_for_devices(2, timeout=60)
                fleet.deploy(model, "checked", stages=1, replicas=2, devices=["dev-0", "liar"], timeout=120,
                             verify_fraction=1.0)
                served: list[str] = []
                for _ in range(40):
                    out, timings = fleet.infer("checked", x, with_timings=True)
                    served.append(timings[0]["device"])
                report = fleet.status("checked")["spot_check"]
                assert "liar" in served[:20] and report["devices"]["liar"]["disagreed"] >= 3
                assert report["devices"].get("dev-0", {}).get("disagreed", 0) == 0
                assert report["excluded"] == ["liar"]
                # once excluded, every request goes to the honest replica and is right
                for _ in range(10):
                    out, timings = fleet.infer("checked", x, with_timings=True)
                    assert timings[0]["device"] == "dev-0"
                    np.testing.assert_allclose(out["output"], want["output"], rtol=1e-4, atol=1e-4)
        finally:
            liar.stop()
