"""Spot-checking results: re-run a sample of requests with ONNX Runtime on the whole model, on the operator,
and compare within the deployment's tolerance. A device on the path of disagreeing results is reported and,
past a threshold, taken out of the operator's routing (no anchor of this project's field does this: a fleet
member that computes wrong, by fault or by malice, is otherwise invisible).

The check runs on its own thread with a bounded queue (sampled requests beyond it are skipped and counted),
so it never delays results to the caller.
"""

from __future__ import annotations

import collections
import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("edge_agent.fleet")

QUEUE = 64          # sampled results waiting for their check; more are skipped (counted), never blocking
EXCLUDE_AFTER = 3   # disagreements after which a device is taken out of routing...
EXCLUDE_RATE = 0.5  # ...when at least this fraction of its checked results disagreed


@dataclass
class DeviceRecord:
    checked: int = 0
    disagreed: int = 0
    last: str = ""


@dataclass
class Tolerance:
    """|ours - reference| <= rtol x |reference| + atol x max(1, max |reference|), per output."""

    rtol: float = 1e-3
    atol: float = 1e-4

    def differs(self, got: dict, want: dict) -> str:
        """Why ``got`` is not within tolerance of ``want`` ("" when it is)."""
        for name, w in want.items():
            g = got.get(name)
            if g is None or np.shape(g) != np.shape(w):
                return f"output {name!r}: shape {None if g is None else np.shape(g)} vs {np.shape(w)}"
            if np.asarray(w).dtype.kind != "f":
                if not np.array_equal(g, w):
                    return f"output {name!r} differs"
                continue
            scale = max(1.0, float(np.abs(w).max())) if np.size(w) else 1.0
            err = np.abs(np.asarray(g, np.float64) - w) - self.rtol * np.abs(w)
            worst = float(err.max()) if np.size(err) else 0.0
            if worst > self.atol * scale:
                return f"output {name!r} off by {worst + self.rtol:.3g} (tolerance {self.atol * scale:.3g})"
        return ""


@dataclass
class SpotChecker:
    """Checks a ``fraction`` of one deployment's results against ``reference(inputs) -> outputs``."""

    name: str
    fraction: float
    reference: Callable[[dict], dict]
    tolerance: Tolerance = field(default_factory=Tolerance)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.checked = 0
        self.disagreed = 0
        self.skipped = 0
        self.devices: dict[str, DeviceRecord] = collections.defaultdict(DeviceRecord)
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE)
        self._thread = threading.Thread(target=self._run, name=f"spot-check-{self.name}", daemon=True)
        self._thread.start()

    def sample(self) -> bool:
        """Whether to check the next request."""
        return self.fraction > 0 and self.rng.random() < self.fraction

    def submit(self, inputs: dict, outputs: dict, timings: list) -> None:
        try:
            self._queue.put_nowait((inputs, outputs, timings))
        except queue.Full:
            with self._lock:
                self.skipped += 1

    def close(self) -> None:
        self._queue.put(None)

    def excluded(self) -> set[str]:
        """Devices taken out of routing: at least EXCLUDE_AFTER disagreements, at a rate >= EXCLUDE_RATE."""
        with self._lock:
            return self._excluded()

    def report(self) -> dict:
        with self._lock:
            return {"fraction": self.fraction, "checked": self.checked, "disagreed": self.disagreed,
                    "skipped": self.skipped, "excluded": sorted(self._excluded()),
                    "devices": {d: vars(r).copy() for d, r in sorted(self.devices.items())}}

    def _excluded(self) -> set[str]:
        return {d for d, r in self.devices.items()
                if r.disagreed >= EXCLUDE_AFTER and r.disagreed >= EXCLUDE_RATE * r.checked}

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            inputs, outputs, timings = item
            try:
                why = self.tolerance.differs(outputs, self.reference(inputs))
            except Exception as exc:  # the reference itself failed: not the devices' fault
                log.warning("spot check of %s could not run the reference: %s", self.name, exc)
                continue
            path = [t.get("device") for t in timings if isinstance(t, dict) and isinstance(t.get("device"), str)]
            with self._lock:
                self.checked += 1
                self.disagreed += bool(why)
                for d in dict.fromkeys(path):
                    rec = self.devices[d]
                    rec.checked += 1
                    if why:
                        rec.disagreed += 1
                        rec.last = why
            if why:
                log.warning("spot check of %s: result via %s disagrees with ONNX Runtime: %s", self.name,
                            " -> ".join(path), why)


def onnxruntime_reference(model_bytes: bytes) -> Callable[[dict], dict]:
    """``inputs -> outputs`` of the whole model on ONNX Runtime (one thread: the operator's spare core)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    def run(inputs: dict) -> dict:
        return dict(zip(names, sess.run(None, inputs)))

    return run
