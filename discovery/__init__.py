"""mDNS/DNS-SD discovery for edge-agent: advertise a device, browse its fleet, keep a peer table.

Knows nothing of ONNX or MQTT; the broker is only a URL string carried in the TXT record.
"""

from .interfaces import interface_ipv4, list_interfaces, resolve_interfaces
from .peers import Peer, PeerTable
from .service import (
    DEFAULT_TTL,
    SERVICE_TYPE,
    Discovery,
    DuplicateDeviceError,
    find_broker,
    service_name_for,
)
from .txt import MAX_TXT_BYTES, DeviceInfo

__all__ = [
    "DEFAULT_TTL",
    "MAX_TXT_BYTES",
    "SERVICE_TYPE",
    "DeviceInfo",
    "Discovery",
    "DuplicateDeviceError",
    "Peer",
    "PeerTable",
    "find_broker",
    "interface_ipv4",
    "list_interfaces",
    "resolve_interfaces",
    "service_name_for",
]
