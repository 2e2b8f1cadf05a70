"""The long-running commands: ``run`` (the agent daemon of this device) and ``broker``.

:func:`agent_config` and :func:`serve_agent` are also what the lab's device entry point
(``python -m edge_agent.lab.device``) runs, with a backend wrapper injected into the config.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent._version import __version__
from edge_agent.cli import render

if TYPE_CHECKING:
    from edge_agent.agent.daemon import Agent, AgentConfig


def agent_config(args: argparse.Namespace) -> AgentConfig:
    """The :class:`AgentConfig` that ``edge-agent run`` arguments describe: trust keys loaded, broker taken
    from the arguments, the environment, the credentials file or mDNS (in that order)."""
    from discovery import resolve_interfaces
    from edge_agent.agent.daemon import AgentConfig
    from edge_agent.security.keys import load_trusted_keys
    from edge_agent.transport.resolve import resolve_broker

    if not args.trust and not args.dev:
        raise ValueError("a device needs --trust <fleet.pub> (install only manifests signed by the fleet key) "
                         "or an explicit --dev (development mode: unsigned manifests from anyone on the broker)")
    trust = load_trusted_keys(args.trust) if args.trust else []
    creds = None
    if args.credentials:
        from edge_agent.security.pki import Credentials
        creds = Credentials.from_file(args.credentials)
        creds.check_private(args.credentials)     # a device refuses an identity others can read
    ifaces = resolve_interfaces(args.interfaces)
    choice = resolve_broker(args.broker, args.fleet, ifaces, creds, insecure=args.insecure)
    broker, transport_kwargs = choice.url, choice.transport_kwargs
    data_dir = Path(args.data_dir or Path.home() / ".local" / "share" / "edge-agent" / args.name)
    return AgentConfig(name=args.name, broker=broker, data_dir=data_dir, fleet=args.fleet, interfaces=ifaces,
                       threads=args.threads, backend=args.backend, gflops=args.gflops,
                       discovery=not args.no_discovery, advertise_broker=args.advertise_broker,
                       max_message_bytes=int(args.max_message_mb * (1 << 20)), trust=trust, dev_mode=args.dev,
                       transport_kwargs=transport_kwargs, metrics_port=args.metrics_port,
                       metrics_host=args.metrics_host, recheck_every_s=args.recheck_every,
                       sources=list(getattr(args, "sources", None) or []),
                       max_queued_requests=getattr(args, "max_queued_requests", 1024))


def serve_agent(cfg: AgentConfig, prepare: Callable[[Agent], None] | None = None) -> int:
    """Run an agent until SIGTERM/SIGINT. ``prepare`` sees the agent after construction, before it connects."""
    import os

    from edge_agent.agent.daemon import Agent

    os.umask(0o077)   # everything the daemon writes (shards, manifests, ledger) is for its own user only
    agent = Agent(cfg)
    if prepare is not None:
        prepare(agent)
    agent.start(wait=None)
    render.agent_started(agent)
    agent.run_forever()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return serve_agent(agent_config(args))


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
    render.broker_started(b, advertised=disc is not None)
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
