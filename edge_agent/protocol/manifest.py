"""The typed parts of a deployment manifest: :class:`StageSpec` (one pipeline stage), validated on decode.

On the wire a stage stays the map it always was (``{"index": 0, "device": ..., "shard_sha256": ...}``);
:meth:`StageSpec.to_dict` writes back exactly the keys it was read from, so a signed manifest's canonical
bytes are the same after a decode/encode round trip (keys this version does not know are kept in ``extra``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_agent.protocol import topics
from edge_agent.protocol.errors import ProtocolError

if TYPE_CHECKING:
    from edge_agent.protocol.messages import Manifest

MAX_CHUNK_SIZE = 64 << 20

# (field, type, required) in wire order; optional fields are written only when set
_FIELDS: tuple[tuple[str, type | tuple[type, ...], bool], ...] = (
    ("index", int, True), ("device", str, False), ("devices", list, False), ("shard_sha256", str, True),
    ("shard_size", int, True), ("chunk_size", int, True), ("chunk_sha256", list, True), ("inputs", list, True),
    ("outputs", list, True), ("carry", list, False), ("flops", (int, float), False), ("est_ms", (int, float), False),
    ("nodes", list, False), ("n_nodes", int, False), ("weights", list, False),
)
_KNOWN = {name for name, _, _ in _FIELDS}


@dataclass
class StageSpec:
    """One stage of a deployment: the shard (content address, size, chunk digests), its tensor interface,
    the replica devices that run it, and the planner's estimate."""

    index: int
    shard_sha256: str
    shard_size: int
    chunk_size: int
    chunk_sha256: list[str]
    inputs: list[str]
    outputs: list[str]
    device: str | None = None          # the planner's device (the first replica)
    devices: list[str] | None = None   # every replica, planner's first
    carry: list[str] | None = None     # tensors forwarded to the next stage (default: the outputs)
    flops: float | None = None
    est_ms: float | None = None
    nodes: list | None = None          # [first node name, last node name]
    n_nodes: int | None = None
    weights: list[float] | None = None  # share of requests per replica (parallel to ``devices``): the planner's
    extra: dict[str, Any] = field(default_factory=dict)   # keys of a newer protocol, kept verbatim

    @property
    def replicas(self) -> list[str]:
        """Devices assigned to this stage (``devices``, else the single ``device``)."""
        if self.devices:
            return list(self.devices)
        return [self.device] if self.device else []

    @property
    def forwards(self) -> list[str]:
        """Tensors this stage passes on: its carried environment, else its outputs."""
        return list(self.carry or self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """The wire map: required keys, optional keys that are set, then unknown ones."""
        out: dict[str, Any] = {}
        for name, _, required in _FIELDS:
            value = getattr(self, name)
            if required or value is not None:
                out[name] = list(value) if isinstance(value, (list, tuple)) else value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "stage") -> StageSpec:
        """Decode and check the types of one stage map; raises ProtocolError naming the field."""
        if isinstance(d, StageSpec):
            return d
        if not isinstance(d, dict):
            raise ProtocolError(f"{where} is not a map")
        kwargs: dict[str, Any] = {}
        for name, typ, required in _FIELDS:
            if name not in d or (d[name] is None and not required):
                if required:
                    raise ProtocolError(f"{where} field '{name}' is missing")
                continue
            value = d[name]
            if isinstance(value, bool) or not isinstance(value, typ):
                tname = typ.__name__ if isinstance(typ, type) else "number"
                raise ProtocolError(f"{where} field '{name}' must be {tname}")
            kwargs[name] = float(value) if name == "est_ms" else value
        for name in ("chunk_sha256", "inputs", "outputs", "carry", "devices"):
            if not all(isinstance(v, str) for v in kwargs.get(name) or []):
                raise ProtocolError(f"{where} field '{name}' must hold strings")
        w = kwargs.get("weights")
        if w is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     and 0 <= v < float("inf") for v in w):
            raise ProtocolError(f"{where} field 'weights' must hold non-negative numbers")
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in _KNOWN})

    def check(self, where: str) -> None:
        """Rules beyond types: a valid device on every replica, sane sizes."""
        if not self.replicas or not all(topics.check_segment_ok(dev) for dev in self.replicas):
            raise ProtocolError(f"{where} names no valid device")
        if self.chunk_size <= 0 or self.shard_size < 0 or self.chunk_size > MAX_CHUNK_SIZE:
            raise ProtocolError(f"{where} has bad sizes")
        if self.weights is not None and (len(self.weights) != len(self.replicas) or not sum(self.weights) > 0):
            raise ProtocolError(f"{where} has {len(self.weights)} weights for {len(self.replicas)} replicas "
                                "(or they sum to 0)")

    def weight_of(self) -> dict[str, float] | None:
        """Planned share of requests per replica device, or None (all replicas alike)."""
        if not self.weights or len(self.weights) != len(self.replicas):
            return None
        return dict(zip(self.replicas, (float(w) for w in self.weights)))


def stage_devices(stage: StageSpec | dict) -> list[str]:
    """Replica devices of a stage (a :class:`StageSpec` or its wire map)."""
    return StageSpec.from_dict(stage).replicas if isinstance(stage, dict) else stage.replicas


def validate_manifest(m: Manifest) -> None:
    """Structural checks of a decoded manifest (types of every field a device or client relies on)."""
    from edge_agent.protocol.messages import WIRE_DTYPES

    if not isinstance(m.version, int) or isinstance(m.version, bool) or m.version < 1:
        raise ProtocolError(f"manifest {m.name}: version must be a positive integer")
    if not isinstance(m.stages, list):
        raise ProtocolError(f"manifest {m.name}: stages must be a list (empty = undeployed)")
    if m.channel not in topics.CHANNELS:
        raise ProtocolError(f"manifest {m.name}: unknown channel {m.channel!r}")
    for what, specs in (("inputs", m.inputs), ("outputs", m.outputs)):
        if not isinstance(specs, list) or not all(
                isinstance(sp, dict) and isinstance(sp.get("name"), str) and sp.get("dtype") in WIRE_DTYPES
                and isinstance(sp.get("shape"), list) for sp in specs):
            raise ProtocolError(f"manifest {m.name}: {what} must be a list of {{name, dtype, shape}}")
    for i, st in enumerate(m.stages):
        where = f"manifest {m.name}: stage {i}"
        st = StageSpec.from_dict(st, where)
        if st.index != i:
            raise ProtocolError(f"manifest {m.name}: stage {i} has index {st.index}")
        st.check(where)
    if not isinstance(m.sources, list) or not all(topics.is_endpoint(s) for s in m.sources):
        raise ProtocolError(f"manifest {m.name}: sources must be endpoints (ea/v1/<fleet>/dev|ctl/<id>)")
