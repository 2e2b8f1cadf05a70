"""FleetView: the devices' reported states and loads as one participant (agent or operator) sees them.

Every decision about other devices (routing, adoption, status rows) reads this one structure; it is filled by
the message handlers and never does I/O, so the decisions can be tested with hand-made states.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from edge_agent.protocol.messages import DeviceState, LoadReport

StageKey = tuple[str, int, int]   # (model, version, stage index)
LIVE_STATUSES = ("fetching", "loading", "ready")


@dataclass
class PeerLoad:
    """Latest load report of a device, plus what this participant sent it since (not yet reflected)."""

    queue: int = 0
    service_ms: float = 1.0
    ts: float = 0.0
    sent_since: int = 0


def stage_report(st: DeviceState | None, key: StageKey) -> dict | None:
    """The entry a device's state reports for one stage, or None."""
    if st is None:
        return None
    return next((e for e in st.stages if (e.get("model"), e.get("version"), e.get("stage")) == key), None)


def _stage_entries(st: DeviceState) -> dict[StageKey, dict]:
    """Each stage a state reports, with its entry (the first one, as :func:`stage_report` finds it). Entries
    that are not dicts, or whose key cannot be hashed, are left out: no StageKey could equal them."""
    out: dict[StageKey, dict] = {}
    for e in st.stages if isinstance(st.stages, list) else ():
        if not isinstance(e, dict):
            continue
        key = (e.get("model"), e.get("version"), e.get("stage"))
        try:
            out.setdefault(key, e)
        except TypeError:   # an unhashable value (a list where a name should be)
            continue
    return out


class FleetView:
    """Thread-safe table of device states (retained ``state`` messages) and loads (``load`` telemetry).

    ``stale_after_s``: a device whose state has not been refreshed for this long (heartbeats stopped) is
    reported by :meth:`sweep` and treated as offline until its next state; None disables it.

    The view keeps an index stage -> device -> that device's entry, rebuilt for one device whenever its
    state changes, so routing a request reads the few holders of one stage instead of scanning every
    device's stage list (that scan was ~30 us per hop on a small fleet, and grows with it). States are
    never mutated in place: each one comes decoded from a message.

    ``generation`` grows whenever what a routing decision reads of the states changes (a device's stages or
    liveness, a device going stale or forgotten); loads do not change it. Callers cache what they derive
    from the states (a stage's permitted holders) and recompute it only when the generation moved.
    """

    def __init__(self, stale_after_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.RLock()
        self._states: dict[str, DeviceState] = {}
        self._loads: dict[str, PeerLoad] = {}
        self._seen: dict[str, float] = {}
        self._stale: set[str] = set()
        self._holders: dict[StageKey, dict[str, dict]] = {}   # stage -> device -> its entry in that state
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.generation = 0

    # ------------------------------------------------------------------------------------ updates
    def update_state(self, st: DeviceState) -> DeviceState | None:
        """Record a device's state; returns the previous one."""
        with self._lock:
            old = self._states.get(st.device_id)
            if (old is None or old.online != st.online or old.stages != st.stages
                    or st.device_id in self._stale):
                self.generation += 1   # a heartbeat that changes nothing leaves caches valid
            self._states[st.device_id] = st
            self._seen[st.device_id] = self.clock()
            self._stale.discard(st.device_id)
            self._unindex(st.device_id, old)
            for key, e in _stage_entries(st).items():
                self._holders.setdefault(key, {})[st.device_id] = e
            return old

    def _unindex(self, device: str, st: DeviceState | None) -> None:
        if st is None:
            return
        for key in _stage_entries(st):
            holders = self._holders.get(key)
            if holders is not None:
                holders.pop(device, None)
                if not holders:
                    del self._holders[key]

    def forget(self, device: str) -> None:
        with self._lock:
            self.generation += 1
            self._unindex(device, self._states.get(device))
            self._states.pop(device, None)
            self._loads.pop(device, None)
            self._seen.pop(device, None)
            self._stale.discard(device)

    def update_load(self, rep: LoadReport) -> None:
        with self._lock:
            self._loads[rep.device_id] = PeerLoad(int(rep.queue), float(rep.service_ms), self.clock(), 0)

    def note_sent(self, device: str) -> None:
        """One more request sent to ``device`` since its last load report."""
        with self._lock:
            self._loads.setdefault(device, PeerLoad()).sent_since += 1

    def sweep(self) -> list[tuple[str, DeviceState]]:
        """Devices online by their state whose heartbeats stopped: newly marked stale, with their last state."""
        if self.stale_after_s is None:
            return []
        now = self.clock()
        with self._lock:
            silent = [(d, st) for d, st in self._states.items() if st.online and d not in self._stale
                      and now - self._seen.get(d, now) > self.stale_after_s]
            self._stale.update(d for d, _ in silent)
            if silent:
                self.generation += 1
        return silent

    # ------------------------------------------------------------------------------------ queries
    def state(self, device: str) -> DeviceState | None:
        with self._lock:
            return self._states.get(device)

    def states(self) -> list[DeviceState]:
        with self._lock:
            return list(self._states.values())

    def __iter__(self) -> Iterator[DeviceState]:
        return iter(self.states())

    def online(self, device: str) -> bool:
        """Online by its last state and not stale."""
        with self._lock:
            st = self._states.get(device)
            return st is not None and st.online and device not in self._stale

    def online_ids(self) -> list[str]:
        with self._lock:
            return sorted(d for d, st in self._states.items() if st.online and d not in self._stale)

    def load(self, device: str) -> PeerLoad:
        with self._lock:
            return self._loads.get(device) or PeerLoad()

    def report(self, device: str, key: StageKey) -> dict | None:
        """What ``device`` reports for stage ``key`` (status, progress, backend...), or None."""
        with self._lock:
            return self._holders.get(key, {}).get(device)

    def _holders_where(self, key: StageKey, statuses: tuple[str, ...]) -> list[str]:
        with self._lock:
            return sorted(d for d, e in self._holders.get(key, {}).items()
                          if e.get("status") in statuses and self._states[d].online and d not in self._stale)

    def ready_holders(self, key: StageKey) -> list[str]:
        """Online devices that report stage ``key`` ready."""
        return self._holders_where(key, ("ready",))

    def live_holders(self, key: StageKey) -> list[str]:
        """Online devices that hold, or are installing, stage ``key``."""
        return self._holders_where(key, LIVE_STATUSES)
