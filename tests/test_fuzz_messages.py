"""Property-based fuzzing of the wire format: any input decodes to a correct message or raises ProtocolError.

Valid messages of every kind are generated from the dataclass fields themselves (so a new message kind is
fuzzed without touching this file), round-tripped, then mutated at the byte level (bit flips, truncation,
extension, header length) and at the msgpack level (field type swaps, hostile tensor and buffer
descriptors). The decoder may accept a mutated frame only if what it returns is self-consistent.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edge_agent.protocol import messages as wire
from edge_agent.protocol.errors import ProtocolError

KINDS: dict[str, type[wire.Message]] = dict(wire._REGISTRY)
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1          # what msgpack can carry
HOSTILE_INTS = [-1, -(1 << 63), (1 << 31), (1 << 32), (1 << 62), (1 << 63) - 1, (1 << 63), INT_MAX,
                3, 6148914691236517206]          # 3 * 6148914691236517206 wraps to 2 in int64

# EDGE_AGENT_FUZZ_SCALE=20 runs a deeper campaign by hand; the default keeps the file well under 20 s.
SCALE = float(os.environ.get("EDGE_AGENT_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=int(100 * SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_CHEAP = settings(FUZZ, max_examples=int(400 * SCALE))


# --------------------------------------------------------------------------------------------- strategies

def plain(max_leaves: int = 4) -> st.SearchStrategy[Any]:
    """Plain msgpack data as a header field may hold it (str keys only, like the decoder requires)."""
    scalars = (st.none() | st.booleans() | st.integers(INT_MIN, INT_MAX)
               | st.floats(allow_nan=False) | st.text(max_size=12) | st.binary(max_size=12))
    return st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                        | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=max_leaves)


def wild() -> st.SearchStrategy[Any]:
    """Any msgpack value, NaN and ext types included: what a hostile peer can put in a header."""
    ext = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    scalars = (st.none() | st.booleans() | st.integers(INT_MIN, INT_MAX) | st.floats()
               | st.text(max_size=12) | st.binary(max_size=12) | ext | st.sampled_from(HOSTILE_INTS))
    return st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                        | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=8)


@st.composite
def tensors(draw: st.DrawFn) -> np.ndarray:
    """An array of any wire dtype and shape (zero-size included), any bit pattern (NaN payloads, bools
    other than 0/1), sometimes a non-contiguous view."""
    dtype = draw(st.sampled_from(list(wire.WIRE_DTYPES.values())))
    rank = draw(st.sampled_from([0, 1, 2, 3, 4, wire.MAX_TENSOR_RANK]))
    side = st.integers(1, 1) if rank == wire.MAX_TENSOR_RANK else st.integers(0, 4)
    shape = tuple(draw(st.lists(side, min_size=rank, max_size=rank)))
    size = int(np.prod(shape)) * dtype.itemsize
    arr = np.frombuffer(draw(st.binary(min_size=size, max_size=size)), dtype=dtype).reshape(shape)
    if dtype == np.bool_:
        arr = arr.view(np.uint8).astype(bool)      # numpy bools are 0/1 (the decoder may see others)
    if arr.ndim >= 2 and draw(st.booleans()):
        arr = arr.T                                    # a non-contiguous view must be sent correctly too
    return arr


def field_value(cls: type[wire.Message], f: dataclasses.Field) -> st.SearchStrategy[Any]:
    """A valid value for one dataclass field, from its declared type."""
    if f.name in cls.TENSORS:
        return st.dictionaries(st.text(max_size=10), TENSOR, max_size=3)
    if f.name in cls.BUFFERS:
        return st.binary(max_size=300)
    if cls is wire.Manifest and f.name == "stages":   # typed on decode: only well-formed stages build
        return st.lists(STAGE, max_size=3)
    base = str(f.type).split("[")[0].split("|")[0].strip()
    return {
        "str": st.text(max_size=20),
        "int": st.integers(INT_MIN, INT_MAX),
        "float": st.floats(allow_nan=False),
        "bool": st.booleans(),
        "list": st.lists(PLAIN, max_size=4),
        "dict": st.dictionaries(st.text(max_size=8), PLAIN, max_size=4),
    }.get(base, PLAIN)


NAMES = st.lists(st.text(max_size=8), max_size=3)
STAGE = st.fixed_dictionaries(
    {"index": st.integers(0, 8), "shard_sha256": st.text(max_size=64), "shard_size": st.integers(0, 1 << 40),
     "chunk_size": st.integers(1, 1 << 26), "chunk_sha256": NAMES, "inputs": NAMES, "outputs": NAMES},
    optional={"device": st.text(max_size=10), "devices": NAMES, "carry": NAMES,
              "flops": st.integers(0, 1 << 50), "est_ms": st.floats(0, 1e6), "n_nodes": st.integers(0, 1000)})


def _message_of(cls: type[wire.Message]) -> st.SearchStrategy[wire.Message]:
    return st.builds(cls, **{f.name: field_value(cls, f) for f in dataclasses.fields(cls)})


PLAIN = plain()
WILD = wild()
TENSOR = tensors()
MESSAGES = {kind: _message_of(cls) for kind, cls in sorted(KINDS.items())}
ANY_MESSAGE = st.one_of(list(MESSAGES.values()))


def message_of(cls: type[wire.Message]) -> st.SearchStrategy[wire.Message]:
    """Valid messages of one kind (strategies are built once: building them is what costs)."""
    return MESSAGES[cls.KIND]


# --------------------------------------------------------------------------------------------- checks

def same_message(a: wire.Message, b: wire.Message) -> bool:
    """Field-by-field equality that compares tensors by dtype, shape and bytes (NaN payloads included)."""
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in a.TENSORS:
            if list(x) != list(y):
                return False
            for name in x:
                u, v = np.asarray(x[name]), y[name]
                if u.dtype != v.dtype or u.shape != v.shape or u.tobytes() != v.tobytes():
                    return False
        elif f.name in a.BUFFERS:
            if bytes(x) != bytes(y):
                return False
        elif x != y:
            return False
    return True


def decode_or_protocol_error(payload: bytes, cls: type[wire.Message] | None = None) -> wire.Message | None:
    """Decode; a ProtocolError is a fine answer, any other exception propagates and fails the test. A
    message that is accepted must be self-consistent and re-encodable (agents forward what they decode)."""
    try:
        msg = wire.decode(payload) if cls is None else cls.from_bytes(payload)
    except ProtocolError as exc:
        assert str(exc), "a ProtocolError must say what is wrong"
        return None
    assert isinstance(msg, wire.Message) and msg.KIND in KINDS
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if f.name in msg.TENSORS:
            for name, arr in value.items():
                assert isinstance(name, str) and isinstance(arr, np.ndarray)
                assert arr.dtype.name in wire.WIRE_DTYPES and arr.ndim <= wire.MAX_TENSOR_RANK
                assert arr.nbytes <= len(payload)
        elif f.name in msg.BUFFERS:
            assert memoryview(value).nbytes <= len(payload)
    try:
        msg.to_bytes()
    except ProtocolError:
        pass
    return msg


def reframe(header: dict[str, Any], data: bytes) -> bytes:
    """A frame with a (possibly hostile) header and the given data section, aligned as the encoder does."""
    head = msgpack.packb(header, use_bin_type=True)
    out = struct.pack("<I", len(head)) + head
    return out + b"\0" * ((-len(out)) % wire.ALIGN) + data


def split(payload: bytes) -> tuple[dict[str, Any], bytes]:
    header, view = wire.decode_frame(payload)
    return header, bytes(view)


# --------------------------------------------------------------------------------------------- properties

@FUZZ
@given(ANY_MESSAGE)
def test_every_valid_message_round_trips_exactly(msg: wire.Message) -> None:
    payload = msg.to_bytes()
    back = wire.decode(payload)
    assert same_message(msg, back)
    assert same_message(msg, type(msg).from_bytes(payload))
    assert same_message(msg, wire.decode(back.to_bytes()))   # what an agent forwards is what it got


@FUZZ
@given(message_of(wire.InferRequest))
def test_decoded_tensors_are_aligned_views_inside_the_payload(msg: wire.InferRequest) -> None:
    payload = msg.to_bytes()
    base = np.frombuffer(payload, np.uint8).ctypes.data if payload else 0
    for name, arr in wire.InferRequest.from_bytes(payload).tensors.items():
        if arr.nbytes:
            offset = arr.ctypes.data - base
            assert offset % wire.ALIGN == 0 and 0 < offset <= len(payload) - arr.nbytes, name


@FUZZ_CHEAP
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    decode_or_protocol_error(data)
    decode_or_protocol_error(data, wire.InferRequest)


@FUZZ
@given(st.dictionaries(st.text(max_size=10), WILD, max_size=8), st.sampled_from([None, *KINDS]),
       st.binary(max_size=256))
def test_random_headers_in_valid_framing_decode_or_raise_protocol_error(
        header: dict[str, Any], kind: str | None, data: bytes) -> None:
    header = {**header, "v": wire.PROTOCOL_VERSION}
    if kind is not None:
        header["k"] = kind
    decode_or_protocol_error(reframe(header, data))
    if kind is not None:
        decode_or_protocol_error(reframe(header, data), KINDS[kind])


def mutate_bytes(draw: st.DrawFn, payload: bytes) -> bytes:
    """Bit flips, truncation, extension, a spliced run or a corrupted header length."""
    how = draw(st.sampled_from(["flip", "truncate", "extend", "hlen", "splice"]))
    buf = bytearray(payload)
    if how == "flip":
        for pos in draw(st.lists(st.integers(0, len(buf) - 1), min_size=1, max_size=8)):
            buf[pos] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        del buf[draw(st.integers(0, len(buf) - 1)):]
    elif how == "extend":
        buf += draw(st.binary(min_size=1, max_size=200))
    elif how == "hlen":
        buf[:4] = struct.pack("<I", draw(st.sampled_from([0, 1, 3, len(buf), len(buf) - 3, (1 << 20) + 1,
                                                           (1 << 32) - 1]) | st.integers(0, (1 << 32) - 1)))
    else:
        pos = draw(st.integers(0, len(buf)))
        buf[pos:pos + draw(st.integers(0, 16))] = draw(st.binary(max_size=16))
    return bytes(buf)


def swap_fields(draw: st.DrawFn, payload: bytes, values: st.SearchStrategy[Any] = WILD) -> bytes:
    """Header fields replaced by values of other types, removed, or unknown ones added."""
    header, data = split(payload)
    names = sorted(header)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(names))
        action = draw(st.sampled_from(["swap", "swap", "drop", "add"]))
        if action == "swap":
            header[key] = draw(values)
        elif action == "drop":
            header.pop(key, None)
        else:
            header[draw(st.text(max_size=6))] = draw(values)
    return reframe(header, data)


@st.composite
def mutations_of(draw: st.DrawFn, messages: st.SearchStrategy[wire.Message]) -> bytes:
    """A frame of ``messages``, intact or mutated at the byte, header-field or descriptor level."""
    msg = draw(messages)
    payload = msg.to_bytes()
    how = draw(st.sampled_from(["intact", "bytes", "fields", "descriptors"]))
    if how == "bytes":
        return mutate_bytes(draw, payload)
    if how == "fields":
        return swap_fields(draw, payload)
    if how == "descriptors" and (msg.TENSORS or msg.BUFFERS):
        return hostile_descriptors(draw, type(msg), payload)
    return payload


@st.composite
def byte_mutations(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(original, mutated) frame."""
    payload = draw(ANY_MESSAGE).to_bytes()
    return payload, mutate_bytes(draw, payload)


@FUZZ
@given(byte_mutations())
def test_byte_level_mutations_of_valid_frames_decode_or_raise_protocol_error(case: tuple[bytes, bytes]) -> None:
    original, mutated = case
    kind = type(wire.decode(original))
    decode_or_protocol_error(mutated)
    decode_or_protocol_error(mutated, kind)


@st.composite
def field_swaps(draw: st.DrawFn) -> tuple[type[wire.Message], bytes]:
    msg = draw(ANY_MESSAGE)
    return type(msg), swap_fields(draw, msg.to_bytes())


@FUZZ
@given(field_swaps())
def test_header_field_type_swaps_decode_or_raise_protocol_error(case: tuple[type[wire.Message], bytes]) -> None:
    kind, payload = case
    decode_or_protocol_error(payload)
    decode_or_protocol_error(payload, kind)


DESCRIPTOR_VALUES = {
    "o": st.sampled_from(HOSTILE_INTS + [0, 1, 63, 64, 65]) | st.integers(-(1 << 63), INT_MAX) | WILD,
    "l": st.sampled_from(HOSTILE_INTS + [0, 1, 4, 7, 64]) | st.integers(-(1 << 63), INT_MAX) | WILD,
    "s": st.one_of(
        st.lists(st.sampled_from(HOSTILE_INTS + [0, 1, 2]), max_size=4),      # products that overflow int64
        st.lists(st.integers(0, 3), min_size=100, max_size=100),               # rank 100
        st.lists(st.just(1), min_size=wire.MAX_TENSOR_RANK + 1, max_size=wire.MAX_TENSOR_RANK + 1),
        st.lists(st.booleans() | st.floats() | st.text(max_size=2), min_size=1, max_size=3),
        st.just([0, 1 << 62]), st.just([1 << 32, 1 << 32]), st.just([3, 6148914691236517206]),
        WILD),
    "d": st.sampled_from(["float8", "complex64", "object", "str", "V8", "<f4", "float32 ", "", "bfloat16"])
    | st.sampled_from(sorted(wire.WIRE_DTYPES)) | WILD,
    "n": st.text(max_size=4) | WILD,
}


def hostile_descriptors(draw: st.DrawFn, cls: type[wire.Message], payload: bytes) -> bytes:
    """Tensor/buffer descriptors made hostile: huge, negative or overlapping offsets, wrong lengths,
    overflowing shapes, unknown dtypes, absurd ranks, duplicated or missing entries."""
    header, data = split(payload)
    descriptors: list[dict] = []
    for fname in cls.TENSORS:
        descriptors += header[fname]
    for fname in cls.BUFFERS:
        descriptors.append(header[fname])
    if cls.TENSORS and draw(st.booleans()):
        # an extra tensor overlapping another one's bytes (or anything at all)
        header[cls.TENSORS[0]].append({"n": draw(st.text(max_size=3)), "d": "uint8", "s": [len(data)],
                                       "o": 0, "l": len(data)})
    if not descriptors:
        return payload
    for _ in range(draw(st.integers(1, 3))):
        meta = draw(st.sampled_from(descriptors))
        key = draw(st.sampled_from(sorted(DESCRIPTOR_VALUES)) if "d" in meta else st.sampled_from(["o", "l"]))
        if draw(st.integers(0, 9)) == 0:
            meta.pop(key, None)
        else:
            meta[key] = draw(DESCRIPTOR_VALUES[key])
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return reframe(header, data)


@st.composite
def descriptor_mutations(draw: st.DrawFn) -> tuple[type[wire.Message], bytes]:
    cls = draw(st.sampled_from([c for c in KINDS.values() if c.TENSORS or c.BUFFERS]))
    msg = draw(message_of(cls))
    tensors_ = msg.tensors if cls.TENSORS else {}
    assume(tensors_ or cls.BUFFERS)
    return cls, hostile_descriptors(draw, cls, msg.to_bytes())


@FUZZ
@given(descriptor_mutations())
def test_hostile_tensor_and_buffer_descriptors_decode_or_raise_protocol_error(
        case: tuple[type[wire.Message], bytes]) -> None:
    kind, payload = case
    decode_or_protocol_error(payload)
    decode_or_protocol_error(payload, kind)


@FUZZ
@given(ANY_MESSAGE, st.integers(0, 4096))
def test_size_limit_is_enforced_before_decoding(msg: wire.Message, limit: int) -> None:
    payload = msg.to_bytes()
    if len(payload) <= limit:
        assert same_message(msg, wire.decode(payload, max_bytes=limit))
        return
    try:
        wire.decode(payload, max_bytes=limit)
    except ProtocolError as exc:
        assert "exceeds the limit" in str(exc)
    else:
        raise AssertionError(f"a {len(payload)}-byte message passed a {limit}-byte limit")


def test_known_hostile_descriptors_are_protocol_errors() -> None:
    """Regression cases the fuzzer found: int64 wrap-around of the shape product, bool dims, a zero-size
    shape numpy cannot index, an unhashable dtype or message kind each raised ValueError/TypeError."""
    base = {"k": "infer", "v": 1, "request_id": "r", "model": "m", "version": 1, "stage": 0, "reply_to": "x"}
    for shape, nbytes in (([3, 6148914691236517206], 8), ([1 << 32, 1 << 32], 0), ([True], 4),
                          ([0, 1 << 62], 0), ([1 << 63], 0)):
        payload = reframe({**base, "tensors": [{"n": "a", "d": "float32", "s": shape, "o": 0, "l": nbytes}]},
                          b"\0" * 64)
        for decoder in (wire.decode, wire.InferRequest.from_bytes):
            try:
                decoder(payload)
            except ProtocolError as exc:
                assert "tensor 'a'" in str(exc)
            else:
                raise AssertionError(f"shape {shape} was accepted")
    for dtype in ([], {"a": 1}, 1, None, "object"):
        payload = reframe({**base, "tensors": [{"n": "a", "d": dtype, "s": [1], "o": 0, "l": 4}]}, b"\0" * 64)
        try:
            wire.decode(payload)
        except ProtocolError as exc:
            assert "unsupported dtype" in str(exc)
        else:
            raise AssertionError(f"dtype {dtype!r} was accepted")
    for kind in ([1], {"a": 1}, 1.5, None):
        try:
            wire.decode(reframe({"k": kind, "v": 1}, b""))
        except ProtocolError as exc:
            assert "kind" in str(exc)
        else:
            raise AssertionError(f"kind {kind!r} was accepted")


def test_scalar_tensor_keeps_rank_zero_through_the_wire() -> None:
    msg = wire.InferRequest("r", "m", 1, 0, "ea/v1/default/ctl/op", tensors={"s": np.array(2.5, np.float32)})
    back = wire.InferRequest.from_bytes(msg.to_bytes())
    assert back.tensors["s"].shape == () and same_message(msg, back)
