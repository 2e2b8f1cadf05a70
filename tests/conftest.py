"""Shared fixtures: real brokers and simulated fleets of real agent processes."""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from edge_agent.transport.broker import Broker, find_mosquitto

CLONE_NEWNET = 0x40000000


def _enter_private_network_namespace() -> None:
    """Move this process into a network namespace of its own, with only a loopback interface up.

    `make test` sets ``EDGE_AGENT_TEST_NETNS=1`` (as root) to run the fleet tests on several pytest-xdist
    workers: each worker gets its own loopback, so its brokers, agents and mDNS names cannot meet another
    worker's. Called before any test opens a socket; the agents, brokers and threads the worker starts
    afterwards inherit the namespace.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise pytest.UsageError(f"EDGE_AGENT_TEST_NETNS=1 but unshare(CLONE_NEWNET) failed: {os.strerror(err)} "
                                "(needs root; unset EDGE_AGENT_TEST_NETNS to run the fleet tests serially)")
    res = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if res.returncode != 0:
        raise pytest.UsageError(f"cannot bring up loopback in the worker's network namespace: {res.stderr.strip()}")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("EDGE_AGENT_TEST_NETNS") == "1" and os.environ.get("PYTEST_XDIST_WORKER"):
        _enter_private_network_namespace()


def wait_until(cond: Callable[[], object], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> object:
    """Poll ``cond`` until truthy; fail the test with ``what`` if it never becomes true."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or cond}")


@pytest.fixture(scope="session")
def mosquitto_available() -> str:
    exe = find_mosquitto()
    if exe is None:
        pytest.fail("mosquitto is not installed: run .ci/run or `apt-get install mosquitto`")
    return exe


@pytest.fixture
def mosquitto(mosquitto_available: str, tmp_path) -> Iterator[Broker]:
    """A private Mosquitto on a free loopback port (TCP_NODELAY, large queues)."""
    with Broker.start("mosquitto", workdir=str(tmp_path / "broker")) as b:
        yield b


@pytest.fixture(params=["mosquitto", "embedded"])
def any_broker(request, mosquitto_available: str, tmp_path) -> Iterator[Broker]:
    """Each test runs against Mosquitto and against the embedded (amqtt, MQTT 3.1.1) broker."""
    with Broker.start(request.param, workdir=str(tmp_path / "broker")) as b:
        yield b


def ort_reference(model, inputs: dict) -> dict:  # noqa: ANN001 - an onnx.ModelProto
    """Outputs of ONNX Runtime (CPU) on the whole model: the reference every inference path is held to.
    int8 weights of integer ops go to ORT as uint8 + 128 (models/quantized.py: its exact path)."""
    import onnxruntime as ort

    from models.quantized import int8_weights_as_uint8

    sess = ort.InferenceSession(int8_weights_as_uint8(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))


_DYNAMIC_QUANT_OPS = {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"}


def is_dynamically_quantized(model) -> bool:  # noqa: ANN001 - an onnx.ModelProto
    """Whether the model quantises activations at run time (quantize_dynamic's ops)."""
    return any(n.op_type in _DYNAMIC_QUANT_OPS for n in model.graph.node)


def assert_model_output_close(got: np.ndarray, want: np.ndarray, where: str, dynamic_quant: bool) -> None:
    """A whole model's output against ORT's (see tests/test_corpus_native.py for the two tolerances: fp32
    summation order; or, for dynamically quantised models, activations one quantisation step apart)."""
    assert got.shape == want.shape and got.dtype == want.dtype, where
    if want.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=where)
        return
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    if dynamic_quant:
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-2 * scale, err_msg=where)
        if want.ndim and want.shape[-1] > 1:
            assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.98, where
    else:
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * scale, err_msg=where)


def assert_matches(got: dict, want: dict, rtol: float = 1e-4, atol: float = 1e-4) -> None:
    """Same output names and shapes, values within rtol/atol (1e-4 unless stated)."""
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.fixture(params=__import__("ops_native")._core.available_isas())
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with the kernels of one ISA (every one this CPU offers), restoring the default after."""
    from ops_native import _core

    before = _core.isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


# The slowest fleet-test files (measured, about 60-190 s each), started first so that pytest-xdist's
# one-file-per-worker scheduling ends with short files on both workers rather than one long file on one.
SLOW_FILES_FIRST = ("test_fleet_e2e.py", "test_corpus_fleet.py", "test_netlab.py", "test_reliability.py",
                    "test_import_cycles.py", "test_trust_e2e.py", "test_streams_e2e.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: each file keeps its order
