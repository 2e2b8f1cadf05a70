"""Everything the CLI shows: rich tables, the deploy progress bars, ``--json`` documents and plain lines.

Commands hand finished results to these functions; nothing here talks to the fleet. rich is imported
inside the functions so ``edge-agent run`` on a small device starts without it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def console():  # noqa: ANN201 - rich is imported lazily to keep `run` start-up light
    """A rich console; 130 columns when stdout is not a terminal (rich would assume 80)."""
    from rich.console import Console
    # rich assumes 80 columns when not on a terminal (CI logs, pipes); placement tables need more
    return Console(width=None if sys.stdout.isatty() else 130)


def print_json(doc: Any, default: Callable[[Any], Any] | None = None) -> None:
    """A ``--json`` answer: one indented document on stdout."""
    print(json.dumps(doc, indent=2, default=default))


# ------------------------------------------------------------------------------------------ daemons
def agent_started(agent: Any) -> None:
    """The line ``edge-agent run`` prints once the agent is up (tests and labs wait for it)."""
    cfg = agent.cfg
    mode = "DEVELOPMENT MODE (unsigned manifests accepted)" if not cfg.trust else \
        f"trusting key(s) {', '.join(k.key_id for k in cfg.trust)}"
    print(f"edge-agent {cfg.name}: fleet {cfg.fleet}, broker {cfg.broker}, {agent.isa}, "
          f"{agent.gflops:.1f} GFLOP/s ({agent.gflops_source}), data {cfg.data_dir}; {mode}", flush=True)


def sim_started(sim: Any) -> None:
    """``edge-agent sim``: the broker and how each device is emulated."""
    print(f"simulated fleet '{sim.fleet}': broker {sim.broker_url}; logs in {sim.workdir}", flush=True)
    for d in sim.devices.values():
        prof = d.profile.name if d.profile is not None else "host"
        print(f"  {d.name}: profile {prof}; {d.emulation or 'no limits'}", flush=True)


def sim_running(sim: Any) -> None:
    print(f"running; Fleet('{sim.broker_url}') or `edge-agent fleet ls --broker {sim.broker_url}`; "
          "Ctrl-C stops", flush=True)


def dashboard_started(url: str, write: bool, bind: str) -> None:
    con = console()
    con.print(f"dashboard: [bold]{url}[/bold]  (Prometheus: {url.split('#')[0]}metrics)")
    con.print("operator actions enabled: the token is in the URL fragment; keep the URL private" if write
              else "read-only (give --key to enable undeploy/rollback)")
    if bind not in ("127.0.0.1", "localhost", "::1"):
        con.print(f"[yellow]listening on {bind}: anyone who reaches this address sees the fleet[/yellow]")
    con.print("Ctrl-C to stop")


def metrics_started(url: str) -> None:
    console().print(f"fleet metrics: {url}  (Ctrl-C to stop)")


def broker_started(broker: Any, advertised: bool) -> None:
    print(f"{broker.kind} broker listening on {broker.url}" + (" (advertised over mDNS)" if advertised else ""),
          flush=True)


# ------------------------------------------------------------------------------------------ set-up
def keys_written(priv: Any, pub: Any, key_id: str) -> None:
    print(f"wrote {priv} (keep it secret, mode 0600) and {pub} (key id {key_id}); "
          f"start devices with --trust {pub}")


def fleet_initialised(res: Any) -> None:
    print(f"broker config: mosquitto -c {res.conf_path}")
    for name, path in sorted(res.creds.items()):
        print(f"  {name}: {path}")
    print("move ca.key off the broker host after issuing identities")


def wrote(path: str) -> None:
    print(f"wrote {path}")


# ------------------------------------------------------------------------------------------ fleet
def devices(devs: list, fleet: str, as_json: bool) -> None:
    """``fleet ls``: one row a device with what it runs."""
    if as_json:
        print_json([d.to_dict() for d in devs], default=str)
        return
    from rich.table import Table
    t = Table(title=f"fleet '{fleet}'")
    numeric = ("cores", "GFLOP/s", "RTT ms", "Mbit/s", "queue")
    for col in ("device", "status", "mode", "ISA", "cores", "RAM", "GFLOP/s", "RTT ms", "Mbit/s", "models", "queue"):
        t.add_column(col, justify="right" if col in numeric else "left")
    for d in devs:
        models = ", ".join(f"{s['model']} v{s.get('version')} stage {s.get('stage')}/{s.get('n_stages', '?')} "
                           f"[{s.get('status')}, {s.get('backend', '?')}]" for s in d.stages) or "-"
        t.add_row(d.device_id, "online" if d.online else "[red]offline[/red]",
                  "[yellow]dev[/yellow]" if d.dev_mode else "signed", d.isa, str(d.cores),
                  f"{d.ram_mb / 1024:.1f} GiB", f"{d.gflops:.1f}",
                  "-" if d.link_rtt_ms is None else f"{d.link_rtt_ms:.2f}",
                  "-" if d.link_mbps is None else f"{d.link_mbps:.0f}", models, str(d.queue_depth))
    console().print(t)
    for d in devs:   # freshness (see edge_agent.security.freshness): say when a device may be held back
        fresh = getattr(d, "fresh", None) or {}
        if fresh.get("expired"):
            console().print(f"[yellow]warning:[/yellow] {d.device_id}: its freshness statement expired "
                            "(run `edge-agent refresh` from a timer); it keeps serving what it has")
        if fresh.get("behind"):
            console().print(f"[red]warning:[/red] {d.device_id}: the signed freshness statement names newer "
                            f"versions of {', '.join(fresh['behind'])} than it runs (withheld by the broker?)")


@contextmanager
def deploy_progress() -> Iterator[Callable[[str, dict], None]]:
    """One bar a stage placement while a deploy runs; yields the ``progress`` callback for ``Fleet.deploy``."""
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                  console=console(), transient=False) as prog:
        tasks: dict[str, Any] = {}

        def progress(dev: str, row: dict) -> None:
            if dev not in tasks:
                tasks[dev] = prog.add_task(f"stage {row['stage']} → {dev}", total=1.0, status="")
            prog.update(tasks[dev], completed=row["progress"], status=row["status"])

        yield progress


def deployed(dep: Any, as_json: bool) -> None:
    """The result of ``deploy``: the placement table, or the plan and stages as JSON."""
    if as_json:
        print_json({"name": dep.name, "version": dep.version, "seconds": round(dep.seconds, 3),
                    "plan": dep.manifest.plan, "stages": dep.manifest.stages and [
                        {k: v for k, v in st.to_dict().items() if k != "chunk_sha256"} for st in dep.manifest.stages],
                    "status": dep.stage_status})
        return
    placement(dep)


def placement(dep: Any) -> None:
    """Where each stage of a deployment runs, its layers, cost and backend, and why the planner chose so."""
    from rich.table import Table
    t = Table(title=f"{dep.name} v{dep.version}: {len(dep.manifest.stages)} stage(s), ready in {dep.seconds:.1f} s")
    for col in ("stage", "devices", "nodes", "layers", "MFLOP", "shard", "backend"):
        t.add_column(col)
    backends: dict[int, set[str]] = {}
    for row in dep.stage_status:
        backends.setdefault(row["stage"], set()).add(row.get("backend", ""))
    for st in dep.manifest.stages:
        first, last = st.nodes or ["", ""]
        shares = st.weight_of()
        devs = ", ".join(f"{d} ({shares[d]:.0%})" if shares else d for d in st.replicas)
        t.add_row(str(st.index), devs, str(st.n_nodes or ""), f"{first} … {last}",
                  f"{(st.flops or 0) / 1e6:.1f}", f"{st.shard_size / 1024:.0f} KiB",
                  ", ".join(sorted(b for b in backends.get(st.index, ()) if b)))
    c = console()
    c.print(t)
    c.print(f"why: {dep.manifest.plan.get('reason', '')}")
    pred = dep.manifest.plan.get("predicted") or {}
    if pred:
        c.print(f"predicted ({pred['objective']}): {pred['throughput_rps']:.1f} req/s with many in flight, "
                f"{pred['latency_ms']:.1f} ms for one request alone; bottleneck {pred['bottleneck']}")
        alternatives(pred.get("alternatives", []), pred["shape"])
    for note in dep.manifest.plan.get("notes", []):
        c.print(f"[yellow]note:[/yellow] {note}")


def alternatives(rows: list[dict], chosen: str) -> None:
    """The shapes the planner compared: predicted req/s, latency and bottleneck (the chosen one marked)."""
    if len(rows) < 2:
        return
    from rich.table import Table
    t = Table(title="alternatives considered (predicted)")
    for col in ("", "shape", "kind", "req/s", "latency ms", "bottleneck"):
        t.add_column(col)
    for r in rows:
        t.add_row("*" if r["shape"] == chosen else "", r["shape"], r["kind"], f"{r['throughput_rps']:.1f}",
                  f"{r['latency_ms']:.1f}", r["bottleneck"])
    console().print(t)


def performance(perf: dict) -> None:
    """Predicted beside measured throughput and latency (``status``)."""
    from rich.table import Table
    pred, meas = perf.get("predicted") or {}, perf.get("measured") or {}
    if not pred.get("throughput_rps") and not meas:
        return

    def num(v: Any, digits: int = 1) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    t = Table(title=f"performance: {pred.get('kind') or '?'} {pred.get('shape') or ''} "
                    f"(objective {pred.get('objective') or '?'})")
    for col in ("", "req/s", "latency ms", "note"):
        t.add_column(col)
    t.add_row("predicted", num(pred.get("throughput_rps")), num(pred.get("latency_ms")),
              f"bottleneck {pred.get('bottleneck')}; latency of one request alone")
    if meas:
        t.add_row("measured", num(meas.get("throughput_rps")), num(meas.get("latency_ms")),
                  f"by {meas.get('source')}, {meas.get('requests')} requests (median latency)")
    else:
        t.add_row("measured", "-", "-", "no requests served recently")
    console().print(t)


def inferred(outputs: dict, timings: list, total_ms: float, as_json: bool) -> None:
    """``infer``: each output's dtype and shape, per-stage run times and the end-to-end latency."""
    summary = {"latency_ms": round(total_ms, 3), "timings": timings,
               "outputs": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in outputs.items()}}
    if as_json:
        print_json(summary)
        return
    for k, v in summary["outputs"].items():
        print(f"{k}: {v['dtype']} {v['shape']}")
    for tm in timings:
        print(f"  stage {tm['stage']} on {tm['device']} ({tm.get('backend')}): run {tm['run_ms']:.2f} ms")
    print(f"end-to-end {total_ms:.2f} ms")


def undeployed(name: str) -> None:
    print(f"undeployed {name}")


def deployments(rows: list[dict], as_json: bool) -> None:
    """``ls``: name, version, stages, devices and creation time of each deployment."""
    if as_json:
        print_json(rows)
        return
    from rich.table import Table
    t = Table(title="deployments")
    for col in ("name", "version", "stages", "devices", "created"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], str(r["version"]), str(r["stages"]), ", ".join(r["devices"]),
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])))
    console().print(t)


def status(name: str, st: dict, as_json: bool) -> None:
    """``status``: desired vs reported per channel, adopted stages, rejections and the rollout history."""
    if as_json:
        print_json(st, default=str)
        return
    from rich.table import Table
    c = console()
    for channel in ("stable", "canary"):
        if channel not in st:
            continue
        ch = st[channel]
        t = Table(title=f"{name} {channel} v{ch['version']} "
                        f"({'signed' if ch['signed'] else 'UNSIGNED'}; "
                        f"{'converged' if ch['converged'] else 'converging'})")
        for col in ("stage", "device", "online", "status", "progress", "backend", "error"):
            t.add_column(col)
        for r in ch["stages"]:
            t.add_row(str(r["stage"]), r["device"], "yes" if r["online"] else "[red]no[/red]", r["status"],
                      f"{r['progress'] * 100:.0f}%", r["backend"], r["error"])
        c.print(t)
    if st.get("performance"):
        performance(st["performance"])
    for a in st["adopted"]:
        c.print(f"adopted: stage {a['stage']} v{a['version']} runs on {a['device']} ({a['status']})")
    for dev, counters in st["rejected"].items():
        c.print(f"rejected on {dev}: " + ", ".join(f"{k[9:]}={v}" for k, v in counters.items()))
    if st.get("rejected_manifest"):
        r = st["rejected_manifest"]
        c.print(f"[yellow]ignored manifest[/yellow] v{r['version']} ({r['channel']}): {r['kind']}: {r['reason']}")
    if st.get("spot_check"):
        s = st["spot_check"]
        c.print(f"spot check: {s['checked']} checked ({s['fraction']:.0%}), {s['disagreed']} disagreed, "
                f"{s['skipped']} skipped" + (f"; [red]excluded[/red]: {', '.join(s['excluded'])}" if s["excluded"] else ""))
        for dev, r in s["devices"].items():
            if r["disagreed"]:
                c.print(f"  {dev}: {r['disagreed']}/{r['checked']} disagreed, last: {r['last']}")
    for h in st["history"]:
        c.print(f"{time.strftime('%H:%M:%S', time.localtime(h['ts']))} v{h['version']} {h['channel']}: "
                f"{h['status']} - {h['reason']}")


def rolled_back(name: str, dep: Any) -> None:
    print(f"{name} is now v{dep.version}: {dep.manifest.plan.get('restores') and 'content of v' + str(dep.manifest.plan['restores'])}")


def bench(name: str, requests: int, concurrency: int, res: dict, as_json: bool) -> None:
    """``bench``: latency percentiles, throughput and the delivery counters."""
    if as_json:
        print_json(res)
        return
    from rich.table import Table
    t = Table(title=f"{name}: {requests} requests, {concurrency} in flight")
    for col in ("p50 ms", "p95 ms", "p99 ms", "req/s", "ok", "lost", "duplicated", "retried", "failovers"):
        t.add_column(col)
    t.add_row(*(f"{res[k]:.2f}" if isinstance(res[k], float) else str(res[k]) for k in
                ("p50_ms", "p95_ms", "p99_ms", "throughput_rps", "ok", "lost", "duplicated", "retried",
                 "failovers")))
    console().print(t)


def inspected(path: str, r: dict, as_json: bool) -> None:
    """``inspect``: the model, its inputs and planning shapes, cost, op support and the plan."""
    if as_json:
        print_json(r)
        return
    from rich.table import Table
    c = console()
    opsets = ", ".join(f"{d} {v}" for d, v in r["opsets"].items())
    c.print(f"[bold]{path}[/bold]: IR {r['ir_version']}, opset {opsets}, {r['nodes']} nodes"
            + (f", from {r['producer']}" if r["producer"] else ""))
    t = Table(title="inputs")
    for col in ("name", "dtype", "declared shape", "planned on", "from"):
        t.add_column(col)
    for i in r["inputs"]:
        shape = "x".join("?" if not isinstance(d, int) else str(d) for d in i["shape"])
        planned = "x".join(map(str, i["planned_shape"])) if i["planned_shape"] else "-"
        t.add_row(i["name"], i["dtype"], shape, planned, i["shape_source"] or "-")
    c.print(t)
    if "flops" in r:
        c.print(f"{r['flops'] / 1e9:.3f} GFLOP per request, {r['parameters'] / 1e6:.2f} M parameters "
                f"({r['weight_bytes'] / 2**20:.1f} MiB), peak activations {r['peak_activation_bytes'] / 2**20:.1f} MiB")
    t = Table(title=f"ops: {r['backend']} ({r['backend_reason']})")
    for col in ("op", "count", "native", "why not"):
        t.add_column(col)
    for o in r["ops"]:
        t.add_row(o["op"], str(o["count"]), "yes" if o["native"] else "[red]no[/red]", o["why"])
    c.print(t)
    plan = r.get("plan")
    if plan and "error" not in plan:
        t = Table(title=f"plan on {r['planned_on']}: bottleneck {plan['bottleneck_ms']:.2f} ms, "
                        f"latency {plan['total_ms']:.2f} ms")
        for col in ("stage", "device", "nodes", "GFLOP", "est ms", "input KiB"):
            t.add_column(col)
        for s in plan["stages"]:
            t.add_row(str(s["index"]), s["device"], str(s["nodes"]), f"{s['flops'] / 1e9:.3f}", f"{s['est_ms']:.2f}",
                      f"{s['in_bytes'] / 1024:.0f}")
        c.print(t)
        c.print(f"why: {plan['reason']}")
    elif plan:
        c.print(f"[red]plan:[/red] {plan['error']}")
    else:
        c.print(r["planned_on"])
    for note in r["notes"]:
        c.print(f"[yellow]note:[/yellow] {note}")


# ------------------------------------------------------------------------------------------ streams
def _lat(rec: dict, key: str) -> str:
    lat = rec.get("latency_ms")
    return "-" if not lat or lat.get(key) is None else f"{lat[key]:.1f}"


def streams(rows: list[dict], as_json: bool) -> None:
    """``stream ls``: definitions and where their ingress runs."""
    if as_json:
        print_json(rows)
        return
    from rich.table import Table
    t = Table(title="streams")
    for col in ("name", "model", "source", "sink", "policy", "batch", "ingress", "fps in", "fps out"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["model"], r["source"], r["sink"], r["policy"], str(r["batch"]),
                  r["ingress_device"] or "(none)", f"{r['fps_in']:.1f}", f"{r['fps_out']:.1f}")
    console().print(t if rows else "no streams")


def stream_stats(rows: list[dict], as_json: bool) -> None:
    """``stream stats``: per stream fps, drops by reason, errors, backlog and end-to-end latency."""
    if as_json:
        print_json(rows)
        return
    from rich.table import Table
    t = Table(title="stream stats (end-to-end latency: source timestamp to sink)")
    for col in ("name", "ingress", "fps in", "fps out", "in", "out", "dropped", "errors", "in flight",
                "backlog (max)", "p50 ms", "p90 ms", "p99 ms"):
        t.add_column(col)
    for r in rows:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(r["drop_reasons"].items()))
        errs = ", ".join(f"{k} {v}" for k, v in sorted(r["error_reasons"].items()))
        t.add_row(r["name"], r["ingress_device"] or "(none)", f"{r['fps_in']:.1f}", f"{r['fps_out']:.1f}",
                  str(r["frames_in"]), str(r["frames_out"]), f"{r['dropped']}" + (f" ({drops})" if drops else ""),
                  f"{r['errors']}" + (f" ({errs})" if errs else ""), str(r["in_flight"]),
                  f"{r['backlog']} ({r['backlog_max']})", _lat(r, "p50"), _lat(r, "p90"), _lat(r, "p99"))
    console().print(t if rows else "no streams")


def stream_started(rec: dict, as_json: bool) -> None:
    if as_json:
        print_json(rec)
        return
    print(f"stream {rec['name']} v{rec['version']}: {rec['source']} -> {rec['model']} -> {rec['sink']} "
          f"({rec['policy']}, batch {rec['batch']}); ingress on {rec['ingress_device'] or '(not yet)'}"
          + ("" if rec["signed"] else "; UNSIGNED (development-mode devices only)"))


def stream_stopped(name: str) -> None:
    print(f"stream {name} stopped")
