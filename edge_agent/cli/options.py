"""Argument groups shared by several commands, and by the lab's device entry point (``edge_agent.lab.device``),
which takes exactly the options of ``edge-agent run``."""

from __future__ import annotations

import argparse
import os


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Broker, fleet, mDNS interfaces, log level and identity: every command that talks to a fleet."""
    p.add_argument("--broker", help="broker URL, e.g. mqtt://10.0.0.5:1883 (default: $EDGE_AGENT_BROKER, "
                                    "else found by mDNS)")
    p.add_argument("--fleet", default=os.environ.get("EDGE_AGENT_FLEET", "default"), help="fleet name")
    p.add_argument("--interface", action="append", dest="interfaces", metavar="IFACE",
                   help="interface name or IPv4 address for mDNS (repeatable; default: loopback)")
    p.add_argument("--log-level", default=os.environ.get("EDGE_AGENT_LOG", "WARNING"))
    p.add_argument("--credentials", default=os.environ.get("EDGE_AGENT_CREDENTIALS"),
                   help="identity file from `edge-agent fleet init` (<name>.cred) for an authenticated broker")
    p.add_argument("--insecure", action="store_true",
                   help="allow credentials over a plain mqtt:// connection (password in clear, broker unchecked)")


def add_signing_arguments(p: argparse.ArgumentParser) -> None:
    """The fleet signing key of commands that publish manifests (deploy, rollback, undeploy)."""
    p.add_argument("--key", default=os.environ.get("EDGE_AGENT_KEY"),
                   help="fleet signing key (fleet.key from `edge-agent keys init`); without it manifests are "
                        "unsigned and only development-mode devices accept them")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Everything ``edge-agent run`` takes (with :func:`add_common_arguments`); see ``serve.agent_config``."""
    p.add_argument("--name", required=True, help="device id (unique in the fleet)")
    p.add_argument("--data-dir", default=None, help="shard store and state (default ~/.local/share/edge-agent/<name>)")
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1), help="compute threads per stage")
    p.add_argument("--backend", choices=["auto", "native", "onnxruntime"], default="auto")
    p.add_argument("--gflops", type=float, default=None, help="advertise this GFLOP/s instead of measuring")
    p.add_argument("--recheck-every", type=float, default=60.0, metavar="SECONDS",
                   help="when idle, measure GFLOP/s and the link to the broker again this often (0: only at start)")
    p.add_argument("--no-discovery", action="store_true", help="do not advertise/browse mDNS")
    p.add_argument("--advertise-broker", action="store_true", help="advertise the broker URL as its host")
    p.add_argument("--max-message-mb", type=float, default=64.0, help="reject larger messages")
    p.add_argument("--max-queued-requests", type=int, default=1024, metavar="N",
                   help="requests waiting for the stage worker before it answers 'overloaded'; shared fairly: "
                        "when full, the sender with the largest backlog is shed first")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics endpoint (default loopback)")
    p.add_argument("--source", action="append", default=[], dest="sources", metavar="NAME=KIND:OPTIONS",
                   help="host a stream source on this device, published on ea/v1/<fleet>/src/<name>/<NAME>: "
                        "NAME=dir:/path/to/frames[,fps=5] (images, .npy, .npz; looped) or "
                        "NAME=synthetic[:fps=10,shape=1x3x224x224,dtype=float32] (repeatable; docs/streams.md)")
    p.add_argument("--trust", action="append", default=[], metavar="FLEET.PUB",
                   help="public key whose signed manifests this device installs (repeatable for rotation)")
    p.add_argument("--dev", action="store_true",
                   help="development mode: install unsigned manifests from anyone on the broker (demo, labs)")
