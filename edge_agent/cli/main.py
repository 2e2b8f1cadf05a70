"""The ``edge-agent`` command line: the parser, the dispatch to a command, and the one place where errors
become messages and exit codes. Thin: commands call the Python API and :mod:`edge_agent.cli.render` shows
the result (rich or ``--json``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from edge_agent._version import __version__
from edge_agent.cli import commands, serve
from edge_agent.cli.options import add_common_arguments, add_run_arguments, add_signing_arguments
from edge_agent.protocol.errors import EdgeAgentError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-agent", description="Edge inference across a fleet of devices.")
    ap.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="run the agent daemon on this device")
    add_common_arguments(p)
    add_run_arguments(p)

    p = sub.add_parser("keys", help="fleet signing keys")
    ksub = p.add_subparsers(dest="keys_cmd", required=True)
    k = ksub.add_parser("init", help="create an Ed25519 fleet signing key pair (fleet.key, fleet.pub)")
    k.add_argument("--out", required=True)
    k.add_argument("--force", action="store_true", help="overwrite an existing key")

    p = sub.add_parser("broker", help="run an MQTT broker for a small fleet (Mosquitto if installed, else embedded)")
    add_common_arguments(p)
    p.add_argument("--kind", choices=["auto", "mosquitto", "embedded"], default="auto")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--advertise", action="store_true", help="advertise the broker over mDNS")

    p = sub.add_parser("fleet", help="fleet queries")
    fsub = p.add_subparsers(dest="fleet_cmd", required=True)
    ls = fsub.add_parser("ls", help="list devices: status, ISA, cores, RAM, GFLOP/s, models")
    add_common_arguments(ls)
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
    fi.add_argument("--stream-topics", default="", metavar="FILTER,...",
                    help="topic filters outside ea/ devices may use as stream sources and sinks, e.g. cams/#")
    fi.add_argument("--viewer", default="", metavar="NAME,...",
                    help="read-only identities (dashboards): read states and documents, write nothing")
    fi.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("deploy", help="deploy an ONNX model split into pipeline stages")
    add_common_arguments(p)
    p.add_argument("model", help="path of the ONNX model")
    p.add_argument("--name", required=True)
    p.add_argument("--stages", type=int, default=None, help="number of pipeline stages (default: best)")
    p.add_argument("--devices", default=None, help="comma-separated device ids to use")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="the shape to plan dynamic input dims on (any shape is served)")
    p.add_argument("--sample-input", default=None, metavar="FILE.npz",
                   help="a sample request (arrays by input name): its shapes are used for planning")
    p.add_argument("--verify-fraction", type=float, default=0.0, metavar="F",
                   help="spot-check this share of results against ONNX Runtime on this machine (with bench)")
    p.add_argument("--replicas", type=int, default=None,
                   help="devices per stage (balanced by queue depth); default: the planner decides")
    p.add_argument("--objective", choices=("throughput", "latency"), default="throughput",
                   help="what the planner maximises when --stages/--replicas are not given: throughput with "
                        "many requests in flight (default), or the latency of one request")
    p.add_argument("--no-failover", action="store_true", help="do not move stages off dead devices")
    p.add_argument("--canary", default=None, help="first deploy to N devices (or N%%) and check the gates")
    p.add_argument("--gate", default=None, help='e.g. "p95_ms<=120,error_rate<=0.01,max_abs_diff<=1e-3"')
    p.add_argument("--check-data", default=None, help=".npz with inputs (samples on axis 0) for the gates")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", action="store_true")
    add_signing_arguments(p)

    p = sub.add_parser("status", help="desired vs reported state of a deployment, and its rollout history")
    add_common_arguments(p)
    p.add_argument("name")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("rollback", help="return a deployment to its previous good version (signed)")
    add_common_arguments(p)
    p.add_argument("name")
    p.add_argument("--to", type=int, default=None, help="a specific earlier version")
    p.add_argument("--timeout", type=float, default=300.0)
    add_signing_arguments(p)

    p = sub.add_parser("refresh", help="sign and publish a new freshness statement of the deployed versions "
                                       "(run from a timer, more often than its lifetime)")
    add_common_arguments(p)
    p.add_argument("--ttl", type=float, default=86400.0, help="seconds the statement stays valid (default 1 day)")
    p.add_argument("--every", type=float, default=0.0,
                   help="keep running and refresh every this many seconds (default: once)")
    add_signing_arguments(p)

    p = sub.add_parser("bench", help="load a deployment: latency percentiles, throughput, lost, duplicated")
    add_common_arguments(p)
    p.add_argument("name")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per request")
    p.add_argument("--input", action="append", default=[], help="inputs (default: random per input spec)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("infer", help="run inference on a deployed model")
    add_common_arguments(p)
    p.add_argument("name")
    p.add_argument("--input", action="append", required=True, metavar="NAME=FILE.npy",
                   help="input tensor (repeatable) or an .npz with all inputs")
    p.add_argument("--output-dir", default=None, help="write each output as <name>.npy here")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("undeploy", help="remove a deployment from the fleet")
    add_common_arguments(p)
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=30.0)
    add_signing_arguments(p)

    p = sub.add_parser("ls", help="list deployments")
    add_common_arguments(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("inspect", help="what deploying a model would do: shapes, cost, native ops, the plan")
    add_common_arguments(p)
    p.add_argument("model", help="path of the ONNX model")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="the shape to plan dynamic input dims on")
    p.add_argument("--sample-input", default=None, metavar="FILE.npz", help="a sample request (its shapes)")
    p.add_argument("--devices", default=None, metavar="ID:GFLOPS[:RAM_MB],... | NxGFLOPS",
                   help="device profiles to plan on (default: the live fleet, when a broker is reachable)")
    p.add_argument("--stages", type=int, default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("dashboard", help="web dashboard of the fleet (live; read-only unless --key is given)")
    add_common_arguments(p)
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--bind", default="127.0.0.1", help="listen address (default loopback; see docs/dashboard.md)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between live updates")
    add_signing_arguments(p)

    p = sub.add_parser("metrics", help="serve the fleet-wide view in Prometheus format (no web page)")
    add_common_arguments(p)
    p.add_argument("--port", type=int, default=9108)
    p.add_argument("--bind", default="127.0.0.1", help="listen address (default loopback)")

    p = sub.add_parser("stream", help="live data streams: an MQTT topic through a deployment to another topic")
    ssub = p.add_subparsers(dest="stream_cmd", required=True)
    s = ssub.add_parser("start", help="bind a source topic to a deployment; results go to the sink topic")
    add_common_arguments(s)
    s.add_argument("name")
    s.add_argument("--model", required=True, help="the deployment that runs each frame")
    s.add_argument("--source", required=True, help="topic (filter) frames arrive on, e.g. cams/door or "
                                                   "ea/v1/<fleet>/src/<device>/<name>")
    s.add_argument("--sink", required=True, help="topic results are published on (no wildcards, outside ea/)")
    s.add_argument("--policy", default="latest", help="latest (drop stale frames) or queue:N (bounded backlog)")
    s.add_argument("--batch", type=int, default=1, help="frames per request (models with a dynamic batch dim)")
    s.add_argument("--input", default=None, help="the model input frames feed (models with several inputs)")
    s.add_argument("--preprocess", default=None, metavar="SPEC",
                   help="for PNG/JPEG frames: resize=HxW,layout=NCHW|NHWC,mean=M[/M/M],scale=S[/S/S],"
                        "color=RGB|BGR|L,dtype=float32 (default: the model input's size, pixels / 255)")
    s.add_argument("--timeout", type=float, default=30.0, help="for a device to start the ingress")
    s.add_argument("--json", action="store_true")
    add_signing_arguments(s)
    for cmd, text in (("ls", "streams, their topics and ingress devices"),
                      ("stats", "per stream fps in/out, drops, errors, end-to-end latency percentiles")):
        s = ssub.add_parser(cmd, help=text)
        add_common_arguments(s)
        if cmd == "stats":
            s.add_argument("name", nargs="?", default=None)
        s.add_argument("--json", action="store_true")
    s = ssub.add_parser("stop", help="stop a stream (signed; devices drop its ingress)")
    add_common_arguments(s)
    s.add_argument("name")
    s.add_argument("--timeout", type=float, default=30.0)
    add_signing_arguments(s)

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
    p.add_argument("--dashboard", action="store_true",
                   help="after the checks, serve the dashboard (keeps the fleet and a light load running) until Ctrl-C")
    p.add_argument("--dashboard-port", type=int, default=8700)
    p.add_argument("--log-level", default="WARNING")

    p = sub.add_parser("sim", help="a simulated fleet of emulated devices (CPU quota, memory, delay) until Ctrl-C")
    p.add_argument("--devices", required=True, metavar="PROFILE:N,... | FLEET.yaml",
                   help="e.g. rpi4:3,gateway:1 (profiles: rpi4, rpi5, jetson-nano-cpu, gateway, phone, host) "
                        "or a YAML/JSON fleet file")
    p.add_argument("--model", default=None, help="deploy this ONNX file or zoo model once the devices are up")
    p.add_argument("--stages", type=int, default=None)
    p.add_argument("--fleet", default="default")
    p.add_argument("--broker-kind", choices=["auto", "mosquitto", "embedded"], default="auto")
    p.add_argument("--timeout", type=float, default=120.0, help="for the devices to come up and the deploy")
    p.add_argument("--log-level", default="WARNING")
    return ap


Command = Callable[[argparse.Namespace], int]

COMMANDS: dict[str, Command] = {
    "run": serve.cmd_run, "broker": serve.cmd_broker, "deploy": commands.cmd_deploy, "infer": commands.cmd_infer,
    "undeploy": commands.cmd_undeploy, "ls": commands.cmd_ls, "zoo": commands.cmd_zoo, "inspect": commands.cmd_inspect, "demo": commands.cmd_demo,
    "keys": commands.cmd_keys, "status": commands.cmd_status, "rollback": commands.cmd_rollback,
    "refresh": commands.cmd_refresh,
    "bench": commands.cmd_bench, "sim": commands.cmd_sim, "dashboard": commands.cmd_dashboard,
    "metrics": commands.cmd_metrics,
}
FLEET_COMMANDS: dict[str, Command] = {"init": commands.cmd_fleet_init, "ls": commands.cmd_fleet_ls}
STREAM_COMMANDS: dict[str, Command] = {"start": commands.cmd_stream_start, "ls": commands.cmd_stream_ls,
                                       "stats": commands.cmd_stream_stats, "stop": commands.cmd_stream_stop}


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_command(command: Command, args: argparse.Namespace) -> int:
    """Run one command; fleet errors exit 1, bad arguments or missing files 2, Ctrl-C 130 (with a message
    on stderr that names what failed)."""
    try:
        return command(args)
    except EdgeAgentError as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, FileNotFoundError) as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "WARNING"))
    if args.cmd == "fleet":
        command = FLEET_COMMANDS[args.fleet_cmd]
    elif args.cmd == "stream":
        command = STREAM_COMMANDS[args.stream_cmd]
    else:
        command = COMMANDS[args.cmd]
    return run_command(command, args)


if __name__ == "__main__":
    sys.exit(main())
