"""Freshness statements: TUF's timestamp role for a fleet's desired state.

A manifest is signed for a long time (30 days by default) so that devices keep working while the operator
is away; on its own that leaves two holes. A device that reboots after the manifest expired would drop
its models, and a broker (or anyone who controls what it retains) could withhold a newer manifest and keep
devices on an old version without anyone noticing (a *freeze*). The operator side therefore also signs a
short-lived statement (a day by default) naming every deployed slot with its version and manifest digest,
and refreshes it well before it expires (``edge-agent refresh``, from a timer, or any long-running
operator process). A device holding a valid statement

* keeps accepting a manifest past its own expiry when the statement names exactly that version and digest
  (the operator vouched for it recently), and
* reports every slot where the statement names a newer version than the one it runs (``behind``: it is
  being held back), and reports the statement as ``expired`` when no refresh has reached it (it keeps
  serving: availability first, but ``fleet ls`` and ``status`` say so).

Statements pass the same checks as manifests (fleet key signature, fleet name, validity window) and never
go backwards: one older than the newest accepted is a replay and is refused. The newest is kept on disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from edge_agent.protocol.errors import ProtocolError
from edge_agent.protocol.messages import Freshness, Manifest
from edge_agent.security.keys import FleetKeys, SignatureError, sign_document, verify_document

DEFAULT_TTL_S = 86400.0


def slot_of(m: Manifest) -> str:
    return f"{m.channel}/{m.name}"


def make_statement(fleet: str, manifests: Sequence[Manifest], keys: FleetKeys, ttl_s: float = DEFAULT_TTL_S,
                   now: float | None = None) -> Freshness:
    """A signed statement naming each manifest's slot, version and digest (tombstones included)."""
    from edge_agent.security.gate import manifest_digest

    now = time.time() if now is None else now
    versions = {slot_of(m): {"version": int(m.version), "digest": manifest_digest(m)} for m in manifests}
    f = Freshness(fleet=fleet, created=now, expires=now + ttl_s, versions=versions)
    f.sig = sign_document(f.signed_fields(), keys)["sig"]
    return f


class FreshnessGate:
    """The newest valid statement this participant holds (see the module docstring)."""

    def __init__(self, fleet: str, trust: Sequence[FleetKeys], path: Path | None = None) -> None:
        self.fleet = fleet
        self.trust = list(trust)
        self.path = path
        self._lock = threading.Lock()
        self.current: Freshness | None = None
        if path is not None and path.exists():
            try:
                stored = Freshness.from_bytes(path.read_bytes())
                if self._verify(stored, now=stored.created) is None:   # signature and fleet; expiry is status
                    self.current = stored
            except (OSError, ProtocolError):
                pass

    def _verify(self, f: Freshness, now: float | None = None) -> str | None:
        if f.fleet != self.fleet:
            return f"freshness statement is for fleet {f.fleet!r}, not {self.fleet!r}"
        try:
            verify_document({**f.signed_fields(), "sig": f.sig}, self.trust, now=now)
        except SignatureError as exc:
            return str(exc)
        except (TypeError, ValueError) as exc:
            return f"cannot check the freshness statement: {exc}"
        if not isinstance(f.versions, dict) or not all(
                isinstance(k, str) and isinstance(v, Mapping) and isinstance(v.get("version"), int)
                and isinstance(v.get("digest"), str) for k, v in f.versions.items()):
            return "freshness statement: versions must map '<channel>/<model>' to {version, digest}"
        return None

    def admit(self, f: Freshness, now: float | None = None) -> str | None:
        """Accept ``f`` (and keep it on disk) or return why not: bad signature, other fleet, expired, or older
        than the statement held (a replay)."""
        if not self.trust:
            return "development mode: no fleet key to check freshness statements with"
        why = self._verify(f, now)
        if why is not None:
            return why
        with self._lock:
            if self.current is not None and f.created < self.current.created:
                return (f"freshness statement of {f.created:.0f} is older than the one held ({self.current.created:.0f}):"
                        " a replay")
            self.current = f
        if self.path is not None:
            try:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_bytes(f.to_bytes())
                tmp.replace(self.path)
            except OSError:
                pass
        return None

    def vouches(self, m: Manifest, digest: str, now: float | None = None) -> bool:
        """Whether the held statement, still valid, names exactly this manifest (slot, version, digest)."""
        now = time.time() if now is None else now
        with self._lock:
            f = self.current
        if f is None or now > f.expires:
            return False
        entry = f.versions.get(slot_of(m))
        return bool(entry) and entry.get("version") == m.version and entry.get("digest") == digest

    def status(self, running: Mapping[str, int], now: float | None = None) -> dict:
        """For the device state: the statement's window, whether it expired, and the slots where it names a
        newer version than ``running`` (slot -> version accepted here)."""
        now = time.time() if now is None else now
        with self._lock:
            f = self.current
        if f is None:
            return {}
        behind = sorted(slot for slot, entry in f.versions.items()
                        if slot in running and entry["version"] > running[slot]
                        or slot not in running and slot.startswith("stable/"))
        return {"created": round(f.created, 3), "expires": round(f.expires, 3), "expired": now > f.expires,
                "behind": behind}
