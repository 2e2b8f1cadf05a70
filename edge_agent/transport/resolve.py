"""Which broker to connect to, and with which identity: one answer for the CLI, the agent and the API.

Order: the URL given (``--broker``), else ``$EDGE_AGENT_BROKER``, else the credentials file's broker (its TLS
listener first), else a broker advertised over mDNS for the fleet on the given interfaces.

No silent downgrade: with credentials, a plain ``mqtt://`` URL (which would send the password in clear and
skip the fleet CA's check of the broker) is refused unless ``insecure`` is set explicitly. With TLS the
broker must present a certificate signed by the fleet CA in the credentials, so a broker advertised over
mDNS by someone else cannot pass for the fleet's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.protocol.errors import BrokerError
from edge_agent.transport.mqtt import ENV_BROKER, BrokerURL, broker_from_env

log = logging.getLogger("edge_agent.transport")


class _Credentials(Protocol):
    username: str
    broker_url: str
    plain_url: str

    def transport_kwargs(self) -> dict: ...


@dataclass(frozen=True)
class BrokerChoice:
    """The broker URL, how to connect (username, password, TLS) and why this broker was chosen."""

    url: str
    transport_kwargs: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def resolve_broker(broker: str | None, fleet: str, interfaces: Sequence[str],
                   credentials: _Credentials | None = None, insecure: bool = False) -> BrokerChoice:
    """Choose the broker (see the module docstring); BrokerError when none is found or it would downgrade."""
    if broker:
        url, reason = broker, "given with --broker"
    elif broker_from_env(None):
        url, reason = os.environ[ENV_BROKER], f"from ${ENV_BROKER}"
    elif credentials is not None and (credentials.broker_url or credentials.plain_url):
        url = credentials.broker_url or credentials.plain_url
        reason = f"from the credentials of '{credentials.username}'"
    else:
        url = discover_broker(fleet, interfaces)
        reason = f"advertised over mDNS for fleet '{fleet}' on {', '.join(interfaces)}"
    kwargs: dict[str, Any] = {}
    if credentials is not None:
        kwargs = credentials.transport_kwargs()
        if BrokerURL.parse(url).scheme != "mqtts":
            if not insecure:
                tls = f" (its TLS listener is {credentials.broker_url})" if credentials.broker_url else ""
                raise BrokerError(
                    f"refusing to connect to {url} ({reason}) with the credentials of '{credentials.username}': "
                    f"a plain mqtt:// connection sends the password in clear and cannot check the broker's "
                    f"certificate; use an mqtts:// URL{tls}, or pass --insecure to accept that")
            log.warning("INSECURE: credentials of '%s' sent to %s without TLS (--insecure)",
                        credentials.username, url)
    (log.warning if reason.startswith("advertised") else log.info)("broker %s: %s", url, reason)
    return BrokerChoice(url, kwargs, reason)


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
    return url
