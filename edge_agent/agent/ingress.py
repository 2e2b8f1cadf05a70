"""The ingress of one stream on the device chosen to run it: frames in from the source topic, through the
deployment, results out to the sink.

Backpressure is explicit and bounded everywhere. At most ``window`` requests are in the pipeline at once;
frames that arrive meanwhile wait in the policy's buffer (``latest``: one slot, a newer frame replaces the
waiting one, which is counted as dropped ``stale``; ``queue:N``: N slots, a frame arriving to a full queue is
dropped ``queue_full``). A request whose result does not come within ``REQUEST_TIMEOUT_S`` frees its slot and
its frames count as dropped ``timeout``. Results leave for the sink in frame order (replicas may finish out
of order: a result waits for the earlier ones, at most until they time out). Bad input (malformed frame, wrong shape or dtype, an undecodable
image, an oversized payload) is counted by reason and logged; the stream keeps running. Every frame that
arrived is accounted for: ``frames_in = frames_out + dropped + errors + backlog + in_flight``.

The MQTT handlers (:meth:`Ingress.on_frame`, :meth:`Ingress.on_result`) only queue; decoding, preprocessing,
sending and publishing results run on the ingress's own worker thread.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent.agent import imaging
from edge_agent.agent.backend import check_inputs
from edge_agent.protocol.errors import InvalidInputError, ProtocolError
from edge_agent.protocol.messages import InferRequest, InferResult, Manifest
from edge_agent.protocol.streams import Policy, StreamFrame, StreamResult, StreamSpec, StreamStats
from edge_agent.transport.mqtt import Transport
from models.graph import TensorSpec

log = logging.getLogger("edge_agent.stream")

REQUEST_TIMEOUT_S = 5.0
LATENCY_SAMPLES = 512        # recent end-to-end latencies kept (and reported) per stream
LATENCY_WINDOW_S = 10.0      # ...of the last this many seconds
LOG_EVERY_S = 5.0            # bad input is logged at most this often per reason (counted always)


@dataclass
class _Frame:
    id: str
    ts: float
    feeds: dict[str, np.ndarray]
    rows: int                # batch rows this frame contributes


@dataclass
class _Pending:
    frames: list[_Frame]
    sent: float
    result: InferResult | None = None     # arrived, waiting for earlier requests (results leave in order)


class Ingress:
    """One stream's ingress (see the module docstring). ``send`` routes a stage-0 request (returns the device
    or None when no route); ``reply_to`` is this device's endpoint (results come back on its ``out``)."""

    def __init__(self, spec: StreamSpec, manifest: Manifest, device_id: str, transport: Transport,
                 send: Callable[[InferRequest], str | None], reply_to: str, max_payload: int,
                 on_latency: Callable[[str, float], None] | None = None, window: int | None = None) -> None:
        self.spec = spec
        self.manifest = manifest
        self.device_id = device_id
        self.transport = transport
        self.send = send
        self.reply_to = reply_to
        self.max_payload = max_payload
        self.on_latency = on_latency
        self.policy: Policy = spec.policy_spec
        self.window = window or max(2, 2 * len(manifest.stages))
        self.inputs = [TensorSpec.from_dict(d) for d in manifest.inputs]
        self.input_name = spec.input or (self.inputs[0].name if len(self.inputs) == 1 else "")
        self.where = f"stream {spec.name} ({spec.model} v{manifest.version})"
        self._pre: imaging.Preprocess | None = None
        self._pre_error = ""
        self._resolve_preprocess()
        self.token = uuid.uuid4().hex[:8]     # request ids never repeat across ingress restarts (dedup caches)
        self._seq = 0
        self._cond = threading.Condition()
        self._buffer: collections.deque[tuple[bytes, float]] = collections.deque()
        self._results: collections.deque[InferResult | None] = collections.deque()
        self._pending: dict[str, _Pending] = {}
        self._taken = 0           # frames out of the buffer, being decoded (in flight for the accounting)
        self._latency: collections.deque[tuple[float, float]] = collections.deque(maxlen=LATENCY_SAMPLES)
        self.frames_in = 0
        self.frames_out = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.backlog_max = 0
        self.since = time.time()
        self._rate_at = time.monotonic()
        self._rate_counts = (0, 0)
        self._fps = (0.0, 0.0)
        self._logged: dict[str, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=f"ingress-{spec.name}", daemon=True)

    # ---------------------------------------------------------------------------------- lifecycle
    def start(self) -> Ingress:
        self._thread.start()
        log.info("%s: ingress on %s (source %s, sink %s, policy %s, batch %d, window %d)", self.where,
                 self.device_id, self.spec.source, self.spec.sink, self.policy, self.spec.batch, self.window)
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5.0)

    def _resolve_preprocess(self) -> None:
        spec = next((s for s in self.inputs if s.name == self.input_name), None)
        if spec is None:
            self._pre_error = f"{self.where}: no input named {self.input_name!r} for raw images"
            return
        try:
            self._pre = imaging.resolve(self.spec.preprocess_spec(), spec.shape, np.dtype(spec.dtype).name)
        except (ValueError, ProtocolError) as exc:
            self._pre_error = str(exc)

    # ---------------------------------------------------------------------------------- MQTT handlers
    def on_frame(self, topic: str, payload: bytes, retained: bool) -> None:
        """A message on the source topic (paho's thread): size check, then the policy's buffer."""
        if retained:   # a retained frame is an old one, and would come again on every reconnect
            return
        now = time.time()
        with self._cond:
            self.frames_in += 1
            if len(payload) > self.max_payload:
                self._bad("oversized", f"{len(payload)}-byte frame on {topic} exceeds {self.max_payload} bytes")
                return
            if self.policy.kind == "latest":
                if self._buffer:
                    self._buffer.popleft()
                    self.dropped["stale"] += 1
                self._buffer.append((payload, now))
            elif len(self._buffer) >= self.policy.size:
                self.dropped["queue_full"] += 1
                return
            else:
                self._buffer.append((payload, now))
            self.backlog_max = max(self.backlog_max, len(self._buffer))
            self._cond.notify()

    def on_result(self, res: InferResult) -> None:
        """A result of one of this stream's requests (paho's thread)."""
        with self._cond:
            self._results.append(res)
            self._cond.notify()

    # ---------------------------------------------------------------------------------- worker
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._results and not (
                        self._buffer and len(self._pending) < self.window):
                    self._cond.wait(0.25)
                    self._expire(time.monotonic())
                if self._stop:
                    return
                results = list(self._results)
                self._results.clear()
                raw: list[tuple[bytes, float]] = []
                if len(self._pending) < self.window:
                    while self._buffer and len(raw) < self.spec.batch:
                        raw.append(self._buffer.popleft())
                    if raw:
                        self._pending[""] = _Pending([], time.monotonic())   # hold the slot while decoding
                        self._taken = len(raw)
            with self._cond:
                for res in results:
                    p = self._pending.get(res.request_id) if res is not None else None
                    if p is not None and p.result is None:   # else a duplicate, or one that timed out
                        p.result = res
                ready = self._ready_in_order()
            for p in ready:
                try:
                    self._finish(p)
                except Exception:  # a result this code cannot publish must not end the stream
                    log.exception("%s: result %s could not be delivered", self.where, p.result.request_id)
            if raw:
                try:
                    self._dispatch(raw)
                except Exception:
                    log.exception("%s: frames could not be sent", self.where)
                    with self._cond:
                        self.errors["internal"] += self._taken
                finally:
                    with self._cond:
                        self._pending.pop("", None)
                        self._taken = 0

    def _expire(self, now: float) -> None:
        """Free the slots of requests whose results are overdue (a device on the path died); the results
        that waited behind them are published by the next :meth:`_flush` (caller holds the lock)."""
        for rid, p in list(self._pending.items()):
            if rid and p.result is None and now - p.sent > REQUEST_TIMEOUT_S:
                del self._pending[rid]
                self.dropped["timeout"] += len(p.frames)
                self._results.append(None)   # wake the worker to flush what waited behind it

    def _dispatch(self, raw: list[tuple[bytes, float]]) -> None:
        frames = []
        for payload, recv in raw:
            self._seq += 1
            frame = self._decode(payload, recv, self._seq)
            if frame is not None:
                frames.append(frame)
        if not frames:
            return
        feeds = frames[0].feeds
        if len(frames) > 1:
            feeds = {name: np.concatenate([f.feeds[name] for f in frames], axis=0) for name in feeds}
        rid = f"{self.spec.name}~{self.token}~{self._seq}"
        req = InferRequest(rid, self.manifest.name, self.manifest.version, 0, self.reply_to, tensors=feeds)
        with self._cond:
            self._pending[rid] = _Pending(frames, time.monotonic())
            self._taken -= len(frames)
        if self.send(req) is None:
            with self._cond:
                self._pending.pop(rid, None)
                self._bad("no_route", f"{self.where}: no live device serves stage 0", n=len(frames))

    def _decode(self, payload: bytes, recv: float, seq: int) -> _Frame | None:
        """A frame's id, timestamp and model feeds; None (counted, logged) when it is bad input."""
        try:
            if imaging.looks_like_image(payload):
                fid, ts, feeds = str(seq), recv, {self.input_name: self._image(payload)}
            else:
                try:
                    frame = StreamFrame.from_bytes(payload, max_bytes=self.max_payload)
                except ProtocolError as exc:
                    with self._cond:
                        self._taken -= 1
                        self._bad("malformed", f"{self.where}: malformed frame: {exc}")
                    return None
                fid, ts = frame.id, frame.ts
                if not math.isfinite(ts):
                    ts = recv
                if len(frame.image):
                    feeds = {self.input_name: self._image(frame.image)}
                elif set(frame.tensors) == {""}:
                    feeds = {self.input_name: frame.tensors[""]}
                else:
                    feeds = dict(frame.tensors)
            check_inputs(self.inputs, feeds, f"{self.where}: frame {fid}")
            rows = next(iter(feeds.values())).shape[0] if self.spec.batch > 1 else 1
            return _Frame(fid, ts, feeds, int(rows))
        except imaging.ImageError as exc:
            with self._cond:
                self._taken -= 1
                self._bad("image", f"{self.where}: {exc}")
        except InvalidInputError as exc:
            with self._cond:
                self._taken -= 1
                self._bad("shape", str(exc))
        return None

    def _image(self, data: bytes | memoryview) -> np.ndarray:
        if self._pre is None:
            raise imaging.ImageError(self._pre_error or f"{self.where}: raw images are not accepted")
        return imaging.decode(data, self._pre)

    def _ready_in_order(self) -> list[_Pending]:
        """Requests at the head of the send order whose results arrived (caller holds the lock)."""
        out = []
        for rid, p in list(self._pending.items()):
            if not rid or p.result is None:
                break
            del self._pending[rid]
            out.append(p)
        return out

    def _finish(self, p: _Pending) -> None:
        res = p.result
        assert res is not None
        if not res.ok:
            code = str(res.error.get("code", "failed"))
            with self._cond:
                self._bad(f"pipeline_{code}", f"{self.where}: {res.error.get('message', code)}", n=len(p.frames))
            for f in p.frames:
                self._publish(StreamResult(self.spec.name, f.id, f.ts, self.manifest.name, self.manifest.version,
                                           ok=False, error={"code": code, "message": res.error.get("message", "")},
                                           device=self.device_id))
            return
        parts = self._split(res.tensors, p.frames)
        if parts is None:
            with self._cond:
                self._bad("batch_split", f"{self.where}: outputs do not split into the batch's frames",
                          n=len(p.frames))
            return
        for f, outs in zip(p.frames, parts):
            msg = StreamResult(self.spec.name, f.id, f.ts, self.manifest.name, self.manifest.version,
                               tensors=outs, device=self.device_id)
            self._publish(msg)
            lat = max(0.0, msg.done - f.ts)
            with self._cond:
                self.frames_out += 1
                self._latency.append((time.monotonic(), lat * 1e3))
            if self.on_latency is not None:
                self.on_latency(self.spec.name, lat)

    def _split(self, outs: dict[str, np.ndarray], frames: list[_Frame]) -> list[dict] | None:
        if len(frames) == 1:
            return [outs]
        rows = [f.rows for f in frames]
        bounds = np.cumsum(rows)[:-1]
        parts: list[dict] = [{} for _ in frames]
        for name, arr in outs.items():
            if arr.ndim == 0 or arr.shape[0] != sum(rows):
                return None
            for i, piece in enumerate(np.split(arr, bounds, axis=0)):
                parts[i][name] = piece
        return parts

    def _publish(self, msg: StreamResult) -> None:
        self.transport.publish(self.spec.sink, msg.to_bytes(), qos=1)

    def _bad(self, reason: str, message: str, n: int = 1) -> None:
        """Count ``n`` frames of bad input (caller holds the lock) and log, at most every LOG_EVERY_S."""
        self.errors[reason] += n
        now = time.monotonic()
        if now - self._logged.get(reason, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged[reason] = now
            log.warning("%s (%s; %d so far)", message, reason, self.errors[reason])

    # ---------------------------------------------------------------------------------- stats
    def stats(self, rate: bool = False) -> StreamStats:
        """This stream's counters; with ``rate`` (the periodic report) fps are measured again over the time
        since the previous such call (at least 0.5 s)."""
        now = time.monotonic()
        with self._cond:
            dt = now - self._rate_at
            if rate and dt >= 0.5:
                fin, fout = self._rate_counts
                self._fps = ((self.frames_in - fin) / dt, (self.frames_out - fout) / dt)
                self._rate_at, self._rate_counts = now, (self.frames_in, self.frames_out)
            lat = [round(ms, 3) for t, ms in self._latency if now - t <= LATENCY_WINDOW_S]
            return StreamStats(
                name=self.spec.name, model=self.spec.model, version=self.spec.version, policy=str(self.policy),
                batch=self.spec.batch, frames_in=self.frames_in, frames_out=self.frames_out,
                dropped=dict(self.dropped), errors=dict(self.errors),
                in_flight=sum(len(p.frames) for p in self._pending.values()) + self._taken, backlog=len(self._buffer),
                backlog_max=self.backlog_max, fps_in=round(self._fps[0], 2), fps_out=round(self._fps[1], 2),
                latency_ms=lat, since=self.since)
