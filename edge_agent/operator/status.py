"""Desired vs reported: pure functions from a manifest and the fleet view to status rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from edge_agent.cluster.meter import Measured
from edge_agent.cluster.view import FleetView
from edge_agent.protocol.errors import DeployError, DeployTimeout, ManifestRejected
from edge_agent.protocol.messages import Manifest


def stage_rows(view: FleetView, m: Manifest) -> list[dict]:
    """One row per (stage, replica device): what the device reports for this manifest's version."""
    rows = []
    for st in m.stages:
        for dev in st.replicas:
            ds = view.state(dev)
            entry = view.report(dev, (m.name, m.version, st.index))
            row = {"stage": st.index, "device": dev, "online": bool(ds and ds.online),
                   "status": "pending", "progress": 0.0, "error": "", "backend": ""}
            if entry is not None:
                row.update(status=entry.get("status", "?"), progress=float(entry.get("progress", 0.0)),
                           error=entry.get("error", ""), backend=entry.get("backend", ""))
            rows.append(row)
    return rows


def performance(view: FleetView, m: Manifest, own: Measured | None = None) -> dict:
    """Predicted (the planner's, from the manifest) beside measured: by this client's own requests when it
    sent some recently, else by the agents' reports (the last stage's replicas: completions per second summed,
    median path latency weighted by their requests; the path excludes the answer's last hop)."""
    predicted = dict(m.plan.get("predicted") or {})
    out: dict = {"predicted": {k: predicted.get(k) for k in ("objective", "shape", "kind", "throughput_rps",
                                                               "latency_ms", "bottleneck")},
                 "measured": None}
    if own is not None and own.requests > 1:
        out["measured"] = {"source": "this client", **own.to_dict()}
    if m.stages:
        last = m.stages[-1]
        rates, lats = [], []
        for dev in last.replicas:
            e = view.report(dev, (m.name, m.version, last.index)) or {}
            meas = e.get("measured") if isinstance(e.get("measured"), dict) else None
            if meas and meas.get("requests"):
                if isinstance(meas.get("throughput_rps"), (int, float)):
                    rates.append(float(meas["throughput_rps"]))
                if isinstance(meas.get("latency_ms"), (int, float)):
                    lats.append((float(meas["latency_ms"]), int(meas["requests"])))
        agents = None
        if rates or lats:
            n = sum(k for _, k in lats)
            agents = {"source": "agents", "throughput_rps": round(sum(rates), 3) if rates else None,
                      "latency_ms": round(sum(v * k for v, k in lats) / n, 3) if n else None, "requests": n}
        out["measured_by_agents"] = agents
        if out["measured"] is None:
            out["measured"] = agents
    return out


def rejections(view: FleetView, m: Manifest) -> dict[str, str]:
    """Devices assigned to ``m`` that reported rejecting it (signature, expiry, replay...)."""
    out = {}
    for d in {d for st in m.stages for d in st.replicas}:
        ds = view.state(d)
        for ev in (ds.events if ds else []):
            if ev.get("model") == m.name and ev.get("version") == m.version and ev.get("ts", 0) >= m.created - 5:
                out[d] = f"{ev.get('kind')}: {ev.get('reason')}"
    return out


def adopted_rows(view: FleetView, name: str) -> list[dict]:
    """Stages of ``name`` that live devices run as adopters (their assigned devices are gone)."""
    return [{"device": d.device_id, **e} for d in view.states() if d.online
            for e in d.stages if e.get("model") == name and e.get("role") == "adopted"]


def rejected_counters(view: FleetView) -> dict[str, dict]:
    """Per device, the counters of messages it rejected (by reason)."""
    return {d.device_id: {k: v for k, v in d.counters.items() if k.startswith("rejected")}
            for d in view.states() if any(k.startswith("rejected") for k in d.counters)}


def wait_ready(view: FleetView, changed: threading.Condition, m: Manifest, timeout: float,
           progress: Callable[[str, dict], None] | None = None, offline_ok: bool = False) -> list[dict]:
    """Block until every replica of ``m`` reports ready; DeployError when one fails, rejects the manifest,
    or goes offline leaving its stage no other online replica (a replica lost mid-deploy beside live ones is
    left to converge when it returns, as an offline device does); DeployTimeout with each device's progress."""
    end = time.monotonic() + timeout
    while True:
        rows = stage_rows(view, m)
        if progress is not None:
            for row in rows:
                progress(row["device"], row)
        live_stages = {r["stage"] for r in rows if r["online"] and r["status"] != "error"}
        tolerate = offline_ok
        failed = [r for r in rows if r["status"] == "error"
                  or (not r["online"] and not tolerate and r["stage"] not in live_stages)]
        if failed:
            r = failed[0]
            why = r["error"] or "device went offline"
            raise DeployError(f"deployment {m.name} v{m.version}: stage {r['stage']} on '{r['device']}' "
                              f"failed: {why}")
        rejected = rejections(view, m)
        if rejected:
            raise ManifestRejected(f"deployment {m.name} v{m.version} ({m.channel}) was rejected: " +
                              "; ".join(f"{d}: {why}" for d, why in rejected.items()))
        if all(r["status"] == "ready" for r in rows if r["online"]):
            return rows
        left = end - time.monotonic()
        if left <= 0:
            report = "; ".join(f"stage {r['stage']}@{r['device']}: {r['status']} "
                               f"{r['progress'] * 100:.0f}%" for r in rows)
            raise DeployTimeout(f"deployment {m.name} v{m.version} not ready after {timeout:.0f} s: {report}")
        with changed:
            changed.wait(min(left, 0.25))
