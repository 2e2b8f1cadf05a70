"""Wire format: round trips, zero-copy tensors, and clear errors for every kind of bad message."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.protocol.errors import ProtocolError
from edge_agent.protocol.messages import (
    BlobChunk,
    DeviceState,
    InferRequest,
    InferResult,
    Manifest,
    decode,
    decode_frame,
)


def _req(**tensors: np.ndarray) -> InferRequest:
    return InferRequest("r1", "m", 3, 1, "ea/v1/default/ctl/op", tensors=tensors, timings=[{"stage": 0}])


def test_infer_request_round_trips_every_wire_dtype() -> None:
    rng = np.random.default_rng(0)
    tensors = {dt: (rng.standard_normal((2, 3)) * 10).astype(dt) for dt in
               ["float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool"]}
    tensors["scalar"] = np.array(3.5, dtype=np.float32)
    tensors["empty"] = np.zeros((0, 4), dtype=np.float32)
    msg = decode(_req(**tensors).to_bytes())
    assert isinstance(msg, InferRequest)
    assert (msg.request_id, msg.model, msg.version, msg.stage, msg.timings) == ("r1", "m", 3, 1, [{"stage": 0}])
    for name, arr in tensors.items():
        assert msg.tensors[name].dtype == arr.dtype
        np.testing.assert_array_equal(msg.tensors[name], arr)


def test_decoded_tensors_are_views_of_the_payload_and_aligned() -> None:
    payload = _req(x=np.arange(1000, dtype=np.float32), y=np.ones(7, np.int64)).to_bytes()
    msg = InferRequest.from_bytes(payload)
    for arr in msg.tensors.values():
        assert not arr.flags.owndata and not arr.flags.writeable  # a view, no copy
        offset = arr.ctypes.data - np.frombuffer(payload, np.uint8).ctypes.data
        assert 0 < offset < len(payload) and offset % 64 == 0  # inside the payload, SIMD-aligned
    np.testing.assert_array_equal(msg.tensors["x"], np.arange(1000, dtype=np.float32))


def test_non_contiguous_tensor_is_sent_correctly() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    msg = decode(_req(t=base[:, ::2].T).to_bytes())
    np.testing.assert_array_equal(msg.tensors["t"], base[:, ::2].T)


def test_blob_chunk_carries_raw_bytes() -> None:
    data = bytes(range(256)) * 5
    msg = decode(BlobChunk("ab" * 32, 2, 4096, 1280, data, sender="x").to_bytes())
    assert isinstance(msg, BlobChunk) and bytes(msg.data) == data and msg.index == 2


def test_state_and_manifest_round_trip() -> None:
    st = DeviceState("cam-01", "f", True, isa="avx2-fma", gflops=55.5, stages=[{"model": "m"}], counters={"a": 1})
    assert decode(st.to_bytes()) == st
    stage = {"index": 0, "device": "cam-01", "shard_sha256": "ab" * 32, "shard_size": 10, "chunk_size": 4,
             "chunk_sha256": ["cd" * 32] * 3, "inputs": ["x"], "outputs": ["y"], "future_key": {"a": 1}}
    m = Manifest("m", 2, 1.0, "00" * 32, [{"name": "x", "dtype": "float32", "shape": [1, 3]}], [], [stage])
    back = decode(m.to_bytes())
    assert back == m
    assert back.stages[0].replicas == ["cam-01"] and back.stages[0].forwards == ["y"]
    # the wire map is written back exactly as read (keys it does not know included): signatures survive
    assert back.signed_fields()["stages"] == [stage]


@pytest.mark.parametrize("broken, reason", [
    ({"shard_sha256": None}, "'shard_sha256' is missing"),
    ({"shard_size": "10"}, "'shard_size' must be int"),
    ({"inputs": [1]}, "'inputs' must hold strings"),
    ({"index": True}, "'index' must be int"),
])
def test_manifest_stage_is_typed_and_checked_on_decode(broken: dict, reason: str) -> None:
    from edge_agent.protocol.messages import encode_frame
    stage = {"index": 0, "device": "d", "shard_sha256": "ab" * 32, "shard_size": 10, "chunk_size": 4,
             "chunk_sha256": [], "inputs": ["x"], "outputs": ["y"]}
    header, _ = decode_frame(Manifest("m", 1, 1.0, "", [], [], []).to_bytes())
    header["stages"] = [{k: v for k, v in {**stage, **broken}.items() if v is not None}]
    with pytest.raises(ProtocolError, match=reason):
        decode(encode_frame(header))


@pytest.mark.parametrize("payload, reason", [
    (b"", "too short"),
    (b"\xff\xff\xff\x7f", "does not fit"),
    (b"\x03\x00\x00\x00\xc1\xc1\xc1", "malformed msgpack"),
    (b"\x01\x00\x00\x00\x05", "must be a map"),
])
def test_garbage_raises_protocol_error_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(payload)


def test_truncated_tensor_is_rejected() -> None:
    payload = _req(x=np.ones((64, 64), np.float32)).to_bytes()
    with pytest.raises(ProtocolError, match="truncated"):
        decode(payload[:-100])


def test_shape_and_length_mismatch_is_rejected() -> None:
    import msgpack
    header = {"k": "infer", "v": 1, "request_id": "r", "model": "m", "version": 1, "stage": 0, "reply_to": "x",
              "tensors": [{"n": "x", "d": "float32", "s": [4, 4], "o": 0, "l": 12}]}
    head = msgpack.packb(header)
    payload = len(head).to_bytes(4, "little") + head + b"\0" * 128
    with pytest.raises(ProtocolError, match="needs 64 bytes"):
        decode(payload)


def test_unknown_kind_wrong_version_missing_field_and_bad_type() -> None:
    import msgpack

    def frame(h: dict) -> bytes:
        head = msgpack.packb(h)
        return len(head).to_bytes(4, "little") + head

    with pytest.raises(ProtocolError, match="unknown message kind"):
        decode(frame({"k": "nope", "v": 1}))
    with pytest.raises(ProtocolError, match="protocol version"):
        decode(frame({"k": "state", "v": 99}))
    with pytest.raises(ProtocolError, match="missing field 'device_id'"):
        decode(frame({"k": "state", "v": 1, "fleet": "f", "online": True}))
    with pytest.raises(ProtocolError, match="expected int"):
        decode(frame({"k": "infer", "v": 1, "request_id": "r", "model": "m", "version": "1", "stage": 0,
                      "reply_to": "x"}))


def test_size_limit_is_enforced_before_decoding() -> None:
    payload = _req(x=np.ones(1000, np.float32)).to_bytes()
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(payload, max_bytes=1000)


def test_unsupported_dtype_cannot_be_sent() -> None:
    with pytest.raises(ProtocolError, match="cannot be sent"):
        _req(x=np.array(["a"], dtype=object)).to_bytes()


def test_result_error_round_trip() -> None:
    r = InferResult("r", "m", False, error={"code": "invalid_input", "message": "bad", "stage": 1, "device": "d"})
    assert decode(r.to_bytes()) == r
