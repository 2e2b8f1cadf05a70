"""Which broker to connect to, and with which identity: one answer for the CLI, the agent and the API.

Order: the URL given (``--broker``), else ``$EDGE_AGENT_BROKER``, else the credentials file's broker, else a
broker advertised over mDNS for the fleet on the given interfaces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from edge_agent.protocol.errors import BrokerError
from edge_agent.transport.mqtt import broker_from_env

log = logging.getLogger("edge_agent.transport")


class _Credentials(Protocol):
    broker_url: str
    plain_url: str

    def transport_kwargs(self) -> dict: ...


def resolve_broker(broker: str | None, fleet: str, interfaces: Sequence[str],
                   credentials: _Credentials | None = None) -> tuple[str, dict[str, Any]]:
    """The broker URL and the transport keyword arguments (username, password, TLS) to connect with."""
    url = broker_from_env(broker) or ((credentials.broker_url or credentials.plain_url or None)
                                      if credentials is not None else None)
    if url is None:
        url = discover_broker(fleet, interfaces)
    return url, (credentials.transport_kwargs() if credentials is not None else {})


def discover_broker(fleet: str, interfaces: Sequence[str]) -> str:
    """A broker advertised over mDNS for ``fleet`` on ``interfaces``; BrokerError when none answers."""
    try:
        from discovery import find_broker
    except ImportError:
        find_broker = None
    url = find_broker(fleet=fleet, interfaces=list(interfaces), timeout=3.0) if find_broker else None
    if not url:
        raise BrokerError("no broker given (--broker or EDGE_AGENT_BROKER) and none advertised over mDNS on "
                          f"{', '.join(interfaces)} for fleet '{fleet}'")
    log.info("found broker %s by mDNS", url)
    return url
