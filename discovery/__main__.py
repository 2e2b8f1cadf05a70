"""Small command-line front end for checking discovery by hand and for driving it from tests.

    python -m discovery browse [--fleet F] [--interfaces lo] [--timeout 3] [--json]
    python -m discovery find-broker [--fleet F] [--timeout 3]
    python -m discovery advertise --id cam-1 [--fleet F] [--broker URL] [--gflops 12.5] ...

``advertise`` also browses and writes one JSON object per line to stdout: ``ready`` once
registered, then ``add``/``update``/``remove`` peer events. It reads commands from stdin:
``update key=value ...`` (DeviceInfo field names) re-announces the TXT record, ``quit`` or
end of input sends goodbyes and exits. A duplicate device id prints an ``error`` line and
exits with status 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
import time
from typing import Any

from .peers import Peer
from .service import Discovery, DuplicateDeviceError, find_broker
from .txt import DeviceInfo

EXIT_DUPLICATE = 3

_out_lock = threading.Lock()


def _emit(obj: dict[str, Any]) -> None:
    obj.setdefault("t", time.time())
    with _out_lock:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


def peer_to_dict(peer: Peer) -> dict[str, Any]:
    """A JSON-ready view of a peer."""
    return {
        "info": dataclasses.asdict(peer.info),
        "addresses": peer.addresses,
        "port": peer.port,
        "service_name": peer.service_name,
        "first_seen": peer.first_seen,
        "last_seen": peer.last_seen,
    }


def _parse_fields(pairs: list[str]) -> dict[str, Any]:
    types = {f.name: f.type for f in dataclasses.fields(DeviceInfo)}
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types or key in ("device_id", "extra"):
            raise ValueError(f"cannot set field {key!r}")
        fields[key] = int(value) if types[key] == "int" else float(value) if types[key] == "float" else value
    return fields


def _cmd_browse(args: argparse.Namespace) -> int:
    with Discovery(args.interfaces, fleet=args.fleet) as discovery:
        table = discovery.browse()
        time.sleep(args.timeout)
        peers = table.peers()
    if args.json:
        _emit({"peers": [peer_to_dict(peer) for peer in peers]})
        return 0
    for peer in peers:
        info = peer.info
        print(
            f"{info.device_id:20} {info.fleet:10} {info.role:8} {','.join(peer.addresses)}:{peer.port:<6} "
            f"{info.isa:14} {info.cores:3d}c {info.ram_mb:6d}MiB {info.gflops:8.1f}GF/s {info.broker}"
        )
    return 0


def _cmd_find_broker(args: argparse.Namespace) -> int:
    url = find_broker(args.fleet, args.interfaces, timeout=args.timeout)
    print(url or "")
    return 0 if url else 1


def _cmd_advertise(args: argparse.Namespace) -> int:
    info = DeviceInfo(
        device_id=args.id,
        fleet=args.fleet or "default",
        broker=args.broker,
        isa=args.isa,
        cores=args.cores,
        ram_mb=args.ram_mb,
        gflops=args.gflops,
        version=args.version,
        role=args.role,
    )
    with Discovery(args.interfaces, fleet=args.fleet) as discovery:
        if not args.no_browse:
            discovery.browse(lambda event, peer: _emit({"event": event, "peer": peer_to_dict(peer)}))
        try:
            discovery.advertise(info, port=args.port)
        except DuplicateDeviceError as exc:
            _emit({"event": "error", "error": "DuplicateDeviceError", "message": str(exc)})
            return EXIT_DUPLICATE
        _emit({"event": "ready", "device_id": info.device_id, "service_name": discovery.service_name})
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            if words[0] == "update":
                try:
                    info = dataclasses.replace(info, **_parse_fields(words[1:]))
                    discovery.update(info)
                except (TypeError, ValueError) as exc:
                    _emit({"event": "error", "error": type(exc).__name__, "message": str(exc)})
                    continue
                _emit({"event": "updated", "info": dataclasses.asdict(info)})
            else:
                _emit({"event": "error", "error": "UnknownCommand", "message": line.strip()})
    _emit({"event": "closed", "device_id": info.device_id})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m discovery``."""
    parser = argparse.ArgumentParser(prog="python -m discovery", description=__doc__.splitlines()[0])
    parser.add_argument("--interfaces", default="127.0.0.1", help="interface names or IPv4 addresses")
    parser.add_argument("--fleet", default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    browse = sub.add_parser("browse", help="list peers seen within --timeout seconds")
    browse.add_argument("--timeout", type=float, default=3.0)
    browse.add_argument("--json", action="store_true")
    browse.set_defaults(func=_cmd_browse)

    broker = sub.add_parser("find-broker", help="print the broker URL advertised by the fleet")
    broker.add_argument("--timeout", type=float, default=3.0)
    broker.set_defaults(func=_cmd_find_broker)

    adv = sub.add_parser("advertise", help="advertise a device, print peer events as JSON lines")
    adv.add_argument("--id", required=True)
    adv.add_argument("--broker", default="")
    adv.add_argument("--isa", default="")
    adv.add_argument("--cores", type=int, default=0)
    adv.add_argument("--ram-mb", type=int, default=0)
    adv.add_argument("--gflops", type=float, default=0.0)
    adv.add_argument("--version", default="")
    adv.add_argument("--role", default="agent")
    adv.add_argument("--port", type=int, default=0)
    adv.add_argument("--no-browse", action="store_true")
    adv.set_defaults(func=_cmd_advertise)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
