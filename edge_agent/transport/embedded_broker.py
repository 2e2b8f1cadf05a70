"""Zero-setup MQTT 3.1.1 broker (amqtt) for demos where Mosquitto is not installed.

Run as ``python -m edge_agent.transport.embedded_broker --port 1883``. It listens on loopback by default. For real
fleets use Mosquitto (or another production broker); this one is for demos only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal


class SnapshotDict(dict):
    """A dict whose iteration walks a snapshot of its keys/items.

    amqtt 0.12.1 iterates its subscription table across ``await`` points (``for topic in
    self._subscriptions: await ...`` when a session starts, ``for f, subs in self._subscriptions.items():
    await ...`` in every broadcast). A client subscribing meanwhile adds a key, the iteration raises
    "dictionary changed size during iteration", and that client session's handler dies while its TCP
    connection stays open: the client believes it is connected and receives nothing. Iterating a snapshot
    makes those loops see the table as it was when they started, which is what they mean.
    """

    def __iter__(self):  # noqa: ANN204
        return iter(list(super().keys()))

    def keys(self):  # noqa: ANN201
        return list(super().keys())

    def items(self):  # noqa: ANN201
        return list(super().items())

    def values(self):  # noqa: ANN201
        return list(super().values())


def harden(broker: object) -> object:
    """Work around amqtt's subscription-table race (see :class:`SnapshotDict`) on a Broker instance."""
    subs = getattr(broker, "_subscriptions", None)
    if isinstance(subs, dict) and not isinstance(subs, SnapshotDict):
        broker._subscriptions = SnapshotDict(subs)   # type: ignore[attr-defined]
    return broker


async def _serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 1000}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = harden(Broker(config))
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
