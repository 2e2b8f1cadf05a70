"""The embedded (amqtt) demo broker: its subscription-table race cannot strand a client session."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.transport.embedded_broker import SnapshotDict, harden


async def _iterate_while_another_client_subscribes(table: dict) -> None:
    """amqtt's pattern: walk the subscription table with an await per entry while another session
    coroutine adds a subscription."""
    async def subscriber() -> None:
        await asyncio.sleep(0)
        table["ea/v1/f/dev/new/in"] = []

    task = asyncio.ensure_future(subscriber())
    for _topic in table:
        await asyncio.sleep(0)
    for _topic, _subs in table.items():
        await asyncio.sleep(0)
    await task


def test_the_race_kills_a_plain_dict_iteration() -> None:
    with pytest.raises(RuntimeError, match="changed size during iteration"):
        asyncio.run(_iterate_while_another_client_subscribes({f"t/{i}": [] for i in range(4)}))


def test_the_hardened_table_survives_it_and_keeps_every_entry() -> None:
    table = SnapshotDict({f"t/{i}": [] for i in range(4)})
    asyncio.run(_iterate_while_another_client_subscribes(table))
    assert "ea/v1/f/dev/new/in" in table and len(table) == 5


def test_harden_replaces_the_table_of_a_real_amqtt_broker() -> None:
    from amqtt.broker import Broker

    async def build() -> object:   # amqtt's Broker wants a running loop
        return harden(Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}}))

    broker = asyncio.run(build())
    assert isinstance(broker._subscriptions, SnapshotDict)
    # the code that iterates it across awaits (session start) still reads this very attribute
    assert "_subscriptions" in Broker._handle_client_session.__code__.co_names
