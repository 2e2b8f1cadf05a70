"""What the operator API returns: a device as the fleet sees it, and a finished deployment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_agent.protocol.messages import DeviceState, Manifest


@dataclass
class DeviceStatus:
    """A device as the fleet sees it (from its retained state)."""

    device_id: str
    online: bool
    isa: str
    cores: int
    ram_mb: int
    gflops: float
    version: str
    stages: list[dict]
    peers: list[str]
    counters: dict
    queue_depth: int
    last_seen: float
    blobs: list[str] = field(default_factory=list)
    dev_mode: bool = True
    events: list[dict] = field(default_factory=list)
    link_rtt_ms: float | None = None     # measured by the device: round trip to the broker
    link_mbps: float | None = None       # and burst throughput, Mbit/s
    burst_gflops: float | None = None    # GFLOP/s of one GEMM on the idle device (a CPU quota's full speed)

    @classmethod
    def from_state(cls, st: DeviceState) -> DeviceStatus:
        return cls(st.device_id, st.online, st.isa, st.cores, st.ram_mb, st.gflops, st.version,
                   list(st.stages), list(st.peers), dict(st.counters), st.queue_depth, st.ts, list(st.blobs),
                   st.dev_mode, list(st.events), st.link_rtt_ms, st.link_mbps, st.burst_gflops)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Deployment:
    """What ``Fleet.deploy`` returns: the published manifest and the plan behind it."""

    manifest: Manifest
    plan: Any
    seconds: float
    stage_status: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version
