"""Streams as the operator sees them: the retained (gated) definitions, the ingress devices' reports, and
the plain records :meth:`Fleet.streams` returns. :func:`make_spec` checks a new definition against the
deployment before it is signed and published."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_agent.cluster.view import FleetView
from edge_agent.operator.stats import latency_summary
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ProtocolError
from edge_agent.protocol.messages import Manifest
from edge_agent.protocol.streams import (
    Policy,
    Preprocess,
    StreamReport,
    StreamSpec,
    StreamStats,
    check_sink,
    check_source,
    topic_matches,
    validate_stream,
)
from edge_agent.security.gate import ManifestGate

log = logging.getLogger("edge_agent.fleet")


@dataclass
class StreamRecord:
    """One stream for ``stream ls``/``stats`` and dashboards: its definition and its ingress's report."""

    name: str
    model: str
    source: str
    sink: str
    policy: str
    batch: int
    version: int
    signed: bool
    ingress_device: str | None = None
    fps_in: float = 0.0
    fps_out: float = 0.0
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    drop_reasons: dict = field(default_factory=dict)
    errors: int = 0
    error_reasons: dict = field(default_factory=dict)
    in_flight: int = 0
    backlog: int = 0
    backlog_max: int = 0
    latency_ms: dict | None = None          # {p50, p90, p99, mean, n} of recent frames, None without any
    updated: float | None = None            # unix time of the ingress's last report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record(spec: StreamSpec, report: tuple[str, StreamStats, float] | None) -> StreamRecord:
    rec = StreamRecord(spec.name, spec.model, spec.source, spec.sink, spec.policy, spec.batch, spec.version,
                       bool(spec.sig))
    if report is None:
        return rec
    device, st, ts = report
    summary = latency_summary(st.latency_ms)
    lat = None
    if st.latency_ms:
        ordered = sorted(float(v) for v in st.latency_ms)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        lat = {"p50": summary["p50_ms"], "p90": p90, "p99": summary["p99_ms"], "mean": summary["mean_ms"],
               "n": len(ordered)}
    rec.ingress_device = device
    rec.fps_in, rec.fps_out = float(st.fps_in), float(st.fps_out)
    rec.frames_in, rec.frames_out = int(st.frames_in), int(st.frames_out)
    rec.dropped, rec.drop_reasons = int(sum(st.dropped.values())), dict(st.dropped)
    rec.errors, rec.error_reasons = int(sum(st.errors.values())), dict(st.errors)
    rec.in_flight, rec.backlog, rec.backlog_max = int(st.in_flight), int(st.backlog), int(st.backlog_max)
    rec.latency_ms, rec.updated = lat, ts
    return rec


class StreamTable:
    """Stream definitions (through the same gate as manifests) and ingress reports, filled by the handlers."""

    def __init__(self, fleet: str, gate: ManifestGate, view: FleetView, changed: threading.Condition,
                 touch: Any = None) -> None:
        self.fleet = fleet
        self.touch = touch or (lambda: None)      # retained messages arrived (the Fleet's settle waits on it)
        self.gate = gate
        self.view = view
        self.changed = changed
        self.specs: dict[str, StreamSpec] = {}
        self.versions: dict[str, int] = {}                    # highest version seen per name (tombstones too)
        self.rejected: dict[str, str] = {}
        self.reports: dict[str, tuple[StreamReport, float]] = {}   # device -> (report, received at)

    # ------------------------------------------------------------------------------------ handlers
    def on_spec(self, topic: str, payload: bytes, retained: bool) -> None:
        name = topics.parse_stream(topic)
        if name is None:
            return
        self.touch()
        with self.changed:
            if not payload:
                if not self.gate.trust:
                    self.specs.pop(name, None)
                self.changed.notify_all()
                return
            try:
                spec = StreamSpec.from_bytes(payload, max_bytes=1 << 20)
                if spec.name != name:
                    raise ProtocolError(f"stream '{spec.name}' published under stream/{name}")
                validate_stream(spec, self.fleet)
            except ProtocolError as exc:
                log.warning("ignored malformed stream definition %s: %s", name, exc)
                return
            self.versions[name] = max(self.versions.get(name, 0), spec.version)
            rejection = self.gate.admit(spec)
            if rejection is not None:
                log.warning("ignored stream %s v%d: %s", name, spec.version, rejection.reason)
                self.rejected[name] = rejection.reason
            elif spec.stopped:
                self.specs.pop(name, None)
            else:
                self.specs[name] = spec
            self.changed.notify_all()

    def on_report(self, topic: str, payload: bytes, retained: bool) -> None:
        device = topics.publisher_device(topic)
        if not device or not payload:
            return
        try:
            rep = StreamReport.from_bytes(payload, max_bytes=1 << 20)
            if rep.device_id != device:
                raise ProtocolError(f"stream report of {rep.device_id!r} published under {topic}")
            rep.stats()
        except ProtocolError as exc:
            log.warning("ignored malformed stream report on %s: %s", topic, exc)
            return
        with self.changed:
            self.reports[device] = (rep, time.time())
            self.changed.notify_all()

    # ------------------------------------------------------------------------------------ queries
    def wait_spec(self, name: str, wait: float) -> StreamSpec | None:
        """The definition of ``name``, waiting up to ``wait`` s for the retained copy to arrive."""
        end = time.monotonic() + wait
        with self.changed:
            while name not in self.specs and time.monotonic() < end:
                self.changed.wait(0.1)
            return self.specs.get(name)

    def next_version(self, name: str) -> int:
        with self.changed:
            return self.versions.get(name, 0) + 1

    def latest_report(self, name: str) -> tuple[str, StreamStats, float] | None:
        """(device, stats, report time) from the live device that reported ``name`` most recently."""
        best = None
        with self.changed:
            reports = list(self.reports.items())
        for device, (rep, _) in reports:
            if not self.view.online(device):
                continue
            for st in rep.stats():
                if st.name == name and (best is None or rep.ts > best[2]):
                    best = (device, st, rep.ts)
        return best

    def reporting(self, name: str) -> list[str]:
        """Live devices whose latest report lists stream ``name``."""
        with self.changed:
            reports = list(self.reports.items())
        return sorted(d for d, (rep, _) in reports if self.view.online(d)
                      and any(e.get("name") == name for e in rep.streams if isinstance(e, dict)))

    def records_by_name(self) -> dict[str, StreamRecord]:
        return {r.name: r for r in self.records()}

    def records(self) -> list[StreamRecord]:
        with self.changed:
            specs = sorted(self.specs.values(), key=lambda s: s.name)
        return [record(s, self.latest_report(s.name)) for s in specs]


def make_spec(fleet: str, manifest: Manifest, name: str, *, source: str, sink: str, policy: str, batch: int,
              input: str | None, preprocess: Preprocess | str | dict | None, version: int, operator: str,
              expires: float) -> StreamSpec:
    """A checked, unsigned stream definition: topics and policy valid, the input exists, and ``batch`` > 1
    only on a model whose batch dimension (dim 0 of every input and output) is dynamic."""
    topics.check_segment("stream name", name)
    check_source(fleet, source)
    check_sink(fleet, sink)
    if topic_matches(source, sink):
        raise ValueError(f"stream {name}: sink {sink!r} matches source {source!r}: it would consume its own output")
    pol = Policy.parse(policy)
    names = [d["name"] for d in manifest.inputs]
    if input:
        if input not in names:
            raise ValueError(f"stream {name}: model {manifest.name} has no input {input!r} (inputs: {names})")
    elif len(names) != 1:
        raise ValueError(f"stream {name}: model {manifest.name} has inputs {names}; say which one frames feed "
                         "(input=...) or send named tensors")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"stream {name}: batch must be a positive integer, got {batch!r}")
    if batch > 1:
        fixed = [d["name"] for d in manifest.inputs + manifest.outputs
                 if not d["shape"] or (isinstance(d["shape"][0], int) and d["shape"][0] > 0)]
        if fixed:
            raise ValueError(f"stream {name}: --batch {batch} needs a dynamic batch dimension, but "
                             f"{fixed} of {manifest.name} have a fixed first dimension")
    if isinstance(preprocess, str):
        preprocess = Preprocess.parse(preprocess)
    elif isinstance(preprocess, dict):
        preprocess = Preprocess.from_dict(preprocess)
    spec = StreamSpec(name, version, manifest.name, source, sink, policy=str(pol), batch=batch,
                      input=input or "", preprocess=preprocess.to_dict() if preprocess else {},
                      expires=expires, operator=operator, fleet=fleet)
    validate_stream(spec, fleet)
    return spec
