"""Stage backends: which one a shard gets and why, the warm-up run at load, and results against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edge_agent.agent.backend import load_backend, warm_up
from models import zoo

from .conftest import ort_reference


@pytest.mark.parametrize("prefer,name", [("auto", "ops_native"), ("native", "ops_native"),
                                         ("onnxruntime", "onnxruntime")])
def test_load_backend_picks_as_asked_warms_static_shapes_and_matches_onnxruntime(prefer: str, name: str) -> None:
    model = zoo.build("mlp", seed=2)
    backend = load_backend(model.SerializeToString(), threads=1, prefer=prefer)
    assert backend.name == name and backend.reason
    assert backend.warmed   # static input shape: one run on zeros at load
    feeds = zoo.sample_inputs(model)
    got = backend.run(feeds)
    want = ort_reference(model, feeds)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-4)


def test_dynamic_dims_warm_up_as_one_and_other_sizes_still_run() -> None:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "dyn",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    backend = load_backend(model.SerializeToString())
    assert backend.warmed
    x = np.array([[-1.0, 2.0, -3.0, 4.0]] * 3, np.float32)
    np.testing.assert_array_equal(backend.run({"x": x})["y"], np.maximum(x, 0))


def test_a_failing_warm_up_is_reported_not_raised() -> None:
    backend = load_backend(zoo.build("mlp", seed=2).SerializeToString())

    def boom(feeds: dict) -> dict:
        raise RuntimeError("rejects zeros")

    backend.run = boom
    assert warm_up(backend) is False


def test_unknown_backend_preference_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(b"", prefer="gpu")
