"""Sources a device hosts itself (``edge-agent run --source NAME=KIND:OPTIONS``): a folder of frames or a
synthetic generator, published at a fixed rate on ``ea/v1/<fleet>/src/<device>/<NAME>`` as
:class:`~edge_agent.protocol.streams.StreamFrame` messages (QoS 0: a late camera frame is worth nothing).

- ``dir:/path[,fps=5]``: the folder's ``.png``/``.jpg``/``.jpeg`` (sent as encoded images: the ingress
  preprocesses them), ``.npy`` (one tensor for the stream's input) and ``.npz`` (tensors by input name),
  in name order, looped;
- ``synthetic[:fps=10,shape=1x3x32x32,dtype=float32,seed=0]``: random tensors in [0, 1). Without ``shape``
  the generator takes the input shape of the deployment a stream from this source feeds (dynamic dims as 1)
  and waits until there is one.

Frame ids count up from 1 (``<n>``); ``ts`` is the time the frame was published.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.protocol.messages import WIRE_DTYPES
from edge_agent.protocol.streams import StreamFrame, hosted_source
from edge_agent.transport.mqtt import Transport

log = logging.getLogger("edge_agent.stream")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FRAME_SUFFIXES = IMAGE_SUFFIXES + (".npy", ".npz")
MAX_FPS = 1000.0

# (the source's topic) -> (shape, dtype) of the input of a stream it feeds, or None
InputShapeOf = Callable[[str], "tuple[tuple[int, ...], str] | None"]


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--source`` option."""

    name: str
    kind: str                            # "dir" | "synthetic"
    fps: float
    path: Path | None = None
    shape: tuple[int, ...] | None = None
    dtype: str = "float32"
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """``NAME=dir:/path[,fps=N]`` or ``NAME=synthetic[:fps=N,shape=AxBxC,dtype=T,seed=S]``."""
        from edge_agent.protocol import topics

        name, sep, rest = text.partition("=")
        if not sep:
            raise ValueError(f"--source {text!r}: expected NAME=dir:/path or NAME=synthetic:fps=N")
        topics.check_segment("source name", name)
        kind, _, opts = rest.partition(":")
        if kind == "dir":
            path, *items = opts.split(",")
            if not path:
                raise ValueError(f"--source {text!r}: dir needs a folder (dir:/path/to/frames)")
        elif kind == "synthetic":
            path, items = "", [i for i in opts.split(",") if i]
        else:
            raise ValueError(f"--source {text!r}: unknown kind {kind!r} (dir, synthetic)")
        kw: dict = {"fps": 5.0 if kind == "dir" else 10.0}
        for item in items:
            key, sep, value = item.partition("=")
            try:
                if key == "fps":
                    kw["fps"] = float(value)
                elif key == "shape" and kind == "synthetic":
                    kw["shape"] = tuple(int(v) for v in value.lower().split("x"))
                elif key == "dtype" and kind == "synthetic":
                    kw["dtype"] = value
                elif key == "seed" and kind == "synthetic":
                    kw["seed"] = int(value)
                else:
                    raise KeyError(key)
            except (KeyError, ValueError):
                raise ValueError(f"--source {text!r}: bad option {item!r}") from None
        if not 0 < kw["fps"] <= MAX_FPS:
            raise ValueError(f"--source {text!r}: fps must be in (0, {MAX_FPS:g}]")
        if kw.get("dtype", "float32") not in WIRE_DTYPES:
            raise ValueError(f"--source {text!r}: unknown dtype {kw['dtype']!r}")
        if kw.get("shape") is not None and not all(d >= 1 for d in kw["shape"]):
            raise ValueError(f"--source {text!r}: shape dims must be >= 1")
        spec = cls(name, kind, path=Path(path) if path else None, **kw)
        if spec.path is not None and not spec.path.is_dir():
            raise ValueError(f"--source {text!r}: {spec.path} is not a folder")
        return spec


def load_frames(folder: Path) -> list[tuple[str, bytes | dict[str, np.ndarray]]]:
    """The frames of a folder, in name order: (file name, encoded image bytes or tensors)."""
    out: list[tuple[str, bytes | dict[str, np.ndarray]]] = []
    for p in sorted(folder.iterdir()):
        suffix = p.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            out.append((p.name, p.read_bytes()))
        elif suffix == ".npy":
            out.append((p.name, {"": np.load(p, allow_pickle=False)}))
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                out.append((p.name, {k: z[k] for k in z.files}))
    if not out:
        raise ValueError(f"source folder {folder} has no frames ({', '.join(FRAME_SUFFIXES)})")
    return out


class HostedSource:
    """Publishes one source's frames on its own thread until :meth:`stop`."""

    def __init__(self, spec: SourceSpec, fleet: str, device_id: str, transport: Transport,
                 input_shape_of: InputShapeOf) -> None:
        self.spec = spec
        self.topic = hosted_source(fleet, device_id, spec.name)
        self.transport = transport
        self.input_shape_of = input_shape_of
        self.frames = load_frames(spec.path) if spec.kind == "dir" and spec.path else []
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"source-{spec.name}", daemon=True)

    def start(self) -> HostedSource:
        self._thread.start()
        log.info("source %s: %s at %g fps on %s", self.spec.name, self.spec.kind, self.spec.fps, self.topic)
        return self

    def stop(self) -> None:
        self._stop.set()

    def _next(self, n: int) -> StreamFrame | None:
        if self.spec.kind == "dir":
            _, data = self.frames[(n - 1) % len(self.frames)]
            if isinstance(data, bytes):
                return StreamFrame(str(n), time.time(), image=data)
            return StreamFrame(str(n), time.time(), tensors=data)
        shape, dtype = (self.spec.shape, self.spec.dtype) if self.spec.shape else (None, self.spec.dtype)
        if shape is None:
            found = self.input_shape_of(self.topic)
            if found is None:
                return None            # no stream takes this source yet: nothing to shape the data by
            shape, dtype = found
        rng = np.random.default_rng((self.spec.seed, n))
        return StreamFrame(str(n), time.time(), tensors={"": rng.random(shape).astype(dtype)})

    def _loop(self) -> None:
        period = 1.0 / self.spec.fps
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            next_at = max(next_at + period, time.monotonic() - period)   # no burst to catch up after a stall
            if not self.transport.connected.is_set():
                continue
            frame = self._next(n + 1)
            if frame is None:
                continue
            n += 1
            try:
                self.transport.publish(self.topic, frame.to_bytes(), qos=0)
                self.published += 1
            except Exception:  # pragma: no cover - a publish on a dying client
                log.debug("source %s: publish failed", self.spec.name, exc_info=True)
