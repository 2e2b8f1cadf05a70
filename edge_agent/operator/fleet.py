"""The operator's Python API: ``Fleet`` (the CLI only wraps it). A facade over the rooms that do the work.

A Fleet is an MQTT client of the fleet's broker. Its handlers fill a :class:`FleetView` (device states and
loads) and the manifest tables; requests live in a :class:`RequestTable` (retries, deadlines, exactly-once
delivery); manifests are built by :func:`build_manifest`, signed here and published as retained desired
state; status rows come from :mod:`.status`; canaries and rollbacks from :mod:`.rollout`; stream definitions
and reports from :mod:`.streams`. The shards of what this client deploys are served from it while it is open.

Over 500 lines because it is the one facade of the Python API (every CLI command is one of its methods);
each method delegates to the module that does the work.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from edge_agent.cluster import routing
from edge_agent.cluster.placement import may_answer, permitted_holders
from edge_agent.cluster.view import FleetView
from edge_agent.operator.desired import DesiredState
from edge_agent.operator.manifests import build_manifest, load_sample
from edge_agent.operator.records import Deployment, DeviceStatus
from edge_agent.operator.requests import RETRY_AFTER_S, Pending, RequestTable
from edge_agent.operator.spotcheck import SpotChecker, Tolerance, onnxruntime_reference
from edge_agent.operator.status import adopted_rows, performance, rejected_counters, stage_rows, wait_ready
from edge_agent.operator.streams import StreamRecord, StreamTable, make_spec
from edge_agent.operator.telemetry import LearnedEfficiency, StageRates
from edge_agent.protocol import topics
from edge_agent.protocol.errors import (
    BrokerError,
    DeployError,
    DeployTimeout,
    InvalidInputError,
    ManifestRejected,
    ProtocolError,
    StageUnavailableError,
    UnknownModelError,
)
from edge_agent.protocol.messages import (
    DeviceState,
    Freshness,
    InferRequest,
    InferResult,
    LoadReport,
    Manifest,
    RolloutRecord,
    load_stage_entries,
    load_stage_medians,
    validate_state,
)
from edge_agent.protocol.streams import StreamSpec
from edge_agent.security.freshness import make_statement
from edge_agent.security.gate import ManifestGate
from edge_agent.security.keys import load_public_key
from edge_agent.transport.blobs import BlobServer
from edge_agent.transport.mqtt import Transport
from edge_agent.transport.resolve import resolve_broker
from edge_agent.transport.store import sha256_hex
from models.graph import TensorSpec, check_inputs

log = logging.getLogger("edge_agent.fleet")

HEARTBEAT_STALE_S = 8.0  # agents republish state every 2 s; four missed heartbeats = treated as gone
SETTLE_S = 0.3           # retained messages arrive right after subscribing; wait this long for quiet


class Fleet:
    """Connect to a fleet through its broker.

    ``broker`` may be omitted: then ``$EDGE_AGENT_BROKER`` is used, else a broker advertised over mDNS
    on ``interfaces`` (loopback by default).
    """

    def __init__(self, broker: str | None = None, fleet: str = "default", *, client_id: str | None = None,
                 interfaces: Sequence[str] = ("127.0.0.1",), connect_timeout: float = 10.0,
                 key: Any = None, credentials: Any = None, manifest_ttl_s: float = 30 * 86400,
                 insecure: bool = False, trust: Sequence[Any] = (), fresh_ttl_s: float = 86400.0) -> None:
        """``key``: the fleet signing key (path of fleet.key or FleetKeys) used to sign manifests; without it
        manifests are unsigned (only development-mode devices install them). ``credentials``: a .cred file
        (or Credentials) from ``edge-agent fleet init`` for an authenticated broker; with credentials a plain
        ``mqtt://`` broker URL is refused unless ``insecure`` (see :mod:`edge_agent.transport.resolve`).
        ``trust``: fleet public keys (paths or FleetKeys) whose manifests this client acts on; the ``key``'s
        public half is trusted too. Manifests that fail the gate never steer this client (``status`` lists
        them); without any key the client is in development mode (version order only). With a key, every
        published manifest is followed by a signed freshness statement valid ``fresh_ttl_s`` (see
        :mod:`edge_agent.security.freshness`; :meth:`refresh` renews it)."""
        topics.check_segment("fleet", fleet)
        creds = None
        if credentials is not None:
            from edge_agent.security.pki import Credentials
            creds = credentials if isinstance(credentials, Credentials) else Credentials.from_file(credentials)
        choice = resolve_broker(broker, fleet, interfaces, creds, insecure=insecure)
        url, transport_kwargs = choice.url, choice.transport_kwargs
        self.broker_reason = choice.reason
        if key is not None and not hasattr(key, "private"):
            from edge_agent.security.keys import load_private_key
            key = load_private_key(key)
        self.keys = key
        self.manifest_ttl_s = manifest_ttl_s
        self.fresh_ttl_s = fresh_ttl_s
        self.fleet = fleet
        self.broker = url
        self.client_id = client_id or f"op-{uuid.uuid4().hex[:10]}"
        self.endpoint = topics.client_endpoint(fleet, self.client_id)
        self.view = FleetView(stale_after_s=HEARTBEAT_STALE_S)
        trusted = [k if hasattr(k, "public") else load_public_key(k) for k in trust]
        if key is not None:
            trusted.append(key.public_only())
        self.desired = DesiredState(fleet, ManifestGate(fleet, trusted))
        self._changed = self.desired.changed     # notified by state and manifest updates alike
        self.requests = RequestTable(self.view, self.current, self._dispatch)
        self.spot: dict[str, SpotChecker] = {}          # deployments whose results are spot-checked
        self.stats = self.requests.stats
        self.request_log = self.requests.log    # this client's finished requests (dashboard, metrics)
        self.stage_rates = StageRates()         # fleet-wide per-stage rates from the agents' load reports
        self.learned = LearnedEfficiency()      # per (model, device) efficiency from reported run times
        self.transport = Transport(url, client_id=self.client_id if creds is None else creds.username,
                                   clean_session=True, probe_topic=topics.probe(self.endpoint),
                                   **transport_kwargs)
        # the operator seeds: two uploads at a time, and new requesters go to peers that hold the shard by now
        self.blob_server = BlobServer(self.transport, self.endpoint, max_uploads=2, peer_holders=self._peer_holders)
        self.stream_table = StreamTable(fleet, self.desired.gate, self.view, self._changed,
                                        touch=lambda: setattr(self.desired, "last_update", time.monotonic()))
        # each manifest's input specs, parsed once (per request it was ~10% of the client's CPU): "channel/name"
        # -> (the manifest they were parsed from, its specs); a new manifest object there replaces them
        self._input_specs: dict[str, tuple[Manifest, list[TensorSpec]]] = {}
        t = self.transport
        t.subscribe(topics.all_states(fleet), self._on_state)
        for channel in topics.CHANNELS:
            t.subscribe(topics.all_deploys(fleet, channel), self.desired.on_manifest)
        t.subscribe(topics.all_rollouts(fleet), self.desired.on_rollout)
        t.subscribe(topics.all_streams(fleet), self.stream_table.on_spec)
        t.subscribe(topics.all_stream_reports(fleet), self.stream_table.on_report)
        t.subscribe(topics.all_loads(fleet), self._on_load, qos=0)
        t.subscribe(topics.inbox_filter(self.endpoint, "out"), self._on_result)
        t.subscribe(topics.inbox_filter(self.endpoint, "cmd"), self.blob_server.handle)
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
        self.requests.fail_all("fleet client closed before the result arrived")
        for checker in self.spot.values():
            checker.close()
        self.blob_server.close()
        self.transport.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _settle(self, max_wait: float = 10.0) -> None:
        """Wait until the retained states, manifests and streams the broker holds have all been handled.

        A marker sent through the broker to ourselves comes back after them (:meth:`Transport.sync`). A
        quiet period alone is not enough: on a busy machine with many devices the first retained states
        can arrive later than any fixed quiet time, and `fleet ls` then missed devices (45 of 50 seen).
        If the marker does not come back in time, fall back to waiting for a short quiet period.
        """
        if self.transport.sync(max_wait):
            return
        log.warning("the broker did not echo a sync marker within %.0f s; the fleet view may be incomplete",
                    max_wait)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            if time.monotonic() - self.desired.last_update >= SETTLE_S:
                return
            time.sleep(0.05)

    def _monitor_loop(self) -> None:
        last_sweep = 0.0
        while not self._closed.wait(0.05):
            now = time.monotonic()
            if now - last_sweep > 1.0 and self.transport.connected.is_set():
                last_sweep = now
                for device, st in self.view.sweep():
                    log.warning("device %s missed its heartbeats for %.0f s; routing around it", device,
                                HEARTBEAT_STALE_S)
                    self.requests.device_lost(device, st)
            self.requests.tick(now)

    # --------------------------------------------------------------------------------- handlers
    def _on_reconnect(self) -> None:
        """After a broker restart, messages it held for us may be gone: resend what is in flight."""
        if self.transport.connect_count > 1:
            self.requests.resend_soon(0.5)   # let the devices reconnect and resubscribe first

    def _on_state(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return
        try:
            st = DeviceState.from_bytes(payload, max_bytes=1 << 20)
            validate_state(st)
            if st.device_id != topics.publisher_device(topic):   # identity from the topic (ACL-enforced)
                raise ProtocolError(f"state of {st.device_id!r} published under {topic}")
        except ProtocolError as exc:
            log.warning("ignored malformed state on %s: %s", topic, exc)
            return
        old = self.view.update_state(st)
        with self._changed:
            self.desired.last_update = time.monotonic()
            self._changed.notify_all()
        if not st.online and (old is None or old.online):
            self.requests.device_lost(st.device_id, old)

    def _on_load(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            rep = LoadReport.from_bytes(payload, max_bytes=4096)
            if rep.device_id != topics.publisher_device(topic):
                raise ProtocolError(f"load of {rep.device_id!r} published under {topic}")
        except ProtocolError:
            return
        self.view.update_load(rep)
        entries = load_stage_entries(rep)
        self.stage_rates.observe(rep.device_id, entries)
        self._learn(rep.device_id, entries, load_stage_medians(rep))

    def _learn(self, device: str, entries: list[tuple[str, int, int, int, int, float]],
               medians: dict[tuple[str, int, int], float]) -> None:
        """Learn each deployed model's efficiency on ``device`` from the run times it reported
        (:class:`LearnedEfficiency`): the median of its last runs at full speed where the agent sends it (a CPU
        quota's wait inside a few runs stretches the EWMA, not the median), else the EWMA; the stage FLOPs come
        from the verified manifest of that version."""
        st = self.view.state(device)
        if st is None or not entries:
            return
        by_model: dict[tuple[str, int], list[tuple[int, float, bool]]] = {}
        for model, version, stage, served, _errors, ewma in entries:
            median = medians.get((model, version, stage))
            run_ms = ewma if median is None else median
            if served > 0 and run_ms > 0:
                by_model.setdefault((model, version), []).append((stage, run_ms, median is not None))
        for (model, version), runs in by_model.items():
            m = self._verified(model, version)
            if m is None:
                continue
            stages = [(m.stages[i].flops or 0.0, run_ms, full) for i, run_ms, full in runs
                      if 0 <= i < len(m.stages)]
            self.learned.observe(m.model_sha256, device, stages, float(st.gflops or 0.0), st.burst_gflops)

    def _on_result(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            res = InferResult.from_bytes(payload)
        except ProtocolError as exc:
            log.warning("ignored malformed result: %s", exc)
            return
        sender = topics.sender_of(topic)
        sent = self.requests.sent(res.request_id)
        if sent is not None and not self._may_answer(*sent, sender=sender, final=res.ok):
            # the broker lets any device write to our inbox (under its own name): only the devices the
            # verified manifest lets serve this request may answer it
            log.warning("ignored a result for %s from %r: not a device of %s v%d", res.request_id, sender,
                        sent[0].model, sent[0].version)
            self.stats["foreign_results"] += 1
            return
        self.requests.on_result(res)

    def _may_answer(self, req: InferRequest, device: str | None, sender: str, final: bool) -> bool:
        """Whether ``sender`` may answer ``req``: a success only from a permitted holder of the last stage, an
        error from one of any stage (a stage that failed, or found no next hop, answers the caller) or from the
        device the request went to (which answers one for a model it does not know)."""
        if not final and sender and sender == device:
            return True
        m = self._verified(req.model, req.version)
        return m is not None and may_answer(self.view, m, sender, final)

    # --------------------------------------------------------------------------------- queries
    def _peer_holders(self, sha: str) -> int:
        """Live devices whose state says they hold blob ``sha`` (and so serve it to their peers)."""
        return sum(1 for st in self.view.states() if sha in st.blobs and self.view.online(st.device_id))

    def devices(self, include_offline: bool = False) -> list[DeviceStatus]:
        """Devices of the fleet with their capabilities and what they run (live ones by default)."""
        out = [DeviceStatus.from_state(s) for s in self.view.states() if include_offline or s.online]
        return sorted(out, key=lambda d: d.device_id)

    def wait_for_devices(self, count: int, timeout: float = 30.0) -> list[DeviceStatus]:
        """Block until at least ``count`` devices are online."""
        end = time.monotonic() + timeout
        with self._changed:
            while sum(1 for s in self.view.states() if s.online) < count:
                left = end - time.monotonic()
                if left <= 0:
                    online = sorted(s.device_id for s in self.view.states() if s.online)
                    raise BrokerError(f"only {len(online)} of {count} devices came online within "
                                      f"{timeout:.0f} s: {online}")
                self._changed.wait(min(left, 0.5))
        return self.devices()

    def deployments(self) -> list[Manifest]:
        return self.desired.stable()

    def current(self, name: str, channel: str = "stable") -> Manifest | None:
        """The manifest of ``name`` on ``channel`` as the broker holds it now, or None."""
        return self.desired.current(name, channel)

    def manifest(self, name: str, wait: float = 1.0) -> Manifest:
        """The stable manifest of ``name`` (waiting up to ``wait`` s); UnknownModelError naming the known ones."""
        return self.desired.wait(name, wait)

    def _verified(self, model: str, version: int) -> Manifest | None:
        """The verified manifest of ``model`` at ``version`` (stable or canary), or None."""
        # stable first, canary only when that is not it: this runs 2-3 times per request (route, answer check)
        m = self.current(model)
        if m is not None and m.version == version:
            return m
        m = self.current(model, "canary")
        return m if m is not None and m.version == version else None

    def route(self, model: str, version: int, stage: int) -> str | None:
        """The permitted live device with the stage ready and the earliest expected completion (queue x speed):
        a replica named in the verified manifest, or an adopter while they are all gone."""
        m = self._verified(model, version)
        if m is None or not 0 <= stage < len(m.stages):
            return None
        key = (model, version, stage)
        checker = self.spot.get(model)
        spec = m.stages[stage]
        return routing.pick(self.view, key, allowed=permitted_holders(self.view, m, stage),
                            exclude=frozenset(checker.excluded()) if checker else frozenset(),
                            weights=spec.weight_of())

    # --------------------------------------------------------------------------------- deploy
    CLIENT_LINK_TTL_S = 300.0

    def client_link(self) -> Any:
        """This operator's link to the broker (:class:`LinkStats`: QoS 1 round trip and a 1 MiB burst echo,
        as the agents measure theirs), for the caller's terms of the planner's prediction; measured at the
        first plan and again after ``CLIENT_LINK_TTL_S``. None when it cannot be measured (then the model
        uses its defaults)."""
        cached = getattr(self, "_client_link", None)
        if cached is not None and time.monotonic() - cached[0] < self.CLIENT_LINK_TTL_S:
            return cached[1]
        try:
            stats = self.transport.measure_link(burst_bytes=1 << 20, timeout_s=3.0)
        except BrokerError as exc:
            log.info("could not measure this client's link to the broker (%s): the planner uses its defaults", exc)
            stats = None
        self._client_link = (time.monotonic(), stats)
        return stats

    def next_version(self, name: str) -> int:
        """One above every version of ``name`` seen on any channel or in its rollout history."""
        return self.desired.next_version(name)

    def build_manifest(self, model: Any, name: str, *, stages: int | None = None,
                       devices: Sequence[str] | None = None, version: int | None = None,
                       input_shapes: dict[str, Sequence[int]] | None = None, replicas: int | None = None,
                       failover: bool = True, channel: str = "stable",
                       include_offline: bool = False, sample_input: Any = None,
                       objective: str = "throughput", shape: Any = None) -> tuple[Manifest, Any]:
        """Plan ``model`` onto live devices and build its (unsigned, unpublished) manifest; the shards are
        served by this Fleet from then on. ``sample_input`` (a dict of arrays or an .npz path) gives the shape
        to plan dynamic inputs on when ``input_shapes`` does not. Without ``stages`` and ``replicas`` the
        performance model picks the shape for ``objective`` among ``devices`` (default: every live device)."""
        live = {d.device_id: d for d in self.devices(include_offline=include_offline and bool(devices))}
        if devices:
            missing = [d for d in devices if d not in live]
            if missing:
                raise DeployError(f"cannot deploy '{name}': device(s) {missing} are not online "
                                  f"(online: {sorted(live) or 'none'})")
            chosen = [live[d] for d in devices]
        else:
            chosen = list(live.values())
        return build_manifest(
            model, name, chosen, add_shard=self.blob_server.add, version=int(version or self.next_version(name)),
            fleet=self.fleet, operator=self.client_id, sources=[self.endpoint], stages=stages,
            input_shapes=input_shapes, replicas=replicas, failover=failover, channel=channel,
            expires=(time.time() + self.manifest_ttl_s) if self.keys is not None else 0.0,
            sample=load_sample(sample_input), objective=objective, shape=shape,
            standby=sorted(d.device_id for d in self.devices()), client_link=self.client_link(),
            learned=self.learned.for_model)

    def plan_shapes(self, model: Any, *, devices: Sequence[str] | None = None, objective: str = "throughput",
                    input_shapes: dict[str, Sequence[int]] | None = None, sample_input: Any = None) -> Any:
        """What ``deploy`` would weigh, without deploying: the :class:`models.planner.Search` (every shape
        evaluated, best first for ``objective``) over the live devices (or ``devices``)."""
        from edge_agent.operator.manifests import calibration_for, model_device
        from models.graph import load_model
        from models.partition import profile_model
        from models.planner import search
        live = {d.device_id: d for d in self.devices()}
        chosen = [live[d] for d in devices] if devices else list(live.values())
        shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()} or None
        proto = load_model(model)
        prof = profile_model(proto, shapes, load_sample(sample_input))
        learned = self.learned.for_model(sha256_hex(proto.SerializeToString()))
        return search(prof, [model_device(d, learned.get(d.device_id)) for d in chosen],
                      calibration_for(chosen, self.client_link()), objective)

    def publish_manifest(self, m: Manifest) -> Manifest:
        """Sign (when this Fleet has the fleet key) and publish a manifest as the retained desired state."""
        if self.keys is not None:
            from edge_agent.security.keys import sign_document
            m.sig = sign_document(m.signed_fields(), self.keys)["sig"]
        info = self.transport.publish(topics.deploy(self.fleet, m.name, m.channel), m.to_bytes(), qos=1,
                                      retain=True)
        info.wait_for_publish(10.0)
        if self.keys is not None:
            self.refresh(also=m)
        return m

    def refresh(self, also: Manifest | None = None) -> Freshness:
        """Sign and publish (retained) a new freshness statement naming every verified manifest this client
        holds (and ``also``, just published): devices keep serving them past their own expiry while
        statements keep coming, and report being held back when one names a version they lack. Run it
        more often than ``fresh_ttl_s`` (``edge-agent refresh`` from a timer)."""
        if self.keys is None:
            raise DeployError("refreshing the freshness statement needs the fleet key (--key fleet.key)")
        held = {(m.channel, m.name): m for m in self.desired.all_current()}
        held.update({("stream", s.name): s for s in self.stream_table.specs.values() if not s.stopped})
        if also is not None:
            held[(also.channel, also.name)] = also
        f = make_statement(self.fleet, list(held.values()), self.keys, ttl_s=self.fresh_ttl_s)
        self.transport.publish(topics.freshness(self.fleet), f.to_bytes(), qos=1, retain=True).wait_for_publish(10.0)
        return f

    def clear_canary(self, name: str) -> None:
        """Withdraw the canary of ``name`` (devices drop it; the stable version is untouched)."""
        self.transport.publish(topics.deploy(self.fleet, name, "canary"), b"", qos=1,
                               retain=True).wait_for_publish(10.0)
        self.desired.forget(name, "canary")

    def deploy(self, model: Any, name: str, *, stages: int | None = None, devices: Sequence[str] | None = None,
               version: int | None = None, input_shapes: dict[str, Sequence[int]] | None = None,
               replicas: int | None = None, failover: bool = True, timeout: float = 120.0,
               canary: int | str | None = None, gates: str | dict | None = None,
               check_data: Any = None, include_offline: bool = False, sample_input: Any = None,
               verify_fraction: float = 0.0, progress: Callable[[str, dict], None] | None = None,
               objective: str = "throughput", shape: Any = None) -> Deployment:
        """Plan, sign, ship and start ``model`` (path, bytes or ModelProto) as ``name``; returns when every
        stage reports ready on every replica, raises DeployError (a stage failed) or DeployTimeout (with each
        device's progress).

        Given only ``devices`` (or nothing: every live device), the performance model (:mod:`models.planner`,
        docs/planner.md) chooses replicas, pipeline stages or a hybrid, the best predicted for ``objective``
        ("throughput", the default, for many requests in flight; or "latency", for one at a time); the
        prediction and the alternatives it beat are in ``Deployment.plan.prediction`` and
        ``manifest.plan["predicted"]``, and ``status()["performance"]`` sets them beside measured figures.
        ``stages`` and/or ``replicas`` fix the shape instead (the model still predicts it); so does ``shape``
        (a :class:`models.planner.Shape`, e.g. one of the alternatives a search listed: see :meth:`plan_shapes`).
        ``replicas`` places each stage on that many devices (requests are balanced by queue depth);
        ``failover`` lets the fleet move a stage whose devices are all gone to another device.
        ``canary`` (a device count or "N%") first runs the new version on that many devices only and
        checks ``gates`` (e.g. "p95_ms<=120,error_rate<=0.01,max_abs_diff<=1e-3") on ``check_data``
        (an .npz path or a dict of input arrays, samples on axis 0) before the rest of the fleet gets it;
        if a gate fails the canary is withdrawn, the fleet stays on the previous version, and the rollout
        record says why. Dynamic input dims are planned on ``input_shapes``, else ``sample_input`` (arrays or
        an .npz), else defaults by role (``Deployment.manifest.plan["notes"]`` says which); any shape the
        model accepts is served. ``verify_fraction`` spot-checks that share of results (see :meth:`verify`)."""
        t0 = time.monotonic()
        kw = dict(input_shapes=input_shapes, replicas=replicas, failover=failover, sample_input=sample_input,
                  objective=objective)
        if canary is not None:
            from edge_agent.operator.rollout import run_canary
            metrics = run_canary(self, model, name, canary=canary, gates=gates, check_data=check_data,
                                 stages=stages, version=version, timeout=timeout, progress=progress, **kw)
            version = metrics["version"]
        manifest, plan = self.build_manifest(model, name, stages=stages, devices=devices, version=version,
                                             include_offline=include_offline, shape=shape, **kw)
        previous, previous_raw = self.current(name), self.desired.retained(name)
        self.publish_manifest(manifest)
        try:
            rows = self.wait_ready(manifest, timeout, progress, offline_ok=include_offline)
        except ManifestRejected as exc:
            self._restore(name, previous, previous_raw)
            self.record_rollout(name, manifest.version, "stable", "rejected", str(exc))
            raise
        except DeployError as exc:
            self.record_rollout(name, manifest.version, "stable", "failed", str(exc))
            raise
        self.record_rollout(name, manifest.version, "stable", "deployed" if canary is None else "promoted",
                            "all stages ready", good=manifest)
        if verify_fraction > 0:
            self.verify(name, verify_fraction, model)
        return Deployment(manifest, plan, time.monotonic() - t0, rows)

    def verify(self, name: str, fraction: float, model: Any, rtol: float = 1e-3, atol: float = 1e-4) -> SpotChecker:
        """Spot-check ``fraction`` (0..1) of ``name``'s results: each sampled result is compared, on this
        client's own thread, with ONNX Runtime on the whole ``model`` (path, bytes or ModelProto). Devices on
        the path of disagreeing results are reported in ``status()["spot_check"]`` and, from 3 disagreements
        at a rate of at least 1/2, no longer get this client's requests."""
        from models.graph import load_model

        if not 0 < fraction <= 1:
            raise ValueError(f"verify fraction must be in (0, 1], got {fraction}")
        old = self.spot.pop(name, None)
        if old is not None:
            old.close()
        reference = onnxruntime_reference(load_model(model).SerializeToString())
        checker = self.spot[name] = SpotChecker(name, fraction, reference, Tolerance(rtol, atol))
        return checker

    def rollouts(self, name: str) -> RolloutRecord | None:
        return self.desired.rollout(name)

    def record_rollout(self, name: str, version: int, channel: str, status: str, reason: str,
                       metrics: dict | None = None, good: Manifest | None = None) -> None:
        """Append to the retained rollout record of ``name`` (keeps the last 50 events, 5 good manifests)."""
        rec = self.desired.add_rollout_event(name, {"version": version, "channel": channel, "status": status,
                                                    "reason": reason, "metrics": metrics or {},
                                                    "ts": time.time()}, good)
        self.transport.publish(topics.rollout(self.fleet, name), rec.to_bytes(), qos=1,
                               retain=True).wait_for_publish(10.0)

    def rollback(self, name: str, to_version: int | None = None, timeout: float = 120.0,
                 progress: Callable[[str, dict], None] | None = None) -> Deployment:
        """Return ``name`` to the previous good version (or ``to_version``) as a new, signed version with the
        old content, so version numbers only grow and old manifests can never be replayed. Shards come
        from the devices' stores and their peers; nothing is rebuilt."""
        from edge_agent.operator.rollout import rollback
        t0 = time.monotonic()
        m, rows = rollback(self, name, to_version, timeout, progress)
        return Deployment(m, None, time.monotonic() - t0, rows)

    def status(self, name: str) -> dict:
        """Desired vs reported for ``name``: per channel, one row per (stage, device), and the rollout record."""
        stable = self.manifest(name, wait=0.5)
        canary = self.current(name, "canary")
        rows = self.stage_rows(stable)
        out = {"name": name, "stable": {"version": stable.version, "created": stable.created,
                                        "signed": bool(stable.sig), "rollback": stable.rollback,
                                        "stages": rows,
                                        "converged": all(r["status"] == "ready" for r in rows)}}
        if canary is not None:
            crows = self.stage_rows(canary)
            out["canary"] = {"version": canary.version, "signed": bool(canary.sig), "stages": crows,
                             "converged": all(r["status"] == "ready" for r in crows)}
        out["performance"] = performance(self.view, stable, self.requests.meter.measured((name, stable.version)))
        out["adopted"] = adopted_rows(self.view, name)
        out["rejected"] = rejected_counters(self.view)
        out["rejected_manifest"] = self.desired.rejected.get(name)
        if name in self.spot:
            out["spot_check"] = self.spot[name].report()
        rec = self.rollouts(name)
        out["history"] = rec.history[-10:] if rec else []
        return out

    def stage_rows(self, m: Manifest) -> list[dict]:
        """Desired vs reported, one row per (stage, replica device)."""
        return stage_rows(self.view, m)

    def wait_ready(self, m: Manifest, timeout: float, progress: Callable[[str, dict], None] | None = None,
                   offline_ok: bool = False) -> list[dict]:
        """Block until every replica of ``m`` reports ready; DeployError when one fails or goes offline,
        ManifestRejected when devices refuse it, DeployTimeout with each device's progress."""
        return wait_ready(self.view, self._changed, m, timeout, progress, offline_ok)

    def _restore(self, name: str, previous: Manifest | None, previous_raw: bytes) -> None:
        """Devices refused a new manifest: put back, retained, exactly what the broker held before (the
        manifest they still serve, even one this client cannot verify), so the broker never keeps a
        manifest the fleet rejected."""
        topic = topics.deploy(self.fleet, name)
        self.transport.publish(topic, previous_raw, qos=1, retain=True).wait_for_publish(10.0)
        if previous is not None:
            self.desired.restore(previous)
        else:
            self.desired.forget(name)

    def undeploy(self, name: str, timeout: float = 30.0) -> None:
        """Remove a deployment; returns when no live device serves it any more."""
        current = self.manifest(name)  # raises UnknownModelError
        if self.keys is not None:
            # devices that trust a fleet key ignore unsigned removals: publish a signed tombstone
            tomb = Manifest(name, self.next_version(name), time.time(), current.model_sha256, [], [], [],
                            operator=self.client_id, fleet=self.fleet)
            self.publish_manifest(tomb)
            self.desired.note_tombstone(name, tomb.version)
        else:
            info = self.transport.publish(topics.deploy(self.fleet, name), b"", qos=1, retain=True)
            info.wait_for_publish(10.0)
        if self.current(name, "canary") is not None:
            self.clear_canary(name)
        self.record_rollout(name, current.version, "stable", "undeployed", "operator request")
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                serving = sorted(s.device_id for s in self.view.states()
                                 if s.online and any(e.get("model") == name for e in s.stages))
                if not serving:
                    self.desired.forget(name)
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
            m = self.current(name, "canary")
            if m is None:
                raise UnknownModelError(f"no canary of '{name}' in fleet '{self.fleet}'")
        else:
            m = self.manifest(name)
        check_inputs(self._inputs_of(m), inputs, f"model '{name}' v{m.version}", error=InvalidInputError)
        # (a failover deployment waits for an adopter instead: no need to route twice per request)
        if not m.failover and self.route(name, m.version, 0) is None:
            devs = m.stages[0].replicas
            raise StageUnavailableError(f"model '{name}': no live device serves stage 0 "
                                        f"(assigned: {', '.join(devs)})", stage=0, device=devs[0],
                                        code="device_offline")
        future = self.requests.submit(m, inputs, self.endpoint, timeout)
        checker = self.spot.get(name)
        if checker is not None and channel == "stable" and checker.sample():
            feeds = dict(inputs)

            def check(f: Future) -> None:
                if not f.cancelled() and f.exception() is None:
                    outputs, timings = f.result()
                    checker.submit(feeds, outputs, timings)

            future.add_done_callback(check)
        return future

    def _inputs_of(self, m: Manifest) -> list[TensorSpec]:
        key = f"{m.channel}/{m.name}"
        cached = self._input_specs.get(key)
        if cached is None or cached[0] is not m:
            cached = self._input_specs[key] = (m, [TensorSpec.from_dict(d) for d in m.inputs])
        return cached[1]

    def infer(self, name: str, inputs: dict[str, np.ndarray], timeout: float = 30.0,
              with_timings: bool = False) -> Any:
        """Run one request through the pipeline; returns ``{output name: array}`` (and timings if asked)."""
        outputs, timings = self.submit(name, inputs, timeout).result(timeout + 5.0)
        return (outputs, timings) if with_timings else outputs

    def _dispatch(self, p: Pending, retry: bool = False) -> None:
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
        self.view.note_sent(dest)
        self.transport.publish(topics.inbox(topics.device_endpoint(self.fleet, dest), "in", self.client_id), p.payload,
                               qos=1)

    # --------------------------------------------------------------------------------- streams
    def stream_start(self, name: str, model: str, source: str, sink: str, *, policy: str = "latest",
                     batch: int = 1, input: str | None = None, preprocess: Any = None, wait: bool = True,
                     timeout: float = 30.0) -> StreamRecord:
        """Bind MQTT topic ``source`` to deployment ``model``: every frame published there (a StreamFrame or a
        bare PNG/JPEG) is run and its result published on ``sink`` with the frame's id and timestamp (see
        docs/streams.md). ``policy``: ``latest`` or ``queue:N``; ``batch``: frames per request (dynamic batch
        dim only); ``preprocess``: for raw images, a :class:`Preprocess` or its text form
        (``resize=224x224,layout=NCHW,mean=...,scale=...``). The definition is signed (with the fleet key)
        and retained; with ``wait``, returns once a device reports running its ingress."""
        m = self.manifest(model)
        spec = make_spec(self.fleet, m, name, source=source, sink=sink, policy=policy, batch=batch, input=input,
                         preprocess=preprocess, version=self.stream_table.next_version(name),
                         operator=self.client_id,
                         expires=(time.time() + self.manifest_ttl_s) if self.keys is not None else 0.0)
        self._publish_stream(spec)
        if not wait:
            return self.stream_table.records_by_name().get(name) or StreamRecord(
                name, model, source, sink, spec.policy, batch, spec.version, bool(spec.sig))
        return self._wait_stream(name, lambda: bool(self.stream_table.reporting(name)), timeout,
                                 f"no device reports running the ingress of stream {name}")

    def stream_stop(self, name: str, timeout: float = 30.0) -> None:
        """Stop stream ``name`` (a signed tombstone, retained); returns once no live device runs it."""
        current = self.stream_table.wait_spec(name, 1.0)
        if current is None:
            known = ", ".join(sorted(self.stream_table.specs)) or "none"
            raise UnknownModelError(f"no stream named '{name}' in fleet '{self.fleet}' (streams: {known})")
        tomb = StreamSpec(name, self.stream_table.next_version(name), current.model, current.source, current.sink,
                          stopped=True, operator=self.client_id, fleet=self.fleet)
        self._publish_stream(tomb)
        self._wait_stream(name, lambda: not self.stream_table.reporting(name), timeout,
                          f"devices {self.stream_table.reporting(name)} still run stream {name}")

    def streams(self) -> list[dict]:
        """Every stream with its ingress device and figures, as plain dicts (:class:`StreamRecord` fields:
        name, model, source, sink, policy, batch, ingress_device, fps_in, fps_out, dropped, in_flight,
        latency_ms {p50, p90, p99} or None, updated...)."""
        return [r.to_dict() for r in self.stream_table.records()]

    def _publish_stream(self, spec: StreamSpec) -> None:
        if self.keys is not None:
            from edge_agent.security.keys import sign_document
            spec.sig = sign_document(spec.signed_fields(), self.keys)["sig"]
        self.transport.publish(topics.stream(self.fleet, spec.name), spec.to_bytes(), qos=1,
                               retain=True).wait_for_publish(10.0)

    def _wait_stream(self, name: str, done: Callable[[], bool], timeout: float, what: str) -> Any:
        end = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = end - time.monotonic()
                if left <= 0:
                    raise DeployTimeout(f"{what} after {timeout:.0f} s")
                self._changed.wait(min(left, 0.25))
        return self.stream_table.records_by_name().get(name)

