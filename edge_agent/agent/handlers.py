"""MQTT handlers of the agent: decode, check the structure, and hand over. They run on paho's network
thread, so they never block, write files or run slow models: requests go to the stage server (which
serves one of a stage measured as cheap right away when it is idle, else queues it), manifests to the
control thread's inbox (where the trust gate runs), states and loads into the fleet view.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.agent.server import StageServer
from edge_agent.cluster.view import FleetView
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ProtocolError
from edge_agent.protocol.manifest import validate_manifest
from edge_agent.protocol.messages import (
    DeviceState,
    Freshness,
    InferRequest,
    LoadReport,
    Manifest,
    validate_state,
)
from edge_agent.protocol.streams import StreamSpec, validate_stream

log = logging.getLogger("edge_agent.agent")

Handler = Callable[[str, bytes, bool], None]
ENV_PROFILE = "EDGE_AGENT_PROFILE"   # a file path: cProfile the request handler (and the inline serving) into it


@dataclass(frozen=True)
class ManifestNote:
    """A structurally valid manifest (or an empty retained message: ``manifest`` None) for the gate."""

    channel: str
    name: str
    manifest: Manifest | None


@dataclass(frozen=True)
class StreamNote:
    """A structurally valid stream definition (or an empty retained message: ``spec`` None) for the gate."""

    name: str
    spec: StreamSpec | None


class AgentHandlers:
    """The agent's subscriptions (see the module docstring)."""

    def __init__(self, device_id: str, view: FleetView, server: StageServer, inbox: queue.Queue,
                 kick: threading.Event, on_reject: Callable[[str], None], max_message_bytes: int) -> None:
        self.device_id = device_id
        self.view = view
        self.server = server
        self.inbox = inbox
        self.kick = kick
        self.on_reject = on_reject
        self.max_message_bytes = max_message_bytes
        profile_to = os.environ.get(ENV_PROFILE)
        if profile_to:
            self.on_infer = _profiled(self.on_infer, f"{profile_to}.{device_id}")  # type: ignore[method-assign]

    def guard(self, handler: Handler) -> Handler:
        """Wrap a handler with the message size limit."""
        def wrapped(topic: str, payload: bytes, retained: bool) -> None:
            if len(payload) > self.max_message_bytes:
                log.warning("dropped %d-byte message on %s: over the %d-byte limit", len(payload), topic,
                            self.max_message_bytes)
                self.on_reject("oversized")
                return
            handler(topic, payload, retained)
        return wrapped

    def on_state(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return
        try:
            st = DeviceState.from_bytes(payload, max_bytes=1 << 20)
            validate_state(st)
            if st.device_id != topics.publisher_device(topic):
                raise ProtocolError(f"state of {st.device_id!r} published under {topic}")
        except ProtocolError as exc:
            log.warning("ignored malformed state on %s: %s", topic, exc)
            self.on_reject("state")
            return
        if st.device_id == self.device_id:
            return
        old = self.view.update_state(st)
        if old is None or old.online != st.online or old.stages != st.stages:
            self.kick.set()   # liveness or placement changed: maybe adopt or drop a stage

    def on_load(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            rep = LoadReport.from_bytes(payload, max_bytes=4096)
            if rep.device_id != topics.publisher_device(topic):
                raise ProtocolError(f"load of {rep.device_id!r} published under {topic}")
        except ProtocolError:
            self.on_reject("load")
            return
        self.view.update_load(rep)

    def on_freshness(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return
        try:
            f = Freshness.from_bytes(payload, max_bytes=self.max_message_bytes)
        except ProtocolError as exc:
            log.warning("rejected freshness statement: %s", exc)
            self.on_reject("freshness")
            return
        self._hand_over(f)

    def on_manifest(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = topics.parse_deploy(topic)
        if parsed is None:
            return
        channel, name = parsed
        if not payload:
            self._hand_over(ManifestNote(channel, name, None))
            return
        try:
            m = Manifest.from_bytes(payload, max_bytes=self.max_message_bytes)
            if m.name != name:
                raise ProtocolError(f"manifest for '{m.name}' published under {channel}/{name}")
            if m.channel != channel:
                raise ProtocolError(f"manifest of channel '{m.channel}' published on the {channel} topic")
            validate_manifest(m)
        except ProtocolError as exc:
            log.warning("rejected manifest on %s: %s", topic, exc)
            self.on_reject("manifest")
            return
        self._hand_over(ManifestNote(channel, name, m))

    def on_stream(self, topic: str, payload: bytes, retained: bool) -> None:
        name = topics.parse_stream(topic)
        if name is None:
            return
        if not payload:
            self._hand_over(StreamNote(name, None))
            return
        try:
            spec = StreamSpec.from_bytes(payload, max_bytes=1 << 20)
            if spec.name != name:
                raise ProtocolError(f"stream '{spec.name}' published under stream/{name}")
            validate_stream(spec, topic.split("/")[2])
        except ProtocolError as exc:
            log.warning("rejected stream definition on %s: %s", topic, exc)
            self.on_reject("stream")
            return
        self._hand_over(StreamNote(name, spec))

    def _hand_over(self, note: ManifestNote | StreamNote | Freshness) -> None:
        try:
            self.inbox.put_nowait(note)
        except queue.Full:   # a flood of manifests: the retained one is delivered again on reconnect
            log.warning("dropped %s %s: control inbox full", type(note).__name__, getattr(note, "name", ""))
            self.on_reject("manifest_flood")
            return
        self.kick.set()

    def on_infer(self, topic: str, payload: bytes, retained: bool) -> None:
        if len(payload) > self.max_message_bytes:
            log.warning("dropped %d-byte request: over the %d-byte limit", len(payload), self.max_message_bytes)
            self.on_reject("oversized")
            return
        try:
            # lazy: every tensor descriptor is checked here, but only the stage's inputs become arrays (in
            # the server); tensors carried to a later stage are re-framed from the received bytes
            req = InferRequest.from_bytes(payload, lazy=True)
        except ProtocolError as exc:
            log.warning("rejected malformed request on %s: %s", topic, exc)
            self.on_reject("malformed_request")
            return
        sender = topics.sender_of(topic)
        if not self.server.may_send(req, sender):
            log.warning("rejected request %s for %s v%s stage %s from %r: not a device of the previous stage",
                        req.request_id, req.model, req.version, req.stage, sender)
            self.on_reject("unexpected_sender")
            return
        self.server.enqueue(req, sender, inline_ok=True)


def _profiled(handler: Handler, path: str) -> Handler:
    """``handler`` under cProfile (a diagnostic, see ENV_PROFILE): the stats are written to ``path`` at exit
    (``python -m pstats PATH``). Only the calls of this handler are profiled, on the thread that runs them."""
    import atexit
    import cProfile

    prof = cProfile.Profile()
    atexit.register(prof.dump_stats, path)

    def wrapped(topic: str, payload: bytes, retained: bool) -> None:
        prof.enable()
        try:
            handler(topic, payload, retained)
        finally:
            prof.disable()
    return wrapped
