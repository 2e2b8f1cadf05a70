"""Which replica serves a request: the one with the earliest expected completion.

One rule for every sender (the operator sending to stage 0, an agent forwarding to the next stage): expected
completion = (queued + sent since its last load report + 1) x its mean service time. Ties are broken at
random so equal replicas share the load.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

from edge_agent.cluster.view import FleetView, PeerLoad, StageKey

MIN_SERVICE_MS = 0.05   # a fresh replica reports ~0 ms; without a floor it would take every request


@dataclass(frozen=True)
class Local:
    """The sender itself as a candidate (an agent that holds the stage)."""

    device_id: str
    queue: int
    service_ms: float


def score(load: PeerLoad) -> float:
    """Expected completion of one more request on a device with this load (ms)."""
    return (load.queue + load.sent_since + 1) * max(load.service_ms, MIN_SERVICE_MS)


def pick(view: FleetView, key: StageKey, local: Local | None = None, rng: random.Random | None = None,
         exclude: frozenset[str] = frozenset(), allowed: Collection[str] | None = None) -> str | None:
    """The device to send stage ``key`` to, or None when no live device has it ready. ``allowed``: the only
    devices that may serve it (see :func:`edge_agent.cluster.placement.permitted_holders`); a device that
    merely reports the stage ready in its own state is not enough."""
    rng = rng or random
    best: list[str] = []
    best_score = float("inf")
    cands = [(d, score(view.load(d))) for d in view.ready_holders(key)
             if d not in exclude and (local is None or d != local.device_id) and (allowed is None or d in allowed)]
    if local is not None:
        cands.append((local.device_id, (local.queue + 1) * max(local.service_ms, MIN_SERVICE_MS)))
    for d, s in cands:
        if s < best_score:
            best, best_score = [d], s
        elif s == best_score:
            best.append(d)
    return rng.choice(best) if best else None
