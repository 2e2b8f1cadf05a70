"""The desired state as this operator sees it on the broker: retained manifests per channel, tombstones
(signed undeploys) and rollout records. Filled by the MQTT handlers; read by deploy, status and routing.

Every manifest passes the same gate as on the devices (:class:`ManifestGate`: fleet key signature, fleet,
expiry, version order): a forged, replayed or unsigned one, or an empty retained message in a signed fleet,
never displaces the good one this client holds; it is recorded in ``rejected`` for ``status``."""

from __future__ import annotations

import logging
import threading
import time

from edge_agent.protocol import topics
from edge_agent.protocol.errors import ProtocolError, UnknownModelError
from edge_agent.protocol.manifest import validate_manifest
from edge_agent.protocol.messages import Manifest, RolloutRecord
from edge_agent.security.gate import ManifestGate

log = logging.getLogger("edge_agent.fleet")


class DesiredState:
    """Manifests (stable and canary), tombstones and rollout records of one fleet. ``changed`` is notified
    on every update (waiters use it with its lock)."""

    def __init__(self, fleet: str, gate: ManifestGate | None = None) -> None:
        self.fleet = fleet
        self.gate = gate or ManifestGate(fleet, [])      # no keys: version order only (development mode)
        self.rejected: dict[str, dict] = {}              # model -> the last refused manifest and why
        self._raw: dict[tuple[str, str], bytes] = {}     # (channel, model) -> what the broker retains now
        self.changed = threading.Condition(threading.RLock())
        self.last_update = time.monotonic()
        self._tables: dict[str, dict[str, Manifest]] = {channel: {} for channel in topics.CHANNELS}
        self._tombstones: dict[str, int] = {}
        self._rollouts: dict[str, RolloutRecord] = {}

    # ------------------------------------------------------------------------------------ handlers
    def on_manifest(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = topics.parse_deploy(topic)
        if parsed is None:
            return
        channel, name = parsed
        table = self._tables[channel]
        with self.changed:
            self.last_update = time.monotonic()
            self._raw[(channel, name)] = bytes(payload)
            if not payload:
                if self.gate.trust and channel == "stable" and name in table:
                    self._refuse(name, channel, None, "unsigned_undeploy",
                                 "an empty retained message cannot undeploy a signed fleet")
                else:
                    table.pop(name, None)
            else:
                try:
                    m = Manifest.from_bytes(payload)
                    validate_manifest(m)
                    rejection = self.gate.admit(m)
                    if rejection is not None:
                        self._refuse(name, channel, m.version, rejection.kind, rejection.reason)
                    elif m.stages:
                        table[name] = m
                    else:  # a signed tombstone: undeployed
                        table.pop(name, None)
                        self._tombstones[name] = max(self._tombstones.get(name, 0), m.version)
                except ProtocolError as exc:
                    log.warning("ignored malformed manifest %s: %s", name, exc)
            self.changed.notify_all()

    def on_rollout(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return
        try:
            rec = RolloutRecord.from_bytes(payload)
        except ProtocolError as exc:
            log.warning("ignored malformed rollout record on %s: %s", topic, exc)
            return
        with self.changed:
            self._rollouts[rec.name] = rec
            self.last_update = time.monotonic()

    def _refuse(self, name: str, channel: str, version: int | None, kind: str, reason: str) -> None:
        log.warning("ignored manifest %s v%s (%s): %s", name, version, channel, reason)
        self.rejected[name] = {"channel": channel, "version": version, "kind": kind, "reason": reason,
                               "ts": time.time()}

    # ------------------------------------------------------------------------------------ queries
    def current(self, name: str, channel: str = "stable") -> Manifest | None:
        with self.changed:
            return self._tables[channel].get(name)

    def all_current(self) -> list[Manifest]:
        """Every verified manifest this client holds, both channels."""
        with self.changed:
            return [m for table in self._tables.values() for m in table.values()]

    def stable(self) -> list[Manifest]:
        with self.changed:
            return sorted(self._tables["stable"].values(), key=lambda m: m.name)

    def wait(self, name: str, wait: float) -> Manifest:
        """The stable manifest of ``name``, waiting up to ``wait`` s for it; UnknownModelError otherwise."""
        end = time.monotonic() + wait
        table = self._tables["stable"]
        with self.changed:
            while name not in table:
                left = end - time.monotonic()
                if left <= 0:
                    known = ", ".join(sorted(table)) or "none"
                    raise UnknownModelError(f"no deployment named '{name}' in fleet '{self.fleet}' "
                                            f"(deployed: {known})")
                self.changed.wait(min(left, 0.2))
            return table[name]

    def rollout(self, name: str) -> RolloutRecord | None:
        with self.changed:
            return self._rollouts.get(name)

    def next_version(self, name: str) -> int:
        """One above every version of ``name`` seen on any channel, as a tombstone or in its rollout record."""
        with self.changed:
            seen = [table[name].version for table in self._tables.values() if name in table]
            rec = self._rollouts.get(name)
            if rec is not None:
                seen += [int(h.get("version", 0)) for h in rec.history]
                seen += [int(g.get("version", 0)) for g in rec.good]
            seen += [self._tombstones.get(name, 0)]
        return max(seen, default=0) + 1

    # ------------------------------------------------------------------------------------ local updates
    def retained(self, name: str, channel: str = "stable") -> bytes:
        """The manifest bytes the broker retains for ``name`` as last seen (b"" if none), trusted or not."""
        with self.changed:
            return self._raw.get((channel, name), b"")

    def restore(self, m: Manifest) -> None:
        """Hold ``m`` again (the version devices still serve after refusing a newer one)."""
        with self.changed:
            self.gate.ledger.reset(m)
            self._tables[m.channel][m.name] = m
            self.changed.notify_all()

    def forget(self, name: str, channel: str = "stable") -> None:
        with self.changed:
            self._tables[channel].pop(name, None)

    def note_tombstone(self, name: str, version: int) -> None:
        with self.changed:
            self._tombstones[name] = max(self._tombstones.get(name, 0), version)

    def add_rollout_event(self, name: str, event: dict, good: Manifest | None = None) -> RolloutRecord:
        """Append to ``name``'s rollout record (last 50 events, 5 good manifests); returns the record."""
        with self.changed:
            rec = self._rollouts.get(name) or RolloutRecord(name)
            rec.history = (rec.history + [event])[-50:]
            if good is not None:
                entry = {**good.signed_fields(), "sig": good.sig}
                rec.good = ([g for g in rec.good if g.get("version") != good.version] + [entry])[-5:]
            self._rollouts[name] = rec
            return rec
