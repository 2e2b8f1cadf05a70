"""The stage server: runs requests in arrival order on the installed stages, forwards each result to the
next stage's best replica (or answers the caller), and answers retries from a de-duplication cache.

It runs on its own worker thread; the MQTT handlers put requests on its bounded queue, which serves senders
in turns and sheds the largest backlog first (:mod:`edge_agent.transport.fairqueue`), so one flooding identity
cannot starve the others. One exception keeps the thread hand-off off the hot path: a request for a *cheap* stage (its measured run time under
``INLINE_MAX_MS``, on requests at least as large) that arrives while the worker is idle and nothing is
queued is served right on the network thread (``counters["served_inline"]``). That holds paho's loop for
at most about that long (keepalive is seconds, the session probe's patience 4 s), and the order of
requests is kept: the worker's lock is held for either path, and anything queued goes first. Stages that
are slow, or not measured yet, always go to the worker.

Requests arrive with their tensors as :class:`~edge_agent.protocol.messages.WireTensor` (checked, not yet
arrays): only the stage's inputs become (zero-copy) arrays; tensors carried to a later stage are framed
again from the received bytes. ``counters["tensors_decoded"]`` / ``["tensors_carried"]`` count both.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from edge_agent.agent.backend import check_inputs
from edge_agent.agent.stages import InstalledStage, StageTable
from edge_agent.cluster import routing
from edge_agent.cluster.meter import Meter
from edge_agent.cluster.placement import permitted_holders
from edge_agent.cluster.view import FleetView
from edge_agent.protocol import topics
from edge_agent.protocol.errors import InvalidInputError, ProtocolError
from edge_agent.protocol.messages import (
    MAX_LOAD_STAGES,
    InferRequest,
    InferResult,
    LoadReport,
    Manifest,
    WireTensor,
)
from edge_agent.transport.fairqueue import FairQueue, Full, ShedLog
from edge_agent.transport.mqtt import Transport

log = logging.getLogger("edge_agent.agent")

DEDUP_CACHE = 2048           # (request, stage) answers kept so a retry is resent, not recomputed...
DEDUP_MAX_BYTES = 64 << 20   # ...bounded in bytes too: 2048 x 1 MiB activations would be 2 GiB
WORK_QUEUE = 1024            # requests waiting per device before it answers "overloaded" (shared fairly by senders)
MAX_REROUTES = 3             # a request passed on more often than this is answered with an error
LOAD_REPORT_EVERY_S = 0.1
RUN_HISTORY = 32             # runs per stage whose median the load report carries...
UNSTRETCHED = 0.7            # ...counting only runs that had the CPU for this share of their wall time at least
INLINE_MAX_MS = 2.0          # stages measured faster than this may run on the network thread when idle
MAX_PLANS = 1024             # cached stage routing plans before those of replaced manifests are dropped

Answer = tuple[str, bytes, InferRequest | None]   # ("result" | "forward", payload, forwarded request)


def full_speed_ms(backend: object, wall_s: float, process_cpu_s: float, thread_cpu_s: float) -> float | None:
    """How long a run would have taken with the CPU throughout (ms), or None when that cannot be told.

    A run that had the CPU for at least ``UNSTRETCHED`` of its wall time was not held up (no CPU-quota wait,
    no preemption): its wall time. A single-threaded backend computes on the calling thread, so the thread's
    CPU time is the run at full speed even when a quota's period ended mid-run and the run waited up to
    80 ms for the next one (a run longer than a quota period's budget is always cut so: without this it
    would never be learned from). A multi-threaded run's CPU time spreads over its pool, whose idle workers
    may sleep: it bounds the wall time only from below, so such a stretched run is left out. A *paced*
    backend (the lab's ``--slowdown``, which sleeps to emulate a slower device) takes its wall time by
    design: always that."""
    if getattr(backend, "paced", False):
        return wall_s * 1e3
    threads = max(1, int(getattr(backend, "threads", 1)))
    used = thread_cpu_s if threads == 1 else process_cpu_s
    if used >= UNSTRETCHED * wall_s:
        return wall_s * 1e3
    if threads == 1 and thread_cpu_s > 0:
        return thread_cpu_s * 1e3
    return None


class _Where(NamedTuple):
    """"<model> stage <i> on <device>" for error messages, formatted only when one is raised."""

    model: str
    stage: int
    device: str

    def __str__(self) -> str:
        return f"{self.model} stage {self.stage} on {self.device}"


class _StagePlan(NamedTuple):
    """What routing and the sender check derive from the fleet view and a stage's verified manifest, kept
    until either changes (the view's ``generation``, another manifest object): not recomputed per request."""

    generation: int
    spec: Manifest
    holders: tuple[str, ...]           # other devices that report the stage ready and may serve it
    weights: dict[str, float] | None   # the planned share of each replica (routing.pick)
    senders: frozenset[str]            # who may hand this device the stage's tensors (see may_send)


def _inputs_match(checks: tuple, feeds: dict[str, np.ndarray]) -> bool:
    """The usual request, checked against the stage's precomputed input checks: exactly its inputs, each an
    array of the right dtype, rank and fixed dims. False for anything else (``check_inputs`` then decides and
    explains): the same rule as ``check_inputs``, without working the specs out again per request."""
    if len(feeds) != len(checks):
        return False
    for name, dtype, rank, fixed in checks:
        arr = feeds.get(name)
        if type(arr) is not np.ndarray or arr.dtype != dtype or arr.ndim != rank:
            return False
        shape = arr.shape
        for axis, size in fixed:
            if shape[axis] != size:
                return False
    return True


def _tensor_bytes(req: InferRequest) -> int:
    return sum(getattr(t, "nbytes", 0) for t in req.tensors.values())


class DedupCache:
    """Answers already produced, by (request id, stage), bounded in count and in bytes (oldest out first)."""

    def __init__(self, max_entries: int = DEDUP_CACHE, max_bytes: int = DEDUP_MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[tuple[str, int], Answer] = collections.OrderedDict()
        self.bytes = 0

    def get(self, key: tuple[str, int]) -> Answer | None:
        return self._entries.get(key)

    def put(self, key: tuple[str, int], answer: Answer) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old[1])
        self._entries[key] = answer
        self.bytes += len(answer[1])
        while len(self._entries) > self.max_entries or (self.bytes > self.max_bytes and len(self._entries) > 1):
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= len(dropped[1])

    def __len__(self) -> int:
        return len(self._entries)


class StageServer:
    """Serves the stages in ``table`` for device ``device_id`` (see the module docstring)."""

    def __init__(self, device_id: str, fleet: str, transport: Transport, view: FleetView, table: StageTable,
                 counters: collections.Counter, on_reject: Callable[[str], None],
                 max_message_bytes: int, manifest_of: Callable[[str, int], Manifest | None],
                 max_queued: int = WORK_QUEUE) -> None:
        self.device_id = device_id
        self.fleet = fleet
        self.transport = transport
        self.view = view
        self.table = table
        self.counters = counters
        self.on_reject = on_reject
        self.max_message_bytes = max_message_bytes
        self.manifest_of = manifest_of          # the accepted manifest of (model, version), or None
        self.service_ms = 1.0                 # EWMA of this device's run time per request
        self.served_by_stage: collections.Counter[tuple[str, int, int]] = collections.Counter()
        self.errors_by_stage: collections.Counter[tuple[str, int, int]] = collections.Counter()
        self.run_ms_by_stage: dict[tuple[str, int, int], float] = {}   # EWMA per stage, for the load report
        # the last runs per stage at full speed (:func:`full_speed_ms`: the wall time of a run that had the CPU
        # throughout, else what its CPU time says it would have taken): their median is this device's own
        # speed on the stage, which the operator learns the model's efficiency from
        self.run_hist_by_stage: dict[tuple[str, int, int], collections.deque] = {}
        self.on_run: Callable[[str, int, float], None] | None = None   # (model, stage, seconds): metrics
        self.work: FairQueue[InferRequest] = FairQueue(max_queued)
        self._shed_log = ShedLog(log, "requests")
        self._serving = threading.Lock()      # held while a request is served, by the worker or inline
        self.inline_served = 0                # requests served on the network thread (see the docstring)
        self._timed_bytes: dict[tuple[str, int, int], int] = {}   # largest request each stage was timed on
        self.done = DedupCache()
        self.meter = Meter()                  # completions per stage: measured rate and latency for the state
        self._last_load_pub = 0.0
        self._last_load_depth = -1
        self.last_request = time.monotonic()  # when a request last arrived or finished (idleness)
        self._thread: threading.Thread | None = None
        self._plans: dict[tuple[str, int, int], _StagePlan] = {}   # only stages of verified manifests: bounded

    # ---------------------------------------------------------------------------------- lifecycle
    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._work_loop, name=f"stage-worker-{self.device_id}",
                                        daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self.work.close()

    def queue_depth(self) -> int:
        return self.work.qsize()

    def idle_for(self) -> float:
        """Seconds since a request last arrived or finished (0 while any is queued)."""
        return 0.0 if self.work.qsize() else time.monotonic() - self.last_request

    # ---------------------------------------------------------------------------------- intake
    def may_send(self, req: InferRequest, sender: str) -> bool:
        """Whether ``sender`` (the writer's id, from the topic) may hand this device ``req``. Stage 0 comes from
        any identity the broker lets write here (operators, API clients, stream ingress, spot checks); the
        tensors of stage k > 0 only from a permitted holder of stage k - 1, or of stage k itself (a holder
        that passes on a request routed to it on a stale view). A request for a model version this device
        has no verified manifest of reaches no installed stage anyway; ``serve`` answers it."""
        if not sender:
            return False
        if req.stage == 0:
            return True
        plan = self._plan(req.model, req.version, req.stage)
        return plan is None or sender in plan.senders

    def _plan(self, model: str, version: int, stage: int) -> _StagePlan | None:
        """The stage's routing plan, recomputed only when the view or the manifest changed; None when there is
        no verified manifest of (model, version) or it has no such stage."""
        spec = self.manifest_of(model, version)
        if spec is None or not 0 <= stage < len(spec.stages):
            return None
        key = (model, version, stage)
        generation = self.view.generation
        plan = self._plans.get(key)
        if plan is not None and plan.generation == generation and plan.spec is spec:
            return plan
        allowed = permitted_holders(self.view, spec, stage)
        senders = allowed | permitted_holders(self.view, spec, stage - 1) if stage > 0 else frozenset()
        plan = _StagePlan(generation, spec, tuple(routing.ready_candidates(self.view, key, allowed, self.device_id)),
                          spec.stages[stage].weight_of(), frozenset(senders))
        if len(self._plans) >= MAX_PLANS:   # manifests come and go: drop the plans of replaced ones
            self._plans = {k: p for k, p in self._plans.items() if self.manifest_of(k[0], k[1]) is p.spec}
        self._plans[key] = plan
        return plan

    def enqueue(self, req: InferRequest, sender: str = "", inline_ok: bool = False) -> None:
        """Queue a request from ``sender`` (the writer's id from the topic; "" for this device itself) on the
        network thread. When the queue is full, the request shed (this one, or the newest of the sender with
        the largest backlog) is answered "overloaded". ``inline_ok`` (the network thread's handler): serve it
        right here when that is cheap and nothing waits (see the module docstring)."""
        if not topics.is_endpoint(req.reply_to, self.fleet):
            log.warning("rejected request %s: reply_to %r outside fleet %s", req.request_id, req.reply_to,
                        self.fleet)
            self.on_reject("bad_reply_to")
            return
        self.last_request = time.monotonic()
        if inline_ok and self._cheap(req) and not self.work.qsize() and self._serving.acquire(blocking=False):
            try:
                if not self.work.qsize():     # re-checked under the lock: the worker may have queued work meanwhile
                    self.inline_served += 1
                    self.counters["served_inline"] += 1
                    self._serve_guarded(req)
                    self.last_request = time.monotonic()
                    self.publish_load()
                    return
            finally:
                self._serving.release()
        try:
            shed = self.work.put(sender or self.device_id, req)
        except Full as exc:
            self._shed(req, sender, str(exc))
            return
        if shed is not None:
            self._shed(shed[1], shed[0], "pushed out for a sender with a smaller backlog")
        self.publish_load()

    def _shed(self, req: InferRequest, sender: str, why: str) -> None:
        self.counters["overloaded_shed"] += 1
        self._shed_log.note(sender, why)
        self.reply_error(req, "overloaded", f"device {self.device_id} has {self.work.qsize()} requests queued "
                         f"({why})", quiet=True)

    def publish_load(self, force: bool = False) -> None:
        """Load telemetry for routing: only when the queue depth changed, at most every 100 ms."""
        now = time.monotonic()
        depth = self.work.qsize()
        if not force and (now - self._last_load_pub < LOAD_REPORT_EVERY_S or depth == self._last_load_depth):
            return
        self._last_load_pub = now
        self._last_load_depth = depth
        rep = LoadReport(self.device_id, depth, round(self.service_ms, 3), stages=self.stage_load())
        self.transport.publish(topics.load(self.fleet, self.device_id), rep.to_bytes(), qos=0)

    def stage_load(self) -> list[list]:
        """Per-stage cumulative served/error counts, run-time EWMA (the dashboard's rates come from them) and
        the median of the last unstretched runs (the operator's learned efficiency comes from it)."""
        keys = sorted(set(self.served_by_stage) | set(self.errors_by_stage))[:MAX_LOAD_STAGES]
        return [[m, v, s, self.served_by_stage[(m, v, s)], self.errors_by_stage[(m, v, s)],
                 round(self.run_ms_by_stage.get((m, v, s), 0.0), 3),
                 round(float(np.median(self.run_hist_by_stage[(m, v, s)])), 3)
                 if self.run_hist_by_stage.get((m, v, s)) else 0.0] for m, v, s in keys]

    # ---------------------------------------------------------------------------------- routing
    def route(self, model: str, version: int, stage: int) -> str | None:
        """The permitted live device (maybe this one) with the earliest expected completion for a stage."""
        key = (model, version, stage)
        local = None
        if self.table.get(key) is not None:
            local = routing.Local(self.device_id, self.work.qsize(), self.service_ms)
        plan = self._plan(model, version, stage)
        if plan is None:
            return self.device_id if local is not None else None
        return routing.pick(self.view, key, local, weights=plan.weights, holders=plan.holders)

    def send(self, req: InferRequest, payload: bytes | None = None) -> str | None:
        """Forward a request to the best device for its stage; returns the device or None (no route)."""
        dest = self.route(req.model, req.version, req.stage)
        if dest is None:
            return None
        if dest == self.device_id:
            self.enqueue(req)
            return dest
        self.view.note_sent(dest)
        self.transport.publish(topics.inbox(topics.device_endpoint(self.fleet, dest), "in", self.device_id),
                               payload if payload is not None else req.to_bytes(), qos=1)
        return dest

    def _cheap(self, req: InferRequest) -> bool:
        """Whether the request's stage is measured to run under INLINE_MAX_MS, on requests at least as large
        as this one (a stage with dynamic shapes may get a far larger request than those it was timed on)."""
        key = (req.model, req.version, req.stage)
        run_ms = self.run_ms_by_stage.get(key)
        return (run_ms is not None and run_ms < INLINE_MAX_MS
                and _tensor_bytes(req) <= self._timed_bytes.get(key, -1))

    # ---------------------------------------------------------------------------------- serving
    def _work_loop(self) -> None:
        while True:
            req = self.work.get()
            if req is None:
                return
            with self._serving:
                self._serve_guarded(req)
            self.last_request = time.monotonic()
            self.publish_load()

    def _serve_guarded(self, req: InferRequest) -> None:
        try:
            self.serve(req)
        except Exception as exc:  # the worker (and the network thread) must survive anything a request does
            log.exception("request %s failed unexpectedly", req.request_id)
            try:
                self.reply_error(req, "internal", f"{type(exc).__name__}: {exc}")
            except Exception:
                log.exception("could not even answer request %s", req.request_id)

    def serve(self, req: InferRequest) -> None:
        """Run one request on its stage (or resend a cached answer, or pass it on, or explain why not)."""
        key = (req.request_id, req.stage)
        cached = self.done.get(key)
        if cached is not None:
            # a retry: the work is done; resend the answer (routing again, the old next hop may be gone)
            self.counters["duplicates"] += 1
            kind, payload, fwd = cached
            if kind == "result":
                self.transport.publish(topics.inbox(req.reply_to, "out", self.device_id), payload, qos=1)
            elif fwd is not None and self.send(fwd, payload) is None:
                self.reply_error(req, "no_route", f"no live device serves {req.model} v{req.version} "
                                 f"stage {fwd.stage}", stage=fwd.stage)
            return
        inst = self.table.get((req.model, req.version, req.stage))
        if inst is None:
            # routed here on a stale view (the stage moved on): pass it on to a device that holds it
            dest = self.route(req.model, req.version, req.stage) if req.reroutes < MAX_REROUTES else None
            if dest is not None and dest != self.device_id:
                req.reroutes += 1
                self.counters["rerouted"] += 1
                self.send(req)
                return
            self._not_served(req)
            return
        answer = self._run(req, inst)
        if answer is not None:
            self.counters["served"] += 1
            self.done.put(key, answer)

    def _run(self, req: InferRequest, inst: InstalledStage) -> Answer | None:
        t_recv = time.time()
        where = _Where(req.model, inst.index, self.device_id)   # formatted only into an error message
        try:
            feeds = {name: self._array(req.tensors[name]) for name in inst.stage.inputs if name in req.tensors}
            if not _inputs_match(inst.input_checks, feeds):
                check_inputs(inst.backend.inputs, feeds, where)  # type: ignore[arg-type]  # raises, explaining
        except (InvalidInputError, ProtocolError) as exc:
            self.reply_error(req, "invalid_input", str(exc))
            return None
        t0, c0, tc0 = time.perf_counter(), time.process_time(), time.thread_time()
        try:
            outs = inst.backend.run(feeds)
        except Exception as exc:
            self.reply_error(req, "run_failed", f"{where}: {type(exc).__name__}: {exc}")
            return None
        run_s = time.perf_counter() - t0
        cpu_s, thread_s = time.process_time() - c0, time.thread_time() - tc0
        self.service_ms = 0.8 * self.service_ms + 0.2 * run_s * 1e3
        skey = (req.model, req.version, inst.index)
        self.served_by_stage[skey] += 1
        prev = self.run_ms_by_stage.get(skey)
        self.run_ms_by_stage[skey] = run_s * 1e3 if prev is None else 0.8 * prev + 0.2 * run_s * 1e3
        full_ms = full_speed_ms(inst.backend, run_s, cpu_s, thread_s)
        if full_ms is not None:
            self.run_hist_by_stage.setdefault(skey, collections.deque(maxlen=RUN_HISTORY)).append(full_ms)
        self._timed_bytes[skey] = max(self._timed_bytes.get(skey, 0), _tensor_bytes(req))
        if self.on_run is not None:
            self.on_run(req.model, inst.index, run_s)
        env = dict(req.tensors)
        env.update(outs)
        carry = inst.stage.forwards
        missing = [n for n in carry if n not in env]
        if missing:
            self.reply_error(req, "run_failed", f"{where}: tensors {missing} to forward are missing")
            return None
        forward = {}
        for n in carry:
            value = env[n]
            if isinstance(value, WireTensor):
                self.counters["tensors_carried"] += 1   # re-framed from the received bytes, never an array
                forward[n] = value
            else:
                forward[n] = np.asarray(value)
        timings = list(req.timings) + [{"stage": inst.index, "device": self.device_id,
                                        "queue_ms": round(max(0.0, t_recv - req.sent) * 1e3, 3),
                                        "run_ms": round(run_s * 1e3, 3), "backend": inst.backend.name}]
        # the path so far (every stage's wait and run): at the last stage, the request's latency but the answer
        self.meter.record((req.model, req.version, inst.index),
                          sum(t.get("queue_ms", 0.0) + t.get("run_ms", 0.0) for t in timings if isinstance(t, dict)))
        if inst.last:
            payload = InferResult(req.request_id, req.model, True, tensors=forward, timings=timings).to_bytes()
            self.transport.publish(topics.inbox(req.reply_to, "out", self.device_id), payload, qos=1)
            return ("result", payload, None)
        fwd = InferRequest(req.request_id, req.model, req.version, inst.index + 1, req.reply_to,
                           tensors=forward, timings=timings, attempt=req.attempt)
        payload = fwd.to_bytes()
        if self.send(fwd, payload) is None:
            self.reply_error(req, "no_route", f"no live device serves {req.model} v{req.version} "
                             f"stage {inst.index + 1}", stage=inst.index + 1)
        return ("forward", payload, fwd)

    def _array(self, value: object) -> np.ndarray:
        """A stage input as an array: a received WireTensor becomes a zero-copy view (and is counted)."""
        if isinstance(value, WireTensor):
            self.counters["tensors_decoded"] += 1
            return value.array()
        return np.asarray(value)

    def _not_served(self, req: InferRequest) -> None:
        served = self.table.served()
        models = sorted({k[0] for k in served})
        versions = sorted({k[1] for k in served if k[0] == req.model})
        stages = sorted({k[2] for k in served if k[0] == req.model and k[1] == req.version})
        if not versions:
            self.reply_error(req, "unknown_model", f"device {self.device_id} does not serve model "
                             f"'{req.model}' (serving: {', '.join(models) or 'nothing'})")
        elif req.version not in versions:
            self.reply_error(req, "version_mismatch", f"device {self.device_id} serves {req.model} "
                             f"v{', v'.join(map(str, versions))}, request is for v{req.version}")
        else:
            self.reply_error(req, "wrong_stage", f"device {self.device_id} runs stage(s) {stages} of "
                             f"{req.model}, request is for stage {req.stage}")

    def reply_error(self, req: InferRequest, code: str, message: str, stage: int | None = None,
                    quiet: bool = False) -> None:
        if not quiet:   # shed requests are logged by ShedLog, rate-limited
            log.warning("request %s (%s stage %s): %s", req.request_id, req.model, req.stage, message)
        self.counters[f"error_{code}"] += 1
        skey = (req.model, req.version, req.stage)
        if skey in self.served_by_stage or self.table.get(skey) is not None:   # only stages it holds: bounded
            self.errors_by_stage[skey] += 1
        if not topics.is_endpoint(req.reply_to, self.fleet):
            return   # nobody valid to answer
        res = InferResult(req.request_id, req.model, False,
                          error={"code": code, "message": message,
                                 "stage": req.stage if stage is None else stage, "device": self.device_id},
                          timings=list(req.timings))
        self.transport.publish(topics.inbox(req.reply_to, "out", self.device_id), res.to_bytes(), qos=1)
