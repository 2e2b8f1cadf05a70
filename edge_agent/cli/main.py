"""The ``edge-agent`` command line. Thin: it parses, calls the Python API, and renders (rich or --json)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import __version__
from edge_agent.protocol.errors import EdgeAgentError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _console():  # noqa: ANN202 - rich is imported lazily to keep `run` start-up light
    from rich.console import Console
    # rich assumes 80 columns when not on a terminal (CI logs, pipes); placement tables need more
    return Console(width=None if sys.stdout.isatty() else 130)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="broker URL, e.g. mqtt://10.0.0.5:1883 (default: $EDGE_AGENT_BROKER, "
                                    "else found by mDNS)")
    p.add_argument("--fleet", default=os.environ.get("EDGE_AGENT_FLEET", "default"), help="fleet name")
    p.add_argument("--interface", action="append", dest="interfaces", metavar="IFACE",
                   help="interface name or IPv4 address for mDNS (repeatable; default: loopback)")
    p.add_argument("--log-level", default=os.environ.get("EDGE_AGENT_LOG", "WARNING"))
    p.add_argument("--credentials", default=os.environ.get("EDGE_AGENT_CREDENTIALS"),
                   help="identity file from `edge-agent fleet init` (<name>.cred) for an authenticated broker")


def _signing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", default=os.environ.get("EDGE_AGENT_KEY"),
                   help="fleet signing key (fleet.key from `edge-agent keys init`); without it manifests are "
                        "unsigned and only development-mode devices accept them")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-agent", description="Edge inference across a fleet of devices.")
    ap.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="run the agent daemon on this device")
    _common(p)
    p.add_argument("--name", required=True, help="device id (unique in the fleet)")
    p.add_argument("--data-dir", default=None, help="shard store and state (default ~/.local/share/edge-agent/<name>)")
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1), help="compute threads per stage")
    p.add_argument("--backend", choices=["auto", "native", "onnxruntime"], default="auto")
    p.add_argument("--gflops", type=float, default=None, help="advertise this GFLOP/s instead of measuring")
    p.add_argument("--no-discovery", action="store_true", help="do not advertise/browse mDNS")
    p.add_argument("--advertise-broker", action="store_true", help="advertise the broker URL as its host")
    p.add_argument("--max-message-mb", type=float, default=64.0, help="reject larger messages")
    p.add_argument("--trust", action="append", default=[], metavar="FLEET.PUB",
                   help="public key whose signed manifests this device installs (repeatable for rotation)")
    p.add_argument("--dev", action="store_true",
                   help="development mode: install unsigned manifests from anyone on the broker (demo, labs)")

    p = sub.add_parser("keys", help="fleet signing keys")
    ksub = p.add_subparsers(dest="keys_cmd", required=True)
    k = ksub.add_parser("init", help="create an Ed25519 fleet signing key pair (fleet.key, fleet.pub)")
    k.add_argument("--out", required=True)
    k.add_argument("--force", action="store_true", help="overwrite an existing key")

    p = sub.add_parser("broker", help="run an MQTT broker for a small fleet (Mosquitto if installed, else embedded)")
    _common(p)
    p.add_argument("--kind", choices=["auto", "mosquitto", "embedded"], default="auto")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--advertise", action="store_true", help="advertise the broker over mDNS")

    p = sub.add_parser("fleet", help="fleet queries")
    fsub = p.add_subparsers(dest="fleet_cmd", required=True)
    ls = fsub.add_parser("ls", help="list devices: status, ISA, cores, RAM, GFLOP/s, models")
    _common(ls)
    ls.add_argument("--all", action="store_true", help="include offline devices")
    ls.add_argument("--json", action="store_true")
    fi = fsub.add_parser("init", help="Mosquitto config with per-device credentials, fleet CA/TLS and ACLs")
    fi.add_argument("--out", required=True)
    fi.add_argument("--devices", required=True, help="comma-separated device ids")
    fi.add_argument("--fleet", default="default")
    fi.add_argument("--operator", default="operator", help="operator identity (the only one that may deploy)")
    fi.add_argument("--host", default="127.0.0.1", help="address devices use to reach the broker")
    fi.add_argument("--port", type=int, default=8883, help="TLS listener (client certificates)")
    fi.add_argument("--plain-port", type=int, default=None, help="also a password listener on this port")
    fi.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("deploy", help="deploy an ONNX model split into pipeline stages")
    _common(p)
    p.add_argument("model", help="path of the ONNX model")
    p.add_argument("--name", required=True)
    p.add_argument("--stages", type=int, default=None, help="number of pipeline stages (default: best)")
    p.add_argument("--devices", default=None, help="comma-separated device ids to use")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="fix dynamic input dims for planning")
    p.add_argument("--replicas", type=int, default=1, help="devices per stage (balanced by queue depth)")
    p.add_argument("--no-failover", action="store_true", help="do not move stages off dead devices")
    p.add_argument("--canary", default=None, help="first deploy to N devices (or N%%) and check the gates")
    p.add_argument("--gate", default=None, help='e.g. "p95_ms<=120,error_rate<=0.01,max_abs_diff<=1e-3"')
    p.add_argument("--check-data", default=None, help=".npz with inputs (samples on axis 0) for the gates")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", action="store_true")
    _signing(p)

    p = sub.add_parser("status", help="desired vs reported state of a deployment, and its rollout history")
    _common(p)
    p.add_argument("name")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("rollback", help="return a deployment to its previous good version (signed)")
    _common(p)
    p.add_argument("name")
    p.add_argument("--to", type=int, default=None, help="a specific earlier version")
    p.add_argument("--timeout", type=float, default=300.0)
    _signing(p)

    p = sub.add_parser("bench", help="load a deployment: latency percentiles, throughput, lost, duplicated")
    _common(p)
    p.add_argument("name")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per request")
    p.add_argument("--input", action="append", default=[], help="inputs (default: random per input spec)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("infer", help="run inference on a deployed model")
    _common(p)
    p.add_argument("name")
    p.add_argument("--input", action="append", required=True, metavar="NAME=FILE.npy",
                   help="input tensor (repeatable) or an .npz with all inputs")
    p.add_argument("--output-dir", default=None, help="write each output as <name>.npy here")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("undeploy", help="remove a deployment from the fleet")
    _common(p)
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=30.0)
    _signing(p)

    p = sub.add_parser("ls", help="list deployments")
    _common(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("zoo", help="export a reference model built in code")
    p.add_argument("model", help="zoo model name (mlp, mobilenetv2, transformer, ...)")
    p.add_argument("out", help="output .onnx path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-input", default=None, help="also write a sample input .npz here")

    p = sub.add_parser("demo", help="3 simulated devices on an embedded broker: deploy a CNN in 3 stages")
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--broker-kind", choices=["auto", "mosquitto", "embedded"], default="embedded")
    p.add_argument("--log-level", default="WARNING")
    return ap


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fleet(args: argparse.Namespace):  # noqa: ANN202
    from edge_agent.operator.fleet import Fleet
    return Fleet(args.broker, fleet=args.fleet, interfaces=args.interfaces or ["127.0.0.1"],
                 key=getattr(args, "key", None), credentials=args.credentials)


def _parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    out = {}
    for item in items:
        name, _, dims = item.partition("=")
        if not name or not dims:
            raise ValueError(f"--input-shape {item!r}: use NAME=1x3x224x224")
        out[name] = tuple(int(d) for d in dims.lower().split("x"))
    return out


# ------------------------------------------------------------------------------------------ commands
def cmd_run(args: argparse.Namespace) -> int:
    from discovery import resolve_interfaces
    from edge_agent.agent.daemon import Agent, AgentConfig
    from edge_agent.security.keys import load_trusted_keys
    from edge_agent.transport.mqtt import broker_from_env

    if not args.trust and not args.dev:
        raise ValueError("a device needs --trust <fleet.pub> (install only manifests signed by the fleet key) "
                         "or an explicit --dev (development mode: unsigned manifests from anyone on the broker)")
    trust = load_trusted_keys(args.trust) if args.trust else []
    transport_kwargs: dict = {}
    broker = broker_from_env(args.broker)
    if args.credentials:
        from edge_agent.security.pki import Credentials
        creds = Credentials.from_file(args.credentials)
        transport_kwargs = creds.transport_kwargs()
        broker = broker or creds.broker_url or creds.plain_url or None
    ifaces = resolve_interfaces(args.interfaces)
    if broker is None:
        from edge_agent.transport.resolve import discover_broker as _discover_broker
        broker = _discover_broker(args.fleet, ifaces)
    data_dir = Path(args.data_dir or Path.home() / ".local" / "share" / "edge-agent" / args.name)
    cfg = AgentConfig(name=args.name, broker=broker, data_dir=data_dir, fleet=args.fleet, interfaces=ifaces,
                      threads=args.threads, backend=args.backend, gflops=args.gflops,
                      discovery=not args.no_discovery, advertise_broker=args.advertise_broker,
                      max_message_bytes=int(args.max_message_mb * (1 << 20)), trust=trust, dev_mode=args.dev,
                      transport_kwargs=transport_kwargs)
    agent = Agent(cfg)
    agent.start(wait=None)
    mode = "DEVELOPMENT MODE (unsigned manifests accepted)" if not trust else \
        f"trusting key(s) {', '.join(k.key_id for k in trust)}"
    print(f"edge-agent {args.name}: fleet {args.fleet}, broker {broker}, {agent.isa}, "
          f"{agent.gflops:.1f} GFLOP/s ({agent.gflops_source}), data {data_dir}; {mode}", flush=True)
    agent.run_forever()
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    import signal

    from edge_agent.transport.broker import Broker

    b = Broker.start(args.kind, port=args.port, host=args.host)
    disc = None
    if args.advertise:
        from discovery import DeviceInfo, Discovery, resolve_interfaces
        disc = Discovery(interfaces=resolve_interfaces(args.interfaces), fleet=args.fleet)
        disc.advertise(DeviceInfo(device_id=f"broker-{args.port}", fleet=args.fleet, broker=b.url,
                                  role="broker", version=__version__), port=args.port)
    print(f"{b.kind} broker listening on {b.url}" + (" (advertised over mDNS)" if disc else ""), flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop and b.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if disc:
            disc.close()
        b.stop()
    return 0


def cmd_fleet_ls(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        devs = fleet.devices(include_offline=args.all)
    if args.json:
        print(json.dumps([d.to_dict() for d in devs], indent=2, default=str))
        return 0
    from rich.table import Table
    t = Table(title=f"fleet '{args.fleet}'")
    for col in ("device", "status", "mode", "ISA", "cores", "RAM", "GFLOP/s", "models", "queue"):
        t.add_column(col, justify="right" if col in ("cores", "GFLOP/s", "queue") else "left")
    for d in devs:
        models = ", ".join(f"{s['model']} v{s.get('version')} stage {s.get('stage')}/{s.get('n_stages', '?')} "
                           f"[{s.get('status')}, {s.get('backend', '?')}]" for s in d.stages) or "-"
        t.add_row(d.device_id, "online" if d.online else "[red]offline[/red]",
                  "[yellow]dev[/yellow]" if d.dev_mode else "signed", d.isa, str(d.cores),
                  f"{d.ram_mb / 1024:.1f} GiB", f"{d.gflops:.1f}", models, str(d.queue_depth))
    _console().print(t)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn

    devices = [d for d in args.devices.split(",") if d] if args.devices else None
    shapes = _parse_shapes(args.input_shape)
    extra = dict(replicas=args.replicas, failover=not args.no_failover, canary=args.canary, gates=args.gate,
                 check_data=args.check_data)
    with _fleet(args) as fleet:
        if args.json:
            dep = fleet.deploy(args.model, args.name, stages=args.stages, devices=devices, version=args.version,
                               input_shapes=shapes or None, timeout=args.timeout, **extra)
        else:
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                          console=_console(), transient=False) as prog:
                tasks: dict[str, Any] = {}

                def progress(dev: str, row: dict) -> None:
                    if dev not in tasks:
                        tasks[dev] = prog.add_task(f"stage {row['stage']} → {dev}", total=1.0, status="")
                    prog.update(tasks[dev], completed=row["progress"], status=row["status"])

                dep = fleet.deploy(args.model, args.name, stages=args.stages, devices=devices,
                                   version=args.version, input_shapes=shapes or None, timeout=args.timeout,
                                   progress=progress, **extra)
    if args.json:
        print(json.dumps({"name": dep.name, "version": dep.version, "seconds": round(dep.seconds, 3),
                          "plan": dep.manifest.plan, "stages": dep.manifest.stages and [
                              {k: v for k, v in st.to_dict().items() if k != "chunk_sha256"} for st in dep.manifest.stages],
                          "status": dep.stage_status}, indent=2))
        return 0
    print_placement(dep)
    return 0


def print_placement(dep: Any) -> None:
    from rich.table import Table
    t = Table(title=f"{dep.name} v{dep.version}: {len(dep.manifest.stages)} stage(s), ready in {dep.seconds:.1f} s")
    for col in ("stage", "device", "nodes", "layers", "MFLOP", "shard", "est ms", "backend"):
        t.add_column(col)
    for st, row in zip(dep.manifest.stages, dep.stage_status):
        first, last = st.nodes or ["", ""]
        t.add_row(str(st.index), st.device, str(st.n_nodes or ""), f"{first} … {last}",
                  f"{(st.flops or 0) / 1e6:.1f}", f"{st.shard_size / 1024:.0f} KiB",
                  f"{st.est_ms or 0:.2f}", row.get("backend", ""))
    c = _console()
    c.print(t)
    c.print(f"why: {dep.manifest.plan.get('reason', '')}")


def cmd_infer(args: argparse.Namespace) -> int:
    from edge_agent.cli.inputs import load_inputs

    inputs = load_inputs(args.input)
    with _fleet(args) as fleet:
        t0 = time.perf_counter()
        outputs, timings = fleet.infer(args.name, inputs, timeout=args.timeout, with_timings=True)
        total_ms = (time.perf_counter() - t0) * 1e3
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, arr in outputs.items():
            np.save(out / f"{_safe_filename(name)}.npy", arr)
    summary = {"latency_ms": round(total_ms, 3), "timings": timings,
               "outputs": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in outputs.items()}}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary["outputs"].items():
            print(f"{k}: {v['dtype']} {v['shape']}")
        for tm in timings:
            print(f"  stage {tm['stage']} on {tm['device']} ({tm.get('backend')}): run {tm['run_ms']:.2f} ms")
        print(f"end-to-end {total_ms:.2f} ms")
    return 0


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def cmd_undeploy(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        fleet.undeploy(args.name, timeout=args.timeout)
    print(f"undeployed {args.name}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        deps = fleet.deployments()
    rows = [{"name": m.name, "version": m.version, "stages": len(m.stages),
             "devices": [s.device for s in m.stages], "created": m.created} for m in deps]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table
    t = Table(title="deployments")
    for col in ("name", "version", "stages", "devices", "created"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], str(r["version"]), str(r["stages"]), ", ".join(r["devices"]),
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])))
    _console().print(t)
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    import onnx

    from models import zoo
    model = zoo.build(args.model, seed=args.seed)
    onnx.save(model, args.out)
    if args.sample_input:
        np.savez(args.sample_input, **zoo.sample_inputs(model, seed=args.seed))
    print(f"wrote {args.out}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from edge_agent.security.keys import generate_keys, load_public_key
    priv, pub = generate_keys(args.out, force=args.force)
    print(f"wrote {priv} (keep it secret, mode 0600) and {pub} (key id {load_public_key(pub).key_id}); "
          f"start devices with --trust {pub}")
    return 0


def cmd_fleet_init(args: argparse.Namespace) -> int:
    from edge_agent.security.pki import init_fleet
    devices = [d for d in args.devices.split(",") if d]
    res = init_fleet(args.out, devices, fleet=args.fleet, operator=args.operator, host=args.host,
                     port=args.port, plain_port=args.plain_port, overwrite=args.overwrite)
    print(f"broker config: mosquitto -c {res.conf_path}")
    for name, path in sorted(res.creds.items()):
        print(f"  {name}: {path}")
    print("move ca.key off the broker host after issuing identities")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        st = fleet.status(args.name)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    from rich.table import Table
    c = _console()
    for channel in ("stable", "canary"):
        if channel not in st:
            continue
        ch = st[channel]
        t = Table(title=f"{args.name} {channel} v{ch['version']} "
                        f"({'signed' if ch['signed'] else 'UNSIGNED'}; "
                        f"{'converged' if ch['converged'] else 'converging'})")
        for col in ("stage", "device", "online", "status", "progress", "backend", "error"):
            t.add_column(col)
        for r in ch["stages"]:
            t.add_row(str(r["stage"]), r["device"], "yes" if r["online"] else "[red]no[/red]", r["status"],
                      f"{r['progress'] * 100:.0f}%", r["backend"], r["error"])
        c.print(t)
    for a in st["adopted"]:
        c.print(f"adopted: stage {a['stage']} v{a['version']} runs on {a['device']} ({a['status']})")
    for dev, counters in st["rejected"].items():
        c.print(f"rejected on {dev}: " + ", ".join(f"{k[9:]}={v}" for k, v in counters.items()))
    for h in st["history"]:
        c.print(f"{time.strftime('%H:%M:%S', time.localtime(h['ts']))} v{h['version']} {h['channel']}: "
                f"{h['status']} - {h['reason']}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        dep = fleet.rollback(args.name, to_version=args.to, timeout=args.timeout)
    print(f"{args.name} is now v{dep.version}: {dep.manifest.plan.get('restores') and 'content of v' + str(dep.manifest.plan['restores'])}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_agent.cli.inputs import load_inputs
    from edge_agent.operator.bench import run_bench
    inputs = load_inputs(args.input) if args.input else None
    with _fleet(args) as fleet:
        res = run_bench(fleet, args.name, requests=args.requests, concurrency=args.concurrency,
                        timeout=args.timeout, inputs=inputs)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        from rich.table import Table
        t = Table(title=f"{args.name}: {args.requests} requests, {args.concurrency} in flight")
        for col in ("p50 ms", "p95 ms", "p99 ms", "req/s", "ok", "lost", "duplicated", "retried", "failovers"):
            t.add_column(col)
        t.add_row(*(f"{res[k]:.2f}" if isinstance(res[k], float) else str(res[k]) for k in
                    ("p50_ms", "p95_ms", "p99_ms", "throughput_rps", "ok", "lost", "duplicated", "retried",
                     "failovers")))
        _console().print(t)
    return 0 if res["lost"] == 0 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from edge_agent.lab.demo import run_demo
    return run_demo(model=args.model, stages=args.stages, requests=args.requests, broker_kind=args.broker_kind)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "log_level", "WARNING"))
    handlers = {"run": cmd_run, "broker": cmd_broker, "deploy": cmd_deploy, "infer": cmd_infer,
                "undeploy": cmd_undeploy, "ls": cmd_ls, "zoo": cmd_zoo, "demo": cmd_demo, "keys": cmd_keys,
                "status": cmd_status, "rollback": cmd_rollback, "bench": cmd_bench}
    try:
        if args.cmd == "fleet":
            return cmd_fleet_init(args) if args.fleet_cmd == "init" else cmd_fleet_ls(args)
        return handlers[args.cmd](args)
    except EdgeAgentError as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, FileNotFoundError) as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
