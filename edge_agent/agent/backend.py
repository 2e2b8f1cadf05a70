"""Execution backends for one stage: the native kernel core when it runs every op, else ONNX Runtime.

Both sit behind one small interface, so the pipeline does not care which one runs a shard; the choice
and its reason are reported in the device state (``fleet ls``) and logs.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from edge_agent.protocol.errors import InvalidInputError
from models import graph
from models.graph import TensorSpec

log = logging.getLogger("edge_agent.backend")

ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64",
    "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


def check_inputs(specs: list[TensorSpec], inputs: dict[str, np.ndarray], where: str) -> None:
    """:func:`models.graph.check_inputs`, raising this package's InvalidInputError (an EdgeAgentError)."""
    graph.check_inputs(specs, inputs, where, error=InvalidInputError)


class Backend(Protocol):
    """A stage's runner. ``threads``: the threads a run computes on (1: the calling thread alone). A backend
    whose wall time is its speed by design (the lab's slowdown, which sleeps) sets ``paced = True``;
    see :func:`edge_agent.agent.server.full_speed_ms`."""

    name: str
    reason: str
    warmed: bool
    threads: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def warm_up(backend: Backend) -> bool:
    """Run the backend once on zeros (named or unknown dims taken as 1, i.e. a batch of one), so the
    first real request does not pay for per-shape plans and buffer pools (tens of ms on a large
    stage). Returns whether it ran; a failure is logged and left to real requests to report."""
    feeds = {}
    for spec in backend.inputs:
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
        try:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        except TypeError:
            return False
    try:
        backend.run(feeds)
    except Exception as exc:  # noqa: BLE001 - a model may legitimately reject all-zero input
        log.debug("warm-up run of the %s backend failed: %s", backend.name, exc)
        return False
    return True


def _ort_spec(arg: Any) -> TensorSpec:
    """An ONNX Runtime NodeArg as a TensorSpec (an unknown element type stays an object dtype)."""
    name = ORT_TYPES.get(arg.type)
    return TensorSpec(arg.name, np.dtype(name) if name else np.dtype(object), tuple(arg.shape))


class OrtBackend:
    """ONNX Runtime on the CPU execution provider."""

    name = "onnxruntime"
    warmed = False

    def __init__(self, model_bytes: bytes, threads: int = 1, reason: str = "") -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        self.threads = max(1, threads)
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self._sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        self.inputs = [_ort_spec(i) for i in self._sess.get_inputs()]
        self.outputs = [_ort_spec(o) for o in self._sess.get_outputs()]
        self._out_names = [o.name for o in self.outputs]
        self.reason = reason

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(self._out_names, feeds)
        return dict(zip(self._out_names, outs))


class NativeBackend:
    """The native kernel core (ops_native)."""

    name = "ops_native"
    warmed = False

    def __init__(self, model_bytes: bytes, threads: int = 1, reason: str = "") -> None:
        import ops_native

        self.threads = max(1, threads)
        self._sess = ops_native.InferenceSession(model_bytes, threads=self.threads)
        self.inputs = list(self._sess.get_inputs())     # ops_native.TensorInfo is a TensorSpec
        self.outputs = list(self._sess.get_outputs())
        self._out_names = [o.name for o in self.outputs]
        self.reason = reason

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(self._out_names, feeds)
        return dict(zip(self._out_names, outs))


def native_unsupported(model_bytes: bytes) -> list[str] | None:
    """Op types of the model the native core cannot run; None when the native core is unavailable."""
    try:
        import onnx

        import ops_native
        if not hasattr(ops_native, "unsupported_ops"):
            return None
        return list(ops_native.unsupported_ops(onnx.load_from_string(model_bytes)))
    except ImportError:
        return None


def load_backend(model_bytes: bytes, threads: int = 1, prefer: str = "auto") -> Backend:
    """Pick and load the backend for a shard: ``auto`` (native when it supports every op), ``native`` or
    ``onnxruntime``. The chosen backend's ``reason`` says why."""
    if prefer not in ("auto", "native", "onnxruntime"):
        raise ValueError(f"unknown backend {prefer!r} (auto, native, onnxruntime)")
    backend = _pick_backend(model_bytes, threads, prefer)
    backend.warmed = warm_up(backend)
    return backend


def _pick_backend(model_bytes: bytes, threads: int, prefer: str) -> Backend:
    if prefer == "onnxruntime":
        return OrtBackend(model_bytes, threads, reason="forced by --backend onnxruntime")
    missing = native_unsupported(model_bytes)
    if missing is None:
        if prefer == "native":
            raise RuntimeError("the native core (ops_native) is not available in this build")
        return OrtBackend(model_bytes, threads, reason="native core not available")
    if missing:
        if prefer == "native":
            raise RuntimeError(f"the native core lacks op(s) {', '.join(missing)}")
        return OrtBackend(model_bytes, threads, reason=f"native core lacks {', '.join(sorted(missing))}")
    try:
        return NativeBackend(model_bytes, threads, reason="native core supports every op")
    except Exception as exc:
        if prefer == "native":
            raise
        log.warning("native core failed to load the shard (%s); using ONNX Runtime", exc)
        return OrtBackend(model_bytes, threads, reason=f"native core failed to load: {exc}")
