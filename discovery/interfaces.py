"""Turn interface names or addresses into the IPv4 addresses zeroconf binds to.

Binding every interface is the default of most mDNS libraries and the source of many
"device not discovered" and "it multicast on the wrong network" reports, so here the
interfaces are always explicit: nothing given means loopback, and "all" must be asked for.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Callable, Sequence

_SIOCGIFADDR = 0x8915  # linux/sockios.h
_IFNAMSIZ = 16


def interface_ipv4(name: str) -> str | None:
    """The primary IPv4 address of interface ``name``, or None if it has none or does not exist."""
    if not name or len(name.encode()) >= _IFNAMSIZ:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("256s", name.encode())
        try:
            reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
        except OSError:
            return None
    return socket.inet_ntoa(reply[20:24])


def list_interfaces() -> dict[str, str | None]:
    """Every interface name of this host (network namespace) mapped to its IPv4 address or None."""
    return {name: interface_ipv4(name) for _, name in socket.if_nameindex()}


def _describe(interfaces: dict[str, str | None]) -> str:
    return ", ".join(f"{name} ({addr or 'no IPv4'})" for name, addr in interfaces.items()) or "none"


def resolve_interfaces(spec: str | Sequence[str] | None, allow_all: bool = False) -> list[str]:
    """Resolve interface names and/or IPv4 addresses to a list of IPv4 addresses.

    ``spec`` is None, a string (one name/address or several separated by commas) or a
    sequence of them. None or "" means ``["127.0.0.1"]``. An IPv4 address must belong to
    this host (any 127.x address counts). ``"all"`` (every interface with an IPv4 address)
    is only accepted with ``allow_all=True``. Raises ValueError naming the offending entry
    and listing the available interfaces.
    """
    if spec is None:
        items: list[str] = []
    elif isinstance(spec, str):
        items = [part.strip() for part in spec.split(",")]
    else:
        items = [str(part).strip() for part in spec]
    items = [item for item in items if item]
    if not items:
        return ["127.0.0.1"]

    available: dict[str, str | None] | None = None

    def known() -> dict[str, str | None]:
        nonlocal available
        if available is None:
            available = list_interfaces()
        return available

    result: list[str] = []
    for item in items:
        if item.lower() == "all":
            if not allow_all:
                raise ValueError(
                    "refusing to bind mDNS on all interfaces; name them explicitly "
                    f"(available: {_describe(known())}) or pass allow_all=True"
                )
            addresses = [addr for addr in known().values() if addr]
        else:
            addresses = [_resolve_one(item, known)]
        for addr in addresses:
            if addr not in result:
                result.append(addr)
    return result


def _resolve_one(item: str, known: Callable[[], dict[str, str | None]]) -> str:
    interfaces = known()
    try:
        ip = ipaddress.ip_address(item)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.version != 4:
            raise ValueError(f"interface address {item!r} is not IPv4; discovery runs on IPv4 only")
        if ip.is_loopback or item in interfaces.values():
            return str(ip)
        raise ValueError(
            f"address {item!r} is not assigned to any interface here (available: {_describe(interfaces)})"
        )
    if item not in interfaces:
        raise ValueError(f"unknown network interface {item!r} (available: {_describe(interfaces)})")
    addr = interfaces[item]
    if addr is None:
        raise ValueError(f"interface {item!r} has no IPv4 address (available: {_describe(interfaces)})")
    return addr
