"""The manifest gate: may this participant act on a manifest? One set of rules for every reader.

Checks, in order: the fleet named in the manifest (when keys are trusted), the signature by a trusted fleet
key and its validity window, then the version ledger: never below the last accepted version of that model
and channel (a replayed old manifest), and the same version only with the same content. The ledger persists
across restarts. :meth:`ManifestGate.check` decides without side effects; :meth:`ManifestGate.admit` also
records an accepted version (a file write: call it off the MQTT network thread).

Stream definitions (:class:`edge_agent.protocol.streams.StreamSpec`) are signed desired state too and pass the
same gate: anything with ``name``, ``version``, ``channel`` (its ledger slot), ``fleet``, ``sig`` and
``signed_fields()`` (:class:`SignedRecord`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent.protocol.messages import Manifest
from edge_agent.security.freshness import FreshnessGate
from edge_agent.security.keys import FleetKeys, SignatureError, canonical_bytes, verify_document


@dataclass(frozen=True)
class Rejection:
    """Why a manifest was refused: ``kind`` (a counter name: unsigned, expired, signature, foreign_fleet,
    replay, conflict, malformed) and a sentence."""

    kind: str
    reason: str


class SignedRecord(Protocol):
    """What the gate needs of a signed desired-state record (a Manifest, a StreamSpec)."""

    name: str
    version: int
    fleet: str
    sig: dict

    @property
    def channel(self) -> str: ...

    def signed_fields(self) -> dict: ...


def manifest_digest(m: Manifest | SignedRecord) -> str:
    """SHA-256 of the manifest's signed content (canonical form)."""
    return hashlib.sha256(canonical_bytes(m.signed_fields())).hexdigest()


class VersionLedger:
    """Last accepted version and digest per ``<channel>/<model>``, kept in a JSON file (or in memory)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = read_json(path) if path is not None else {}

    def versions(self) -> dict[str, int]:
        """The last accepted version of every ``<channel>/<model>`` slot."""
        with self._lock:
            return {slot: int(e.get("version", 0)) for slot, e in self._entries.items()}

    def last(self, channel: str, model: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._entries.get(f"{channel}/{model}", {}))

    def check(self, m: Manifest | SignedRecord, digest: str) -> Rejection | None:
        last = self.last(m.channel, m.name)
        if m.version < int(last.get("version", 0)):
            return Rejection("replay", f"version {m.version} is older than the last accepted version "
                                       f"{last['version']} (replayed manifest?); a rollback must be a new version")
        if m.version == last.get("version") and digest != last.get("digest"):
            return Rejection("conflict", f"a different manifest with version {m.version} was accepted before")
        return None

    def reset(self, m: Manifest) -> None:
        """Make ``m`` the last accepted version of its slot, even if an (unserved) newer one was recorded:
        the operator restoring the version devices still run after they refused its newer one."""
        with self._lock:
            self._entries[f"{m.channel}/{m.name}"] = {"version": m.version, "digest": manifest_digest(m),
                                                      "ts": time.time()}
            if self.path is not None:
                write_json(self.path, self._entries)

    def record(self, m: Manifest | SignedRecord, digest: str) -> None:
        with self._lock:
            slot = f"{m.channel}/{m.name}"
            if self._entries.get(slot, {}).get("version") == m.version:
                return
            self._entries[slot] = {"version": m.version, "digest": digest, "ts": time.time()}
            if self.path is not None:
                write_json(self.path, self._entries)


class ManifestGate:
    """Signature, fleet, validity and version checks of manifests (see the module docstring).

    ``trust`` empty means development mode: unsigned manifests from any fleet pass, the ledger still applies.
    """

    def __init__(self, fleet: str, trust: Sequence[FleetKeys], ledger: VersionLedger | None = None,
                 freshness: FreshnessGate | None = None) -> None:
        self.fleet = fleet
        self.trust = list(trust)
        self.ledger = ledger or VersionLedger()
        self.freshness = freshness   # a valid statement naming a manifest outlives the manifest's own expiry

    def check(self, m: Manifest | SignedRecord, now: float | None = None) -> Rejection | None:
        """The reason to refuse ``m``, or None when it may be acted on. No side effects."""
        try:
            if self.trust:
                if m.fleet != self.fleet:
                    return Rejection("foreign_fleet", f"manifest is for fleet {m.fleet!r}, this device is in "
                                                      f"{self.fleet!r}")
                digest = manifest_digest(m)
                try:
                    verify_document({**m.signed_fields(), "sig": m.sig}, self.trust, now=now)
                except SignatureError as exc:
                    text = str(exc)
                    kind = "unsigned" if "unsigned" in text else "expired" if "expired" in text else "signature"
                    # expired, but a current freshness statement names exactly this manifest: the operator
                    # side vouched for it recently (verify_document checked the signature before the expiry)
                    if not (kind == "expired" and self.freshness is not None
                            and self.freshness.vouches(m, digest, now)):
                        return Rejection(kind, text)
                return self.ledger.check(m, digest)
            return self.ledger.check(m, manifest_digest(m))
        except (TypeError, ValueError) as exc:   # content that cannot be put in canonical form
            return Rejection("malformed", f"cannot check the manifest: {exc}")

    def admit(self, m: Manifest | SignedRecord, now: float | None = None) -> Rejection | None:
        """:meth:`check`, and record the version in the ledger when it passes."""
        rejection = self.check(m, now)
        if rejection is None:
            self.ledger.record(m, manifest_digest(m))
        return rejection


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (FileNotFoundError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
