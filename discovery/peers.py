"""Peer and PeerTable: what a browser knows about the other devices, with change events."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from .txt import DeviceInfo

log = logging.getLogger("discovery")

PeerCallback = Callable[[str, "Peer"], None]


@dataclass
class Peer:
    """One discovered device: its advertised info and where its service was seen."""

    info: DeviceInfo
    addresses: list[str]
    port: int
    service_name: str
    first_seen: float
    last_seen: float

    @property
    def device_id(self) -> str:
        """The peer's device id (same as ``info.device_id``)."""
        return self.info.device_id


class PeerTable:
    """Thread-safe table of peers keyed by device id.

    Subscribers get ``(event, peer)`` with event ``"add"``, ``"update"`` or ``"remove"``.
    ``update`` fires only when the advertised info, addresses or port changed; a refresh with
    identical content just bumps ``last_seen``. Callbacks run outside the table lock, on the
    thread that changed the table; an exception in one is logged and does not stop the others.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peers: dict[str, Peer] = {}
        self._subscribers: list[PeerCallback] = []

    def subscribe(self, callback: PeerCallback, replay: bool = False) -> None:
        """Call ``callback(event, peer)`` on every later add/update/remove.

        With ``replay``, first call it with "add" for every peer already in the table.
        """
        with self._lock:
            self._subscribers.append(callback)
            known = [self._peers[key] for key in sorted(self._peers)] if replay else []
        for peer in known:
            self._notify([callback], "add", peer)

    def unsubscribe(self, callback: PeerCallback) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def get(self, device_id: str) -> Peer | None:
        """The peer with this device id, or None."""
        with self._lock:
            return self._peers.get(device_id)

    def peers(self) -> list[Peer]:
        """A snapshot of all peers, sorted by device id."""
        with self._lock:
            return [self._peers[key] for key in sorted(self._peers)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._peers)

    def __contains__(self, device_id: object) -> bool:
        with self._lock:
            return device_id in self._peers

    def add(self, peer: Peer) -> str | None:
        """Insert or refresh ``peer``; returns the event fired ("add", "update") or None."""
        with self._lock:
            old = self._peers.get(peer.device_id)
            if old is None:
                event = "add"
                stored = peer
            else:
                changed = (old.info, old.addresses, old.port, old.service_name) != (
                    peer.info,
                    peer.addresses,
                    peer.port,
                    peer.service_name,
                )
                event = "update" if changed else None
                stored = replace(peer, first_seen=old.first_seen, last_seen=max(old.last_seen, peer.last_seen))
            self._peers[peer.device_id] = stored
            subscribers = list(self._subscribers)
        if event == "add":
            log.info(
                "peer added: %s (fleet %s, role %s) at %s:%d",
                stored.device_id,
                stored.info.fleet,
                stored.info.role,
                ",".join(stored.addresses) or "?",
                stored.port,
            )
        elif event == "update":
            log.debug("peer updated: %s -> %s", stored.device_id, stored.info)
        if event is not None:
            self._notify(subscribers, event, stored)
        return event

    def update(self, peer: Peer) -> str | None:
        """Same as :meth:`add`: refresh a known peer (an unknown one is added)."""
        return self.add(peer)

    def remove(self, device_id: str, reason: str = "goodbye or expiry") -> Peer | None:
        """Drop a peer; fires "remove" and returns it, or None if it was not known."""
        with self._lock:
            peer = self._peers.pop(device_id, None)
            subscribers = list(self._subscribers)
        if peer is not None:
            log.info("peer removed: %s (%s)", device_id, reason)
            self._notify(subscribers, "remove", peer)
        return peer

    def find_service(self, service_name: str) -> Peer | None:
        """The peer advertised under this DNS-SD service name, or None."""
        key = service_name.lower()
        with self._lock:
            for peer in self._peers.values():
                if peer.service_name.lower() == key:
                    return peer
        return None

    def clear(self) -> None:
        """Drop every peer, firing "remove" for each."""
        for peer in self.peers():
            self.remove(peer.device_id, reason="table cleared")

    @staticmethod
    def _notify(subscribers: list[PeerCallback], event: str, peer: Peer) -> None:
        for callback in subscribers:
            try:
                callback(event, peer)
            except Exception:
                log.exception("peer %s callback %r failed for %s", event, callback, peer.device_id)
