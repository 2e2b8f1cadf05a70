"""The operator's request table: every request in flight, its deadline and retries, and exactly-once delivery.

A request is sent to stage 0's best replica; with no answer after ``RETRY_AFTER_S`` it is sent again (stages
de-duplicate); a retriable error (the pipeline is changing: no route, overloaded, device offline) makes it
retry sooner; when a device goes offline, requests that may be inside it are resent at once, or fail naming
the stage and device when the deployment has no failover. The first result wins; later copies are counted
as duplicates and dropped.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from edge_agent.cluster.meter import Meter
from edge_agent.cluster.view import FleetView
from edge_agent.operator.telemetry import RequestLog
from edge_agent.protocol.errors import (
    InferenceError,
    InferenceTimeout,
    InvalidInputError,
    StageUnavailableError,
    UnknownModelError,
)
from edge_agent.protocol.messages import DeviceState, InferRequest, InferResult, Manifest

RETRY_AFTER_S = 5.0      # resend a request with no answer after this long (stages de-duplicate)
RETRIABLE = {"no_route", "overloaded", "device_offline"}


@dataclass
class Pending:
    """One request in flight."""

    future: Future
    request: InferRequest
    payload: bytes
    deadline: float
    next_retry: float
    device: str = ""                 # where stage 0 was last sent
    attempts: int = 1
    last_error: str = ""             # why the last attempt failed (retriable errors)
    lost: dict = field(default_factory=dict)   # device -> stage it held when it went offline
    created: float = field(default_factory=time.monotonic)


class RequestTable:
    """Requests in flight for one Fleet client. ``dispatch(p, retry)`` sends a request to stage 0;
    ``manifest_of(name)`` is the stable manifest the request was made for (or None)."""

    def __init__(self, view: FleetView, manifest_of: Callable[[str], Manifest | None],
                 dispatch: Callable[[Pending, bool], None]) -> None:
        self.view = view
        self.manifest_of = manifest_of
        self.dispatch = dispatch
        self.lock = threading.RLock()
        self.pending: dict[str, Pending] = {}
        self.retried_errors: collections.Counter[str] = collections.Counter()   # retriable errors, by code
        self.stats = {"results": 0, "duplicates": 0, "retries": 0, "errors": 0, "failovers": 0,
                      "foreign_results": 0}
        self.log = RequestLog()      # finished requests: latency, errors (dashboard, metrics)
        self.meter = Meter()      # answered requests by (model, version): measured throughput and latency

    def submit(self, m: Manifest, inputs: dict, endpoint: str, timeout: float) -> Future:
        req = InferRequest(uuid.uuid4().hex, m.name, m.version, 0, endpoint, tensors=dict(inputs))
        now = time.monotonic()
        p = Pending(Future(), req, req.to_bytes(), now + timeout, now)
        with self.lock:
            self.pending[req.request_id] = p
            self.dispatch(p, False)
        return p.future

    def fail_all(self, why: str) -> None:
        with self.lock:
            pending = list(self.pending.values())
            self.pending.clear()
        for p in pending:
            if not p.future.done():
                p.future.set_exception(InferenceError(why))

    def resend_soon(self, delay_s: float) -> None:
        """After a broker restart messages it held may be gone: resend everything after ``delay_s``."""
        with self.lock:
            for p in self.pending.values():
                p.next_retry = time.monotonic() + delay_s

    # ------------------------------------------------------------------------------------ results
    def sent(self, request_id: str) -> tuple[InferRequest, str | None] | None:
        """The pending request with this id and the device it was last sent to, or None (answered, given up,
        or never sent)."""
        with self.lock:
            p = self.pending.get(request_id)
            return None if p is None else (p.request, p.device)

    def on_result(self, res: InferResult) -> None:
        code = res.error.get("code") if isinstance(res.error, dict) else None
        code = code if isinstance(code, str) else "error"
        with self.lock:
            p = self.pending.get(res.request_id)
            if p is None:
                self.stats["duplicates"] += 1
                return
            if not res.ok and code in RETRIABLE and time.monotonic() < p.deadline:
                self.retried_errors[code] += 1
                # the pipeline is changing under us (device lost, stage moving): try again shortly
                p.last_error = f"{code}: {res.error.get('message', '')}"
                p.next_retry = min(p.next_retry, time.monotonic() + 0.2)
                return
            self.pending.pop(res.request_id, None)
            self.stats["results"] += 1
        if res.ok:
            self.log.record(p.request.model, time.monotonic() - p.created, True)
            self.meter.record((p.request.model, p.request.version), (time.monotonic() - p.created) * 1e3)
            p.future.set_result((dict(res.tensors), list(res.timings)))
        else:
            self.stats["errors"] += 1
            self._fail(p, self._final_error(res, p))

    def _fail(self, p: Pending, exc: Exception) -> None:
        """Resolve a request with an error, recorded in the log with its code, stage and device."""
        self.log.record(p.request.model, time.monotonic() - p.created, False, getattr(exc, "code", "") or
                        type(exc).__name__, str(exc), getattr(exc, "device", None), getattr(exc, "stage", None))
        p.future.set_exception(exc)

    def _final_error(self, res: InferResult, p: Pending) -> Exception:
        """The caller's exception for a failed result. A device that found no live device for the next
        stage (retried until the deadline) becomes StageUnavailableError naming that stage's devices,
        as when the fleet sees the device go offline itself."""
        err = result_error(res)
        if not (isinstance(err, InferenceError) and err.code == "no_route" and isinstance(err.stage, int)):
            return err
        m = self.manifest_of(p.request.model)
        if m is None or not 0 <= err.stage < len(m.stages):
            return err
        devs = m.stages[err.stage].replicas
        offline = [d for d in devs if not self.view.online(d)]
        return StageUnavailableError(
            f"{err}: stage {err.stage} is assigned to {', '.join(devs) or 'no device'}"
            f"{'' if not offline else ' (offline: ' + ', '.join(offline) + ')'}",
            stage=err.stage, device=(offline or devs or [None])[0], code="device_offline")

    # ------------------------------------------------------------------------------------ failures
    def device_lost(self, device: str, last: DeviceState | None) -> None:
        """A device went offline: requests that may be inside it are sent again at once (stages
        de-duplicate), or, when the deployment has no failover, fail naming the stage and device."""
        held = {} if last is None else {e.get("model"): e.get("stage") for e in last.stages}
        fail, again = [], []
        with self.lock:
            for rid, p in list(self.pending.items()):
                model = p.request.model
                m = self.manifest_of(model)
                involved = model in held or p.device == device or (
                    m is not None and any(device in st.replicas for st in m.stages))
                if not involved:
                    continue
                stage = held.get(model, 0 if p.device == device else None)
                if stage is None and m is not None:
                    stage = next((st.index for st in m.stages if device in st.replicas), None)
                p.lost[device] = stage
                if m is not None and not m.failover and not self._other_replica(m, stage, device):
                    fail.append((self.pending.pop(rid), stage))
                else:
                    p.next_retry = time.monotonic()   # the monitor resends it now
                    again.append(p)
        if again:
            self.stats["failovers"] += 1
        for p, stage in fail:
            self._fail(p, StageUnavailableError(
                f"request {p.request.request_id} for {p.request.model}: stage {stage} device '{device}' went "
                "offline while the request was in flight (deployment has no failover)", stage=stage,
                device=device, code="device_offline"))

    def _other_replica(self, m: Manifest, stage: int | None, gone: str) -> bool:
        if stage is None:
            return False
        return any(d != gone and self.view.online(d) for d in m.stages[stage].replicas)

    def tick(self, now: float) -> None:
        """Expire requests past their deadline and resend those due for a retry (the monitor calls this)."""
        expired, resend = [], []
        with self.lock:
            for rid, p in list(self.pending.items()):
                if now >= p.deadline:
                    expired.append(self.pending.pop(rid))
                elif now >= p.next_retry:
                    resend.append(p)
        for p in resend:
            self.dispatch(p, True)
        for p in expired:
            self._fail(p, self._timeout_error(p))

    def _timeout_error(self, p: Pending) -> InferenceTimeout:
        m = self.manifest_of(p.request.model)
        parts = []
        suspect: tuple[int | None, str | None] = (None, None)
        for st in (m.stages if m else []):
            desc = []
            for dev in st.replicas:
                ds = self.view.state(dev)
                state = "unknown" if ds is None else ("online" if ds.online else "offline")
                desc.append(f"{dev} ({state})")
                if (ds is None or not ds.online) and suspect[0] is None:
                    suspect = (st.index, dev)
            parts.append(f"stage {st.index}@{'|'.join(desc)}")
        for dev, stage in p.lost.items():
            if suspect[0] is None:
                suspect = (stage, dev)
        why = f"; last error: {p.last_error}" if p.last_error else ""
        return InferenceTimeout(
            f"request {p.request.request_id} for {p.request.model} got no result after {p.attempts} "
            f"attempt(s) before its deadline; pipeline: {', '.join(parts)}{why}",
            stage=suspect[0], device=suspect[1], code="timeout")


def result_error(res: InferResult) -> Exception:
    """The exception a failed result stands for (its code, message, stage and device checked)."""
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
