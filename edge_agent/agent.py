"""The agent daemon (``edge-agent run``): one per device.

It advertises itself by mDNS, reports its state over MQTT (retained, with a Last Will for liveness),
installs the pipeline stages that deployments assign to it (shards fetched chunk by chunk into a
content-addressed store), and serves them: tensors in, stage run, tensors out to the next stage or the
caller. Bad input of any kind is logged, counted in the reported state and answered with an error where
there is someone to answer; the agent keeps serving.
"""

from __future__ import annotations

import collections
import logging
import queue
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, topics
from .backend import Backend, IOSpec, check_inputs, load_backend
from .blobs import BlobFetcher, BlobServer, TransferCancelled, TransferSpec
from .capability import cores, cpu_isa, measure_gflops, ram_mb
from .errors import EdgeAgentError, InvalidInputError, ProtocolError, StoreError
from .messages import DeviceState, InferRequest, InferResult, Manifest
from .store import BlobStore
from .transport import Transport

log = logging.getLogger("edge_agent.agent")

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
DEDUP_CACHE = 2048       # (request, stage) pairs whose answers are kept for retries
WORK_QUEUE = 1024        # requests waiting per device before it answers "overloaded"


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
    heartbeat_s: float = 5.0
    fetch_timeout_s: float = 300.0


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
    def last(self) -> bool:
        return self.index == len(self.manifest.stages) - 1


class Agent:
    """A device of the fleet. ``start()`` returns once connected; ``stop()`` shuts down cleanly."""

    def __init__(self, config: AgentConfig) -> None:
        self.cfg = config
        topics.check_segment("device name", config.name)
        topics.check_segment("fleet", config.fleet)
        self.device_id = config.name
        self.endpoint = topics.device_endpoint(config.fleet, config.name)
        self.fleet_prefix = topics.fleet_root(config.fleet) + "/"
        self.store = BlobStore(Path(config.data_dir) / "blobs")
        self.counters: collections.Counter[str] = collections.Counter()
        self.started = time.time()
        self.isa = cpu_isa()
        if config.gflops is not None:
            self.gflops, self.gflops_source = float(config.gflops), "configured"
        else:
            self.gflops, self.gflops_source = measure_gflops(0.3, max(1, config.threads))
        self._installed: dict[str, InstalledStage] = {}   # model name -> stage this device runs
        self._previous: dict[str, InstalledStage] = {}    # the version before, for in-flight requests
        self._status: dict[str, dict] = {}                # model -> {status, version, stage, error, progress}
        self._lock = threading.RLock()
        self._control: queue.Queue[tuple[str, object]] = queue.Queue()
        self._desired: dict[str, Manifest | None] = {}     # latest wanted state per model, not yet applied
        self._cancel: dict[str, threading.Event] = {}
        self._jobs: dict[str, threading.Thread] = {}
        self._work: queue.Queue[InferRequest | None] = queue.Queue(maxsize=WORK_QUEUE)
        self._done: collections.OrderedDict[tuple[str, int], tuple[str, bytes]] = collections.OrderedDict()
        self._states: dict[str, DeviceState] = {}        # other devices' reported states
        self._stop = threading.Event()
        self._last_state_pub = 0.0
        self._peers: list[str] = []
        self.discovery = None
        will = DeviceState(self.device_id, config.fleet, online=False, endpoint=self.endpoint).to_bytes()
        self.transport = Transport(config.broker, client_id=f"ea-{config.fleet}-{config.name}",
                                   clean_session=True, will=(topics.state(config.fleet, self.device_id), will, True))
        self.blob_server = BlobServer(self.transport, self.endpoint, self.store, on_reject=self._reject)
        self.fetcher = BlobFetcher(self.transport, self.endpoint, self.store, on_reject=self._reject)
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------------------------- lifecycle
    def start(self, wait: float | None = 30.0) -> Agent:
        t = self.transport
        t.subscribe(topics.inbox(self.endpoint, "in"), self._on_infer)
        t.subscribe(topics.inbox(self.endpoint, "cmd"), self._guard(self.blob_server.handle))
        t.subscribe(topics.inbox(self.endpoint, "blob"), self._guard(self.fetcher.deliver))
        t.subscribe(topics.all_deploys(self.cfg.fleet), self._on_manifest)
        t.subscribe(topics.all_states(self.cfg.fleet), self._on_state)
        t.add_connect_hook(self.publish_state)
        for target, name in ((self._control_loop, "control"), (self._work_loop, "stage-worker"),
                             (self._heartbeat_loop, "heartbeat")):
            th = threading.Thread(target=target, name=f"{name}-{self.device_id}", daemon=True)
            th.start()
            self._threads.append(th)
        t.start(wait=wait)
        if self.cfg.discovery:
            self._start_discovery()
        log.info("agent %s up: fleet %s, broker %s, isa %s, %.1f GFLOP/s (%s), data %s", self.device_id,
                 self.cfg.fleet, self.cfg.broker, self.isa, self.gflops, self.gflops_source, self.cfg.data_dir)
        return self

    def _start_discovery(self) -> None:
        try:
            from discovery import DeviceInfo, Discovery
        except ImportError:
            log.warning("discovery package unavailable; running without mDNS")
            return
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
        if self._stop.is_set():
            return
        self._stop.set()
        self._control.put(("stop", None))
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
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        while not self._stop.wait(0.5):
            pass
        self._stop.clear()
        self.stop()

    # ---------------------------------------------------------------------------------- state
    def _reject(self, reason: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        self.publish_state(force=False)

    def _state(self, online: bool = True) -> DeviceState:
        with self._lock:
            stages = []
            for name, st in sorted(self._status.items()):
                entry = dict(st)
                inst = self._installed.get(name)
                if inst is not None:
                    entry.update(backend=inst.backend.name, backend_reason=inst.backend.reason,
                                 n_stages=len(inst.manifest.stages))
                stages.append({"model": name, **entry})
            peers = list(self._peers)
        return DeviceState(
            device_id=self.device_id, fleet=self.cfg.fleet, online=online, started=self.started,
            isa=self.isa, cores=cores(), ram_mb=ram_mb(), gflops=round(self.gflops, 2), version=__version__,
            backend_isa=self.isa, stages=stages, blobs=self.store.list()[:256], peers=peers,
            counters=dict(self.counters), queue_depth=self._work.qsize(), endpoint=self.endpoint)

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

    def _set_status(self, model: str, force: bool = True, **fields: object) -> None:
        with self._lock:
            self._status.setdefault(model, {}).update(fields)
        self.publish_state(force=force)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.cfg.heartbeat_s):
            if self.transport.connected.is_set():
                self.publish_state()

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
        except ProtocolError as exc:
            log.warning("ignored malformed state on %s: %s", topic, exc)
            return
        if st.device_id != self.device_id:
            with self._lock:
                self._states[st.device_id] = st

    def _on_manifest(self, topic: str, payload: bytes, retained: bool) -> None:
        name = topics.last_segment(topic)
        if not payload:
            self._control.put(("undeploy", name))
            return
        try:
            m = Manifest.from_bytes(payload, max_bytes=self.cfg.max_message_bytes)
            if m.name != name:
                raise ProtocolError(f"manifest for '{m.name}' published under deploy/{name}")
            _validate_manifest(m)
        except ProtocolError as exc:
            log.warning("rejected manifest on %s: %s", topic, exc)
            self._reject("manifest")
            return
        self._control.put(("deploy", m))

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
        if not req.reply_to.startswith(self.fleet_prefix):
            log.warning("rejected request %s: reply_to %r outside fleet %s", req.request_id, req.reply_to,
                        self.cfg.fleet)
            self._reject("bad_reply_to")
            return
        try:
            self._work.put_nowait(req)
        except queue.Full:
            self._reply_error(req, "overloaded", f"device {self.device_id} has {WORK_QUEUE} requests queued")

    # ---------------------------------------------------------------------------------- deployments
    def _control_loop(self) -> None:
        """Record the desired manifest per model and make sure one job per model converges to it.

        Each model has its own job thread, so a slow or failing transfer of one deployment never blocks
        another, and a newer manifest cancels the transfer of an older one."""
        while True:
            kind, arg = self._control.get()
            if kind == "stop":
                with self._lock:
                    for ev in self._cancel.values():
                        ev.set()
                return
            name = arg.name if isinstance(arg, Manifest) else str(arg)
            with self._lock:
                self._desired[name] = arg if isinstance(arg, Manifest) else None
                if name in self._cancel:
                    self._cancel[name].set()  # supersede whatever the running job is doing
                job = self._jobs.get(name)
                if job is None or not job.is_alive():
                    job = threading.Thread(target=self._job, args=(name,), name=f"deploy-{name}", daemon=True)
                    self._jobs[name] = job
                    job.start()

    def _job(self, name: str) -> None:
        while not self._stop.is_set():
            with self._lock:
                if name not in self._desired:
                    self._jobs.pop(name, None)
                    return
                target = self._desired.pop(name)
                cancel = self._cancel[name] = threading.Event()
            try:
                if target is None:
                    self._uninstall(name, reason="undeployed")
                else:
                    self._apply_manifest(target, cancel)
            except Exception:  # keep the agent alive whatever a deployment does
                log.exception("deployment job for %s failed", name)

    def _apply_manifest(self, m: Manifest, cancel: threading.Event | None = None) -> None:
        st = m.stage_for(self.device_id)
        with self._lock:
            cur = self._installed.get(m.name)
        if st is None:
            if cur is not None:
                self._uninstall(m.name, reason=f"version {m.version} runs elsewhere")
            return
        if cur is not None and cur.manifest.version == m.version and cur.stage["shard_sha256"] == st["shard_sha256"]:
            self.publish_state()
            return
        base = {"version": m.version, "stage": int(st["index"]), "n_stages": len(m.stages), "error": ""}
        try:
            sha = st["shard_sha256"]
            if not self.store.has(sha):
                self._set_status(m.name, status="fetching", progress=0.0, **base)
                spec = TransferSpec(sha, int(st["shard_size"]), int(st["chunk_size"]), list(st["chunk_sha256"]))

                def progress(have: int, total: int) -> None:
                    self._set_status(m.name, force=have == total, progress=round(have / max(total, 1), 3))

                self.fetcher.fetch(spec, self._sources_for(m, sha), timeout=self.cfg.fetch_timeout_s,
                                   progress=progress, cancel=cancel)
            self._set_status(m.name, status="loading", progress=1.0, **base)
            shard = self.store.get(sha)
            backend = load_backend(shard, threads=self.cfg.threads, prefer=self.cfg.backend)
            _check_stage_io(backend, st)
        except TransferCancelled:
            log.info("transfer for %s v%s superseded by a newer desired state", m.name, m.version)
            return
        except (StoreError, EdgeAgentError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            log.error("deployment %s v%s stage %s failed: %s", m.name, m.version, st.get("index"), exc)
            self.counters["deploy_failed"] += 1
            self._set_status(m.name, status="error", **{**base, "error": str(exc)})
            return
        except Exception as exc:  # ORT raises its own exception types for bad models
            log.error("deployment %s v%s stage %s: cannot load shard: %s", m.name, m.version, st.get("index"), exc)
            self.counters["deploy_failed"] += 1
            self._set_status(m.name, status="error", **{**base, "error": f"cannot load shard: {exc}"})
            return
        inst = InstalledStage(m, st, backend)
        with self._lock:
            if cur is not None:
                self._previous[m.name] = cur
            self._installed[m.name] = inst
        log.info("serving %s v%d stage %d/%d on %s (%s: %s)", m.name, m.version, inst.index + 1, len(m.stages),
                 self.device_id, backend.name, backend.reason)
        self._set_status(m.name, status="ready", progress=1.0, **base)

    def _sources_for(self, m: Manifest, sha: str) -> list[str]:
        """Where to fetch a shard: peers that report holding it first, then the manifest's sources."""
        with self._lock:
            peers = [s.endpoint for s in self._states.values() if s.online and s.endpoint and sha in s.blobs]
        return peers + [s for s in m.sources if s not in peers]

    def _uninstall(self, name: str, reason: str) -> None:
        with self._lock:
            had = self._installed.pop(name, None)
            self._previous.pop(name, None)
            self._status.pop(name, None)
        if had is not None:
            log.info("stopped serving %s (%s)", name, reason)
        self.publish_state()

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
                self._reply_error(req, "internal", f"{type(exc).__name__}: {exc}")

    def _find_stage(self, req: InferRequest) -> InstalledStage | None:
        with self._lock:
            for inst in (self._installed.get(req.model), self._previous.get(req.model)):
                if inst is not None and inst.manifest.version == req.version:
                    return inst
        return None

    def _serve(self, req: InferRequest) -> None:
        key = (req.request_id, req.stage)
        cached = self._done.get(key)
        if cached is not None:
            # a retry: the work is done, resend what we sent (the next hop or the caller de-duplicates)
            self.counters["duplicates"] += 1
            self.transport.publish(cached[0], cached[1], qos=1)
            return
        inst = self._find_stage(req)
        if inst is None:
            with self._lock:
                known = sorted(self._installed)
                cur = self._installed.get(req.model)
            if cur is None:
                self._reply_error(req, "unknown_model", f"device {self.device_id} does not serve model "
                                  f"'{req.model}' (serving: {', '.join(known) or 'nothing'})")
            else:
                self._reply_error(req, "version_mismatch", f"device {self.device_id} serves {req.model} "
                                  f"v{cur.manifest.version}, request is for v{req.version}")
            return
        if inst.index != req.stage:
            self._reply_error(req, "wrong_stage", f"device {self.device_id} runs stage {inst.index} of "
                              f"{req.model}, request is for stage {req.stage}")
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
        run_ms = (time.perf_counter() - t0) * 1e3
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
                                        "run_ms": round(run_ms, 3), "backend": inst.backend.name}]
        if inst.last:
            topic = topics.inbox(req.reply_to, "out")
            payload = InferResult(req.request_id, req.model, True, tensors=forward, timings=timings).to_bytes()
        else:
            nxt = inst.manifest.stages[inst.index + 1]
            topic = topics.inbox(topics.device_endpoint(self.cfg.fleet, nxt["device"]), "in")
            payload = InferRequest(req.request_id, req.model, req.version, inst.index + 1, req.reply_to,
                                   tensors=forward, timings=timings, attempt=req.attempt).to_bytes()
        self.transport.publish(topic, payload, qos=1)
        self.counters["served"] += 1
        self._done[key] = (topic, payload)
        while len(self._done) > DEDUP_CACHE:
            self._done.popitem(last=False)

    def _reply_error(self, req: InferRequest, code: str, message: str) -> None:
        log.warning("request %s (%s stage %s): %s", req.request_id, req.model, req.stage, message)
        self.counters[f"error_{code}"] += 1
        res = InferResult(req.request_id, req.model, False,
                          error={"code": code, "message": message, "stage": req.stage, "device": self.device_id},
                          timings=list(req.timings))
        self.transport.publish(topics.inbox(req.reply_to, "out"), res.to_bytes(), qos=1)


def _validate_manifest(m: Manifest) -> None:
    """Structural checks of a decoded manifest (types of every field the agent relies on)."""
    if not isinstance(m.version, int) or m.version < 1:
        raise ProtocolError(f"manifest {m.name}: version must be a positive integer")
    if not isinstance(m.stages, list) or not m.stages:
        raise ProtocolError(f"manifest {m.name}: no stages")
    for i, st in enumerate(m.stages):
        if not isinstance(st, dict):
            raise ProtocolError(f"manifest {m.name}: stage {i} is not a map")
        for key, typ in (("index", int), ("device", str), ("shard_sha256", str), ("shard_size", int),
                         ("chunk_size", int), ("chunk_sha256", list), ("inputs", list), ("outputs", list)):
            if not isinstance(st.get(key), typ):
                raise ProtocolError(f"manifest {m.name}: stage {i} field '{key}' must be {typ.__name__}")
        if st["index"] != i:
            raise ProtocolError(f"manifest {m.name}: stage {i} has index {st['index']}")
        if st["chunk_size"] <= 0 or st["shard_size"] < 0:
            raise ProtocolError(f"manifest {m.name}: stage {i} has bad sizes")
    if not all(isinstance(s, str) for s in m.sources):
        raise ProtocolError(f"manifest {m.name}: sources must be topic prefixes")


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


__all__ = ["Agent", "AgentConfig", "IOSpec", "new_device_name"]
