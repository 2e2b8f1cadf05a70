"""Which device runs a stream's ingress: one live holder of the deployment's stage 0, the same answer on every
device that reads the same view, so exactly one of them subscribes to the source (no vote, no lock).

The choice is rendezvous hashing over the stream name: each candidate scores ``sha256(stream/device)`` and the
highest wins. Streams spread over the stage-0 holders, and a holder coming or going only moves the streams
whose winner it is (or becomes): when the ingress dies, the next-highest live holder takes over.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from edge_agent.cluster.view import FleetView, StageKey


def _weight(stream: str, device: str) -> bytes:
    return hashlib.sha256(f"{stream}/{device}".encode()).digest()


def choose_ingress(stream: str, candidates: Iterable[str]) -> str | None:
    """The candidate with the highest rendezvous weight for ``stream`` (None when there is none)."""
    return max(set(candidates), key=lambda d: (_weight(stream, d), d), default=None)


def ingress_candidates(view: FleetView, key: StageKey, replicas: Sequence[str], failover: bool,
                       me: str | None = None, me_ready: bool = False, me_adopted: bool = False) -> set[str]:
    """Live devices with stage ``key`` ready that may serve it: the manifest's replicas, or (failover, and no
    replica online) adopters; the same rule as :func:`~edge_agent.cluster.placement.permitted_holders`.
    ``me`` is the asking device (absent from its own view): it counts as online, and as a candidate when its
    stage is ready (``me_ready``) as a replica or as an adopter (``me_adopted``)."""
    replica_online = any(view.online(d) for d in replicas) or (me is not None and me in replicas)
    out = {d for d in view.ready_holders(key) if d in replicas}
    if failover and not replica_online:
        out |= {d for d in view.ready_holders(key) if (view.report(d, key) or {}).get("role") == "adopted"}
    if me is not None and me_ready and (me in replicas or (failover and me_adopted and not replica_online)):
        out.add(me)
    return out
