"""DeviceInfo: what one device advertises, and its compact DNS-SD TXT encoding.

The TXT record is kept small (<= 200 bytes encoded) so the whole announcement fits in
one mDNS packet with room to spare; keys are therefore short:

    tv   TXT format version         isa  instruction set (x86_64-avx2, aarch64-neon, ...)
    id   device id (required)       c    CPU cores
    fl   fleet name                 ram  RAM in MiB
    br   MQTT broker URL            gf   measured GFLOP/s
    r    role                       v    software version
    x-*  free-form extra fields
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger("discovery")

TXT_VERSION = "1"
MAX_TXT_BYTES = 200
ROLES = ("agent", "broker", "operator")
EXTRA_PREFIX = "x-"

# A device id becomes a DNS-SD instance label and the host label `<id>.local.`, so it is
# kept to one plain DNS label: no dots, at most 63 bytes.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_FLEET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _check_name(kind: str, value: str, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use 1-63 characters from A-Z a-z 0-9 '_' '-'"
            + (" '.'" if kind == "fleet" else "")
            + ", starting with a letter or digit"
        )


@dataclass(frozen=True)
class DeviceInfo:
    """The facts a device advertises about itself over mDNS.

    ``role`` is ``"agent"``, ``"broker"`` (an agent that also hosts the MQTT broker) or
    ``"operator"`` (a CLI/API session). ``extra`` holds a few optional small string fields.
    """

    device_id: str
    fleet: str = "default"
    broker: str = ""
    isa: str = ""
    cores: int = 0
    ram_mb: int = 0
    gflops: float = 0.0
    version: str = ""
    role: str = "agent"
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check_name("device id", self.device_id, _ID_RE)
        _check_name("fleet", self.fleet, _FLEET_RE)
        if self.role not in ROLES:
            raise ValueError(f"invalid role {self.role!r} for device {self.device_id!r}: expected one of {ROLES}")
        if self.cores < 0 or self.ram_mb < 0 or not math.isfinite(self.gflops) or self.gflops < 0:
            raise ValueError(
                f"device {self.device_id!r}: cores, ram_mb and gflops must be finite and >= 0 "
                f"(got cores={self.cores}, ram_mb={self.ram_mb}, gflops={self.gflops})"
            )
        for key, value in self.extra.items():
            if not key or "=" in key or not isinstance(value, str):
                raise ValueError(f"device {self.device_id!r}: bad extra field {key!r}={value!r}")

    def to_txt(self) -> dict[str, str]:
        """Encode as TXT properties with short keys; empty/zero fields are left out.

        Raises ValueError when the encoded record would exceed ``MAX_TXT_BYTES``.
        """
        props: dict[str, str] = {"tv": TXT_VERSION, "id": self.device_id}
        optional = {
            "fl": self.fleet if self.fleet != "default" else "",
            "br": self.broker,
            "r": self.role if self.role != "agent" else "",
            "isa": self.isa,
            "c": str(self.cores) if self.cores else "",
            "ram": str(self.ram_mb) if self.ram_mb else "",
            "gf": _format_gflops(self.gflops) if self.gflops else "",
            "v": self.version,
        }
        props.update({key: value for key, value in optional.items() if value})
        for key, value in self.extra.items():
            props[EXTRA_PREFIX + key] = value
        size = txt_size(props)
        if size > MAX_TXT_BYTES:
            raise ValueError(
                f"TXT record for device {self.device_id!r} is {size} bytes, over the {MAX_TXT_BYTES}-byte "
                f"limit; shorten the broker URL, version or extra fields"
            )
        return props

    @classmethod
    def from_txt(cls, props: Mapping[bytes | str, bytes | str | None]) -> DeviceInfo:
        """Decode TXT properties tolerantly.

        Unknown keys are ignored; malformed numbers, roles or fleet names fall back to their
        defaults with a logged warning. A missing or invalid device id raises ValueError.
        """
        fields: dict[str, str] = {}
        for raw_key, raw_value in props.items():
            key = _text(raw_key).lower()
            fields[key] = "" if raw_value is None else _text(raw_value)
        device_id = fields.get("id", "")
        if not device_id:
            raise ValueError(f"TXT record has no device id (keys: {sorted(fields)})")
        _check_name("device id", device_id, _ID_RE)

        def warn(what: str, value: str, default: object) -> None:
            log.warning("device %s advertises a bad %s %r; using %r", device_id, what, value, default)

        def number(key: str, what: str, kind: type[int] | type[float]) -> int | float:
            value = fields.get(key, "")
            if not value:
                return kind(0)
            try:
                parsed = kind(value)
            except ValueError:
                warn(what, value, kind(0))
                return kind(0)
            if not math.isfinite(parsed) or parsed < 0:
                warn(what, value, kind(0))
                return kind(0)
            return parsed

        fleet = fields.get("fl") or "default"
        if not _FLEET_RE.match(fleet):
            warn("fleet", fleet, "default")
            fleet = "default"
        role = fields.get("r") or "agent"
        if role not in ROLES:
            warn("role", role, "agent")
            role = "agent"
        extra = {key[len(EXTRA_PREFIX) :]: value for key, value in fields.items() if key.startswith(EXTRA_PREFIX)}
        return cls(
            device_id=device_id,
            fleet=fleet,
            broker=fields.get("br", ""),
            isa=fields.get("isa", ""),
            cores=int(number("c", "core count", int)),
            ram_mb=int(number("ram", "RAM size", int)),
            gflops=float(number("gf", "GFLOP/s figure", float)),
            version=fields.get("v", ""),
            role=role,
            extra={key: value for key, value in extra.items() if key},
        )


def txt_size(props: Mapping[str, str | None]) -> int:
    """Size in bytes of the DNS TXT rdata for ``props`` (one length byte per ``key=value`` string)."""
    size = 0
    for key, value in props.items():
        entry = len(key.encode()) + (0 if value is None else 1 + len(value.encode()))
        if entry > 255:
            raise ValueError(f"TXT entry {key!r} is {entry} bytes; a single entry is limited to 255")
        size += 1 + entry
    return size


def _format_gflops(value: float) -> str:
    # Three significant decimals are plenty for placement and keep the record short.
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
