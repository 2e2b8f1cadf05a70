"""Device profiles: what an emulated device of a simulated fleet may use of this machine.

A profile is a CPU quota (in cores of *this* machine: 0.17 = 17 ms of CPU per 100 ms), the threads the
agent runs with, a memory limit, and for network-namespace hosts a link rate; an added one-way delay goes
through the fault proxy. :mod:`edge_agent.lab.cgroups` enforces quota and memory, ``SimFleet`` and
``LabFleet`` apply the rest. The agent then *measures* what it got (GFLOP/s under the quota, its link to
the broker), so the planner sees the emulated device, not the profile.

How the quotas were chosen. The reference is one core of this machine: ~93 GFLOP/s FP32 GEMM (BRIEF §4,
ORT MatMul N=512-1024 on AMD Zen 3, AVX2+FMA; numpy/OpenBLAS the same). A profile's quota is its device's
FP32 GEMM throughput (all its cores) over that figure. Each profile says where its figure comes from;
"estimate" means no published GEMM figure was found and it was derived as stated.

Parse a fleet with :func:`parse_fleet_spec` (``"rpi4:3,gateway:1"``) or :func:`load_fleet_file` (YAML or
JSON)::

    devices:
      - {profile: rpi4, count: 3}
      - {name: gw, profile: gateway, link_mbit: 100}
    profiles:                      # optional: new profiles, from scratch or from a shipped one
      slow-pi: {base: rpi4, cpu: 0.08}
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST_CORE_GFLOPS = 93.0   # FP32 GEMM, one core of the machines the BRIEF measured (the quota reference)


@dataclass(frozen=True)
class DeviceProfile:
    """An emulated device class. ``cpu`` is a CPU quota in cores of this machine (None: unlimited)."""

    name: str
    cpu: float | None = None          # 0.25 = a quarter of one core here; 1.5 = one and a half cores
    threads: int = 1                  # threads the agent runs stages with (capped to this machine's cores)
    memory_mb: int | None = None      # memory limit of the agent process (cgroup), None: unlimited
    link_mbit: float | None = None    # link rate, network-namespace hosts only (htb), None: unlimited
    delay_ms: float = 0.0             # added one-way delay to the broker (fault proxy)
    source: str = ""                  # where the quota comes from

    def __post_init__(self) -> None:
        if self.cpu is not None and not 0.01 <= self.cpu <= 1024:
            raise ValueError(f"profile {self.name!r}: cpu quota must be within 0.01..1024 cores, got {self.cpu}")
        if self.threads < 1:
            raise ValueError(f"profile {self.name!r}: threads must be >= 1, got {self.threads}")
        if self.memory_mb is not None and self.memory_mb < 64:
            raise ValueError(f"profile {self.name!r}: memory_mb must be >= 64 (an idle agent needs ~70 MB), "
                             f"got {self.memory_mb}")
        if self.link_mbit is not None and self.link_mbit <= 0:
            raise ValueError(f"profile {self.name!r}: link_mbit must be > 0, got {self.link_mbit}")
        if self.delay_ms < 0:
            raise ValueError(f"profile {self.name!r}: delay_ms must be >= 0, got {self.delay_ms}")

    @property
    def expected_gflops(self) -> float | None:
        """The FP32 GEMM throughput the quota stands for (what the agent should roughly measure)."""
        return None if self.cpu is None else self.cpu * HOST_CORE_GFLOPS

    def with_changes(self, **changes: Any) -> DeviceProfile:
        """A copy with some fields changed (checked like a new profile)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _quota(device_gflops: float) -> float:
    return round(device_gflops / HOST_CORE_GFLOPS, 3)


PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    # Raspberry Pi 4 (4x Cortex-A72 1.5 GHz): HPL ~8 GFLOP/s FP64 on 4 cores (Feiereisen 2022, Raspberry Pi OS
    # 64-bit, feiereisen.net/?page_id=924); FP32 NEON holds twice the lanes: ~16 GFLOP/s, 4 cores -> 0.17 core.
    DeviceProfile("rpi4", cpu=_quota(16.0), threads=4, memory_mb=4096, link_mbit=1000,
                  source="HPL 8 GFLOP/s FP64 x2 for FP32 = 16 GFLOP/s / 93 per host core"),
    # Raspberry Pi 5 (4x Cortex-A76 2.4 GHz): 1.85x a Pi 4 per core (sysbench cpu, 1 thread: 2737 vs 1478
    # events/s, leoncode.co.uk/articles/raspberry-pi-benchmarks). An integer benchmark: FP32 SIMD likely
    # gains more (two 128-bit FMA pipes), so this is conservative: ~30 GFLOP/s -> 0.32 core.
    DeviceProfile("rpi5", cpu=_quota(16.0 * 1.85), threads=4, memory_mb=8192, link_mbit=1000,
                  source="rpi4 x 1.85 (sysbench single-thread Pi 5 / Pi 4)"),
    # Jetson Nano, CPU only (4x Cortex-A57 1.43 GHz): estimate 0.7x a Pi 4 (same 128-bit NEON, lower clock
    # and an older core; no published FP32 GEMM figure found) -> ~11 GFLOP/s -> 0.12 core.
    DeviceProfile("jetson-nano-cpu", cpu=_quota(16.0 * 0.7), threads=4, memory_mb=4096, link_mbit=1000,
                  source="estimate: 0.7x rpi4 (A57 1.43 GHz vs A72 1.5 GHz)"),
    # Fanless x86 gateway (4-core Celeron/Atom class, 2.0 GHz, SSE4.2, no AVX/FMA): estimate from the ISA,
    # 4 lanes x (add + mul) x 2 GHz = 16 GFLOP/s peak a core, ~60 % in GEMM -> ~40 GFLOP/s -> 0.43 core.
    DeviceProfile("gateway", cpu=_quota(40.0), threads=4, memory_mb=8192, link_mbit=1000,
                  source="estimate: SSE peak 16 GFLOP/s/core x 4 cores x 60 %"),
    # A mid-range phone (2 big Cortex-A78-class cores at ~2.4 GHz usable by an app): estimate ~1.2x a Pi 5
    # big core each -> ~18 GFLOP/s -> 0.19 core; 2 GB for the app; Wi-Fi/LTE: 50 Mbit/s, 20 ms one way.
    DeviceProfile("phone", cpu=_quota(18.0), threads=2, memory_mb=2048, link_mbit=50, delay_ms=20.0,
                  source="estimate: 2 A78-class cores ~1.2x a Pi 5 core"),
    # This machine, unlimited: the baseline a profile is compared with.
    DeviceProfile("host", source="this machine, no quota"),
)}


def get_profile(name: str, extra: dict[str, DeviceProfile] | None = None) -> DeviceProfile:
    """A shipped profile (or one of ``extra``) by name; the error lists what exists."""
    table = {**PROFILES, **(extra or {})}
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown device profile {name!r} (known: {', '.join(sorted(table))})") from None


@dataclass(frozen=True)
class FleetEntry:
    """One device of a simulated fleet: its name and profile."""

    name: str
    profile: DeviceProfile


_SPEC_ITEM = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)(?::(\d+))?$")


def _name_devices(groups: list[tuple[str | None, DeviceProfile, int]]) -> list[FleetEntry]:
    """Devices named ``<profile>-<i>`` unless given a name; names must be unique."""
    out: list[FleetEntry] = []
    counters: dict[str, int] = {}
    for name, profile, count in groups:
        for _ in range(count):
            if name is None or count > 1:
                stem = name or profile.name
                i = counters.get(stem, 0)
                counters[stem] = i + 1
                dev = f"{stem}-{i}"
            else:
                dev = name
            out.append(FleetEntry(dev, profile))
    seen: set[str] = set()
    for e in out:
        if e.name in seen:
            raise ValueError(f"device name {e.name!r} appears twice in the fleet")
        seen.add(e.name)
    return out


def parse_fleet_spec(spec: str, extra: dict[str, DeviceProfile] | None = None) -> list[FleetEntry]:
    """``"rpi4:3,gateway:1"`` -> rpi4-0, rpi4-1, rpi4-2, gateway-0 (a count defaults to 1)."""
    groups: list[tuple[str | None, DeviceProfile, int]] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        m = _SPEC_ITEM.match(item)
        if m is None:
            raise ValueError(f"bad fleet item {item!r} in {spec!r}: expected PROFILE[:COUNT], e.g. rpi4:3")
        count = int(m.group(2) or 1)
        if count < 1:
            raise ValueError(f"bad fleet item {item!r}: the count must be >= 1")
        groups.append((None, get_profile(m.group(1), extra), count))
    if not groups:
        raise ValueError(f"empty fleet spec {spec!r}: expected e.g. rpi4:3,gateway:1")
    return _name_devices(groups)


_FIELDS = {f.name for f in dataclasses.fields(DeviceProfile)}


def _profile_from(name: str, doc: Any, known: dict[str, DeviceProfile], where: str) -> DeviceProfile:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: profile {name!r} must be a mapping, got {type(doc).__name__}")
    doc = dict(doc)
    base_name = doc.pop("base", None)
    unknown = set(doc) - _FIELDS
    if unknown:
        raise ValueError(f"{where}: profile {name!r} has unknown fields {sorted(unknown)} "
                         f"(known: base, {', '.join(sorted(_FIELDS - {'name'}))})")
    base = get_profile(base_name, known) if base_name else DeviceProfile(name)
    try:
        return base.with_changes(**{**doc, "name": name})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def fleet_from_document(doc: Any, where: str = "fleet file") -> list[FleetEntry]:
    """A fleet from a parsed document: ``{devices: [...], profiles: {...}}`` (see the module docstring).
    A device item may override profile fields (``{profile: rpi4, cpu: 0.1}``)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list):
        raise ValueError(f"{where}: expected a mapping with a 'devices' list")
    extra: dict[str, DeviceProfile] = {}
    for name, pdoc in (doc.get("profiles") or {}).items():
        extra[str(name)] = _profile_from(str(name), pdoc, {**PROFILES, **extra}, where)
    groups: list[tuple[str | None, DeviceProfile, int]] = []
    for i, item in enumerate(doc["devices"]):
        if isinstance(item, str):
            item = {"profile": item}
        if not isinstance(item, dict) or "profile" not in item:
            raise ValueError(f"{where}: devices[{i}] must name a profile, e.g. {{profile: rpi4, count: 2}}")
        item = dict(item)
        name, count = item.pop("name", None), item.pop("count", 1)
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"{where}: devices[{i}]: count must be a positive integer, got {count!r}")
        profile = get_profile(str(item.pop("profile")), extra)
        if item:   # per-device overrides make a new, named variant
            profile = _profile_from(profile.name, {"base": profile.name, **item}, {**PROFILES, **extra},
                                    f"{where}: devices[{i}]")
        groups.append((None if name is None else str(name), profile, count))
    return _name_devices(groups)


def load_fleet_file(path: str | Path) -> list[FleetEntry]:
    """A fleet from a YAML (needs pyyaml) or JSON file."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        doc = json.loads(text)
    else:
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: reading a YAML fleet file needs pyyaml (pip install 'edge-agent[lab]'), "
                             "or write it as .json") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
    return fleet_from_document(doc, str(path))


def fleet_from_arg(value: str) -> list[FleetEntry]:
    """``--devices``: a file path (YAML/JSON) when it exists, else a spec like ``rpi4:3,gateway:1``."""
    if Path(value).is_file():
        return load_fleet_file(value)
    return parse_fleet_spec(value)
