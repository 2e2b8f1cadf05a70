"""The streams of one agent: the accepted (signed) stream definitions, which of them this device runs the
ingress of (:func:`edge_agent.cluster.ingress.choose_ingress`, the same answer on every device), the running
:class:`~edge_agent.agent.ingress.Ingress` objects, and their stats report.

:meth:`StreamHost.reconcile` runs on the agent's control thread after the stage reconcile (a stage-0 holder
appearing or dying moves the ingress); :meth:`report_loop` publishes the retained ``dev/<id>/streams`` report
every second. Accepted definitions are kept on disk so a restart runs them even before the broker delivers
the retained copies (or when a broker without persistence lost them).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent.agent.ingress import Ingress
from edge_agent.agent.reconcile import Reconciler
from edge_agent.agent.stages import StageTable
from edge_agent.cluster.ingress import choose_ingress, ingress_candidates
from edge_agent.cluster.placement import may_answer
from edge_agent.cluster.view import FleetView
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ProtocolError
from edge_agent.protocol.messages import InferRequest, InferResult, Manifest
from edge_agent.protocol.streams import StreamReport, StreamSpec, StreamStats, validate_stream
from edge_agent.security.gate import ManifestGate
from edge_agent.transport.mqtt import Transport

log = logging.getLogger("edge_agent.stream")

REPORT_EVERY_S = 1.0


class StreamHost:
    """Stream definitions and ingresses of one device (see the module docstring)."""

    def __init__(self, device_id: str, fleet: str, transport: Transport, view: FleetView, table: StageTable,
                 reconciler: Reconciler, send: Callable[[InferRequest], str | None], data_dir: Path,
                 max_payload: int) -> None:
        self.device_id = device_id
        self.fleet = fleet
        self.transport = transport
        self.view = view
        self.table = table
        self.reconciler = reconciler
        self.send = send
        self.dir = Path(data_dir) / "streams"
        self.max_payload = max_payload
        self.endpoint = topics.device_endpoint(fleet, device_id)
        self.on_latency: Callable[[str, float], None] | None = None    # metrics (stream, seconds)
        self.specs: dict[str, StreamSpec] = {}
        self.running: dict[str, Ingress] = {}
        self.retired: dict[str, StreamStats] = {}    # totals of ingresses stopped in this process (metrics)
        self._sources: dict[str, set[str]] = collections.defaultdict(set)   # source filter -> streams
        self._lock = threading.RLock()
        self._changed = False

    # ---------------------------------------------------------------------------------- definitions
    def set_spec(self, spec: StreamSpec) -> None:
        """An accepted definition (control thread); a stopped one removes the stream."""
        with self._lock:
            if spec.stopped:
                if self.specs.pop(spec.name, None) is not None:
                    log.info("stream %s stopped (v%d)", spec.name, spec.version)
            else:
                self.specs[spec.name] = spec
        self._keep(spec)

    def remove(self, name: str) -> None:
        """An empty retained definition (development mode only)."""
        with self._lock:
            self.specs.pop(name, None)
        (self.dir / f"{name}.stream").unlink(missing_ok=True)

    def _keep(self, spec: StreamSpec) -> None:
        path = self.dir / f"{spec.name}.stream"
        try:
            if spec.stopped:
                path.unlink(missing_ok=True)
                return
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(spec.to_bytes())
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot keep stream %s on disk: %s", spec.name, exc)

    def restore(self, gate: ManifestGate) -> None:
        """At start: the definitions accepted before the restart, checked again by the gate."""
        for path in sorted(self.dir.glob("*.stream")):
            try:
                spec = StreamSpec.from_bytes(path.read_bytes(), max_bytes=1 << 20)
                validate_stream(spec, self.fleet)
            except (OSError, ProtocolError) as exc:
                log.warning("ignored stored stream %s: %s", path.name, exc)
                continue
            rejection = gate.check(spec)
            if rejection is not None:
                log.warning("stored stream %s no longer passes: %s", spec.name, rejection.reason)
                continue
            with self._lock:
                self.specs[spec.name] = spec

    # ---------------------------------------------------------------------------------- ingress choice
    def manifest_for(self, model: str) -> Manifest | None:
        with self.table.lock:
            return self.reconciler.manifests.get(("stable", model))

    def ingress_of(self, spec: StreamSpec) -> tuple[str | None, Manifest | None]:
        """The device that should run ``spec``'s ingress now (maybe this one), and the manifest it serves."""
        m = self.manifest_for(spec.model)
        if m is None or not m.stages:
            return None, None
        key = (m.name, m.version, 0)
        with self.table.lock:
            mine = key in self.table.installed and self.table.status.get(key, {}).get("status") == "ready"
            adopted = key in self.reconciler.adopted
        cands = ingress_candidates(self.view, key, m.stages[0].replicas, m.failover, me=self.device_id,
                                   me_ready=mine, me_adopted=adopted)
        return choose_ingress(spec.name, cands), m

    def reconcile(self) -> None:
        """Start the ingresses this device should run, stop the others (control thread)."""
        with self._lock:
            specs = dict(self.specs)
        want: dict[str, tuple[StreamSpec, Manifest]] = {}
        for name, spec in specs.items():
            winner, m = self.ingress_of(spec)
            if winner == self.device_id and m is not None:
                want[name] = (spec, m)
        for name, ing in list(self.running.items()):
            target = want.get(name)
            if target is None or target[0].version != ing.spec.version or target[1].version != ing.manifest.version:
                self._stop_ingress(name, "moved" if target is None else "definition or deployment changed")
        for name, (spec, m) in want.items():
            if name not in self.running:
                self._start_ingress(spec, m)

    def _start_ingress(self, spec: StreamSpec, m: Manifest) -> None:
        ing = Ingress(spec, m, self.device_id, self.transport, self.send, self.endpoint, self.max_payload,
                      on_latency=self.on_latency).start()
        with self._lock:
            self.running[spec.name] = ing
            self._sources[spec.source].add(spec.name)
            first = len(self._sources[spec.source]) == 1
        if first:
            self.transport.subscribe(spec.source, self._source_handler(spec.source), qos=0)
        self._changed = True

    def _stop_ingress(self, name: str, why: str) -> None:
        with self._lock:
            ing = self.running.pop(name)
            names = self._sources.get(ing.spec.source, set())
            names.discard(name)
            last = not names
            if last:
                self._sources.pop(ing.spec.source, None)
        if last:
            self.transport.unsubscribe(ing.spec.source)
        ing.stop()
        final = ing.stats()
        with self._lock:
            self.retired[name] = _add(self.retired.get(name), final)
        log.info("stream %s: ingress on %s stopped (%s)", name, self.device_id, why)
        self._changed = True

    def _source_handler(self, pattern: str) -> Callable[[str, bytes, bool], None]:
        def handler(topic: str, payload: bytes, retained: bool) -> None:
            with self._lock:
                targets = [self.running[n] for n in self._sources.get(pattern, ()) if n in self.running]
            for ing in targets:
                ing.on_frame(topic, payload, retained)
        return handler

    def stop_all(self) -> None:
        for name in list(self.running):
            self._stop_ingress(name, "agent stopping")

    # ---------------------------------------------------------------------------------- results, report
    def on_result(self, topic: str, payload: bytes, retained: bool) -> None:
        """``dev/<id>/out``: results of stream requests (paho's thread)."""
        try:
            res = InferResult.from_bytes(payload, max_bytes=self.max_payload)
        except ProtocolError as exc:
            log.warning("ignored malformed result on %s: %s", topic, exc)
            return
        name = res.request_id.split("~", 1)[0]
        with self._lock:
            ing = self.running.get(name)
        if ing is None:
            return
        sender = topics.sender_of(topic)
        if not may_answer(self.view, ing.manifest, sender, final=res.ok):
            # anyone may write to this inbox under its own name: only the deployment's devices may answer
            log.warning("ignored a stream result for %s from %r: not a device of %s v%d", res.request_id, sender,
                        ing.manifest.name, ing.manifest.version)
            return
        ing.on_result(res)

    def report(self) -> StreamReport:
        with self._lock:
            running = list(self.running.values())
        return StreamReport(self.device_id, [ing.stats(rate=True).to_wire() for ing in running])

    def publish_report(self) -> None:
        self._changed = False
        try:
            self.transport.publish(topics.stream_report(self.fleet, self.device_id), self.report().to_bytes(),
                                   qos=1, retain=True)
        except Exception:  # pragma: no cover - paho retries
            log.debug("stream report publish failed", exc_info=True)

    def report_loop(self, stop: threading.Event) -> None:
        """Publish the report every second while this device runs an ingress, at once when the set of
        ingresses changes, and once (empty) after the last one stopped."""
        published_empty, next_at = False, 0.0
        while not stop.wait(REPORT_EVERY_S / 4):
            if not self.transport.connected.is_set():
                continue
            now = time.monotonic()
            if self._changed or (self.running and now >= next_at) or (not self.running and not published_empty):
                self.publish_report()
                published_empty, next_at = not self.running, now + REPORT_EVERY_S

    def note_reconnect(self) -> None:
        """A new session (maybe a broker that lost its retained messages): publish the report again."""
        self._changed = True

    def totals(self) -> dict[str, StreamStats]:
        """Per stream, everything this process counted (stopped ingresses plus the running one): metrics."""
        with self._lock:
            out = dict(self.retired)
            running = dict(self.running)
        for name, ing in running.items():
            out[name] = _add(out.get(name), ing.stats())
        return out


def _add(a: StreamStats | None, b: StreamStats) -> StreamStats:
    """Counters of ``a`` plus ``b``; the rest from ``b`` (the latest)."""
    if a is None:
        return b
    return StreamStats(
        name=b.name, model=b.model, version=b.version, policy=b.policy, batch=b.batch,
        frames_in=a.frames_in + b.frames_in, frames_out=a.frames_out + b.frames_out,
        dropped=dict(collections.Counter(a.dropped) + collections.Counter(b.dropped)),
        errors=dict(collections.Counter(a.errors) + collections.Counter(b.errors)), in_flight=b.in_flight,
        backlog=b.backlog, backlog_max=max(a.backlog_max, b.backlog_max), fps_in=b.fps_in, fps_out=b.fps_out,
        latency_ms=b.latency_ms, since=a.since)
