"""Wire messages: small typed dataclasses with ``to_bytes``/``from_bytes``, defined once.

Frame layout (all messages)::

    u32 little-endian header length | msgpack header | padding to 64 | buffer 0 | padding | buffer 1 ...

The msgpack header holds the message kind ``k``, protocol version ``v`` and the message fields. Tensors
and blob chunks are not packed into msgpack: the header describes them (name, dtype, shape, offset,
length) and their bytes follow the header, 64-byte aligned, so a receiver builds numpy arrays over the
received payload without copying (``np.frombuffer`` with an offset). Any peer with a msgpack library can
read the format.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import msgpack
import numpy as np

from edge_agent.protocol.errors import ProtocolError
from edge_agent.protocol.manifest import StageSpec

PROTOCOL_VERSION = 1
ALIGN = 64
MAX_HEADER_BYTES = 1 << 20
_LEN = struct.Struct("<I")

# dtypes a tensor may carry on the wire (ONNX tensor types with a numpy equivalent)
WIRE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32",
                 "uint32", "int64", "uint64", "bool")
}
MAX_TENSOR_RANK = 16


def _pad(n: int) -> int:
    return (-n) % ALIGN


def encode_frame(header: dict[str, Any], buffers: list[memoryview] | None = None) -> bytes:
    """Frame a header and raw buffers. Buffer offsets in the header are relative to the data section."""
    head = msgpack.packb(header, use_bin_type=True)
    parts: list[Any] = [_LEN.pack(len(head)), head]
    pos = _LEN.size + len(head)
    for buf in buffers or ():
        gap = _pad(pos)
        if gap:
            parts.append(b"\0" * gap)
            pos += gap
        parts.append(buf)
        pos += buf.nbytes
    return b"".join(parts)


def _relative_offsets(sizes: list[int]) -> list[int]:
    """Offsets of buffers of ``sizes`` relative to the (aligned) start of the data section."""
    pos, offsets = 0, []
    for n in sizes:
        pos += _pad(pos)
        offsets.append(pos)
        pos += n
    return offsets


def decode_frame(payload: bytes | bytearray | memoryview, max_bytes: int | None = None
                 ) -> tuple[dict[str, Any], memoryview]:
    """Split a frame into its header dict and a memoryview of its (aligned) data section."""
    view = memoryview(payload)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if max_bytes is not None and view.nbytes > max_bytes:
        raise ProtocolError(f"message of {view.nbytes} bytes exceeds the limit of {max_bytes} bytes")
    if view.nbytes < _LEN.size:
        raise ProtocolError(f"message too short ({view.nbytes} bytes) to hold a header")
    (hlen,) = _LEN.unpack_from(view, 0)
    if hlen > MAX_HEADER_BYTES or _LEN.size + hlen > view.nbytes:
        raise ProtocolError(f"header length {hlen} does not fit a {view.nbytes}-byte message")
    try:
        header = msgpack.unpackb(view[_LEN.size:_LEN.size + hlen], raw=False, strict_map_key=True,
                                 max_bin_len=MAX_HEADER_BYTES, max_str_len=MAX_HEADER_BYTES)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"malformed msgpack header: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {header.get('v')!r} (expected {PROTOCOL_VERSION})")
    base = _LEN.size + hlen
    base += _pad(base)
    return header, view[min(base, view.nbytes):]


# --------------------------------------------------------------------------------------------- tensors

# wire name by dtype: a dict lookup per tensor, where ``dtype.name`` costs microseconds (Python code in numpy 2)
_WIRE_NAME: dict[np.dtype, str] = {dt: name for name, dt in WIRE_DTYPES.items()}


def _wire_array(name: str, arr: np.ndarray) -> tuple[str, np.ndarray]:
    """The wire dtype name of ``arr`` and the array to send (native byte order: the wire is little-endian)."""
    dt = _WIRE_NAME.get(arr.dtype)
    if dt is None:
        dt = arr.dtype.name
        if dt not in WIRE_DTYPES:
            raise ProtocolError(f"tensor '{name}': dtype {arr.dtype} cannot be sent (supported: {', '.join(WIRE_DTYPES)})")
        arr = arr.astype(WIRE_DTYPES[dt])   # e.g. a big-endian array: its values, in the wire's byte order
    return dt, arr


class WireTensor:
    """A tensor as received: its descriptor checked (dtype, shape, length, bounds) but no array made yet.

    An agent decodes requests this way so tensors that are only carried through a stage to a later one
    are re-framed from the received bytes without becoming numpy arrays; :meth:`array` makes the
    zero-copy view when a stage does read one. ``to_bytes`` of any message accepts it like an ndarray."""

    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...], data: memoryview) -> None:
        self.dtype = dtype
        self.shape = shape
        self.data = data

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def array(self) -> np.ndarray:
        """The tensor as a read-only numpy view over the received payload (no copy)."""
        try:
            return np.frombuffer(self.data, dtype=self.dtype).reshape(self.shape)
        except ValueError as exc:  # a zero-size shape whose other dims numpy cannot index ("array is too big")
            raise ProtocolError(f"tensor shape {list(self.shape)} cannot be represented: {exc}") from None

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.array()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        return f"WireTensor({self.dtype.name}, {list(self.shape)}, {self.data.nbytes} bytes)"


def _wire_tensor(meta: Any, view: memoryview) -> tuple[str, WireTensor]:
    """Check one tensor descriptor against the message; the tensor stays bytes (see :class:`WireTensor`)."""
    if not isinstance(meta, dict):
        raise ProtocolError("tensor descriptor must be a map")
    name, dt, shape, off, nbytes = meta.get("n"), meta.get("d"), meta.get("s"), meta.get("o"), meta.get("l")
    if not isinstance(name, str):
        raise ProtocolError("tensor descriptor without a name")
    if not isinstance(dt, str) or dt not in WIRE_DTYPES:
        raise ProtocolError(f"tensor '{name}': unsupported dtype {dt!r}")
    if (not isinstance(shape, list) or len(shape) > MAX_TENSOR_RANK
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise ProtocolError(f"tensor '{name}': bad shape {shape!r}")
    if not isinstance(off, int) or not isinstance(nbytes, int) or off < 0 or nbytes < 0:
        raise ProtocolError(f"tensor '{name}': bad buffer offset/length")
    dtype = WIRE_DTYPES[dt]
    count = math.prod(shape)  # exact: np.prod in int64 wraps around for hostile shapes
    if count * dtype.itemsize != nbytes:
        raise ProtocolError(f"tensor '{name}': shape {shape} of {dt} needs {count * dtype.itemsize} bytes, "
                            f"message carries {nbytes}")
    if off + nbytes > view.nbytes:
        raise ProtocolError(f"tensor '{name}': truncated (needs bytes up to {off + nbytes}, message has {view.nbytes})")
    return name, WireTensor(dtype, tuple(shape), view[off:off + nbytes])


def _tensor_from_meta(meta: Any, view: memoryview) -> tuple[str, np.ndarray]:
    name, wire = _wire_tensor(meta, view)
    try:
        return name, wire.array()
    except ProtocolError as exc:
        raise ProtocolError(f"tensor '{name}': {exc}") from None


# --------------------------------------------------------------------------------------------- base

_REGISTRY: dict[str, type[Message]] = {}


_EXPECTED: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool,
                                                 "list": list, "dict": dict}
_PLAIN, _TENSOR, _BUFFER = 0, 1, 2


class _FieldPlan(NamedTuple):
    """What decoding needs to know of one dataclass field, worked out once per class (not per message)."""

    name: str
    kind: int                      # _PLAIN, _TENSOR or _BUFFER
    required: bool
    base: str                      # "str", "int", ... (the annotation's outer type)
    want: type | tuple[type, ...] | None
    nullable: bool


def _plan_field(f: dataclasses.Field, tensors: tuple[str, ...], buffers: tuple[str, ...]) -> _FieldPlan:
    tname = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    base = tname.split("[")[0].split("|")[0].strip()
    kind = _TENSOR if f.name in tensors else _BUFFER if f.name in buffers else _PLAIN
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    return _FieldPlan(f.name, kind, required, base, _EXPECTED.get(base), "None" in tname)


def _check_type(cls_name: str, plan: _FieldPlan, value: Any) -> Any:
    """Light type check of a decoded field; raises ProtocolError naming the field."""
    if plan.nullable and value is None:
        return value
    if plan.want is not None and not isinstance(value, plan.want):
        raise ProtocolError(f"{cls_name}.{plan.name}: expected {plan.base}, got {type(value).__name__}")
    if plan.base == "float":
        return float(value)
    return value


@dataclass
class Message:
    """Base of all wire messages. Subclasses set KIND; fields named in TENSORS are ndarray dicts,
    fields in BUFFERS are raw bytes-like."""

    KIND: ClassVar[str] = ""
    TENSORS: ClassVar[tuple[str, ...]] = ()
    BUFFERS: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.KIND:
            _REGISTRY[cls.KIND] = cls

    @classmethod
    def _plan(cls) -> tuple[_FieldPlan, ...]:
        """The class's field plan (built at first use: the dataclass decorator runs after __init_subclass__)."""
        plan = cls.__dict__.get("_field_plan")
        if plan is None:
            plan = tuple(_plan_field(f, cls.TENSORS, cls.BUFFERS) for f in dataclasses.fields(cls))
            cls._field_plan = plan  # type: ignore[attr-defined]
        return plan

    def _to_wire(self, name: str, value: Any) -> Any:
        """Plain-data form of a field (a subclass with typed fields converts them back here)."""
        return value

    def to_bytes(self) -> bytes:
        header: dict[str, Any] = {"k": self.KIND, "v": PROTOCOL_VERSION}
        bufs: list[memoryview] = []
        metas: list[dict[str, Any]] = []
        plain = type(self)._to_wire is Message._to_wire   # no field to convert: skip the call per field
        for f in self._plan():
            value = getattr(self, f.name)
            if f.kind == _PLAIN:
                header[f.name] = value if plain else self._to_wire(f.name, value)
            elif f.kind == _TENSOR:
                tlist = []
                for name, arr in (value or {}).items():
                    if isinstance(arr, WireTensor):   # carried as received: its bytes, no array
                        meta = {"n": name, "d": _WIRE_NAME[arr.dtype], "s": list(arr.shape), "l": arr.data.nbytes}
                        buf = arr.data
                    else:
                        arr = np.asarray(arr, order="C")   # keeps rank 0 (ascontiguousarray would make it 1-d)
                        dt, arr = _wire_array(name, arr)
                        meta = {"n": name, "d": dt, "s": [int(x) for x in arr.shape], "l": int(arr.nbytes)}
                        buf = memoryview(arr).cast("B") if arr.nbytes else memoryview(b"")
                    tlist.append(meta)
                    metas.append(meta)
                    bufs.append(buf)
                header[f.name] = tlist
            else:
                data = memoryview(value if value is not None else b"").cast("B")
                meta = {"l": data.nbytes}
                metas.append(meta)
                bufs.append(data)
                header[f.name] = meta
        for meta, off in zip(metas, _relative_offsets([b.nbytes for b in bufs])):
            meta["o"] = off
        return encode_frame(header, bufs)

    @classmethod
    def from_header(cls, header: dict[str, Any], view: memoryview, lazy: bool = False) -> Message:
        """Build the message from a decoded header; with ``lazy`` tensors stay :class:`WireTensor`."""
        kwargs: dict[str, Any] = {}
        for f in cls._plan():
            if f.name not in header:
                if f.required:
                    raise ProtocolError(f"{cls.__name__}: missing field '{f.name}'")
                continue
            value = header[f.name]
            if f.kind == _PLAIN:
                # _check_type inlined: this runs for every field of every request an agent forwards
                if f.want is not None and not isinstance(value, f.want) and not (f.nullable and value is None):
                    _check_type(cls.__name__, f, value)   # raises, naming the field
                kwargs[f.name] = float(value) if f.base == "float" and value is not None else value
            elif f.kind == _TENSOR:
                if not isinstance(value, list):
                    raise ProtocolError(f"{cls.__name__}.{f.name}: expected a tensor list")
                tensors = {}
                for meta in value:
                    name, arr = _wire_tensor(meta, view) if lazy else _tensor_from_meta(meta, view)
                    tensors[name] = arr
                kwargs[f.name] = tensors
            else:
                if not isinstance(value, dict):
                    raise ProtocolError(f"{cls.__name__}.{f.name}: expected a buffer descriptor")
                off, n = value.get("o"), value.get("l")
                if not isinstance(off, int) or not isinstance(n, int) or off < 0 or n < 0 or off + n > view.nbytes:
                    raise ProtocolError(f"{cls.__name__}.{f.name}: buffer outside the message (truncated?)")
                kwargs[f.name] = view[off:off + n]
        return cls(**kwargs)

    @classmethod
    def from_bytes(cls, payload: bytes | bytearray | memoryview, max_bytes: int | None = None,
                   lazy: bool = False) -> Message:
        """Decode and check a frame; ``lazy``: tensors as :class:`WireTensor` (checked, not yet arrays)."""
        header, view = decode_frame(payload, max_bytes)
        kind = header.get("k")
        if cls is Message:
            target = _REGISTRY.get(kind) if isinstance(kind, str) else None
            if target is None:
                raise ProtocolError(f"unknown message kind {kind!r}")
        else:
            if kind != cls.KIND:
                raise ProtocolError(f"expected a '{cls.KIND}' message, got {kind!r}")
            target = cls
        return target.from_header(header, view, lazy)


def decode(payload: bytes | bytearray | memoryview, max_bytes: int | None = None) -> Message:
    """Decode any registered message; raises ProtocolError with the reason when it is bad."""
    return Message.from_bytes(payload, max_bytes)


# --------------------------------------------------------------------------------------------- messages

@dataclass
class DeviceState(Message):
    """Reported state of one device (retained; the Last Will is the same message with online=False)."""

    KIND: ClassVar[str] = "state"
    device_id: str
    fleet: str
    online: bool
    ts: float = field(default_factory=time.time)
    started: float = 0.0
    isa: str = ""
    cores: int = 0
    ram_mb: int = 0
    gflops: float = 0.0
    version: str = ""
    backend_isa: str = ""
    dev_mode: bool = True
    stages: list = field(default_factory=list)      # [{model, version, stage, n_stages, status, backend, error, progress}]
    blobs: list = field(default_factory=list)       # sha256 of shards this device holds (it can serve them)
    peers: list = field(default_factory=list)       # device ids seen by mDNS
    counters: dict = field(default_factory=dict)    # rejected messages by reason, requests served ...
    queue_depth: int = 0
    endpoint: str = ""                              # topic prefix of the device's inbox
    events: list = field(default_factory=list)      # last rejections: [{ts, kind, model, version, reason}]
    link_rtt_ms: float | None = None                # measured QoS 1 round trip to the broker (None: not yet)
    link_mbps: float | None = None                  # measured burst throughput to the broker, Mbit/s
    burst_gflops: float | None = None               # one GEMM's speed on the idle device (above gflops under
                                                    # a CPU quota, which it spends at full speed); None: unknown
    fresh: dict = field(default_factory=dict)       # the freshness statement it holds: created, expires,
                                                    # expired, behind (slots it has an older version of)


@dataclass
class Manifest(Message):
    """A deployment: what runs where, and the content address of every shard (retained under deploy/<name>)."""

    KIND: ClassVar[str] = "manifest"
    name: str
    version: int
    created: float
    model_sha256: str
    inputs: list          # [{name, dtype, shape}] shape entries int or str for dynamic dims
    outputs: list
    stages: list          # [StageSpec]; maps on the wire, typed and checked when decoded
    sources: list = field(default_factory=list)     # endpoints that serve the shards (operator, peers)
    plan: dict = field(default_factory=dict)        # planner summary: bottleneck, reason
    operator: str = ""
    channel: str = "stable"                         # one of topics.CHANNELS
    replicas: int = 1
    failover: bool = True                           # other devices may adopt a stage left without replicas
    standby: list | None = None                     # the devices that may adopt (signed); None = any device
    expires: float = 0.0                            # epoch seconds; 0 = never
    rollback: bool = False                          # an explicit (signed) return to an older version
    sig: dict = field(default_factory=dict)         # {"alg", "key_id", "value"}; empty in development mode
    fleet: str = ""                                 # signed: a manifest of fleet A is refused by fleet B

    def __post_init__(self) -> None:
        if isinstance(self.stages, list):
            self.stages = [StageSpec.from_dict(st, f"manifest {self.name}: stage {i}")
                           for i, st in enumerate(self.stages)]

    def _to_wire(self, name: str, value: Any) -> Any:
        if name == "stages" and isinstance(value, list):
            return [st.to_dict() for st in value]
        return value

    def stages_for(self, device_id: str) -> list[StageSpec]:
        """Stages assigned to ``device_id`` by the plan (a device may hold several)."""
        return [st for st in self.stages if device_id in st.replicas]

    def signed_fields(self) -> dict:
        """Every field except the signature, as plain data: the content the fleet key signs."""
        return {f.name: self._to_wire(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name != "sig"}


@dataclass
class LoadReport(Message):
    """Telemetry (QoS 0, not retained): how busy a device is, for routing among replicas."""

    KIND: ClassVar[str] = "load"
    device_id: str
    queue: int
    service_ms: float
    ts: float = field(default_factory=time.time)
    # per stage held, cumulative since the agent started (rates come from differences, so a lost QoS 0
    # report costs nothing): [[model, version, stage, served, errors, run_ms EWMA, run_ms median of the
    # last runs], ...] (the median is newer: older agents send six values), at most
    # MAX_LOAD_STAGES entries so the report stays under the 4 KiB older decoders accept
    stages: list = field(default_factory=list)


MAX_LOAD_STAGES = 24


def load_stage_entries(rep: LoadReport) -> list[tuple[str, int, int, int, int, float]]:
    """The well-formed ``stages`` entries of a load report (others are skipped: it is telemetry)."""
    out = []
    for e in rep.stages[:MAX_LOAD_STAGES] if isinstance(rep.stages, list) else ():
        if (isinstance(e, list) and len(e) >= 6 and isinstance(e[0], str)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in e[1:5])
                and isinstance(e[5], (int, float)) and not isinstance(e[5], bool)):
            out.append((e[0], e[1], e[2], e[3], e[4], float(e[5])))
    return out


def load_stage_medians(rep: LoadReport) -> dict[tuple[str, int, int], float]:
    """(model, version, stage) -> the median run time of the last runs at full speed, for the well-formed
    entries that carry one (agents before it send six values; a zero means no such run yet)."""
    out = {}
    for e in rep.stages[:MAX_LOAD_STAGES] if isinstance(rep.stages, list) else ():
        if (isinstance(e, list) and len(e) >= 7 and isinstance(e[0], str)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in e[1:3])
                and isinstance(e[6], (int, float)) and not isinstance(e[6], bool) and e[6] > 0):
            out[(e[0], e[1], e[2])] = float(e[6])
    return out


@dataclass
class BlobRequest(Message):
    """Ask a holder for some chunks of a blob; the holder answers on ``reply_to``/blob."""

    KIND: ClassVar[str] = "blob_req"
    sha256: str
    chunks: list
    chunk_size: int
    reply_to: str
    requester: str = ""
    nonce: str = ""          # echoed in every answer: ties the chunks to this request (and its source)


@dataclass
class BlobChunk(Message):
    """One chunk of a blob. ``error`` is set (and data empty) when the holder cannot serve it."""

    KIND: ClassVar[str] = "blob_chunk"
    BUFFERS: ClassVar[tuple[str, ...]] = ("data",)
    sha256: str
    index: int
    total_size: int
    chunk_size: int
    data: Any = b""
    sender: str = ""
    error: str = ""
    nonce: str = ""          # the request's nonce; a receiver ignores chunks that carry none of its own


@dataclass
class InferRequest(Message):
    """Tensors entering a stage. ``tensors`` is the request's environment (inputs + carried values)."""

    KIND: ClassVar[str] = "infer"
    TENSORS: ClassVar[tuple[str, ...]] = ("tensors",)
    request_id: str
    model: str
    version: int
    stage: int
    reply_to: str
    tensors: dict = field(default_factory=dict)
    timings: list = field(default_factory=list)     # [{stage, device, queue_ms, run_ms, backend}]
    attempt: int = 0
    sent: float = field(default_factory=time.time)
    reroutes: int = 0                               # times a device passed it on to a holder of the stage


@dataclass
class InferResult(Message):
    """Final outputs (or the error) of a request, sent by the last stage (or a failing one) to the caller."""

    KIND: ClassVar[str] = "result"
    TENSORS: ClassVar[tuple[str, ...]] = ("tensors",)
    request_id: str
    model: str
    ok: bool
    tensors: dict = field(default_factory=dict)
    error: dict = field(default_factory=dict)       # {code, message, stage, device}
    timings: list = field(default_factory=list)


@dataclass
class Freshness(Message):
    """The operator side's short-lived signed statement of the current desired state (TUF's timestamp role):
    every deployed slot ("<channel>/<model>") with its version and manifest digest. Retained under
    ``fresh``; refreshed well before ``expires``. A device that holds a valid one keeps serving the
    manifests it names after their own (long) expiry, and learns when the broker withholds a newer
    version (a freeze)."""

    KIND: ClassVar[str] = "freshness"
    fleet: str
    created: float
    expires: float
    versions: dict = field(default_factory=dict)    # "<channel>/<model>" -> {"version": int, "digest": str}
    sig: dict = field(default_factory=dict)

    def signed_fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sig"}


@dataclass
class RolloutRecord(Message):
    """Retained operator record of a model's rollouts: what happened and why, and the last good versions
    (full signed manifests, so a rollback can restore one without the original model file)."""

    KIND: ClassVar[str] = "rollout"
    name: str
    history: list = field(default_factory=list)   # [{version, channel, status, reason, metrics, ts}]
    good: list = field(default_factory=list)      # [manifest fields incl. sig], newest last


def validate_state(st: DeviceState) -> None:
    """Structural checks of a decoded device state before anyone routes by it."""
    from edge_agent.protocol import topics

    if not topics.check_segment_ok(st.device_id):
        raise ProtocolError(f"state: bad device id {st.device_id!r}")
    for e in st.stages:
        if not (isinstance(e, dict) and isinstance(e.get("model"), str) and isinstance(e.get("version"), int)
                and isinstance(e.get("stage"), int) and isinstance(e.get("status", ""), str)):
            raise ProtocolError(f"state of {st.device_id}: stage entries must be maps with model, version, stage")
    if not all(isinstance(b, str) for b in st.blobs) or not all(isinstance(p, str) for p in st.peers):
        raise ProtocolError(f"state of {st.device_id}: blobs and peers must be lists of strings")
    if not all(isinstance(e, dict) for e in st.events):
        raise ProtocolError(f"state of {st.device_id}: events must be maps")
    if st.endpoint and not topics.is_endpoint(st.endpoint, st.fleet):
        raise ProtocolError(f"state of {st.device_id}: bad endpoint {st.endpoint!r}")
