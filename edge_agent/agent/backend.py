"""Execution backends for one stage: the native kernel core when it runs every op, else ONNX Runtime.

Both sit behind one small interface, so the pipeline does not care which one runs a shard; the choice
and its reason are reported in the device state (``fleet ls``) and logs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_agent.protocol.errors import InvalidInputError

log = logging.getLogger("edge_agent.backend")

ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64",
    "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class IOSpec:
    name: str
    dtype: str
    shape: tuple  # ints for fixed dims, str/None for dynamic

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> IOSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


def check_inputs(specs: list[IOSpec], inputs: dict[str, np.ndarray], where: str) -> None:
    """Raise InvalidInputError unless ``inputs`` has every spec'd name with the right dtype and shape."""
    names = {s.name for s in specs}
    for s in specs:
        if s.name not in inputs:
            raise InvalidInputError(f"{where}: missing input '{s.name}' (expected {s.dtype} "
                                    f"{list(s.shape)}; given: {sorted(inputs) or 'none'})")
        arr = inputs[s.name]
        if not isinstance(arr, np.ndarray):
            raise InvalidInputError(f"{where}: input '{s.name}' must be a numpy array, got {type(arr).__name__}")
        if arr.dtype.name != s.dtype:
            raise InvalidInputError(f"{where}: input '{s.name}' expected dtype {s.dtype}, got {arr.dtype.name}")
        if len(arr.shape) != len(s.shape) or any(
                isinstance(d, int) and d >= 0 and d != a for d, a in zip(s.shape, arr.shape)):
            raise InvalidInputError(f"{where}: input '{s.name}' expected shape {list(s.shape)}, "
                                    f"got {list(arr.shape)}")
    extra = set(inputs) - names
    if extra:
        raise InvalidInputError(f"{where}: unknown input(s) {sorted(extra)}; model inputs are {sorted(names)}")


class Backend(Protocol):
    name: str
    reason: str
    warmed: bool
    inputs: list[IOSpec]
    outputs: list[IOSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def warm_up(backend: Backend) -> bool:
    """Run the backend once on zeros (named or unknown dims taken as 1, i.e. a batch of one), so the
    first real request does not pay for per-shape plans and buffer pools (tens of ms on a large
    stage). Returns whether it ran; a failure is logged and left to real requests to report."""
    feeds = {}
    for spec in backend.inputs:
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
        try:
            feeds[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
        except TypeError:
            return False
    try:
        backend.run(feeds)
    except Exception as exc:  # noqa: BLE001 - a model may legitimately reject all-zero input
        log.debug("warm-up run of the %s backend failed: %s", backend.name, exc)
        return False
    return True


class OrtBackend:
    """ONNX Runtime on the CPU execution provider."""

    name = "onnxruntime"
    warmed = False

    def __init__(self, model_bytes: bytes, threads: int = 1, reason: str = "") -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self._sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        self.inputs = [IOSpec(i.name, ORT_TYPES.get(i.type, i.type), tuple(i.shape)) for i in self._sess.get_inputs()]
        self.outputs = [IOSpec(o.name, ORT_TYPES.get(o.type, o.type), tuple(o.shape)) for o in self._sess.get_outputs()]
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

        self._sess = ops_native.InferenceSession(model_bytes, threads=threads)
        self.inputs = [IOSpec(i.name, np.dtype(i.dtype).name, tuple(i.shape)) for i in self._sess.get_inputs()]
        self.outputs = [IOSpec(o.name, np.dtype(o.dtype).name, tuple(o.shape)) for o in self._sess.get_outputs()]
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
