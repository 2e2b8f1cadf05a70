"""The agent daemon (``edge-agent run``): one per device.

It advertises itself by mDNS, reports its state over MQTT (retained, with a Last Will for liveness),
installs the pipeline stages that deployments assign to it (shards fetched chunk by chunk into a
content-addressed store), and serves them: tensors in, stage run, tensors out to the least loaded live
replica of the next stage, or to the caller. When every device holding a stage is gone, the agents agree
(same rule, same view) on one of them to adopt it, so serving resumes without the operator. Bad input of
any kind is logged, counted in the reported state and answered with an error where there is someone to
answer; the agent keeps serving.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import queue
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent import __version__
from edge_agent.agent.backend import Backend, IOSpec, check_inputs, load_backend
from edge_agent.agent.capability import cores, cpu_isa, measure_gflops, ram_mb
from edge_agent.protocol import topics
from edge_agent.protocol.errors import EdgeAgentError, InvalidInputError, ProtocolError, StoreError
from edge_agent.protocol.messages import (
    DeviceState,
    InferRequest,
    InferResult,
    LoadReport,
    Manifest,
    stage_devices,
    validate_manifest,
    validate_state,
)
from edge_agent.transport.blobs import BlobFetcher, BlobServer, TransferCancelled, TransferSpec
from edge_agent.transport.mqtt import Transport
from edge_agent.transport.store import BlobStore

log = logging.getLogger("edge_agent.agent")

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
DEDUP_CACHE = 2048       # (request, stage) answers kept so a retry is resent, not recomputed...
DEDUP_MAX_BYTES = 64 << 20   # ...bounded in bytes too: 2048 x 1 MiB activations would be 2 GiB
WORK_QUEUE = 1024        # requests waiting per device before it answers "overloaded"
OLD_VERSION_GRACE_S = 10.0   # an upgraded stage's old version keeps serving in-flight requests this long
LOAD_REPORT_EVERY_S = 0.1
LIVE_STATUSES = ("fetching", "loading", "ready")
ADOPT_AFTER_CONNECT_S = 3.0
MAX_REROUTES = 3          # a request passed on more often than this is answered with an error   # a fresh (re)connection has not seen every retained state yet

Key = tuple[str, int, int]   # (model, version, stage index)


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
    # wraps each loaded backend; the lab injects a slow-device emulation here (edge_agent.lab.device)
    wrap_backend: Callable[[Backend], Backend] | None = None
    transport_kwargs: dict = field(default_factory=dict)   # username/password/tls for the broker
    trust: list = field(default_factory=list)   # FleetKeys whose signatures are accepted on manifests
    dev_mode: bool = False               # accept unsigned manifests (demo, simulated fleets, labs)


@dataclass
class InstalledStage:
    manifest: Manifest
    stage: dict
    backend: Backend
    loaded_at: float = field(default_factory=time.time)

    @property
    def index(self) -> int:
        return int(self.stage["index"])

    @property
    def key(self) -> Key:
        return (self.manifest.name, self.manifest.version, self.index)

    @property
    def last(self) -> bool:
        return self.index == len(self.manifest.stages) - 1


@dataclass
class _Job:
    thread: threading.Thread
    cancel: threading.Event


@dataclass
class _Peer:
    queue: int = 0
    service_ms: float = 1.0
    ts: float = 0.0
    sent_since: int = 0


class Agent:
    """A device of the fleet. ``start()`` returns once connected; ``stop()`` shuts down cleanly."""

    def __init__(self, config: AgentConfig) -> None:
        self.cfg = config
        topics.check_segment("device name", config.name)
        topics.check_segment("fleet", config.fleet)
        self.device_id = config.name
        self.endpoint = topics.device_endpoint(config.fleet, config.name)
        self.fleet_prefix = topics.fleet_root(config.fleet) + "/"
        self.data_dir = Path(config.data_dir)
        self.store = BlobStore(self.data_dir / "blobs")
        self.counters: collections.Counter[str] = collections.Counter()
        self.started = time.time()
        self.isa = cpu_isa()
        if config.gflops is not None:
            self.gflops, self.gflops_source = float(config.gflops), "configured"
        else:
            self.gflops, self.gflops_source = measure_gflops(0.3, max(1, config.threads))
        if not config.trust and not config.dev_mode:
            raise ValueError("no trusted fleet key (--trust keys/fleet.pub) and development mode not requested "
                             "(--dev): refusing to run a device that would install unsigned models")
        self._lock = threading.RLock()
        self._manifests: dict[tuple[str, str], Manifest] = {}   # (channel, model) -> manifest
        self._versions_path = self.data_dir / "versions.json"
        self._versions: dict[str, dict] = read_json(self._versions_path)   # "<channel>/<model>" -> {version, digest}
        self._installed: dict[Key, InstalledStage] = {}
        self._status: dict[Key, dict] = {}
        self._adopted: set[Key] = set()
        self._undesired_since: dict[Key, float] = {}
        self._jobs: dict[Key, _Job] = {}
        self._prefetching: set[str] = set()
        self._states: dict[str, DeviceState] = {}        # other devices' reported states
        self._peers_load: dict[str, _Peer] = {}
        self._service_ms = 1.0                            # EWMA of this device's run time per request
        self._kick = threading.Event()                    # something changed: reconcile
        self._work: queue.Queue[InferRequest | None] = queue.Queue(maxsize=WORK_QUEUE)
        self._done: collections.OrderedDict[tuple[str, int], tuple[str, bytes, InferRequest | None]] = (
            collections.OrderedDict())
        self._done_bytes = 0
        self._stop = threading.Event()
        self._last_state_pub = 0.0
        self._last_load_pub = 0.0
        self._last_load_depth = -1
        self._last_signature = ""
        self._connected_at = float("inf")
        self._peers: list[str] = []
        self._events: collections.deque[dict] = collections.deque(maxlen=20)
        self.discovery = None
        will = DeviceState(self.device_id, config.fleet, online=False, endpoint=self.endpoint).to_bytes()
        self.transport = Transport(config.broker, client_id=f"ea-{config.fleet}-{config.name}",
                                   clean_session=True, keepalive=config.keepalive_s,
                                   will=(topics.state(config.fleet, self.device_id), will, True),
                                   **config.transport_kwargs)
        self.blob_server = BlobServer(self.transport, self.endpoint, self.store, on_reject=self._reject)
        self.fetcher = BlobFetcher(self.transport, self.endpoint, self.store, on_reject=self._reject)
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------------------------- lifecycle
    def start(self, wait: float | None = 30.0) -> Agent:
        t = self.transport
        fleet = self.cfg.fleet
        t.subscribe(topics.inbox(self.endpoint, "in"), self._on_infer)
        t.subscribe(topics.inbox(self.endpoint, "cmd"), self._guard(self.blob_server.handle))
        t.subscribe(topics.inbox(self.endpoint, "blob"), self._guard(self.fetcher.deliver))
        t.subscribe(topics.all_states(fleet), self._on_state)
        t.subscribe(topics.all_deploys(fleet, "stable"), self._on_manifest)
        t.subscribe(topics.all_deploys(fleet, "canary"), self._on_manifest)
        t.subscribe(topics.all_loads(fleet), self._on_load, qos=0)
        t.add_connect_hook(self._on_connected)
        for target, name in ((self._reconcile_loop, "reconcile"), (self._work_loop, "stage-worker"),
                             (self._heartbeat_loop, "heartbeat")):
            th = threading.Thread(target=target, name=f"{name}-{self.device_id}", daemon=True)
            th.start()
            self._threads.append(th)
        t.start(wait=wait)
        if self.cfg.discovery:
            self._start_discovery()
        if not self.cfg.trust:
            log.warning("DEVELOPMENT MODE: %s installs unsigned manifests from anyone on the broker "
                        "(start with --trust <fleet.pub> on real devices)", self.device_id)
        log.info("agent %s up: fleet %s, broker %s, isa %s, %.1f GFLOP/s (%s), data %s", self.device_id,
                 self.cfg.fleet, self.cfg.broker, self.isa, self.gflops, self.gflops_source, self.data_dir)
        return self

    def _on_connected(self) -> None:
        self._connected_at = time.monotonic()
        self.publish_state()

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
        with self._lock:
            peers = set(self._peers)
            (peers.discard if event == "remove" else peers.add)(info.device_id)
            self._peers = sorted(peers)
        self.publish_state(force=True)

    def stop(self) -> None:
        """Clean shutdown: offline state (retained), mDNS goodbye, disconnect."""
        if self._stop.is_set() and not self.transport.connected.is_set():
            return
        self._stop.set()
        self._kick.set()
        with self._lock:
            for job in self._jobs.values():
                job.cancel.set()
        try:
            self._work.put_nowait(None)
        except queue.Full:
            pass
        if self.discovery is not None:
            try:
                self.discovery.close()
            except Exception:  # pragma: no cover - best effort
                log.debug("discovery close failed", exc_info=True)

        def offline() -> None:
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

    # ---------------------------------------------------------------------------------- state
    def _reject(self, reason: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        self.publish_state(force=False)

    def _state(self, online: bool = True) -> DeviceState:
        with self._lock:
            stages = []
            for key, st in sorted(self._status.items()):
                model, version, index = key
                entry = {"model": model, "version": version, "stage": index, **st}
                inst = self._installed.get(key)
                if inst is not None:
                    entry.update(backend=inst.backend.name, backend_reason=inst.backend.reason,
                                 n_stages=len(inst.manifest.stages))
                stages.append(entry)
            peers = list(self._peers)
        return DeviceState(
            device_id=self.device_id, fleet=self.cfg.fleet, online=online, started=self.started,
            isa=self.isa, cores=cores(), ram_mb=ram_mb(), gflops=round(self.gflops, 2), version=__version__,
            backend_isa=self.isa, stages=stages, blobs=self.store.list()[:256], peers=peers,
            counters=dict(self.counters), queue_depth=self._work.qsize(), endpoint=self.endpoint,
            dev_mode=not self.cfg.trust, events=list(self._events))

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

    def _publish_load(self, force: bool = False) -> None:
        """Load telemetry for routing: only when the queue depth changed, at most every 100 ms."""
        now = time.monotonic()
        depth = self._work.qsize()
        if not force and (now - self._last_load_pub < LOAD_REPORT_EVERY_S or depth == self._last_load_depth):
            return
        self._last_load_pub = now
        self._last_load_depth = depth
        rep = LoadReport(self.device_id, depth, round(self._service_ms, 3))
        self.transport.publish(topics.load(self.cfg.fleet, self.device_id), rep.to_bytes(), qos=0)

    def _set_status(self, key: Key, force: bool = True, **fields: object) -> None:
        with self._lock:
            self._status.setdefault(key, {}).update(fields)
        self.publish_state(force=force)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.cfg.heartbeat_s):
            if self.transport.connected.is_set():
                self.publish_state()
                self._publish_load(force=True)

    # ---------------------------------------------------------------------------------- handlers
    def _guard(self, handler):  # noqa: ANN001, ANN202 - wraps a transport handler with the size limit
        def wrapped(topic: str, payload: bytes, retained: bool) -> None:
            if len(payload) > self.cfg.max_message_bytes:
                log.warning("dropped %d-byte message on %s: over the %d-byte limit", len(payload), topic,
                            self.cfg.max_message_bytes)
                self._reject("oversized")
                return
            handler(topic, payload, retained)
        return wrapped

    def _on_state(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return
        try:
            st = DeviceState.from_bytes(payload, max_bytes=1 << 20)
            validate_state(st)
            if st.device_id != topics.device_of_state_topic(topic):
                raise ProtocolError(f"state of {st.device_id!r} published under {topic}")
        except ProtocolError as exc:
            log.warning("ignored malformed state on %s: %s", topic, exc)
            self._reject("state")
            return
        if st.device_id == self.device_id:
            return
        with self._lock:
            old = self._states.get(st.device_id)
            self._states[st.device_id] = st
        if old is None or old.online != st.online or old.stages != st.stages:
            self._kick.set()   # liveness or placement changed: maybe adopt or drop a stage

    def _on_load(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            rep = LoadReport.from_bytes(payload, max_bytes=4096)
        except ProtocolError:
            self.counters["rejected_load"] += 1
            return
        with self._lock:
            p = self._peers_load.setdefault(rep.device_id, _Peer())
            p.queue, p.service_ms, p.ts, p.sent_since = int(rep.queue), float(rep.service_ms), time.monotonic(), 0

    def _on_manifest(self, topic: str, payload: bytes, retained: bool) -> None:
        name = topics.last_segment(topic)
        channel = "canary" if "/canary/" in topic else "stable"
        if not payload:
            if self.cfg.trust and channel == "stable":
                # with a fleet key, only a signed tombstone manifest may undeploy
                log.warning("ignored unsigned undeploy of %s (trusted mode needs a signed undeploy)", name)
                self._reject("unsigned_undeploy")
                return
            with self._lock:
                self._manifests.pop((channel, name), None)
            self._kick.set()
            return
        try:
            m = Manifest.from_bytes(payload, max_bytes=self.cfg.max_message_bytes)
            if m.name != name:
                raise ProtocolError(f"manifest for '{m.name}' published under {channel}/{name}")
            if m.channel != channel:
                raise ProtocolError(f"manifest of channel '{m.channel}' published on the {channel} topic")
            validate_manifest(m)
        except ProtocolError as exc:
            log.warning("rejected manifest on %s: %s", topic, exc)
            self._reject("manifest")
            return
        try:
            reason = self.accept_manifest(m)
        except (TypeError, ValueError) as exc:   # content that cannot be put in canonical form
            reason = ("malformed", f"cannot check the manifest: {exc}")
        if reason is not None:
            log.warning("rejected manifest %s v%s (%s): %s", name, m.version, channel, reason[1])
            with self._lock:
                self._events.append({"ts": time.time(), "kind": f"manifest_{reason[0]}", "model": name,
                                     "version": m.version, "reason": reason[1]})
            self._reject(f"manifest_{reason[0]}")
            self.publish_state()
            return
        with self._lock:
            if m.stages:
                self._manifests[(channel, name)] = m
            else:
                log.info("%s undeployed by a signed tombstone (v%d)", name, m.version)
                self._manifests.pop((channel, name), None)
        self._kick.set()

    def accept_manifest(self, m: Manifest) -> tuple[str, str] | None:
        """Trust checks: signature by a trusted fleet key (unless development mode), validity window, and
        version order (never below the last accepted version of that model and channel, persisted across
        restarts; the same version only with the same content). Returns (counter, reason) to reject."""
        from edge_agent.security.keys import SignatureError, canonical_bytes, verify_document

        signed = {**m.signed_fields(), "sig": m.sig}
        if self.cfg.trust and m.fleet != self.cfg.fleet:
            return "foreign_fleet", f"manifest is for fleet {m.fleet!r}, this device is in {self.cfg.fleet!r}"
        if self.cfg.trust:
            try:
                verify_document(signed, self.cfg.trust)
            except SignatureError as exc:
                text = str(exc)
                kind = "unsigned" if "unsigned" in text else "expired" if "expired" in text else "signature"
                return kind, text
        digest = hashlib.sha256(canonical_bytes(m.signed_fields())).hexdigest()
        slot = f"{m.channel}/{m.name}"
        with self._lock:
            last = self._versions.get(slot, {})
            if m.version < int(last.get("version", 0)):
                return "replay", (f"version {m.version} is older than the last accepted version "
                                  f"{last['version']} (replayed manifest?); a rollback must be a new version")
            if m.version == last.get("version") and digest != last.get("digest"):
                return "conflict", f"a different manifest with version {m.version} was accepted before"
            if m.version != last.get("version"):
                self._versions[slot] = {"version": m.version, "digest": digest, "ts": time.time()}
                write_json(self._versions_path, self._versions)
        return None

    def _on_infer(self, topic: str, payload: bytes, retained: bool) -> None:
        if len(payload) > self.cfg.max_message_bytes:
            log.warning("dropped %d-byte request: over the %d-byte limit", len(payload), self.cfg.max_message_bytes)
            self._reject("oversized")
            return
        try:
            req = InferRequest.from_bytes(payload)
        except ProtocolError as exc:
            log.warning("rejected malformed request on %s: %s", topic, exc)
            self._reject("malformed_request")
            return
        self._enqueue(req)

    def _enqueue(self, req: InferRequest) -> None:
        if not topics.is_endpoint(req.reply_to, self.cfg.fleet):
            log.warning("rejected request %s: reply_to %r outside fleet %s", req.request_id, req.reply_to,
                        self.cfg.fleet)
            self._reject("bad_reply_to")
            return
        try:
            self._work.put_nowait(req)
        except queue.Full:
            self._reply_error(req, "overloaded", f"device {self.device_id} has {WORK_QUEUE} requests queued")
            return
        self._publish_load()

    # ---------------------------------------------------------------------------------- desired state
    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(1.0)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self._reconcile()
            except Exception:  # keep the loop alive whatever a manifest or a state holds
                log.exception("reconcile failed")

    def _live(self, device: str) -> bool:
        if device == self.device_id:
            return True
        st = self._states.get(device)
        return st is not None and st.online

    def _reports(self, device: str, key: Key) -> dict | None:
        st = self._states.get(device)
        if st is None:
            return None
        return next((e for e in st.stages if (e.get("model"), e.get("version"), e.get("stage")) == key), None)

    def _desired(self) -> tuple[set[Key], dict[Key, Manifest]]:
        """Stages this device should hold: assigned by a manifest, or adopted because nobody else can."""
        want: set[Key] = set()
        source: dict[Key, Manifest] = {}
        for (channel, _), m in self._manifests.items():
            for st in m.stages:
                key = (m.name, m.version, int(st["index"]))
                source[key] = m
                devs = stage_devices(st)
                if self.device_id in devs:
                    want.add(key)
                    continue
                if channel != "stable" or not m.failover:
                    continue
                holders = set(devs) | {d for d in self._states if d != self.device_id and
                                       (e := self._reports(d, key)) and e.get("status") in LIVE_STATUSES}
                assigned_back = any(self._live(d) and (e := self._reports(d, key)) and e.get("status") == "ready"
                                    for d in devs)
                if key in self._adopted:
                    if assigned_back:
                        log.info("%s v%d stage %d is back on %s; dropping adoption", *key, devs)
                        self._adopted.discard(key)
                    else:
                        want.add(key)
                    continue
                if any(self._live(d) for d in holders):
                    continue
                if time.monotonic() - self._connected_at < ADOPT_AFTER_CONNECT_S:
                    continue  # decide once the retained states of the fleet are in (reconcile runs each 1 s)
                if self._chosen_adopter(key) == self.device_id:
                    log.warning("no live device holds %s v%d stage %d (held by %s); adopting it", *key,
                                ", ".join(sorted(holders)))
                    self._adopted.add(key)
                    self.counters["adoptions"] += 1
                    want.add(key)
        return want, source

    def _chosen_adopter(self, key: Key) -> str:
        """Every agent applies the same rule to the same view: fewest stages, fastest, then by id."""
        cands = [(len(self._status), -self.gflops, self.device_id)]
        for d, st in self._states.items():
            if d != self.device_id and st.online:
                err = self._reports(d, key)
                if err is not None and err.get("status") == "error":
                    continue
                cands.append((len(st.stages), -st.gflops, d))
        return min(cands)[2]

    def _reconcile(self) -> None:
        with self._lock:
            want, source = self._desired()
            now = time.monotonic()
            # start what is missing
            for key in want:
                self._undesired_since.pop(key, None)
                if key in self._installed or key in self._jobs:
                    continue
                cancel = threading.Event()
                th = threading.Thread(target=self._install_job, args=(source[key], key, cancel),
                                      name=f"install-{key[0]}-v{key[1]}-s{key[2]}", daemon=True)
                self._jobs[key] = _Job(th, cancel)
                th.start()
            # cancel transfers nobody wants any more
            for key, job in list(self._jobs.items()):
                if key not in want:
                    job.cancel.set()
            # retire installed stages: at once when the model is gone, after a grace when replaced
            for key in list(self._installed):
                if key in want:
                    continue
                replaced = any(k[0] == key[0] and k[2] == key[2] and k[1] > key[1] and
                               self._status.get(k, {}).get("status") == "ready" for k in self._installed)
                # a stage handed back (adoption dropped) keeps serving a while: routers may still send here
                replaced = replaced or (key in source and any(
                    self._live(d) and (e := self._reports(d, key)) is not None and e.get("status") == "ready"
                    for d in self._states))
                first = self._undesired_since.setdefault(key, now)
                if not replaced or now - first >= OLD_VERSION_GRACE_S:
                    self._uninstall(key, "replaced" if replaced else "no longer deployed here")
            for key in list(self._status):
                if key not in want and key not in self._installed and key not in self._jobs:
                    self._status.pop(key, None)
            # keep a copy of every shard of the deployments this device takes part in (failover source)
            involved = {id(source[k]): source[k] for k in want if k in source}
            signature = repr(sorted(self._status.items()))
        for m in involved.values():
            for st in m.stages:
                if (m.name, m.version, int(st["index"])) not in want:   # own stages: the install job fetches
                    self._prefetch(m, st)
        if signature != self._last_signature:
            self._last_signature = signature
            self.publish_state()

    def _prefetch(self, m: Manifest, st: dict) -> None:
        sha = st["shard_sha256"]
        with self._lock:
            if sha in self._prefetching or self.store.has(sha):
                return
            self._prefetching.add(sha)

        def job() -> None:
            try:
                spec = TransferSpec(sha, int(st["shard_size"]), int(st["chunk_size"]), list(st["chunk_sha256"]))
                self.fetcher.fetch(spec, self._sources_for(m, sha), timeout=self.cfg.fetch_timeout_s)
                self.publish_state(force=False)
            except StoreError as exc:
                log.info("prefetch of %s stage %s shard skipped: %s", m.name, st["index"], exc)
            finally:
                with self._lock:
                    self._prefetching.discard(sha)

        threading.Thread(target=job, name=f"prefetch-{sha[:8]}", daemon=True).start()

    def _install_job(self, m: Manifest, key: Key, cancel: threading.Event) -> None:
        try:
            self._install(m, key, cancel)
        except Exception:
            log.exception("installing %s v%d stage %d failed", *key)
        finally:
            with self._lock:
                self._jobs.pop(key, None)
            self._kick.set()

    def _install(self, m: Manifest, key: Key, cancel: threading.Event) -> None:
        st = m.stages[key[2]]
        role = "assigned" if self.device_id in stage_devices(st) else "adopted"
        base = {"n_stages": len(m.stages), "error": "", "role": role, "channel": m.channel}
        try:
            sha = st["shard_sha256"]
            if not self.store.has(sha):
                self._set_status(key, status="fetching", progress=0.0, **base)
                spec = TransferSpec(sha, int(st["shard_size"]), int(st["chunk_size"]), list(st["chunk_sha256"]))

                def progress(have: int, total: int) -> None:
                    self._set_status(key, force=have == total, progress=round(have / max(total, 1), 3))

                self.fetcher.fetch(spec, self._sources_for(m, sha), timeout=self.cfg.fetch_timeout_s,
                                   progress=progress, cancel=cancel)
            if cancel.is_set():
                raise TransferCancelled("superseded")
            self._set_status(key, status="loading", progress=1.0, **base)
            backend = load_backend(self.store.get(sha), threads=self.cfg.threads, prefer=self.cfg.backend)
            if self.cfg.wrap_backend is not None:
                backend = self.cfg.wrap_backend(backend)
            _check_stage_io(backend, st)
        except TransferCancelled:
            log.info("install of %s v%d stage %d cancelled: no longer wanted", *key)
            with self._lock:
                self._status.pop(key, None)
            return
        except (StoreError, EdgeAgentError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            self._install_failed(key, base, str(exc))
            return
        except Exception as exc:  # ORT and onnx raise their own exception types for bad models
            self._install_failed(key, base, f"cannot load shard: {exc}")
            return
        inst = InstalledStage(m, st, backend)
        with self._lock:
            if cancel.is_set():
                self._status.pop(key, None)
                return
            self._installed[key] = inst
        log.info("serving %s v%d stage %d/%d on %s as %s (%s: %s)", m.name, m.version, inst.index + 1,
                 len(m.stages), self.device_id, role, backend.name, backend.reason)
        self._set_status(key, status="ready", progress=1.0, **base)
        self._publish_load(force=True)

    def _install_failed(self, key: Key, base: dict, why: str) -> None:
        log.error("deployment %s v%d stage %d failed: %s", *key, why)
        self.counters["deploy_failed"] += 1
        self._set_status(key, status="error", **{**base, "error": why})

    def _sources_for(self, m: Manifest, sha: str) -> list[str]:
        """Where to fetch a shard: live peers that report holding it first, then the manifest's sources."""
        with self._lock:
            peers = [s.endpoint for s in self._states.values() if s.online and s.endpoint and sha in s.blobs]
        random.shuffle(peers)  # spread the load of a fleet-wide deploy over the holders
        return peers + [s for s in m.sources if s not in peers]

    def _uninstall(self, key: Key, reason: str) -> None:
        with self._lock:
            had = self._installed.pop(key, None)
            self._status.pop(key, None)
            self._undesired_since.pop(key, None)
            self._adopted.discard(key)
        if had is not None:
            log.info("stopped serving %s v%d stage %d (%s)", *key, reason)

    # ---------------------------------------------------------------------------------- serving
    def _work_loop(self) -> None:
        while True:
            req = self._work.get()
            if req is None:
                return
            try:
                self._serve(req)
            except Exception as exc:  # the worker must survive anything a request does
                log.exception("request %s failed unexpectedly", req.request_id)
                try:
                    self._reply_error(req, "internal", f"{type(exc).__name__}: {exc}")
                except Exception:
                    log.exception("could not even answer request %s", req.request_id)
            self._publish_load()

    def route(self, model: str, version: int, stage: int) -> str | None:
        """The live device (maybe this one) with the earliest expected completion for a stage."""
        key = (model, version, stage)
        best, best_score = None, float("inf")
        with self._lock:
            if key in self._installed:
                best = self.device_id
                best_score = (self._work.qsize() + 1) * max(self._service_ms, 0.05)
            for d, st in self._states.items():
                if d == self.device_id or not st.online:
                    continue
                e = self._reports(d, key)
                if e is None or e.get("status") != "ready":
                    continue
                p = self._peers_load.get(d, _Peer())
                score = (p.queue + p.sent_since + 1) * max(p.service_ms, 0.05)
                if score < best_score or (score == best_score and random.random() < 0.5):
                    best, best_score = d, score
        return best

    def _send(self, req: InferRequest, payload: bytes | None = None) -> str | None:
        """Forward a request to the best device for its stage; returns the device or None (no route)."""
        dest = self.route(req.model, req.version, req.stage)
        if dest is None:
            return None
        if dest == self.device_id:
            self._enqueue(req)
            return dest
        with self._lock:
            self._peers_load.setdefault(dest, _Peer()).sent_since += 1
        self.transport.publish(topics.inbox(topics.device_endpoint(self.cfg.fleet, dest), "in"),
                               payload if payload is not None else req.to_bytes(), qos=1)
        return dest

    def _find_stage(self, req: InferRequest) -> InstalledStage | None:
        with self._lock:
            return self._installed.get((req.model, req.version, req.stage))

    def _serve(self, req: InferRequest) -> None:
        key = (req.request_id, req.stage)
        cached = self._done.get(key)
        if cached is not None:
            # a retry: the work is done; resend the answer (routing again, the old next hop may be gone)
            self.counters["duplicates"] += 1
            kind, payload, fwd = cached
            if kind == "result":
                self.transport.publish(topics.inbox(req.reply_to, "out"), payload, qos=1)
            elif fwd is not None and self._send(fwd, payload) is None:
                self._reply_error(req, "no_route", f"no live device serves {req.model} v{req.version} "
                                  f"stage {fwd.stage}", stage=fwd.stage)
            return
        inst = self._find_stage(req)
        if inst is None:
            # routed here on a stale view (the stage moved on): pass it on to a device that holds it
            dest = self.route(req.model, req.version, req.stage) if req.reroutes < MAX_REROUTES else None
            if dest is not None and dest != self.device_id:
                req.reroutes += 1
                self.counters["rerouted"] += 1
                self._send(req)
                return
            self._not_served(req)
            return
        t_recv = time.time()
        where = f"{req.model} stage {inst.index} on {self.device_id}"
        try:
            feeds = {name: req.tensors[name] for name in inst.stage["inputs"] if name in req.tensors}
            check_inputs(inst.backend.inputs, feeds, where)
        except InvalidInputError as exc:
            self._reply_error(req, "invalid_input", str(exc))
            return
        t0 = time.perf_counter()
        try:
            outs = inst.backend.run(feeds)
        except Exception as exc:
            self._reply_error(req, "run_failed", f"{where}: {type(exc).__name__}: {exc}")
            return
        run_s = time.perf_counter() - t0
        self._service_ms = 0.8 * self._service_ms + 0.2 * run_s * 1e3
        env = dict(req.tensors)
        env.update(outs)
        carry = inst.stage.get("carry") or inst.stage["outputs"]
        missing = [n for n in carry if n not in env]
        if missing:
            self._reply_error(req, "run_failed", f"{where}: tensors {missing} to forward are missing")
            return
        forward = {n: np.asarray(env[n]) for n in carry}
        timings = list(req.timings) + [{"stage": inst.index, "device": self.device_id,
                                        "queue_ms": round(max(0.0, t_recv - req.sent) * 1e3, 3),
                                        "run_ms": round(run_s * 1e3, 3), "backend": inst.backend.name}]
        if inst.last:
            payload = InferResult(req.request_id, req.model, True, tensors=forward, timings=timings).to_bytes()
            self.transport.publish(topics.inbox(req.reply_to, "out"), payload, qos=1)
            entry: tuple[str, bytes, InferRequest | None] = ("result", payload, None)
        else:
            fwd = InferRequest(req.request_id, req.model, req.version, inst.index + 1, req.reply_to,
                               tensors=forward, timings=timings, attempt=req.attempt)
            payload = fwd.to_bytes()
            entry = ("forward", payload, fwd)
            if self._send(fwd, payload) is None:
                self._reply_error(req, "no_route", f"no live device serves {req.model} v{req.version} "
                                  f"stage {inst.index + 1}", stage=inst.index + 1)
        self.counters["served"] += 1
        self._done[key] = entry
        self._done_bytes += len(entry[1])
        while len(self._done) > DEDUP_CACHE or (self._done_bytes > DEDUP_MAX_BYTES and len(self._done) > 1):
            _, old = self._done.popitem(last=False)
            self._done_bytes -= len(old[1])

    def _not_served(self, req: InferRequest) -> None:
        with self._lock:
            models = sorted({k[0] for k in self._installed})
            versions = sorted({k[1] for k in self._installed if k[0] == req.model})
            stages = sorted({k[2] for k in self._installed if k[0] == req.model and k[1] == req.version})
        if not versions:
            self._reply_error(req, "unknown_model", f"device {self.device_id} does not serve model "
                              f"'{req.model}' (serving: {', '.join(models) or 'nothing'})")
        elif req.version not in versions:
            self._reply_error(req, "version_mismatch", f"device {self.device_id} serves {req.model} "
                              f"v{', v'.join(map(str, versions))}, request is for v{req.version}")
        else:
            self._reply_error(req, "wrong_stage", f"device {self.device_id} runs stage(s) {stages} of "
                              f"{req.model}, request is for stage {req.stage}")

    def _reply_error(self, req: InferRequest, code: str, message: str, stage: int | None = None) -> None:
        log.warning("request %s (%s stage %s): %s", req.request_id, req.model, req.stage, message)
        self.counters[f"error_{code}"] += 1
        if not topics.is_endpoint(req.reply_to, self.cfg.fleet):
            return   # nobody valid to answer
        res = InferResult(req.request_id, req.model, False,
                          error={"code": code, "message": message,
                                 "stage": req.stage if stage is None else stage, "device": self.device_id},
                          timings=list(req.timings))
        self.transport.publish(topics.inbox(req.reply_to, "out"), res.to_bytes(), qos=1)


def _check_stage_io(backend: Backend, st: dict) -> None:
    """The shard's inputs/outputs must be what the manifest says, or the pipeline would break later."""
    have_in = {s.name for s in backend.inputs}
    have_out = {s.name for s in backend.outputs}
    if set(st["inputs"]) != have_in:
        raise ValueError(f"shard inputs {sorted(have_in)} differ from the manifest's {sorted(st['inputs'])}")
    if not set(st["outputs"]) <= have_out:
        raise ValueError(f"shard outputs {sorted(have_out)} lack the manifest's {sorted(st['outputs'])}")


def new_device_name() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}"


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (FileNotFoundError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


__all__ = ["Agent", "AgentConfig", "IOSpec", "new_device_name", "validate_manifest"]
