"""InferenceSession: the ONNX Runtime-like front of the ops_native executor."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any

import numpy as np
import onnx

from ops_native import _core
from ops_native.compiler import compile_model
from ops_native.errors import InvalidInputError, InvalidModelError, OpsNativeError, UnsupportedOpError
from ops_native.loader import TensorInfo, load_model
from ops_native.ops import MAX_TENSOR_BYTES, OpNotSupported, display_op
from ops_native.steps import release


class InferenceSession:
    """Run an ONNX model with the native kernels.

    >>> sess = InferenceSession("model.onnx", threads=2)
    >>> y, = sess.run(None, {"x": x})

    fuse: apply the graph fusions (off only to debug them). blocked_layout: keep the tensors between
    convolutions in the NCHWc8 layout (None: on for AVX2 / AVX-512, see passes.layout.blocked_layout_default).
    """

    def __init__(self, model: str | os.PathLike | bytes | onnx.ModelProto, threads: int = 1,
                 fuse: bool = True, blocked_layout: bool | None = None) -> None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
        self.threads = threads
        proto = load_model(model)
        try:
            self._plan = compile_model(proto, threads, fuse=fuse, blocked=blocked_layout)
        except OpsNativeError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged model must raise, never escape as a random error
            raise InvalidModelError(f"cannot compile the model: {type(e).__name__}: {e}") from e
        self._profile: dict[str, float] | None = None
        plan = self._plan
        # what every run checks, worked out once: (name, slot, dtype, rank or -1, ((axis, dim), ...) fixed dims)
        self._feed_checks = [(i.name, plan.input_slots[i.name], i.dtype, len(i.shape) if i.shape else -1,
                              tuple((a, d) for a, d in enumerate(i.shape) if isinstance(d, int) and d > 0))
                             for i in plan.inputs]
        # per output name: (slot, whether the value must be copied: a constant or one of the caller's inputs)
        self._out_slots = {n: (s, s in plan.const_slots or n in plan.input_slots) for n, s in plan.output_slots.items()}
        self._all_outputs = [o.name for o in plan.outputs]

    def get_inputs(self) -> list[TensorInfo]:
        """The graph inputs (initializers excluded), like onnxruntime's NodeArg list."""
        return list(self._plan.inputs)

    def get_outputs(self) -> list[TensorInfo]:
        """The graph outputs."""
        return list(self._plan.outputs)

    # -- input checking ------------------------------------------------------------------------------
    def _place_inputs(self, feeds: Any, values: list) -> None:
        """Put the feeds into their slots. The usual call (a dict of C-contiguous arrays of the right dtype
        and shape) is checked inline; anything else goes through _check_inputs, which converts or explains."""
        if type(feeds) is dict and len(feeds) == len(self._feed_checks):
            for name, slot, dtype, rank, fixed in self._feed_checks:
                x = feeds.get(name)
                if type(x) is not np.ndarray or x.dtype != dtype or (rank >= 0 and x.ndim != rank) or \
                        not (x.flags.c_contiguous and x.flags.aligned) or x.nbytes > MAX_TENSOR_BYTES:
                    break
                shape = x.shape
                if any(shape[a] != d for a, d in fixed):
                    break
                values[slot] = x
            else:
                return
        for name, x in self._check_inputs(feeds).items():
            values[self._plan.input_slots[name]] = x

    def _check_inputs(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, dict):
            raise InvalidInputError(f"inputs: expected a dict name -> array, got {type(feeds).__name__}")
        known = {i.name: i for i in self._plan.inputs}
        unknown = [k for k in feeds if k not in known]
        if unknown:
            raise InvalidInputError(f"unknown input name(s) {unknown}; model inputs: {list(known)}")
        missing = [k for k in known if k not in feeds]
        if missing:
            raise InvalidInputError(f"missing input(s) {missing}; model inputs: {list(known)}")
        out = {}
        for name, info in known.items():
            x = feeds[name]
            if not isinstance(x, np.ndarray):
                try:
                    x = np.asarray(x)
                except (ValueError, TypeError) as e:
                    raise InvalidInputError(f"input '{name}': cannot be read as an array: {e}") from e
            if x.dtype != info.dtype or (info.shape and (x.ndim != len(info.shape) or any(
                    isinstance(d, int) and d > 0 and d != s for d, s in zip(info.shape, x.shape)))):
                raise InvalidInputError(f"input '{name}': expected {_fmt(info.dtype, info.shape)}, "
                                        f"got {_fmt(x.dtype, x.shape)}")
            if x.nbytes > MAX_TENSOR_BYTES:
                raise InvalidInputError(f"input '{name}': {_fmt(x.dtype, x.shape)} needs {x.nbytes / (1 << 30):.1f} "
                                        f"GiB, more than the {MAX_TENSOR_BYTES >> 30} GiB per-tensor limit")
            if not (x.flags.c_contiguous and x.flags.aligned):
                x = np.ascontiguousarray(x)  # kernels read dense, aligned float rows
            out[name] = x
        return out

    # -- running ---------------------------------------------------------------------------------------
    def run(self, output_names: list[str] | None, input_feed: dict[str, Any],
            run_options: Any = None) -> list[np.ndarray]:
        """Run the model; returns the requested outputs (all when output_names is None) in order."""
        plan = self._plan
        names = self._all_outputs if output_names is None else list(output_names)
        out_slots = self._out_slots
        bad = [n for n in names if n not in out_slots]
        if bad:
            raise InvalidInputError(f"unknown output name(s) {bad}; model outputs: {list(plan.output_slots)}")
        values = list(plan.template)
        self._place_inputs(input_feed, values)
        if self.threads > 1:
            _core.pool_warm(self.threads)   # workers start spinning while Python sets up the first node
        if self._profile is not None:
            self._run_profiled(values)
        else:
            try:
                _core.run_steps(plan.steps, values, plan.pool)
            except _core.StepError as e:
                raise self._wrap(e.index, e.error) from e.error
        result = []
        for n in names:
            s, copy = out_slots[n]
            v = values[s]
            if copy:
                v = np.array(v, copy=True)
            result.append(v if v.flags.c_contiguous else np.ascontiguousarray(v))
        return result

    def _wrap(self, index: int, err: BaseException) -> OpsNativeError:
        node = self._plan.nodes[index]
        cls = UnsupportedOpError if isinstance(err, OpNotSupported) else OpsNativeError
        return cls(f"node '{node.name}' (op {display_op(node.op_type)}) failed: {type(err).__name__}: {err}")

    # -- profiling ---------------------------------------------------------------------------------------
    def enable_profiling(self, on: bool = True) -> None:
        """Collect per-op-type wall time over subsequent runs (slower: the loop runs in Python)."""
        self._profile = {} if on else None

    def profile(self) -> dict[str, float]:
        """Seconds spent per op type (fused ops are named e.g. 'Conv+relu') since profiling was enabled."""
        return dict(self._profile or {})

    def _run_profiled(self, values: list) -> None:
        prof = self._profile if self._profile is not None else defaultdict(float)
        for i, step in enumerate(self._plan.steps):
            node = self._plan.nodes[i]
            t0 = time.perf_counter()
            try:
                res = step.fn([values[k] for k in step.ins])
            except Exception as e:  # noqa: BLE001 - wrapped with the node's name
                raise self._wrap(i, e) from e
            dt = time.perf_counter() - t0
            key = display_op(node.op_type) + (f"+{node.attrs['_act']}" if node.attrs.get("_act") else "")
            prof[key] = prof.get(key, 0.0) + dt
            for k, s in enumerate(step.outs):
                if s:
                    values[s] = res[k]
            res = None
            release(step, values, self._plan.pool)

def _fmt(dtype: np.dtype, shape: Any) -> str:
    dims = ",".join(str(d) for d in shape)
    return f"{np.dtype(dtype).name} [{dims}]"
