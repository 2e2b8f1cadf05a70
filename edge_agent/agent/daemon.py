"""The agent daemon (``edge-agent run``): one per device. This module only wires the parts together.

It advertises itself by mDNS, reports its state over MQTT (retained, with a Last Will for liveness),
installs the pipeline stages that deployments assign to it (:mod:`.reconcile`: shards fetched chunk by
chunk into a content-addressed store) and serves them (:mod:`.server`: tensors in, stage run, tensors out
to the least loaded live replica of the next stage, or to the caller). When every device holding a stage
is gone, the agents agree (same rule, same view) on one of them to adopt it. Manifests pass the trust gate
(:mod:`edge_agent.security.gate`) on the control thread, never on the network thread. Bad input of any
kind is logged, counted in the reported state and answered with an error where there is someone to
answer; the agent keeps serving.

Threads: paho's network thread (handlers: decode and hand over), ``control`` (gate + reconcile),
``stage-worker`` (serving), ``heartbeat``, ``capability`` (link probe at start; link and GFLOP/s again
when idle), one per install job and prefetch; for streams (:mod:`.streams`), ``stream-report``, one
``ingress-<stream>`` per stream this device is the ingress of, and one per hosted source (:mod:`.sources`).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent._version import __version__
from edge_agent.agent.backend import Backend
from edge_agent.agent.capability import cores, cpu_isa, measure_gflops_burst, ram_mb, rechecks_due
from edge_agent.agent.handlers import AgentHandlers, ManifestNote, StreamNote
from edge_agent.agent.reconcile import Reconciler
from edge_agent.agent.server import WORK_QUEUE, StageServer
from edge_agent.agent.sources import HostedSource, SourceSpec
from edge_agent.agent.stages import StageTable
from edge_agent.agent.streams import StreamHost
from edge_agent.cluster.view import FleetView
from edge_agent.protocol import topics
from edge_agent.protocol.errors import BrokerError, ProtocolError
from edge_agent.protocol.manifest import validate_manifest
from edge_agent.protocol.messages import DeviceState, Freshness, Manifest
from edge_agent.protocol.streams import StreamReport, topic_matches
from edge_agent.security.freshness import FreshnessGate
from edge_agent.security.gate import ManifestGate, VersionLedger
from edge_agent.transport.blobs import BlobFetcher, BlobServer
from edge_agent.transport.linkprobe import LinkStats
from edge_agent.transport.mqtt import Transport
from edge_agent.transport.store import BlobStore

log = logging.getLogger("edge_agent.agent")

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
CONTROL_INBOX = 1024     # manifests waiting for the gate


def private_dir(path: Path) -> Path:
    """The agent's data directory, 0700: shards, persisted manifests, the version ledger and the freshness
    statement are for this device's user only. A directory others could read or write is tightened, loudly
    (a local user who could replace a file there could also delete the ledger and replay an old version)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("data directory %s was open to group/others (mode %o); set it to 0700", path, mode)
        os.chmod(path, 0o700)
    return path


@dataclass
class AgentConfig:
    """Everything ``edge-agent run`` can set."""

    name: str
    broker: str
    data_dir: Path
    fleet: str = "default"
    interfaces: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    threads: int = 1
    backend: str = "auto"
    gflops: float | None = None          # override the measurement (simulated slow/fast devices)
    discovery: bool = True
    advertise_broker: bool = False       # this device hosts the broker: advertise role "broker"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    heartbeat_s: float = 2.0
    keepalive_s: int = 4                 # the broker publishes the Last Will ~1.5x this after a silent death
    fetch_timeout_s: float = 300.0
    max_queued_requests: int = WORK_QUEUE   # requests waiting for the stage worker, shared fairly by senders
    # wraps each loaded backend; the lab injects a slow-device emulation here (edge_agent.lab.device)
    wrap_backend: Callable[[Backend], Backend] | None = None
    transport_kwargs: dict = field(default_factory=dict)   # username/password/tls for the broker
    trust: list = field(default_factory=list)   # FleetKeys whose signatures are accepted on manifests
    dev_mode: bool = False               # accept unsigned manifests (demo, simulated fleets, labs)
    metrics_port: int | None = None      # Prometheus /metrics on this port (off by default)
    metrics_host: str = "127.0.0.1"      # loopback unless told otherwise
    gflops_probe_s: float = 1.0          # GEMM probe length: several 100 ms scheduler periods (CPU quotas)
    recheck_every_s: float = 60.0        # measure link and GFLOP/s again this often when idle (0: never)
    idle_after_s: float = 10.0           # no request for this long = idle
    link_burst_bytes: int = 1 << 20      # throughput probe: a burst of this many bytes in 64 KiB messages
    sources: list[str] = field(default_factory=list)   # hosted sources: "NAME=dir:/path" / "NAME=synthetic:fps=N"


class Agent:
    """A device of the fleet. ``start()`` returns once connected; ``stop()`` shuts down cleanly."""

    # (seconds, threads) -> (GFLOP/s, what measured it); the lab wraps it for emulated devices
    # (GFLOP/s, source) or (sustained GFLOP/s, burst GFLOP/s, source)
    gflops_probe: Callable[[float, int], tuple] = staticmethod(measure_gflops_burst)

    def __init__(self, config: AgentConfig) -> None:
        self.cfg = config
        topics.check_segment("device name", config.name)
        topics.check_segment("fleet", config.fleet)
        if not config.trust and not config.dev_mode:
            raise ValueError("no trusted fleet key (--trust keys/fleet.pub) and development mode not requested "
                             "(--dev): refusing to run a device that would install unsigned models")
        self.device_id = config.name
        self.source_specs = [SourceSpec.parse(text) for text in config.sources]   # bad options fail here
        self.endpoint = topics.device_endpoint(config.fleet, config.name)
        self.data_dir = private_dir(Path(config.data_dir))
        self.store = BlobStore(self.data_dir / "blobs")
        self.counters: collections.Counter[str] = collections.Counter()
        self.started = time.time()
        self.isa = cpu_isa()
        self.burst_gflops: float | None = None          # measured speed of one GEMM on an idle device
        if config.gflops is not None:
            self.gflops, self.gflops_source = float(config.gflops), "configured"
        else:
            self.gflops, self.burst_gflops, self.gflops_source = self._probe()
        self.gflops_at = time.monotonic()
        self.link: LinkStats | None = None              # last measurement of the link to the broker
        self.freshness = FreshnessGate(config.fleet, config.trust, self.data_dir / "freshness.msg")
        self.gate = ManifestGate(config.fleet, config.trust, VersionLedger(self.data_dir / "versions.json"),
                                 self.freshness)
        self.view = FleetView()                         # the other devices (this one is not in it)
        self.stages = StageTable()
        self.events: collections.deque[dict] = collections.deque(maxlen=20)   # last rejections
        self.peers: list[str] = []                       # device ids seen by mDNS
        self.discovery = None
        self.metrics = None                              # AgentMetrics when --metrics-port is set
        self._kick = threading.Event()                  # something changed: reconcile
        self._inbox: queue.Queue[ManifestNote | Freshness | StreamNote] = queue.Queue(maxsize=CONTROL_INBOX)
        self._stop = threading.Event()
        self._last_state_pub = 0.0
        self._threads: list[threading.Thread] = []

        will = DeviceState(self.device_id, config.fleet, online=False, endpoint=self.endpoint).to_bytes()
        self.transport = Transport(config.broker, client_id=f"ea-{config.fleet}-{config.name}",
                                   clean_session=True, keepalive=config.keepalive_s,
                                   will=(topics.state(config.fleet, self.device_id), will, True),
                                   probe_topic=topics.probe(self.endpoint), **config.transport_kwargs)
        self.blob_server = BlobServer(self.transport, self.endpoint, self.store, on_reject=self._reject)
        self.fetcher = BlobFetcher(self.transport, self.endpoint, self.store, on_reject=self._reject)
        self.server = StageServer(self.device_id, config.fleet, self.transport, self.view, self.stages,
                                  self.counters, self._reject, config.max_message_bytes,
                                  manifest_of=lambda model, version: self.reconciler.manifest_of(model, version),
                                  max_queued=config.max_queued_requests)
        self.reconciler = Reconciler(
            self.device_id, self.stages, self.view, self.store, self.fetcher, self.counters,
            threads=config.threads, backend=config.backend, wrap_backend=config.wrap_backend,
            fetch_timeout_s=config.fetch_timeout_s, gflops=lambda: self.gflops,
            on_change=lambda force: self.publish_state(force=force),
            on_ready=lambda: self.server.publish_load(force=True), kick=self._kick)
        self.streams = StreamHost(self.device_id, config.fleet, self.transport, self.view, self.stages,
                                  self.reconciler, self.server.send, self.data_dir, config.max_message_bytes)
        self.sources: list[HostedSource] = []
        self.handlers = AgentHandlers(self.device_id, self.view, self.server, self._inbox, self._kick,
                                      self._reject, config.max_message_bytes)

    # ---------------------------------------------------------------------------------- lifecycle
    def start(self, wait: float | None = 30.0) -> Agent:
        t, h, fleet = self.transport, self.handlers, self.cfg.fleet
        t.subscribe(topics.inbox_filter(self.endpoint, "in"), h.on_infer)
        t.subscribe(topics.inbox_filter(self.endpoint, "cmd"), h.guard(self.blob_server.handle))
        t.subscribe(topics.inbox_filter(self.endpoint, "blob"), h.guard(self.fetcher.deliver))
        t.subscribe(topics.all_states(fleet), h.on_state)
        for channel in topics.CHANNELS:
            t.subscribe(topics.all_deploys(fleet, channel), h.on_manifest)
        t.subscribe(topics.all_loads(fleet), h.on_load, qos=0)
        t.subscribe(topics.freshness(fleet), h.on_freshness)
        t.subscribe(topics.all_streams(fleet), h.on_stream)
        t.subscribe(topics.inbox_filter(self.endpoint, "out"), h.guard(self.streams.on_result))
        t.add_connect_hook(self._on_connected)
        self._restore_manifests()
        self.streams.restore(self.gate)
        self._threads.append(self.server.start())
        for target, name in ((self._control_loop, "control"), (self._heartbeat_loop, "heartbeat"),
                             (self._capability_loop, "capability"),
                             (lambda: self.streams.report_loop(self._stop), "stream-report")):
            th = threading.Thread(target=target, name=f"{name}-{self.device_id}", daemon=True)
            th.start()
            self._threads.append(th)
        t.start(wait=wait)
        if self.cfg.metrics_port is not None:
            from edge_agent.agent.metrics import AgentMetrics
            self.metrics = AgentMetrics(self)
            self.server.on_run = self.metrics.observe
            self.streams.on_latency = self.metrics.observe_stream
            self.metrics.serve(self.cfg.metrics_port, self.cfg.metrics_host)
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics_host, self.cfg.metrics_port)
        if self.cfg.discovery:
            self._start_discovery()
        self.sources = [HostedSource(spec, self.cfg.fleet, self.device_id, self.transport,
                                     self._stream_input_shape).start() for spec in self.source_specs]
        if not self.cfg.trust:
            log.warning("DEVELOPMENT MODE: %s installs unsigned manifests from anyone on the broker "
                        "(start with --trust <fleet.pub> on real devices)", self.device_id)
        log.info("agent %s up: fleet %s, broker %s, isa %s, %.1f GFLOP/s (%s), data %s", self.device_id,
                 self.cfg.fleet, self.cfg.broker, self.isa, self.gflops, self.gflops_source, self.data_dir)
        return self

    def _on_connected(self) -> None:
        self.reconciler.connected_at = time.monotonic()
        self.streams.note_reconnect()
        self.publish_state()

    def _stream_input_shape(self, topic: str) -> tuple[tuple[int, ...], str] | None:
        """Shape (dynamic dims as 1) and dtype of the model input a stream from ``topic`` feeds, or None."""
        for spec in list(self.streams.specs.values()):
            m = self.streams.manifest_for(spec.model) if topic_matches(spec.source, topic) else None
            if m is None:
                continue
            entry = next((d for d in m.inputs if d["name"] == spec.input), None) if spec.input else (
                m.inputs[0] if len(m.inputs) == 1 else None)
            if entry is not None:
                return tuple(d if isinstance(d, int) and d > 0 else 1 for d in entry["shape"]), entry["dtype"]
        return None

    def _start_discovery(self) -> None:
        from discovery import DeviceInfo, Discovery

        info = DeviceInfo(device_id=self.device_id, fleet=self.cfg.fleet, broker=self.cfg.broker,
                          isa=self.isa, cores=cores(), ram_mb=ram_mb(), gflops=round(self.gflops, 1),
                          version=__version__, role="broker" if self.cfg.advertise_broker else "agent")
        self.discovery = Discovery(interfaces=self.cfg.interfaces, fleet=self.cfg.fleet)
        self.discovery.advertise(info)
        self.discovery.browse(on_event=self._on_peer)

    def _on_peer(self, event: str, peer: object) -> None:
        info = getattr(peer, "info", None)
        if info is None:
            return
        log.info("mDNS peer %s: %s (%s, %.1f GFLOP/s)", event, info.device_id, info.isa, info.gflops)
        peers = set(self.peers)
        (peers.discard if event == "remove" else peers.add)(info.device_id)
        self.peers = sorted(peers)
        self.publish_state(force=True)

    def stop(self) -> None:
        """Clean shutdown: offline state (retained), mDNS goodbye, disconnect."""
        if self._stop.is_set() and not self.transport.connected.is_set():
            return
        self._stop.set()
        self._kick.set()
        for src in self.sources:
            src.stop()
        self.streams.stop_all()
        self.reconciler.cancel_all()
        self.server.stop()
        self.store.wait_synced(5.0)   # shards received just now: durable before an orderly exit
        if self.discovery is not None:
            try:
                self.discovery.close()
            except Exception:  # pragma: no cover - best effort
                log.debug("discovery close failed", exc_info=True)

        def offline() -> None:
            self.transport.publish(topics.stream_report(self.cfg.fleet, self.device_id),
                                   StreamReport(self.device_id).to_bytes(), qos=1, retain=True)
            info = self.transport.publish(topics.state(self.cfg.fleet, self.device_id),
                                          self._state(online=False).to_bytes(), qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass

        self.transport.close(final=offline)
        self.blob_server.close()
        log.info("agent %s stopped", self.device_id)

    def run_forever(self) -> None:
        """Block until SIGTERM/SIGINT, then stop cleanly."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
        self.stop()

    # ---------------------------------------------------------------------------------- control thread
    def _control_loop(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(1.0)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self._admit_manifests()
                self.reconciler.reconcile()
                self.streams.reconcile()
            except Exception:  # keep the loop alive whatever a manifest or a state holds
                log.exception("reconcile failed")

    def _admit_manifests(self) -> None:
        """Run the trust gate on the manifests the handlers queued, and hand the accepted ones over."""
        while True:
            try:
                note = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(note, Freshness):
                self._admit_freshness(note)
            if isinstance(note, StreamNote):
                self._admit_stream(note)
                continue
            slot = (note.channel, note.name)
            m = note.manifest
            if m is None:
                if self.cfg.trust and note.channel == "stable":
                    # with a fleet key, only a signed tombstone manifest may undeploy
                    log.warning("ignored unsigned undeploy of %s (trusted mode needs a signed undeploy)",
                                note.name)
                    self._reject("unsigned_undeploy")
                else:
                    self.reconciler.set_manifest(slot, None)
                    self._keep_manifest(slot, None)
                continue
            rejection = self.gate.admit(m)
            if rejection is not None:
                log.warning("rejected manifest %s v%s (%s): %s", note.name, m.version, note.channel,
                            rejection.reason)
                self.events.append({"ts": time.time(), "kind": f"manifest_{rejection.kind}", "model": note.name,
                                    "version": m.version, "reason": rejection.reason})
                self._reject(f"manifest_{rejection.kind}")
                self.publish_state()
                continue
            if not m.stages:
                log.info("%s undeployed by a signed tombstone (v%d)", note.name, m.version)
            self.reconciler.set_manifest(slot, m)
            self._keep_manifest(slot, m if m.stages else None)

    def _admit_freshness(self, f: Freshness) -> None:
        why = self.freshness.admit(f)
        if why is not None:
            log.warning("rejected freshness statement: %s", why)
            self._reject("freshness")
            return
        # manifests refused (or not restored) for their own expiry may be vouched for now
        self._restore_manifests(missing_only=True)
        self.publish_state(force=True)

    def _admit_stream(self, note: StreamNote) -> None:
        """The gate on a stream definition: signed by the fleet key (in trusted mode), not a replay."""
        spec = note.spec
        if spec is None:
            if self.cfg.trust:
                log.warning("ignored unsigned removal of stream %s (trusted mode needs a signed stop)", note.name)
                self._reject("unsigned_stream_stop")
            else:
                self.streams.remove(note.name)
            return
        rejection = self.gate.admit(spec)
        if rejection is not None:
            log.warning("rejected stream %s v%s: %s", spec.name, spec.version, rejection.reason)
            self.events.append({"ts": time.time(), "kind": f"stream_{rejection.kind}", "model": spec.name,
                                "version": spec.version, "reason": rejection.reason})
            self._reject(f"stream_{rejection.kind}")
            return
        self.streams.set_spec(spec)

    def _manifest_path(self, slot: tuple[str, str]) -> Path:
        return self.data_dir / "manifests" / f"{slot[0]}-{slot[1]}.manifest"

    def _keep_manifest(self, slot: tuple[str, str], m: object) -> None:
        """Persist the last accepted manifest of a slot (None: it was undeployed), so a restart serves it
        even when the broker lost its retained copy or now holds one this device refuses."""
        path = self._manifest_path(slot)
        try:
            if m is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(m.to_bytes())
                tmp.replace(path)
        except OSError as exc:
            log.warning("cannot keep manifest %s/%s on disk: %s", *slot, exc)

    def _restore_manifests(self, missing_only: bool = False) -> None:
        """At start: the manifests accepted before the restart, checked again (signature, fleet, expiry, or a
        freshness statement vouching for them); ``missing_only``: those not being served now."""
        for path in sorted((self.data_dir / "manifests").glob("*.manifest")):
            try:
                m = Manifest.from_bytes(path.read_bytes(), max_bytes=self.cfg.max_message_bytes)
                validate_manifest(m)
            except (OSError, ProtocolError) as exc:
                log.warning("ignored stored manifest %s: %s", path.name, exc)
                continue
            if missing_only and self.reconciler.manifest_of(m.name, m.version) is not None:
                continue
            rejection = self.gate.check(m)
            if rejection is not None:
                log.warning("stored manifest %s v%d no longer passes: %s", m.name, m.version, rejection.reason)
                continue
            log.info("serving %s v%d from the manifest accepted before the restart", m.name, m.version)
            self.reconciler.set_manifest((m.channel, m.name), m)

    # ---------------------------------------------------------------------------------- state
    def _reject(self, reason: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        self.publish_state(force=False)

    def _stage_report(self) -> list[dict]:
        """Stage entries, each with what this device measured serving it (rate, median path latency)."""
        out = self.stages.report()
        for e in out:
            m = self.server.meter.measured((e.get("model"), e.get("version"), e.get("stage")))
            if m.requests:
                e["measured"] = m.to_dict()
        return out

    def _state(self, online: bool = True) -> DeviceState:
        return DeviceState(
            device_id=self.device_id, fleet=self.cfg.fleet, online=online, started=self.started,
            isa=self.isa, cores=cores(), ram_mb=ram_mb(), gflops=round(self.gflops, 2), version=__version__,
            backend_isa=self.isa, stages=self._stage_report(), blobs=self.store.list()[:256],
            peers=list(self.peers), counters=dict(self.counters), queue_depth=self.server.queue_depth(),
            endpoint=self.endpoint, dev_mode=not self.cfg.trust, events=list(self.events),
            link_rtt_ms=None if self.link is None else round(self.link.rtt_ms, 3),
            link_mbps=None if self.link is None else round(self.link.mbps, 1),
            burst_gflops=None if self.burst_gflops is None else round(self.burst_gflops, 2),
            fresh=self.freshness.status(self.gate.ledger.versions()))

    def publish_state(self, force: bool = True) -> None:
        """Publish the retained state; unforced calls are rate-limited (progress, counters)."""
        now = time.monotonic()
        if not force and now - self._last_state_pub < 0.25:
            return
        self._last_state_pub = now
        try:
            self.transport.publish(topics.state(self.cfg.fleet, self.device_id), self._state().to_bytes(),
                                   qos=1, retain=True)
        except Exception:  # pragma: no cover - transport errors are retried by paho
            log.debug("state publish failed", exc_info=True)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.cfg.heartbeat_s):
            if self.transport.connected.is_set():
                self.publish_state()
                self.server.publish_load(force=True)

    # ---------------------------------------------------------------------------------- capabilities
    def _capability_loop(self) -> None:
        """Measure the link once connected, then link and GFLOP/s again when idle (``rechecks_due``)."""
        last_link: float | None = None
        while not self._stop.wait(1.0):
            if not self.transport.connected.is_set():
                continue
            link, gflops = rechecks_due(time.monotonic(), last_link=last_link, last_gflops=self.gflops_at,
                                        idle_for=self.server.idle_for(), every_s=self.cfg.recheck_every_s,
                                        idle_after_s=self.cfg.idle_after_s,
                                        gflops_fixed=self.cfg.gflops is not None)
            if link:
                last_link = time.monotonic()
                self.measure_link()
            if gflops:
                self.remeasure_gflops()

    def measure_link(self) -> LinkStats | None:
        """Round trip and throughput to the broker, into the reported state; None when it failed."""
        try:
            stats = self.transport.measure_link(burst_bytes=self.cfg.link_burst_bytes)
        except BrokerError as exc:
            log.warning("%s: link probe failed: %s", self.device_id, exc)
            return None
        first = self.link is None
        self.link = stats
        (log.info if first else log.debug)("%s: link to broker %.2f ms round trip, %.0f Mbit/s", self.device_id,
                                           stats.rtt_ms, stats.mbps)
        self.publish_state()
        return stats

    def _probe(self) -> tuple[float, float | None, str]:
        """(sustained GFLOP/s, burst GFLOP/s or None, source) from the configured probe (2 or 3 values)."""
        got = self.gflops_probe(self.cfg.gflops_probe_s, max(1, self.cfg.threads))
        if len(got) == 3:
            return float(got[0]), float(got[1]), got[2]
        return float(got[0]), None, got[1]

    def remeasure_gflops(self) -> float:
        """Measure GFLOP/s again (an idle device); a change of more than 5 % is reported at once."""
        value, burst, source = self._probe()
        self.gflops_at = time.monotonic()
        if abs(value - self.gflops) > 0.05 * max(self.gflops, 1e-6):
            log.info("%s: measured %.1f GFLOP/s (was %.1f)", self.device_id, value, self.gflops)
            self.gflops, self.burst_gflops, self.gflops_source = value, burst, source
            self.publish_state()
        return value

    # ---------------------------------------------------------------------------------- queries
    def route(self, model: str, version: int, stage: int) -> str | None:
        """The live device (maybe this one) with the earliest expected completion for a stage."""
        return self.server.route(model, version, stage)


def new_device_name() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}"
