"""Streams on the wire: the signed stream definition, the frames a source publishes, the results a sink gets,
an ingress device's stats report, and the rules every participant applies to them (topics, policies, the
preprocessing of raw images). See docs/streams.md.

A stream binds a *source* topic (any MQTT client publishes input frames there) to a deployment; the fleet runs
each frame through it and publishes a :class:`StreamResult` with the frame's id and timestamp on the *sink*
topic. The definition (:class:`StreamSpec`) is desired state: retained under ``ea/v1/<fleet>/stream/<name>``,
signed with the fleet key like a manifest and checked by the same gate (a stop is a signed tombstone).
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge_agent.protocol import topics
from edge_agent.protocol.errors import ProtocolError
from edge_agent.protocol.messages import WIRE_DTYPES, Message

MAX_TOPIC_CHARS = 256
MAX_QUEUE = 10_000          # queue:N above this is refused (a backlog that large is a design error)
MAX_BATCH = 256
LAYOUTS = ("NCHW", "NHWC")
COLORS = ("RGB", "BGR", "L")
OUT_SUBTREE = "_out"        # ea/v1/<fleet>/src/_out/...: stream results inside the fleet tree (no device id
                            # starts with '_', so it never collides with a device's own src/<device>/ subtree)


# --------------------------------------------------------------------------------------------- policies
@dataclass(frozen=True)
class Policy:
    """Backpressure: ``latest`` keeps only the newest waiting frame (an older one is dropped as ``stale``);
    ``queue:N`` keeps up to N waiting frames in arrival order (a frame arriving to a full queue is dropped as
    ``queue_full``)."""

    kind: str           # "latest" | "queue"
    size: int           # frames that may wait for the pipeline (1 for latest)

    @classmethod
    def parse(cls, text: str) -> Policy:
        if text == "latest":
            return cls("latest", 1)
        m = re.fullmatch(r"queue:(\d+)", text or "")
        if m is None:
            raise ValueError(f"unknown stream policy {text!r}: use 'latest' or 'queue:N' (N >= 1)")
        n = int(m.group(1))
        if not 1 <= n <= MAX_QUEUE:
            raise ValueError(f"stream policy {text!r}: N must be between 1 and {MAX_QUEUE}")
        return cls("queue", n)

    def __str__(self) -> str:
        return "latest" if self.kind == "latest" else f"queue:{self.size}"


# --------------------------------------------------------------------------------------------- topics
def _check_topic_text(what: str, topic: object) -> str:
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"{what} topic must be a non-empty string")
    if len(topic) > MAX_TOPIC_CHARS:
        raise ValueError(f"{what} topic is longer than {MAX_TOPIC_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in topic):
        raise ValueError(f"{what} topic {topic!r} contains control characters")
    if topic.startswith("$"):
        raise ValueError(f"{what} topic {topic!r}: topics starting with '$' belong to the broker")
    return topic


def _in_fleet_tree(topic: str) -> bool:
    return topic == "ea" or topic.startswith("ea/")


def check_sink(fleet: str, topic: object) -> str:
    """A topic the ingress may publish results on: no wildcards, and outside the ``ea/`` control tree except
    ``ea/v1/<fleet>/src/_out/...`` (results other streams can take as their source)."""
    topic = _check_topic_text("sink", topic)
    if "+" in topic or "#" in topic:
        raise ValueError(f"sink topic {topic!r}: wildcards cannot be published to")
    if _in_fleet_tree(topic):
        prefix = f"{topics.fleet_root(fleet)}/src/{OUT_SUBTREE}/"
        if not (topic.startswith(prefix) and len(topic) > len(prefix)):
            raise ValueError(f"sink topic {topic!r} is in the control tree 'ea/'; use a topic outside it, or "
                             f"{prefix}<name> for results another stream consumes")
    return topic


def check_source(fleet: str, topic: object) -> str:
    """A topic filter the ingress subscribes to: outside the ``ea/`` control tree except
    ``ea/v1/<fleet>/src/...`` (device-hosted sources and other streams' results); ``+`` and ``#`` are allowed
    where MQTT allows them, a bare ``#`` is not (it would take in every message of the broker)."""
    topic = _check_topic_text("source", topic)
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            raise ValueError(f"source topic {topic!r}: '+' must be a whole level and '#' the whole last level")
    if topic in ("#", "+/#"):
        raise ValueError(f"source topic {topic!r} would take every message of the broker")
    if _in_fleet_tree(topic) or levels[0] in ("+", "#"):
        prefix = f"{topics.fleet_root(fleet)}/src/"
        if not (topic.startswith(prefix) and len(topic) > len(prefix)):
            raise ValueError(f"source topic {topic!r} reaches into the control tree 'ea/'; use a topic outside "
                             f"it, or {prefix}<device>/<name> (device-hosted sources)")
    return topic


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest)."""
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


def hosted_source(fleet: str, device: str, name: str) -> str:
    """Topic of a source hosted by a device (``edge-agent run --source NAME=...``)."""
    return f"{topics.fleet_root(fleet)}/src/{topics.check_segment('device', device)}/" \
           f"{topics.check_segment('source name', name)}"


# --------------------------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Preprocess:
    """How a raw image (PNG/JPEG) becomes an input tensor: decode, convert to ``color``, resize to
    ``size`` (H, W; None = the model input's spatial size), then ``(pixel - mean) * scale`` per channel,
    laid out as ``layout`` with a batch dim of 1, cast to ``dtype`` (None = the model input's dtype)."""

    size: tuple[int, int] | None = None
    layout: str = "NCHW"
    mean: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0 / 255.0,)
    color: str = "RGB"
    dtype: str | None = None

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    def check(self) -> Preprocess:
        if self.layout not in LAYOUTS:
            raise ValueError(f"preprocess layout {self.layout!r}: use one of {', '.join(LAYOUTS)}")
        if self.color not in COLORS:
            raise ValueError(f"preprocess color {self.color!r}: use one of {', '.join(COLORS)}")
        if self.size is not None and not (len(self.size) == 2 and all(isinstance(v, int) and 1 <= v <= 8192
                                                                        for v in self.size)):
            raise ValueError(f"preprocess resize {self.size!r}: two sizes between 1 and 8192 (HxW)")
        for what, vals in (("mean", self.mean), ("scale", self.scale)):
            if len(vals) not in (1, self.channels) or not all(isinstance(v, (int, float)) for v in vals):
                raise ValueError(f"preprocess {what} {vals!r}: one value or one per channel ({self.channels})")
        if self.dtype is not None and self.dtype not in WIRE_DTYPES:
            raise ValueError(f"preprocess dtype {self.dtype!r} is not a tensor type")
        return self

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """``resize=224x224,layout=NCHW,mean=123.7/116.3/103.5,scale=0.0171,color=RGB,dtype=float32``
        (every key optional; per-channel values separated by '/')."""
        kw: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in (text or "").split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"preprocess item {item!r}: expected key=value")
            key = key.strip().lower()
            try:
                if key == "resize":
                    h, w = value.lower().split("x")
                    kw["size"] = (int(h), int(w))
                elif key in ("mean", "scale"):
                    kw[key] = tuple(float(v) for v in value.split("/"))
                elif key == "layout":
                    kw["layout"] = value.upper()
                elif key == "color":
                    kw["color"] = value.upper()
                elif key == "dtype":
                    kw["dtype"] = value
                else:
                    raise ValueError(f"unknown preprocess key {key!r} (resize, layout, mean, scale, color, dtype)")
            except (TypeError, ValueError) as exc:
                if "unknown preprocess key" in str(exc):
                    raise
                raise ValueError(f"preprocess {key}={value!r}: {exc}") from None
        return cls(**kw).check()

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size) if self.size else None, "layout": self.layout, "mean": list(self.mean),
                "scale": list(self.scale), "color": self.color, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Any) -> Preprocess:
        if not isinstance(d, dict):
            raise ProtocolError("preprocess must be a map")
        try:
            size = d.get("size")
            return cls(size=tuple(size) if size else None, layout=d.get("layout", "NCHW"),
                       mean=tuple(d.get("mean", (0.0,))), scale=tuple(d.get("scale", (1.0 / 255.0,))),
                       color=d.get("color", "RGB"), dtype=d.get("dtype")).check()
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"preprocess: {exc}") from None


# --------------------------------------------------------------------------------------------- messages
@dataclass
class StreamSpec(Message):
    """A stream definition (retained, signed like a manifest; ``stopped`` = a tombstone)."""

    KIND: ClassVar[str] = "stream"
    channel: ClassVar[str] = "stream"     # its slot in the version ledger: stream/<name>
    name: str
    version: int
    model: str
    source: str
    sink: str
    policy: str = "latest"
    batch: int = 1
    input: str = ""                  # the model input frames feed (empty: the model's only input)
    preprocess: dict = field(default_factory=dict)   # Preprocess.to_dict() for raw images; {} = defaults
    created: float = field(default_factory=time.time)
    expires: float = 0.0
    stopped: bool = False
    operator: str = ""
    fleet: str = ""
    sig: dict = field(default_factory=dict)

    def signed_fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sig"}

    @property
    def policy_spec(self) -> Policy:
        return Policy.parse(self.policy)

    def preprocess_spec(self) -> Preprocess | None:
        return Preprocess.from_dict(self.preprocess) if self.preprocess else None


def validate_stream(s: StreamSpec, fleet: str) -> None:
    """Structural checks of a decoded stream definition (names, topics, policy, batch, preprocessing)."""
    where = f"stream {s.name!r}"
    if not topics.check_segment_ok(s.name):
        raise ProtocolError(f"{where}: bad name")
    if not isinstance(s.version, int) or isinstance(s.version, bool) or s.version < 1:
        raise ProtocolError(f"{where}: version must be a positive integer")
    if s.stopped:
        return
    if not topics.check_segment_ok(s.model):
        raise ProtocolError(f"{where}: bad model name {s.model!r}")
    try:
        check_source(fleet, s.source)
        check_sink(fleet, s.sink)
        Policy.parse(s.policy)
    except ValueError as exc:
        raise ProtocolError(f"{where}: {exc}") from None
    if topic_matches(s.source, s.sink):
        raise ProtocolError(f"{where}: sink {s.sink!r} matches source {s.source!r} (it would eat its own output)")
    if not isinstance(s.batch, int) or isinstance(s.batch, bool) or not 1 <= s.batch <= MAX_BATCH:
        raise ProtocolError(f"{where}: batch must be an integer between 1 and {MAX_BATCH}")
    if s.preprocess:
        Preprocess.from_dict(s.preprocess)


@dataclass
class StreamFrame(Message):
    """What a source publishes: input tensors (by model input name; one unnamed tensor ``""`` feeds the
    stream's input) or an encoded image (PNG/JPEG bytes in ``image``), with the source's id and timestamp
    (epoch seconds; end-to-end latency is measured from it). A bare PNG/JPEG payload is accepted too."""

    KIND: ClassVar[str] = "frame"
    TENSORS: ClassVar[tuple[str, ...]] = ("tensors",)
    BUFFERS: ClassVar[tuple[str, ...]] = ("image",)
    id: str
    ts: float = field(default_factory=time.time)
    tensors: dict = field(default_factory=dict)
    image: Any = b""


@dataclass
class StreamResult(Message):
    """What the sink gets for each frame: the outputs (or the error) with the source's id and timestamp."""

    KIND: ClassVar[str] = "stream_result"
    TENSORS: ClassVar[tuple[str, ...]] = ("tensors",)
    stream: str
    id: str
    ts: float
    model: str
    version: int
    ok: bool = True
    tensors: dict = field(default_factory=dict)
    error: dict = field(default_factory=dict)        # {code, message}
    device: str = ""                                 # the ingress device
    done: float = field(default_factory=time.time)   # when the ingress published it


@dataclass
class StreamStats:
    """One stream as its ingress device reports it (cumulative counters since it took the stream over)."""

    name: str
    model: str
    version: int                # of the stream definition
    policy: str
    batch: int
    frames_in: int = 0
    frames_out: int = 0
    dropped: dict = field(default_factory=dict)      # policy drops by reason: stale, queue_full, timeout
    errors: dict = field(default_factory=dict)       # bad input by reason: malformed, shape, image, oversized...
    in_flight: int = 0
    backlog: int = 0
    backlog_max: int = 0        # the most frames that ever waited (never above the policy's bound)
    fps_in: float = 0.0
    fps_out: float = 0.0
    latency_ms: list = field(default_factory=list)   # recent end-to-end latencies (source ts to sink)
    since: float = 0.0

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, d: Any) -> StreamStats:
        if not isinstance(d, dict):
            raise ProtocolError("stream stats entry must be a map")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            st = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as exc:
            raise ProtocolError(f"stream stats: {exc}") from None
        if not (isinstance(st.name, str) and isinstance(st.dropped, dict) and isinstance(st.errors, dict)
                and isinstance(st.latency_ms, list)):
            raise ProtocolError("stream stats: wrong field types")
        return st


@dataclass
class StreamReport(Message):
    """Retained on ``ea/v1/<fleet>/dev/<id>/streams``: the streams this device runs the ingress of."""

    KIND: ClassVar[str] = "stream_report"
    device_id: str
    streams: list = field(default_factory=list)      # [StreamStats.to_wire()]
    ts: float = field(default_factory=time.time)

    def stats(self) -> list[StreamStats]:
        return [StreamStats.from_wire(d) for d in self.streams]
