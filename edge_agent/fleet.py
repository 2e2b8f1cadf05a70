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

from . import topics
from .backend import IOSpec, check_inputs
from .blobs import BlobServer
from .errors import (
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
from .messages import DeviceState, InferRequest, InferResult, Manifest
from .store import CHUNK_SIZE, chunk_digests, sha256_hex
from .transport import Transport, broker_from_env

log = logging.getLogger("edge_agent.fleet")

RETRY_AFTER_S = 5.0      # resend a request with no answer after this long (stages de-duplicate)
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

    @classmethod
    def from_state(cls, st: DeviceState) -> DeviceStatus:
        return cls(st.device_id, st.online, st.isa, st.cores, st.ram_mb, st.gflops, st.version,
                   list(st.stages), list(st.peers), dict(st.counters), st.queue_depth, st.ts)

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
    topic: str
    devices: list[str]
    deadline: float
    next_retry: float
    attempts: int = 1


class Fleet:
    """Connect to a fleet through its broker.

    ``broker`` may be omitted: then ``$EDGE_AGENT_BROKER`` is used, else a broker advertised over mDNS
    on ``interfaces`` (loopback by default).
    """

    def __init__(self, broker: str | None = None, fleet: str = "default", *, client_id: str | None = None,
                 interfaces: Sequence[str] = ("127.0.0.1",), connect_timeout: float = 10.0) -> None:
        topics.check_segment("fleet", fleet)
        url = broker_from_env(broker)
        if url is None:
            url = _discover_broker(fleet, interfaces)
        self.fleet = fleet
        self.broker = url
        self.client_id = client_id or f"op-{uuid.uuid4().hex[:10]}"
        self.endpoint = topics.client_endpoint(fleet, self.client_id)
        self._states: dict[str, DeviceState] = {}
        self._manifests: dict[str, Manifest] = {}
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._last_retained = time.monotonic()
        self.stats = {"results": 0, "duplicates": 0, "retries": 0, "errors": 0}
        self.transport = Transport(url, client_id=self.client_id, clean_session=True)
        self.blob_server = BlobServer(self.transport, self.endpoint)
        t = self.transport
        t.subscribe(topics.all_states(fleet), self._on_state)
        t.subscribe(topics.all_deploys(fleet), self._on_manifest)
        t.subscribe(topics.inbox(self.endpoint, "out"), self._on_result)
        t.subscribe(topics.inbox(self.endpoint, "cmd"), self.blob_server.handle)
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
    def _on_state(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return
        try:
            st = DeviceState.from_bytes(payload, max_bytes=1 << 20)
        except ProtocolError as exc:
            log.warning("ignored malformed state on %s: %s", topic, exc)
            return
        with self._lock:
            self._states[st.device_id] = st
            self._last_retained = time.monotonic()
            self._changed.notify_all()
        if not st.online:
            self._fail_requests_on(st.device_id)

    def _on_manifest(self, topic: str, payload: bytes, retained: bool) -> None:
        name = topics.last_segment(topic)
        with self._lock:
            self._last_retained = time.monotonic()
            if not payload:
                self._manifests.pop(name, None)
            else:
                try:
                    self._manifests[name] = Manifest.from_bytes(payload)
                except ProtocolError as exc:
                    log.warning("ignored malformed manifest %s: %s", name, exc)
            self._changed.notify_all()

    def _on_result(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            res = InferResult.from_bytes(payload)
        except ProtocolError as exc:
            log.warning("ignored malformed result: %s", exc)
            return
        with self._lock:
            p = self._pending.pop(res.request_id, None)
            if p is None:
                self.stats["duplicates"] += 1
                return
            self.stats["results"] += 1
        if res.ok:
            p.future.set_result((dict(res.tensors), list(res.timings)))
        else:
            self.stats["errors"] += 1
            p.future.set_exception(_result_error(res))

    def _fail_requests_on(self, device: str) -> None:
        with self._lock:
            doomed = [(rid, p) for rid, p in self._pending.items() if device in p.devices]
            for rid, _ in doomed:
                self._pending.pop(rid, None)
        for _, p in doomed:
            stage = p.devices.index(device)
            p.future.set_exception(StageUnavailableError(
                f"request {p.request.request_id} for {p.request.model}: stage {stage} device '{device}' went "
                "offline while the request was in flight", stage=stage, device=device, code="device_offline"))

    def _monitor_loop(self) -> None:
        while not self._closed.wait(0.05):
            now = time.monotonic()
            expired, resend = [], []
            with self._lock:
                for rid, p in list(self._pending.items()):
                    if now >= p.deadline:
                        expired.append(self._pending.pop(rid))
                    elif now >= p.next_retry:
                        p.attempts += 1
                        p.next_retry = now + RETRY_AFTER_S
                        resend.append(p)
            for p in resend:
                self.stats["retries"] += 1
                self.transport.publish(p.topic, p.payload, qos=1)
            for p in expired:
                p.future.set_exception(self._timeout_error(p))

    def _timeout_error(self, p: _Pending) -> InferenceTimeout:
        parts = []
        with self._lock:
            for i, dev in enumerate(p.devices):
                st = self._states.get(dev)
                state = "unknown" if st is None else ("online" if st.online else "offline")
                parts.append(f"stage {i}@{dev} ({state})")
        suspect = next((i for i, dev in enumerate(p.devices)
                        if self._states.get(dev) is None or not self._states[dev].online), None)
        return InferenceTimeout(
            f"request {p.request.request_id} for {p.request.model} got no result after {p.attempts} "
            f"attempt(s) before its deadline; pipeline: {', '.join(parts)}",
            stage=suspect, device=p.devices[suspect] if suspect is not None else None, code="timeout")

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
    def deploy(self, model: Any, name: str, *, stages: int | None = None, devices: Sequence[str] | None = None,
               version: int | None = None, input_shapes: dict[str, Sequence[int]] | None = None,
               timeout: float = 120.0, progress: Callable[[str, dict], None] | None = None) -> Deployment:
        """Plan, ship and start ``model`` (path, bytes or ModelProto) as ``name``; returns when every stage
        reports ready, raises DeployError (a stage failed) or DeployTimeout (with each device's progress)."""
        from models.graph import load_model
        from models.partition import DeviceSpec, plan_pipeline, split_model

        topics.check_segment("model name", name)
        t0 = time.monotonic()
        try:
            proto = load_model(model)
        except ValueError as exc:
            raise DeployError(f"cannot deploy '{name}': {exc}") from None
        live = {d.device_id: d for d in self.devices()}
        if devices:
            missing = [d for d in devices if d not in live]
            if missing:
                raise DeployError(f"cannot deploy '{name}': device(s) {missing} are not online "
                                  f"(online: {sorted(live) or 'none'})")
            chosen = [live[d] for d in devices]
            if stages is None:
                stages = len(chosen)
        else:
            chosen = list(live.values())
        if not chosen:
            raise DeployError(f"cannot deploy '{name}': no device is online in fleet '{self.fleet}'")
        specs = [DeviceSpec(d.device_id, gflops=max(d.gflops, 0.01), ram_bytes=max(d.ram_mb, 1) << 20)
                 for d in chosen]
        shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()} or None
        try:
            plan = plan_pipeline(proto, specs, stages=stages, input_shapes=shapes)
            shards = [s.SerializeToString() for s in split_model(proto, plan)]
        except ValueError as exc:
            raise DeployError(f"cannot plan '{name}': {exc}") from None
        prev = self._manifests.get(name)
        if version is None:
            version = (prev.version + 1) if prev else 1
        stage_entries = []
        for st, shard in zip(plan.stages, shards):
            sha = self.blob_server.add(shard)
            stage_entries.append({
                "index": st.index, "device": st.device_id, "shard_sha256": sha, "shard_size": len(shard),
                "chunk_size": CHUNK_SIZE, "chunk_sha256": chunk_digests(shard, CHUNK_SIZE),
                "inputs": list(st.inputs), "outputs": list(st.outputs), "carry": list(st.carry),
                "flops": int(st.flops), "est_ms": round(float(st.est_ms), 3),
                "nodes": [st.first_node, st.last_node], "n_nodes": st.node_end - st.node_start,
            })
        manifest = Manifest(
            name=name, version=int(version), created=time.time(),
            model_sha256=sha256_hex(proto.SerializeToString()),
            inputs=[_spec_dict(i) for i in _graph_io(proto.graph.input, proto.graph.initializer)],
            outputs=[_spec_dict(o) for o in _graph_io(proto.graph.output, [])],
            stages=stage_entries, sources=[self.endpoint],
            plan={"bottleneck_ms": round(plan.bottleneck_ms, 3), "total_ms": round(plan.total_ms, 3),
                  "reason": plan.reason}, operator=self.client_id)
        info = self.transport.publish(topics.deploy(self.fleet, name), manifest.to_bytes(), qos=1, retain=True)
        info.wait_for_publish(10.0)
        status = self._wait_ready(manifest, timeout, progress)
        return Deployment(manifest, plan, time.monotonic() - t0, status)

    def _wait_ready(self, m: Manifest, timeout: float, progress: Callable[[str, dict], None] | None) -> list[dict]:
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                rows = []
                for st in m.stages:
                    dev = st["device"]
                    ds = self._states.get(dev)
                    entry = next((e for e in (ds.stages if ds else []) if e.get("model") == m.name), None)
                    row = {"stage": st["index"], "device": dev, "online": bool(ds and ds.online),
                           "status": "pending", "progress": 0.0, "error": "", "backend": ""}
                    if entry is not None and entry.get("version") == m.version:
                        row.update(status=entry.get("status", "?"), progress=float(entry.get("progress", 0.0)),
                                   error=entry.get("error", ""), backend=entry.get("backend", ""))
                    rows.append(row)
            if progress is not None:
                for row in rows:
                    progress(row["device"], row)
            failed = [r for r in rows if r["status"] == "error" or not r["online"]]
            if failed:
                r = failed[0]
                why = r["error"] or "device went offline"
                raise DeployError(f"deployment {m.name} v{m.version}: stage {r['stage']} on '{r['device']}' "
                                  f"failed: {why}")
            if all(r["status"] == "ready" for r in rows):
                return rows
            left = end - time.monotonic()
            if left <= 0:
                report = "; ".join(f"stage {r['stage']}@{r['device']}: {r['status']} "
                                   f"{r['progress'] * 100:.0f}%" for r in rows)
                raise DeployTimeout(f"deployment {m.name} v{m.version} not ready after {timeout:.0f} s: {report}")
            with self._lock:
                self._changed.wait(min(left, 0.25))

    def undeploy(self, name: str, timeout: float = 30.0) -> None:
        """Remove a deployment; returns when no live device serves it any more."""
        self.manifest(name)  # raises UnknownModelError
        info = self.transport.publish(topics.deploy(self.fleet, name), b"", qos=1, retain=True)
        info.wait_for_publish(10.0)
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
    def submit(self, name: str, inputs: dict[str, np.ndarray], timeout: float = 30.0) -> Future:
        """Send one request; the Future resolves to (outputs, per-stage timings) exactly once."""
        m = self.manifest(name)
        specs = [IOSpec.from_dict(d) for d in m.inputs]
        check_inputs(specs, inputs, f"model '{name}' v{m.version}")
        devices = [st["device"] for st in m.stages]
        with self._lock:
            first = self._states.get(devices[0])
        if first is None or not first.online:
            raise StageUnavailableError(f"model '{name}': stage 0 device '{devices[0]}' is offline",
                                        stage=0, device=devices[0], code="device_offline")
        req = InferRequest(uuid.uuid4().hex, name, m.version, 0, self.endpoint, tensors=dict(inputs))
        payload = req.to_bytes()
        topic = topics.inbox(topics.device_endpoint(self.fleet, devices[0]), "in")
        fut: Future = Future()
        now = time.monotonic()
        with self._lock:
            self._pending[req.request_id] = _Pending(fut, req, payload, topic, devices, now + timeout,
                                                     now + min(RETRY_AFTER_S, timeout / 2))
        self.transport.publish(topic, payload, qos=1)
        return fut

    def infer(self, name: str, inputs: dict[str, np.ndarray], timeout: float = 30.0,
              with_timings: bool = False) -> Any:
        """Run one request through the pipeline; returns ``{output name: array}`` (and timings if asked)."""
        outputs, timings = self.submit(name, inputs, timeout).result(timeout + 5.0)
        return (outputs, timings) if with_timings else outputs


def _result_error(res: InferResult) -> Exception:
    err = res.error or {}
    code, msg = err.get("code", "error"), err.get("message", "unknown error")
    if code == "invalid_input":
        return InvalidInputError(msg)
    if code == "unknown_model":
        return UnknownModelError(msg)
    return InferenceError(msg, stage=err.get("stage"), device=err.get("device"), code=code)


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
