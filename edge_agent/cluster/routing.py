"""Which replica serves a request: the one with the earliest expected completion.

One rule for every sender (the operator sending to stage 0, an agent forwarding to the next stage): expected
completion = (queued + sent since its last load report + 1) x its mean service time. Ties are broken at
random so equal replicas share the load.

When the manifest gives the stage's replicas planned shares (``weights``: the planner's rate of each, from
:mod:`models.planner`), the service time is replaced by 1 / weight: weighted least outstanding requests, so
in steady state every replica holds work in proportion to its planned rate, whatever its own service-time
report covers (it measures only the backend run, not the agent's overhead or its link). Devices without a
weight (an adopter after every replica died) fall back to the service-time rule for all candidates.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from edge_agent.cluster.view import FleetView, PeerLoad, StageKey

MIN_SERVICE_MS = 0.05   # a fresh replica reports ~0 ms; without a floor it would take every request


@dataclass(frozen=True)
class Local:
    """The sender itself as a candidate (an agent that holds the stage)."""

    device_id: str
    queue: int
    service_ms: float


def ready_candidates(view: FleetView, key: StageKey, allowed: Collection[str] | None = None,
                     me: str | None = None) -> list[str]:
    """The devices other than ``me`` that report stage ``key`` ready and may serve it (``allowed``)."""
    return [d for d in view.ready_holders(key) if d != me and (allowed is None or d in allowed)]


def score(load: PeerLoad) -> float:
    """Expected completion of one more request on a device with this load (ms)."""
    return (load.queue + load.sent_since + 1) * max(load.service_ms, MIN_SERVICE_MS)


def weighted_score(load: PeerLoad, weight: float) -> float:
    """Expected completion in units of the planned rate: outstanding requests over the replica's share."""
    return (load.queue + load.sent_since + 1) / weight


def pick(view: FleetView, key: StageKey, local: Local | None = None, rng: random.Random | None = None,
         exclude: frozenset[str] = frozenset(), allowed: Collection[str] | None = None,
         weights: Mapping[str, float] | None = None, holders: Sequence[str] | None = None) -> str | None:
    """The device to send stage ``key`` to, or None when no live device has it ready. ``allowed``: the only
    devices that may serve it (see :func:`edge_agent.cluster.placement.permitted_holders`); a device that
    merely reports the stage ready in its own state is not enough. ``weights``: the planned share of each
    replica (see the module docstring); zero-weight replicas get requests only when nothing else can.
    ``holders``: the candidates other than ``local`` when the caller already knows them (the ready holders
    of ``key`` within ``allowed``, minus ``exclude``), e.g. cached while the view is unchanged."""
    rng = rng or random
    best: list[str] = []
    best_score = float("inf")
    if holders is None:
        holders = [d for d in ready_candidates(view, key, allowed, local.device_id if local is not None else None)
                   if d not in exclude]
    else:
        holders = list(holders)
    everyone = holders + ([local.device_id] if local is not None else [])
    if weights and everyone and all(d in weights for d in everyone):
        # a replica planned at weight 0 is a last resort: its score is finite only when every weight is 0
        floor = min((w for w in weights.values() if w > 0), default=1.0) * 1e-6
        cands = [(d, weighted_score(view.load(d), max(weights[d], floor))) for d in holders]
        if local is not None:
            cands.append((local.device_id, (local.queue + 1) / max(weights[local.device_id], floor)))
    else:
        cands = [(d, score(view.load(d))) for d in holders]
        if local is not None:
            cands.append((local.device_id, (local.queue + 1) * max(local.service_ms, MIN_SERVICE_MS)))
    for d, s in cands:
        if s < best_score:
            best, best_score = [d], s
        elif s == best_score:
            best.append(d)
    return rng.choice(best) if best else None
