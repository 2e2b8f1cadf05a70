"""The operator's Python API: ``Fleet`` (the CLI only wraps it).

A Fleet is an MQTT client of the fleet's broker. It reads the devices' retained states, plans and
publishes deployments (and serves their shards while it is open), sends inference requests to the first
stage and collects each result exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent.backend import IOSpec, check_inputs
from edge_agent.protocol import topics
from edge_agent.protocol.errors import (
    BrokerError,
    DeployError,
    DeployTimeout,
    InferenceError,
    InferenceTimeout,
    InvalidInputError,
    ProtocolError,
    StageUnavailableError,
    UnknownModelError,
)
from edge_agent.protocol.messages import (
    DeviceState,
    InferRequest,
    InferResult,
    Manifest,
    RolloutRecord,
    stage_devices,
    validate_manifest,
    validate_state,
)
from edge_agent.transport.blobs import BlobServer
from edge_agent.transport.mqtt import Transport, broker_from_env
from edge_agent.transport.store import CHUNK_SIZE, chunk_digests, sha256_hex

log = logging.getLogger("edge_agent.fleet")

RETRY_AFTER_S = 5.0      # resend a request with no answer after this long (stages de-duplicate)
HEARTBEAT_STALE_S = 8.0  # agents republish state every 2 s; four missed heartbeats = treated as gone
SETTLE_S = 0.3           # retained messages arrive right after subscribing; wait this long for quiet


@dataclass
class DeviceStatus:
    """A device as the fleet sees it (from its retained state)."""

    device_id: str
    online: bool
    isa: str
    cores: int
    ram_mb: int
    gflops: float
    version: str
    stages: list[dict]
    peers: list[str]
    counters: dict
    queue_depth: int
    last_seen: float
    blobs: list[str] = field(default_factory=list)
    dev_mode: bool = True
    events: list[dict] = field(default_factory=list)

    @classmethod
    def from_state(cls, st: DeviceState) -> DeviceStatus:
        return cls(st.device_id, st.online, st.isa, st.cores, st.ram_mb, st.gflops, st.version,
                   list(st.stages), list(st.peers), dict(st.counters), st.queue_depth, st.ts, list(st.blobs),
                   st.dev_mode, list(st.events))

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Deployment:
    """What ``Fleet.deploy`` returns: the published manifest and the plan behind it."""

    manifest: Manifest
    plan: Any
    seconds: float
    stage_status: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version


@dataclass
class _Pending:
    future: Future
    request: InferRequest
    payload: bytes
    deadline: float
    next_retry: float
    device: str = ""                 # where stage 0 was last sent
    attempts: int = 1
    last_error: str = ""             # why the last attempt failed (retriable errors)
    lost: dict = field(default_factory=dict)   # device -> stage it held when it went offline


RETRIABLE = {"no_route", "overloaded", "device_offline"}


class Fleet:
    """Connect to a fleet through its broker.

    ``broker`` may be omitted: then ``$EDGE_AGENT_BROKER`` is used, else a broker advertised over mDNS
    on ``interfaces`` (loopback by default).
    """

    def __init__(self, broker: str | None = None, fleet: str = "default", *, client_id: str | None = None,
                 interfaces: Sequence[str] = ("127.0.0.1",), connect_timeout: float = 10.0,
                 key: Any = None, credentials: Any = None, manifest_ttl_s: float = 30 * 86400) -> None:
        """``key``: the fleet signing key (path of fleet.key or FleetKeys) used to sign manifests; without it
        manifests are unsigned (only development-mode devices install them). ``credentials``: a .cred file
        (or Credentials) from ``edge-agent fleet init`` for an authenticated broker."""
        topics.check_segment("fleet", fleet)
        creds = None
        if credentials is not None:
            from edge_agent.security.pki import Credentials
            creds = credentials if isinstance(credentials, Credentials) else Credentials.from_file(credentials)
        url = broker_from_env(broker) or (creds.broker_url or creds.plain_url if creds else None)
        if url is None:
            url = _discover_broker(fleet, interfaces)
        if key is not None and not hasattr(key, "private"):
            from edge_agent.security.keys import load_private_key
            key = load_private_key(key)
        self.keys = key
        self.manifest_ttl_s = manifest_ttl_s
        self._canaries: dict[str, Manifest] = {}
        self._rollouts: dict[str, RolloutRecord] = {}
        self._tombstones: dict[str, int] = {}
        self.fleet = fleet
        self.broker = url
        self.client_id = client_id or f"op-{uuid.uuid4().hex[:10]}"
        self.endpoint = topics.client_endpoint(fleet, self.client_id)
        self._states: dict[str, DeviceState] = {}
        self._manifests: dict[str, Manifest] = {}
        self._pending: dict[str, _Pending] = {}
        self._loads: dict[str, tuple[int, float, int]] = {}   # device -> (queue, service ms, sent since)
        self._seen: dict[str, float] = {}     # device -> monotonic time its last state arrived
        self._stale: set[str] = set()         # online by its retained state, but its heartbeats stopped
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._last_retained = time.monotonic()
        self.stats = {"results": 0, "duplicates": 0, "retries": 0, "errors": 0, "failovers": 0}
        self.transport = Transport(url, client_id=self.client_id if creds is None else creds.username,
                                   clean_session=True, **(creds.transport_kwargs() if creds else {}))
        self.blob_server = BlobServer(self.transport, self.endpoint)
        t = self.transport
        t.subscribe(topics.all_states(fleet), self._on_state)
        t.subscribe(topics.all_deploys(fleet), self._on_manifest)
        t.subscribe(topics.all_deploys(fleet, "canary"), self._on_manifest)
        t.subscribe(topics.all_rollouts(fleet), self._on_rollout)
        t.subscribe(topics.all_loads(fleet), self._on_load, qos=0)
        t.subscribe(topics.inbox(self.endpoint, "out"), self._on_result)
        t.subscribe(topics.inbox(self.endpoint, "cmd"), self.blob_server.handle)
        t.add_connect_hook(self._on_reconnect)
        t.start(wait=connect_timeout)
        self._closed = threading.Event()
        self._monitor = threading.Thread(target=self._monitor_loop, name="fleet-monitor", daemon=True)
        self._monitor.start()
        self._settle()

    # --------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for p in pending:
            if not p.future.done():
                p.future.set_exception(InferenceError("fleet client closed before the result arrived"))
        self.blob_server.close()
        self.transport.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _settle(self, max_wait: float = 2.0) -> None:
        """Wait until retained states/manifests stop arriving (MQTT has no end-of-retained marker)."""
        end = time.monotonic() + max_wait
        while time.monotonic() < end:
            with self._lock:
                quiet = time.monotonic() - self._last_retained
            if quiet >= SETTLE_S:
                return
            time.sleep(0.05)

    # --------------------------------------------------------------------------------- handlers
    def _on_reconnect(self) -> None:
        """After a broker restart, messages it held for us may be gone: resend what is in flight."""
        if self.transport.connect_count <= 1:
            return
        with self._lock:
            for p in self._pending.values():
                p.next_retry = time.monotonic() + 0.5   # let the devices reconnect and resubscribe first

    def _on_state(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return
        try:
            st = DeviceState.from_bytes(payload, max_bytes=1 << 20)
            validate_state(st)
        except ProtocolError as exc:
            log.warning("ignored malformed state on %s: %s", topic, exc)
            return
        with self._lock:
            old = self._states.get(st.device_id)
            self._states[st.device_id] = st
            self._seen[st.device_id] = time.monotonic()
            self._stale.discard(st.device_id)
            self._last_retained = time.monotonic()
            self._changed.notify_all()
        if not st.online and (old is None or old.online):
            self._device_lost(st.device_id, old)

    def _on_load(self, topic: str, payload: bytes, retained: bool) -> None:
        from edge_agent.protocol.messages import LoadReport
        try:
            rep = LoadReport.from_bytes(payload, max_bytes=4096)
        except ProtocolError:
            return
        with self._lock:
            self._loads[rep.device_id] = (int(rep.queue), float(rep.service_ms), 0)

    def _on_manifest(self, topic: str, payload: bytes, retained: bool) -> None:
        name = topics.last_segment(topic)
        table = self._canaries if "/canary/" in topic else self._manifests
        with self._lock:
            self._last_retained = time.monotonic()
            if not payload:
                table.pop(name, None)
            else:
                try:
                    m = Manifest.from_bytes(payload)
                    validate_manifest(m)
                    if m.stages:
                        table[name] = m
                    else:  # a signed tombstone: undeployed
                        table.pop(name, None)
                        self._tombstones[name] = max(self._tombstones.get(name, 0), m.version)
                except ProtocolError as exc:
                    log.warning("ignored malformed manifest %s: %s", name, exc)
            self._changed.notify_all()

    def _on_rollout(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return
        try:
            rec = RolloutRecord.from_bytes(payload)
        except ProtocolError as exc:
            log.warning("ignored malformed rollout record on %s: %s", topic, exc)
            return
        with self._lock:
            self._rollouts[rec.name] = rec
            self._last_retained = time.monotonic()

    def _on_result(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            res = InferResult.from_bytes(payload)
        except ProtocolError as exc:
            log.warning("ignored malformed result: %s", exc)
            return
        code = res.error.get("code") if isinstance(res.error, dict) else None
        code = code if isinstance(code, str) else "error"
        with self._lock:
            p = self._pending.get(res.request_id)
            if p is None:
                self.stats["duplicates"] += 1
                return
            if not res.ok and code in RETRIABLE and time.monotonic() < p.deadline:
                # the pipeline is changing under us (device lost, stage moving): try again shortly
                p.last_error = f"{code}: {res.error.get('message', '')}"
                p.next_retry = min(p.next_retry, time.monotonic() + 0.2)
                return
            self._pending.pop(res.request_id, None)
            self.stats["results"] += 1
        if res.ok:
            p.future.set_result((dict(res.tensors), list(res.timings)))
        else:
            self.stats["errors"] += 1
            p.future.set_exception(self._final_error(res, p))

    def _final_error(self, res: InferResult, p: _Pending) -> Exception:
        """The caller's exception for a failed result. A device that found no live device for the next
        stage (retried until the deadline) becomes StageUnavailableError naming that stage's devices,
        as when the fleet sees the device go offline itself."""
        err = _result_error(res)
        if not (isinstance(err, InferenceError) and err.code == "no_route" and isinstance(err.stage, int)):
            return err
        with self._lock:
            m = self._manifests.get(p.request.model)
            if m is None or not 0 <= err.stage < len(m.stages):
                return err
            devs = stage_devices(m.stages[err.stage])
            offline = [d for d in devs if (st := self._states.get(d)) is None or not st.online]
        return StageUnavailableError(
            f"{err}: stage {err.stage} is assigned to {', '.join(devs) or 'no device'}"
            f"{'' if not offline else ' (offline: ' + ', '.join(offline) + ')'}",
            stage=err.stage, device=(offline or devs or [None])[0], code="device_offline")

    def _device_lost(self, device: str, last: DeviceState | None) -> None:
        """A device went offline: requests that may be inside it are sent again at once (stages
        de-duplicate), or, when the deployment has no failover, fail naming the stage and device."""
        held = {} if last is None else {e.get("model"): e.get("stage") for e in last.stages}
        fail, again = [], []
        with self._lock:
            for rid, p in list(self._pending.items()):
                model = p.request.model
                m = self._manifests.get(model)
                involved = model in held or p.device == device or (
                    m is not None and any(device in stage_devices(st) for st in m.stages))
                if not involved:
                    continue
                stage = held.get(model, 0 if p.device == device else None)
                if stage is None and m is not None:
                    stage = next((st["index"] for st in m.stages if device in stage_devices(st)), None)
                p.lost[device] = stage
                if m is not None and not m.failover and not self._other_replica(m, stage, device):
                    fail.append((self._pending.pop(rid), stage))
                else:
                    p.next_retry = time.monotonic()   # the monitor resends it now
                    again.append(p)
        if again:
            self.stats["failovers"] += 1
        for p, stage in fail:
            p.future.set_exception(StageUnavailableError(
                f"request {p.request.request_id} for {p.request.model}: stage {stage} device '{device}' went "
                "offline while the request was in flight (deployment has no failover)", stage=stage,
                device=device, code="device_offline"))

    def _other_replica(self, m: Manifest, stage: int | None, gone: str) -> bool:
        if stage is None:
            return False
        return any(d != gone and (st := self._states.get(d)) is not None and st.online
                   for d in stage_devices(m.stages[stage]))

    def _monitor_loop(self) -> None:
        last_sweep = 0.0
        while not self._closed.wait(0.05):
            now = time.monotonic()
            if now - last_sweep > 1.0:
                last_sweep = now
                self._sweep_heartbeats(now)
            expired, resend = [], []
            with self._lock:
                for rid, p in list(self._pending.items()):
                    if now >= p.deadline:
                        expired.append(self._pending.pop(rid))
                    elif now >= p.next_retry:
                        resend.append(p)
            for p in resend:
                self._dispatch(p, retry=True)
            for p in expired:
                p.future.set_exception(self._timeout_error(p))

    def _sweep_heartbeats(self, now: float) -> None:
        """Devices whose retained state says online but whose heartbeats stopped are treated as gone."""
        if not self.transport.connected.is_set():
            return
        with self._lock:
            silent = [(d, st) for d, st in self._states.items() if st.online and d not in self._stale
                      and now - self._seen.get(d, now) > HEARTBEAT_STALE_S]
            for d, _ in silent:
                self._stale.add(d)
        for d, st in silent:
            log.warning("device %s missed its heartbeats for %.0f s; routing around it", d, HEARTBEAT_STALE_S)
            self._device_lost(d, st)

    def _dispatch(self, p: _Pending, retry: bool = False) -> None:
        """Send (or resend) a request to the best live device of stage 0."""
        req = p.request
        dest = self.route(req.model, req.version, 0)
        now = time.monotonic()
        if dest is None:
            p.last_error = p.last_error or f"no live device serves {req.model} v{req.version} stage 0"
            p.next_retry = now + 0.25   # wait for a device to adopt the stage
            return
        if retry:
            self.stats["retries"] += 1
            p.attempts += 1
        p.device = dest
        p.next_retry = now + RETRY_AFTER_S
        with self._lock:
            q, ms, sent = self._loads.get(dest, (0, 1.0, 0))
            self._loads[dest] = (q, ms, sent + 1)
        self.transport.publish(topics.inbox(topics.device_endpoint(self.fleet, dest), "in"), p.payload, qos=1)

    def route(self, model: str, version: int, stage: int) -> str | None:
        """Live device reporting the stage ready with the earliest expected completion (queue x speed)."""
        best, best_score = None, float("inf")
        with self._lock:
            for d, st in self._states.items():
                if not st.online or d in self._stale:
                    continue
                if not any(e.get("model") == model and e.get("version") == version and e.get("stage") == stage
                           and e.get("status") == "ready" for e in st.stages):
                    continue
                q, ms, sent = self._loads.get(d, (0, 1.0, 0))
                score = (q + sent + 1) * max(ms, 0.05)
                if score < best_score:
                    best, best_score = d, score
        return best

    def _timeout_error(self, p: _Pending) -> InferenceTimeout:
        m = self._manifests.get(p.request.model)
        parts = []
        suspect: tuple[int | None, str | None] = (None, None)
        with self._lock:
            for st in (m.stages if m else []):
                devs = stage_devices(st)
                desc = []
                for dev in devs:
                    ds = self._states.get(dev)
                    state = "unknown" if ds is None else ("online" if ds.online else "offline")
                    desc.append(f"{dev} ({state})")
                    if (ds is None or not ds.online) and suspect[0] is None:
                        suspect = (st["index"], dev)
                parts.append(f"stage {st['index']}@{'|'.join(desc)}")
        for dev, stage in p.lost.items():
            if suspect[0] is None:
                suspect = (stage, dev)
        why = f"; last error: {p.last_error}" if p.last_error else ""
        return InferenceTimeout(
            f"request {p.request.request_id} for {p.request.model} got no result after {p.attempts} "
            f"attempt(s) before its deadline; pipeline: {', '.join(parts)}{why}",
            stage=suspect[0], device=suspect[1], code="timeout")

    # --------------------------------------------------------------------------------- queries
    def devices(self, include_offline: bool = False) -> list[DeviceStatus]:
        """Devices of the fleet with their capabilities and what they run (live ones by default)."""
        with self._lock:
            states = list(self._states.values())
        out = [DeviceStatus.from_state(s) for s in states if include_offline or s.online]
        return sorted(out, key=lambda d: d.device_id)

    def wait_for_devices(self, count: int, timeout: float = 30.0) -> list[DeviceStatus]:
        """Block until at least ``count`` devices are online."""
        end = time.monotonic() + timeout
        with self._lock:
            while sum(1 for s in self._states.values() if s.online) < count:
                left = end - time.monotonic()
                if left <= 0:
                    online = sorted(s.device_id for s in self._states.values() if s.online)
                    raise BrokerError(f"only {len(online)} of {count} devices came online within "
                                      f"{timeout:.0f} s: {online}")
                self._changed.wait(min(left, 0.5))
        return self.devices()

    def deployments(self) -> list[Manifest]:
        with self._lock:
            return sorted(self._manifests.values(), key=lambda m: m.name)

    def manifest(self, name: str, wait: float = 1.0) -> Manifest:
        end = time.monotonic() + wait
        with self._lock:
            while name not in self._manifests:
                left = end - time.monotonic()
                if left <= 0:
                    known = ", ".join(sorted(self._manifests)) or "none"
                    raise UnknownModelError(f"no deployment named '{name}' in fleet '{self.fleet}' "
                                            f"(deployed: {known})")
                self._changed.wait(min(left, 0.2))
            return self._manifests[name]

    # --------------------------------------------------------------------------------- deploy
    def next_version(self, name: str) -> int:
        """One above every version of ``name`` seen on any channel or in its rollout history."""
        with self._lock:
            seen = [table[name].version for table in (self._manifests, self._canaries) if name in table]
            rec = self._rollouts.get(name)
            if rec is not None:
                seen += [int(h.get("version", 0)) for h in rec.history]
                seen += [int(g.get("version", 0)) for g in rec.good]
            seen += [self._tombstones.get(name, 0)]
        return max(seen, default=0) + 1

    def build_manifest(self, model: Any, name: str, *, stages: int | None = None,
                       devices: Sequence[str] | None = None, version: int | None = None,
                       input_shapes: dict[str, Sequence[int]] | None = None, replicas: int = 1,
                       failover: bool = True, channel: str = "stable",
                       include_offline: bool = False) -> tuple[Manifest, Any]:
        """Plan ``model`` onto live devices and build its (unsigned, unpublished) manifest; the shards are
        served by this Fleet from then on."""
        from models.graph import load_model
        from models.partition import DeviceSpec, plan_pipeline, split_model

        topics.check_segment("model name", name)
        try:
            proto = load_model(model)
        except ValueError as exc:
            raise DeployError(f"cannot deploy '{name}': {exc}") from None
        live = {d.device_id: d for d in self.devices(include_offline=include_offline and bool(devices))}
        if devices:
            missing = [d for d in devices if d not in live]
            if missing:
                raise DeployError(f"cannot deploy '{name}': device(s) {missing} are not online "
                                  f"(online: {sorted(live) or 'none'})")
            chosen = [live[d] for d in devices]
            if stages is None and replicas == 1:
                stages = len(chosen)
        else:
            chosen = list(live.values())
        if not chosen:
            raise DeployError(f"cannot deploy '{name}': no device is online in fleet '{self.fleet}'")
        specs = [DeviceSpec(d.device_id, gflops=max(d.gflops, 0.01), ram_bytes=max(d.ram_mb, 1) << 20)
                 for d in chosen]
        shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()} or None
        if replicas < 1:
            raise DeployError(f"cannot deploy '{name}': replicas must be at least 1")
        try:
            plan = plan_pipeline(proto, specs, stages=stages, input_shapes=shapes, model_name=name)
            shards = [s.SerializeToString() for s in split_model(proto, plan)]
        except ValueError as exc:
            raise DeployError(f"cannot plan '{name}': {exc}") from None
        placement = assign_replicas([st.device_id for st in plan.stages], [st.est_ms for st in plan.stages],
                                    specs, replicas)
        stage_entries = []
        for st, shard in zip(plan.stages, shards):
            sha = self.blob_server.add(shard)
            stage_entries.append({
                "index": st.index, "device": st.device_id, "devices": placement[st.index],
                "shard_sha256": sha, "shard_size": len(shard),
                "chunk_size": CHUNK_SIZE, "chunk_sha256": chunk_digests(shard, CHUNK_SIZE),
                "inputs": list(st.inputs), "outputs": list(st.outputs), "carry": list(st.carry),
                "flops": int(st.flops), "est_ms": round(float(st.est_ms), 3),
                "nodes": [st.first_node, st.last_node], "n_nodes": st.node_end - st.node_start,
            })
        created = time.time()
        manifest = Manifest(
            name=name, version=int(version or self.next_version(name)), created=created,
            model_sha256=sha256_hex(proto.SerializeToString()),
            inputs=[_spec_dict(i) for i in _graph_io(proto.graph.input, proto.graph.initializer)],
            outputs=[_spec_dict(o) for o in _graph_io(proto.graph.output, [])],
            stages=stage_entries, sources=[self.endpoint],
            plan={"bottleneck_ms": round(plan.bottleneck_ms, 3), "total_ms": round(plan.total_ms, 3),
                  "reason": plan.reason}, operator=self.client_id, replicas=replicas, failover=failover,
            channel=channel, expires=(created + self.manifest_ttl_s) if self.keys is not None else 0.0,
            fleet=self.fleet)
        return manifest, plan

    def publish_manifest(self, m: Manifest) -> Manifest:
        """Sign (when this Fleet has the fleet key) and publish a manifest as the retained desired state."""
        if self.keys is not None:
            from edge_agent.security.keys import sign_document
            m.sig = sign_document(m.signed_fields(), self.keys)["sig"]
        info = self.transport.publish(topics.deploy(self.fleet, m.name, m.channel), m.to_bytes(), qos=1,
                                      retain=True)
        info.wait_for_publish(10.0)
        return m

    def _clear_canary(self, name: str) -> None:
        self.transport.publish(topics.deploy(self.fleet, name, "canary"), b"", qos=1,
                               retain=True).wait_for_publish(10.0)
        with self._lock:
            self._canaries.pop(name, None)

    def deploy(self, model: Any, name: str, *, stages: int | None = None, devices: Sequence[str] | None = None,
               version: int | None = None, input_shapes: dict[str, Sequence[int]] | None = None,
               replicas: int = 1, failover: bool = True, timeout: float = 120.0,
               canary: int | str | None = None, gates: str | dict | None = None,
               check_data: Any = None, include_offline: bool = False,
               progress: Callable[[str, dict], None] | None = None) -> Deployment:
        """Plan, sign, ship and start ``model`` (path, bytes or ModelProto) as ``name``; returns when every
        stage reports ready on every replica, raises DeployError (a stage failed) or DeployTimeout (with each
        device's progress).

        ``replicas`` places each stage on that many devices (requests are balanced by queue depth);
        ``failover`` lets the fleet move a stage whose devices are all gone to another device.
        ``canary`` (a device count or "N%") first runs the new version on that many devices only and
        checks ``gates`` (e.g. "p95_ms<=120,error_rate<=0.01,max_abs_diff<=1e-3") on ``check_data``
        (an .npz path or a dict of input arrays, samples on axis 0) before the rest of the fleet gets it;
        if a gate fails the canary is withdrawn, the fleet stays on the previous version, and the rollout
        record says why."""
        t0 = time.monotonic()
        kw = dict(input_shapes=input_shapes, replicas=replicas, failover=failover)
        if canary is not None:
            from edge_agent.operator.rollout import run_canary
            metrics = run_canary(self, model, name, canary=canary, gates=gates, check_data=check_data,
                                 stages=stages, version=version, timeout=timeout, progress=progress, **kw)
            version = metrics["version"]
        manifest, plan = self.build_manifest(model, name, stages=stages, devices=devices, version=version,
                                             include_offline=include_offline, **kw)
        self.publish_manifest(manifest)
        try:
            status = self._wait_ready(manifest, timeout, progress, offline_ok=include_offline)
        except DeployError as exc:
            self.record_rollout(name, manifest.version, "stable", "failed", str(exc))
            raise
        self.record_rollout(name, manifest.version, "stable", "deployed" if canary is None else "promoted",
                            "all stages ready", good=manifest)
        return Deployment(manifest, plan, time.monotonic() - t0, status)

    def rollouts(self, name: str) -> RolloutRecord | None:
        with self._lock:
            return self._rollouts.get(name)

    def record_rollout(self, name: str, version: int, channel: str, status: str, reason: str,
                       metrics: dict | None = None, good: Manifest | None = None) -> None:
        """Append to the retained rollout record of ``name`` (keeps the last 50 events, 5 good manifests)."""
        with self._lock:
            rec = self._rollouts.get(name) or RolloutRecord(name)
            rec.history = (rec.history + [{"version": version, "channel": channel, "status": status,
                                           "reason": reason, "metrics": metrics or {}, "ts": time.time()}])[-50:]
            if good is not None:
                entry = {**good.signed_fields(), "sig": good.sig}
                rec.good = ([g for g in rec.good if g.get("version") != good.version] + [entry])[-5:]
            self._rollouts[name] = rec
        self.transport.publish(topics.rollout(self.fleet, name), rec.to_bytes(), qos=1,
                               retain=True).wait_for_publish(10.0)

    def rollback(self, name: str, to_version: int | None = None, timeout: float = 120.0,
                 progress: Callable[[str, dict], None] | None = None) -> Deployment:
        """Return ``name`` to the previous good version (or ``to_version``) as a new, signed version with the
        old content, so version numbers only grow and old manifests can never be replayed. Shards come
        from the devices' stores and their peers; nothing is rebuilt."""
        t0 = time.monotonic()
        current = self.manifest(name)
        rec = self.rollouts(name)
        goods = [g for g in (rec.good if rec else []) if g.get("version", 0) < current.version and
                 g.get("model_sha256") != current.model_sha256 or (to_version and g.get("version") == to_version)]
        if to_version is not None:
            goods = [g for g in goods if g.get("version") == to_version]
        if not goods:
            raise DeployError(f"cannot roll back '{name}': no earlier good version recorded"
                              + (f" with version {to_version}" if to_version else ""))
        target = dict(goods[-1])
        target.pop("sig", None)
        old_version = target["version"]
        target.update(version=self.next_version(name), created=time.time(), rollback=True, channel="stable",
                      sources=list(dict.fromkeys([self.endpoint] + list(target.get("sources", [])))),
                      operator=self.client_id,
                      expires=(time.time() + self.manifest_ttl_s) if self.keys is not None else 0.0)
        target["plan"] = {**target.get("plan", {}), "rollback_of": current.version, "restores": old_version}
        m = Manifest(**target)
        self.publish_manifest(m)
        try:
            status = self._wait_ready(m, timeout, progress)
        except DeployError as exc:
            self.record_rollout(name, m.version, "stable", "failed", f"rollback to v{old_version}: {exc}")
            raise
        self.record_rollout(name, m.version, "stable", "rolled_back",
                            f"restored the content of v{old_version} (replacing v{current.version})", good=m)
        return Deployment(m, None, time.monotonic() - t0, status)

    def status(self, name: str) -> dict:
        """Desired vs reported for ``name``: per channel, one row per (stage, device), and the rollout record."""
        stable = self.manifest(name, wait=0.5)
        with self._lock:
            canary = self._canaries.get(name)
        rows = self.stage_rows(stable)
        out = {"name": name, "stable": {"version": stable.version, "created": stable.created,
                                        "signed": bool(stable.sig), "rollback": stable.rollback,
                                        "stages": rows,
                                        "converged": all(r["status"] == "ready" for r in rows)}}
        if canary is not None:
            crows = self.stage_rows(canary)
            out["canary"] = {"version": canary.version, "signed": bool(canary.sig), "stages": crows,
                             "converged": all(r["status"] == "ready" for r in crows)}
        with self._lock:
            adopted = [{"device": d.device_id, **e} for d in self._states.values() if d.online
                       for e in d.stages if e.get("model") == name and e.get("role") == "adopted"]
            rejected = {d.device_id: {k: v for k, v in d.counters.items() if k.startswith("rejected")}
                        for d in self._states.values() if any(k.startswith("rejected") for k in d.counters)}
        out["adopted"] = adopted
        out["rejected"] = rejected
        rec = self.rollouts(name)
        out["history"] = rec.history[-10:] if rec else []
        return out

    def stage_rows(self, m: Manifest) -> list[dict]:
        """Desired vs reported, one row per (stage, replica device)."""
        rows = []
        with self._lock:
            for st in m.stages:
                for dev in stage_devices(st):
                    ds = self._states.get(dev)
                    entry = None if ds is None else next(
                        (e for e in ds.stages if e.get("model") == m.name and e.get("version") == m.version
                         and e.get("stage") == st["index"]), None)
                    row = {"stage": st["index"], "device": dev, "online": bool(ds and ds.online),
                           "status": "pending", "progress": 0.0, "error": "", "backend": ""}
                    if entry is not None:
                        row.update(status=entry.get("status", "?"), progress=float(entry.get("progress", 0.0)),
                                   error=entry.get("error", ""), backend=entry.get("backend", ""))
                    rows.append(row)
        return rows

    def _wait_ready(self, m: Manifest, timeout: float, progress: Callable[[str, dict], None] | None,
                    offline_ok: bool = False) -> list[dict]:
        end = time.monotonic() + timeout
        while True:
            rows = self.stage_rows(m)
            if progress is not None:
                for row in rows:
                    progress(row["device"], row)
            failed = [r for r in rows if r["status"] == "error" or (not r["online"] and not offline_ok)]
            if failed:
                r = failed[0]
                why = r["error"] or "device went offline"
                raise DeployError(f"deployment {m.name} v{m.version}: stage {r['stage']} on '{r['device']}' "
                                  f"failed: {why}")
            rejected = self._rejections(m)
            if rejected:
                raise DeployError(f"deployment {m.name} v{m.version} ({m.channel}) was rejected: " +
                                  "; ".join(f"{d}: {why}" for d, why in rejected.items()))
            if all(r["status"] == "ready" for r in rows if r["online"] or not offline_ok):
                return rows
            left = end - time.monotonic()
            if left <= 0:
                report = "; ".join(f"stage {r['stage']}@{r['device']}: {r['status']} "
                                   f"{r['progress'] * 100:.0f}%" for r in rows)
                raise DeployTimeout(f"deployment {m.name} v{m.version} not ready after {timeout:.0f} s: {report}")
            with self._lock:
                self._changed.wait(min(left, 0.25))

    def _rejections(self, m: Manifest) -> dict[str, str]:
        """Devices assigned to ``m`` that reported rejecting it (signature, expiry, replay...)."""
        assigned = {d for st in m.stages for d in stage_devices(st)}
        out = {}
        with self._lock:
            for d in assigned:
                ds = self._states.get(d)
                for ev in (ds.events if ds else []):
                    if ev.get("model") == m.name and ev.get("version") == m.version and ev.get("ts", 0) >= m.created - 5:
                        out[d] = f"{ev.get('kind')}: {ev.get('reason')}"
        return out

    def undeploy(self, name: str, timeout: float = 30.0) -> None:
        """Remove a deployment; returns when no live device serves it any more."""
        current = self.manifest(name)  # raises UnknownModelError
        if self.keys is not None:
            # devices that trust a fleet key ignore unsigned removals: publish a signed tombstone
            tomb = Manifest(name, self.next_version(name), time.time(), current.model_sha256, [], [], [],
                            operator=self.client_id, fleet=self.fleet)
            self.publish_manifest(tomb)
            with self._lock:
                self._tombstones[name] = tomb.version
        else:
            info = self.transport.publish(topics.deploy(self.fleet, name), b"", qos=1, retain=True)
            info.wait_for_publish(10.0)
        if name in self._canaries:
            self._clear_canary(name)
        self.record_rollout(name, current.version, "stable", "undeployed", "operator request")
        end = time.monotonic() + timeout
        with self._lock:
            while True:
                serving = sorted(s.device_id for s in self._states.values()
                                 if s.online and any(e.get("model") == name for e in s.stages))
                if not serving:
                    self._manifests.pop(name, None)
                    return
                left = end - time.monotonic()
                if left <= 0:
                    raise DeployTimeout(f"undeploy {name}: devices {serving} still report it after {timeout:.0f} s")
                self._changed.wait(min(left, 0.25))

    # --------------------------------------------------------------------------------- inference
    def submit(self, name: str, inputs: dict[str, np.ndarray], timeout: float = 30.0,
               channel: str = "stable") -> Future:
        """Send one request; the Future resolves to (outputs, per-stage timings) exactly once, or to an
        error once the deadline (``timeout`` s) passes. Lost devices are routed around meanwhile.
        ``channel="canary"`` sends it to the version under canary test."""
        if channel == "canary":
            with self._lock:
                m = self._canaries.get(name)
            if m is None:
                raise UnknownModelError(f"no canary of '{name}' in fleet '{self.fleet}'")
        else:
            m = self.manifest(name)
        specs = [IOSpec.from_dict(d) for d in m.inputs]
        check_inputs(specs, inputs, f"model '{name}' v{m.version}")
        if self.route(name, m.version, 0) is None and not m.failover:
            devs = stage_devices(m.stages[0])
            raise StageUnavailableError(f"model '{name}': no live device serves stage 0 "
                                        f"(assigned: {', '.join(devs)})", stage=0, device=devs[0],
                                        code="device_offline")
        req = InferRequest(uuid.uuid4().hex, name, m.version, 0, self.endpoint, tensors=dict(inputs))
        now = time.monotonic()
        p = _Pending(Future(), req, req.to_bytes(), now + timeout, now)
        with self._lock:
            self._pending[req.request_id] = p
            self._dispatch(p)
        return p.future

    def infer(self, name: str, inputs: dict[str, np.ndarray], timeout: float = 30.0,
              with_timings: bool = False) -> Any:
        """Run one request through the pipeline; returns ``{output name: array}`` (and timings if asked)."""
        outputs, timings = self.submit(name, inputs, timeout).result(timeout + 5.0)
        return (outputs, timings) if with_timings else outputs


def assign_replicas(primary: list[str], est_ms: list[float], specs: list[Any], replicas: int) -> list[list[str]]:
    """Replica devices per stage: the planner's device first, then unused devices (fastest first) to the
    stages that need help most; when devices run out, a device may hold several stages, never the same
    stage twice."""
    placement = [[d] for d in primary]
    if replicas <= 1:
        return placement
    if replicas > len(specs):
        raise DeployError(f"{replicas} replicas per stage need at least {replicas} devices; "
                          f"{len(specs)} online")
    load = {s.id: 0.0 for s in specs}
    speed = {s.id: max(s.gflops, 1e-3) for s in specs}
    for i, d in enumerate(primary):
        load[d] += est_ms[i]
    order = sorted(range(len(primary)), key=lambda i: -est_ms[i])
    for _ in range(replicas - 1):
        for i in order:
            cands = [d for d in load if d not in placement[i]]
            # least loaded relative to its speed, unused devices first
            best = min(cands, key=lambda d: (load[d] / speed[d], -speed[d], d))
            placement[i].append(best)
            load[best] += est_ms[i]
    return placement


def _result_error(res: InferResult) -> Exception:
    err = res.error if isinstance(res.error, dict) else {}
    code, msg = err.get("code", "error"), err.get("message", "unknown error")
    code = code if isinstance(code, str) else "error"
    msg = msg if isinstance(msg, str) else repr(msg)[:500]
    msg = msg.strip() or f"the device answered with error code {code!r} and no message"
    stage = err.get("stage") if isinstance(err.get("stage"), int) else None
    device = err.get("device") if isinstance(err.get("device"), str) else None
    if code == "invalid_input":
        return InvalidInputError(msg)
    if code == "unknown_model":
        return UnknownModelError(msg)
    return InferenceError(msg, stage=stage, device=device, code=code)


def _graph_io(values: Any, initializers: Any) -> list[IOSpec]:
    import onnx

    init = {i.name for i in initializers}
    out = []
    for v in values:
        if v.name in init:
            continue
        tt = v.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out.append(IOSpec(v.name, dtype, shape))
    return out


def _spec_dict(s: IOSpec) -> dict:
    return s.to_dict()


def _discover_broker(fleet: str, interfaces: Sequence[str]) -> str:
    try:
        from discovery import find_broker
    except ImportError:
        find_broker = None
    url = find_broker(fleet=fleet, interfaces=list(interfaces), timeout=3.0) if find_broker else None
    if not url:
        raise BrokerError("no broker given (--broker or EDGE_AGENT_BROKER) and none advertised over mDNS on "
                          f"{', '.join(interfaces)} for fleet '{fleet}'")
    log.info("found broker %s by mDNS", url)
    return url


def load_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    """Parse CLI ``--input name=file.npy`` (or ``.npz`` whose arrays are all taken by name)."""
    out: dict[str, np.ndarray] = {}
    for s in specs:
        if "=" in s:
            key, path = s.split("=", 1)
            out[key] = np.load(Path(path), allow_pickle=False)
        elif s.endswith(".npz"):
            with np.load(Path(s), allow_pickle=False) as z:
                out.update({k: z[k] for k in z.files})
        else:
            raise ValueError(f"--input {s!r}: use name=file.npy or file.npz")
    return out
