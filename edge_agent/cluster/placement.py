"""Where stages go: replicas at deploy time, and which device adopts a stage left without a live holder.

Both are pure decisions: every agent applies :func:`choose_adopter` to the same view and reaches the same
answer, so exactly one device adopts an orphaned stage without a vote.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_agent.cluster.view import FleetView, StageKey
from edge_agent.protocol.errors import DeployError
from edge_agent.protocol.messages import Manifest


class _Device(Protocol):
    id: str
    gflops: float


def assign_replicas(primary: list[str], est_ms: list[float], specs: Sequence[_Device],
                    replicas: int) -> list[list[str]]:
    """Replica devices per stage: the planner's device first, then unused devices (fastest first) to the
    stages that need help most; when devices run out, a device may hold several stages, never the same
    stage twice."""
    placement = [[d] for d in primary]
    if replicas <= 1:
        return placement
    if replicas > len(specs):
        raise DeployError(f"{replicas} replicas per stage need at least {replicas} devices; "
                          f"{len(specs)} online")
    load = {s.id: 0.0 for s in specs}
    speed = {s.id: max(s.gflops, 1e-3) for s in specs}
    for i, d in enumerate(primary):
        load[d] += est_ms[i]
    order = sorted(range(len(primary)), key=lambda i: -est_ms[i])
    for _ in range(replicas - 1):
        for i in order:
            cands = [d for d in load if d not in placement[i]]
            # least loaded relative to its speed, unused devices first
            best = min(cands, key=lambda d: (load[d] / speed[d], -speed[d], d))
            placement[i].append(best)
            load[best] += est_ms[i]
    return placement


def permitted_holders(view: FleetView, m: Manifest, stage: int) -> set[str]:
    """Devices that may serve stage ``stage`` of the verified manifest ``m``: its replicas; and, only while
    none of them is online and the deployment allows failover, the live devices that report running it as
    an adopter and that the manifest names as standby (``None``: any device). A device cannot attract a
    stage's traffic by claiming it in its own state otherwise."""
    key, replicas, standby = (m.name, m.version, stage), m.stages[stage].replicas, m.standby
    allowed = set(replicas)
    if m.failover and not any(view.online(d) for d in replicas):
        allowed |= {d for d in view.ready_holders(key) if (view.report(d, key) or {}).get("role") == "adopted"
                    and (standby is None or d in standby)}
    return allowed


@dataclass(frozen=True)
class Candidate:
    device_id: str
    n_stages: int
    gflops: float


def may_answer(view: FleetView, m: Manifest, sender: str, final: bool) -> bool:
    """Whether ``sender`` may answer a request of the verified manifest ``m``: a success only from a permitted
    holder of its last stage, an error from one of any stage (a stage that failed, or found no next hop,
    answers the caller)."""
    stages = [len(m.stages) - 1] if final else range(len(m.stages))
    return bool(sender) and any(sender in permitted_holders(view, m, k) for k in stages)


def choose_adopter(view: FleetView, key: StageKey, me: Candidate, standby: Collection[str] | None = None) -> str:
    """The device that adopts orphaned stage ``key``: fewest stages, then fastest, then by id, among the
    manifest's ``standby`` devices (None: all); devices that already failed to install it are skipped."""
    cands = [(me.n_stages, -me.gflops, me.device_id)]
    for st in view.states():
        if st.device_id == me.device_id or not st.online or (standby is not None and st.device_id not in standby):
            continue
        rep = view.report(st.device_id, key)
        if rep is not None and rep.get("status") == "error":
            continue
        cands.append((len(st.stages), -st.gflops, st.device_id))
    return min(cands)[2]
