"""Zero-setup MQTT 3.1.1 broker (amqtt) for demos where Mosquitto is not installed.

Run as ``python -m edge_agent.transport.embedded_broker --port 1883``. It listens on loopback by default. For real
fleets use Mosquitto (or another production broker); this one is for demos only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal


async def _serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 1000}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # amqtt logs every connect/disconnect at INFO and warns on normal client drops
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
