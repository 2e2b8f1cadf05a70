"""The dashboard's data: what the page shows, as one JSON-able dict built from the fleet client's view.

Two steps so the decisions are testable without a broker: :func:`gather` copies what a
:class:`~edge_agent.operator.fleet.Fleet` knows into a :class:`FleetData` (thin, no decisions), and
:func:`build_snapshot` turns that into the page's dict (pure: same data, same snapshot).

Where the live numbers come from:

- a deployment's throughput is the fleet-wide rate of its last stage, from the counters every agent puts in
  its load reports (every client's requests and every stream count, not only this operator's);
- per-stage run time is the devices' own measurement (EWMA), per-stage rate the same counters;
- end-to-end latency percentiles are this operator's own requests over the last ``window_s`` seconds
  (the only place both ends of a request are seen);
- streams come from ``fleet.streams()`` when the client has it (fps, drops, source-to-sink latency).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_agent.operator.metrics import fleet_streams
from edge_agent.operator.records import DeviceStatus
from edge_agent.operator.status import stage_rows
from edge_agent.operator.telemetry import Completion, ErrorEvent, StageRate, latency_window
from edge_agent.protocol.messages import Manifest

if TYPE_CHECKING:
    from edge_agent.operator.fleet import Fleet

WINDOW_S = 10.0          # end-to-end latency and client rate over this many seconds
MAX_ERRORS = 30          # recent errors shown
MAX_HISTORY = 12         # rollout events shown per deployment


@dataclass
class DeviceLoad:
    queue: int
    service_ms: float
    fresh: bool          # a load report arrived recently


@dataclass
class DeploymentData:
    """One deployment as the broker holds it, with desired-vs-reported rows and its rollout record."""

    stable: Manifest
    rows: list[dict]
    canary: Manifest | None = None
    canary_rows: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


@dataclass
class FleetData:
    """Everything a snapshot is built from (copied out of the Fleet, or made by hand in tests)."""

    fleet: str
    broker: str
    now: float                                   # wall clock, epoch s
    devices: list[DeviceStatus]
    online: dict[str, bool]                      # by the view (a device whose heartbeats stopped is offline)
    loads: dict[str, DeviceLoad]
    deployments: list[DeploymentData]
    rates: dict[tuple[str, int, int], StageRate]
    completions: list[Completion]                # this client's requests finished in the window
    client_errors: list[ErrorEvent]
    streams: list[dict] = field(default_factory=list)
    window_s: float = WINDOW_S
    client_since: float | None = None            # when this client's first request finished (epoch s)
    write: bool = False                          # write actions enabled (operator key given)


def gather(fleet: Fleet, window_s: float = WINDOW_S, write: bool = False) -> FleetData:
    """Copy the fleet client's current view (no decisions here)."""
    now = time.time()
    states = fleet.view.states()
    loads = {}
    for st in states:
        ld = fleet.view.load(st.device_id)
        loads[st.device_id] = DeviceLoad(ld.queue, ld.service_ms, bool(ld.ts) and time.monotonic() - ld.ts < 10)
    deps = []
    for m in fleet.deployments():
        canary = fleet.current(m.name, "canary")
        rec = fleet.rollouts(m.name)
        deps.append(DeploymentData(m, stage_rows(fleet.view, m), canary,
                                   stage_rows(fleet.view, canary) if canary is not None else [],
                                   list(rec.history) if rec else []))
    return FleetData(
        fleet=fleet.fleet, broker=fleet.broker, now=now,
        devices=[DeviceStatus.from_state(s) for s in states],
        online={s.device_id: fleet.view.online(s.device_id) for s in states}, loads=loads,
        deployments=deps, rates=fleet.stage_rates.rates(),
        completions=fleet.request_log.recent(now - window_s), client_errors=fleet.request_log.errors(),
        client_since=fleet.request_log.first_ts,
        streams=fleet_streams(fleet), window_s=window_s, write=write)


# ------------------------------------------------------------------------------------------ pure part
def _round(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(float(v), nd)


def device_row(d: DeviceStatus, online: bool, load: DeviceLoad | None, now: float) -> dict:
    serves = [{"model": e.get("model"), "version": e.get("version"), "stage": e.get("stage"),
               "status": e.get("status", ""), "backend": e.get("backend", ""), "role": e.get("role", "")}
              for e in d.stages]
    errors = sum(int(v) for k, v in d.counters.items() if k.startswith("error_") and isinstance(v, int))
    return {
        "id": d.device_id, "online": online, "mode": "dev" if d.dev_mode else "signed",
        "isa": d.isa, "cores": d.cores, "ram_mb": d.ram_mb, "version": d.version,
        "gflops": _round(d.gflops, 1), "link_rtt_ms": _round(d.link_rtt_ms), "link_mbps": _round(d.link_mbps, 0),
        "queue": (load.queue if load is not None and load.fresh else d.queue_depth) if online else 0,
        "service_ms": _round(load.service_ms) if load is not None and load.fresh and online else None,
        "served": int(d.counters.get("served", 0) or 0), "errors": errors,
        "serves": serves, "peers": len(d.peers), "age_s": _round(max(0.0, now - d.last_seen), 1),
    }


def pipeline(m: Manifest, rows: list[dict], rates: dict[tuple[str, int, int], StageRate]) -> list[dict]:
    """The stages of ``m`` in order: planner figures, replicas with their reported status, live rates."""
    out = []
    for st in m.stages:
        r = rates.get((m.name, m.version, st.index))
        out.append({
            "index": st.index,
            "nodes": st.n_nodes, "first_last": list(st.nodes) if st.nodes else None,
            "mflop": _round(st.flops / 1e6, 2) if st.flops else None, "est_ms": _round(st.est_ms),
            "shard_mb": _round(st.shard_size / 1e6, 2),
            "replicas": [{"device": row["device"], "status": row["status"] if row["online"] else "offline",
                          "backend": row["backend"], "progress": _round(row["progress"], 2), "error": row["error"]}
                         for row in rows if row["stage"] == st.index],
            "rps": _round(r.served_per_s) if r else 0.0, "run_ms": _round(r.run_ms) if r else None,
            "errors_ps": _round(r.errors_per_s) if r else 0.0,
        })
    return out


def _history_row(ev: dict) -> dict:
    metrics = ev.get("metrics") if isinstance(ev.get("metrics"), dict) else {}
    gates = {k: _round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
             if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k != "version"}
    return {"ts": ev.get("ts"), "version": ev.get("version"), "channel": ev.get("channel"),
            "status": ev.get("status"), "reason": ev.get("reason"), "gates": gates}


def client_span(data: FleetData) -> float:
    """Seconds the client rate is averaged over: the window, or less while this client is younger than it."""
    if data.client_since is None:
        return data.window_s
    return max(1.0, min(data.window_s, data.now - data.client_since))


def deployment_card(dep: DeploymentData, data: FleetData) -> dict:
    m = dep.stable
    stages = pipeline(m, dep.rows, data.rates)
    mine = [c for c in data.completions if c.model == m.name]
    lat = latency_window(mine)
    card = {
        "name": m.name, "version": m.version, "signed": bool(m.sig), "created": m.created,
        "rollback": m.rollback, "replicas": m.replicas, "failover": m.failover,
        "inputs": [{"name": t.get("name"), "shape": t.get("shape")} for t in m.inputs],
        "outputs": [{"name": t.get("name"), "shape": t.get("shape")} for t in m.outputs],
        "converged": bool(dep.rows) and all(r["status"] == "ready" and r["online"] for r in dep.rows),
        "plan": {k: v for k, v in m.plan.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)},
        "stages": stages,
        # the last stage's rate over the fleet = finished requests per second, whoever sent them
        "throughput_rps": stages[-1]["rps"] if stages else 0.0,
        "client": {"rps": _round(len(mine) / client_span(data)), "p50_ms": _round(lat["p50_ms"]),
                   "p95_ms": _round(lat["p95_ms"]), "p99_ms": _round(lat["p99_ms"]),
                   "errors": int(lat["errors"] or 0)},
        "history": [_history_row(ev) for ev in dep.history[-MAX_HISTORY:]][::-1],
        "canary": None,
    }
    if dep.canary is not None:
        card["canary"] = {"version": dep.canary.version, "signed": bool(dep.canary.sig),
                          "stages": pipeline(dep.canary, dep.canary_rows, data.rates)}
    return card


def recent_errors(data: FleetData) -> list[dict]:
    """This client's failed requests and the devices' reported rejections, newest first."""
    events = [e.to_dict() for e in data.client_errors]
    for d in data.devices:
        for ev in d.events:
            events.append({"ts": ev.get("ts"), "source": "device", "model": ev.get("model") or "",
                           "code": str(ev.get("kind", "rejected")), "message": str(ev.get("reason", ""))[:500],
                           "device": d.device_id, "stage": None})
    events.sort(key=lambda e: e["ts"] if isinstance(e["ts"], (int, float)) else 0.0, reverse=True)
    return events[:MAX_ERRORS]


def stream_row(s: dict) -> dict:
    lat = s.get("latency_ms") if isinstance(s.get("latency_ms"), dict) else {}
    return {"name": str(s.get("name", "?")), "model": s.get("model"), "source": s.get("source"),
            "sink": s.get("sink"), "policy": s.get("policy"), "batch": s.get("batch"),
            "ingress_device": s.get("ingress_device"), "fps_in": _round(s.get("fps_in") or 0.0),
            "fps_out": _round(s.get("fps_out") or 0.0), "dropped": int(s.get("dropped") or 0),
            "in_flight": int(s.get("in_flight") or 0),
            "p50_ms": _round(lat.get("p50")), "p90_ms": _round(lat.get("p90")), "p99_ms": _round(lat.get("p99"))}


def build_snapshot(data: FleetData) -> dict[str, Any]:
    """The page's data: summary, devices, deployments (pipelines, live rates, history), streams, errors."""
    devices = [device_row(d, data.online.get(d.device_id, d.online), data.loads.get(d.device_id), data.now)
               for d in sorted(data.devices, key=lambda d: (not data.online.get(d.device_id, d.online), d.device_id))]
    deployments = [deployment_card(dep, data) for dep in sorted(data.deployments, key=lambda d: d.stable.name)]
    streams = [stream_row(s) for s in data.streams]
    errors = recent_errors(data)
    ok = [c.latency_ms for c in data.completions if c.ok]
    all_lat = latency_window(data.completions)
    return {
        "ts": data.now, "fleet": data.fleet, "broker": data.broker, "write": data.write,
        "window_s": data.window_s,
        "summary": {
            "devices_online": sum(1 for d in devices if d["online"]), "devices": len(devices),
            "gflops_online": _round(sum(d["gflops"] or 0.0 for d in devices if d["online"]), 1),
            "deployments": len(deployments), "streams": len(streams),
            "throughput_rps": _round(sum(d["throughput_rps"] for d in deployments)),
            "client_rps": _round(len(data.completions) / client_span(data)),
            "client_p95_ms": _round(all_lat["p95_ms"]) if ok else None,
            "errors": len(errors),
        },
        "devices": devices, "deployments": deployments, "streams": streams, "errors": errors,
    }
