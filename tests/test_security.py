"""Fleet signing keys and signed documents: what an agent accepts, and why it rejects the rest."""

from __future__ import annotations

import os
import stat
import time

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.protocol.errors import EdgeAgentError
from edge_agent.protocol.messages import Manifest
from edge_agent.security.keys import (
    FleetKeys,
    KeyFileError,
    SignatureError,
    canonical_bytes,
    generate_keys,
    key_id_of,
    load_private_key,
    load_public_key,
    sign_document,
    verify_document,
)


def _manifest_doc(**over) -> dict:
    m = Manifest(name="ocr", version=3, created=time.time(), model_sha256="ab" * 32,
                 inputs=[{"name": "x", "dtype": "float32", "shape": [1, 3, "h", "w"]}],
                 outputs=[{"name": "y", "dtype": "float32", "shape": [1, 10]}],
                 stages=[{"index": 0, "device": "cam-01", "shard_sha256": "cd" * 32, "shard_size": 1234,
                          "chunk_size": 262144, "chunk_sha256": ["ef" * 32], "inputs": ["x"], "outputs": ["y"],
                          "flops": 1.5e9}],
                 sources=["ea/v1/default/ctl/op"], plan={"bottleneck": 0}, operator="operator")
    doc = m.signed_fields()
    doc["expires"] = time.time() + 3600
    doc.update(over)
    return doc


@pytest.fixture
def keys(tmp_path) -> FleetKeys:
    key_path, _ = generate_keys(tmp_path / "keys")
    return load_private_key(key_path)


# --------------------------------------------------------------------------------------------- key files

def test_generate_keys_writes_private_key_0600_and_loadable_public_key(tmp_path):
    key_path, pub_path = generate_keys(tmp_path)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in key_path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in pub_path.read_bytes()
    priv, pub = load_private_key(key_path), load_public_key(pub_path)
    assert priv.key_id == pub.key_id == key_id_of(pub.public)
    assert len(pub.key_id) == 16 and int(pub.key_id, 16) >= 0
    assert pub.private is None and priv.private is not None


def test_generate_keys_refuses_to_overwrite_unless_forced(tmp_path):
    key_path, _ = generate_keys(tmp_path)
    first = load_private_key(key_path).key_id
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keys(tmp_path)
    assert load_private_key(key_path).key_id == first
    generate_keys(tmp_path, force=True)
    assert load_private_key(key_path).key_id != first


def test_encrypted_private_key_needs_its_passphrase(tmp_path):
    key_path, _ = generate_keys(tmp_path, passphrase=b"correct horse")
    assert load_private_key(key_path, passphrase=b"correct horse").private is not None
    with pytest.raises(KeyFileError):
        load_private_key(key_path)
    with pytest.raises(KeyFileError):
        load_private_key(key_path, passphrase=b"wrong")


def test_loading_missing_wrong_type_or_garbled_key_files_says_why(tmp_path):
    key_path, pub_path = generate_keys(tmp_path)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_public_key(tmp_path / "nope.pub")
    with pytest.raises(KeyFileError, match="holds a private key"):
        load_public_key(key_path)
    with pytest.raises(KeyFileError, match="no private key"):
        load_private_key(pub_path)
    garbled = tmp_path / "garbled.pub"
    garbled.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(KeyFileError, match="garbled"):
        load_public_key(garbled)
    (tmp_path / "text.pub").write_text("hello")
    with pytest.raises(KeyFileError, match="not a PEM"):
        load_public_key(tmp_path / "text.pub")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pub").write_bytes(ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_public_key(tmp_path / "ec.pub")
    assert issubclass(KeyFileError, EdgeAgentError)


# --------------------------------------------------------------------------------------------- canonical form

def test_canonical_bytes_ignore_map_order_recursively():
    a = {"b": 1, "a": {"y": [1, 2, {"q": 1, "p": 2}], "x": b"\x00"}, "c": None}
    b = {"c": None, "a": {"x": b"\x00", "y": [1, 2, {"p": 2, "q": 1}]}, "b": 1}
    assert canonical_bytes(a) == canonical_bytes(b)
    assert canonical_bytes(a) != canonical_bytes({**a, "b": 2})


def test_canonical_bytes_survive_a_msgpack_round_trip_and_int_float_coercion():
    doc = {"created": 1700000000, "ratio": 0.25, "shape": (1, 3), "blob": bytearray(b"ab"), "ok": True}
    wire = msgpack.unpackb(msgpack.packb(doc, use_bin_type=True), raw=False)
    wire["created"] = float(wire["created"])  # what Message field coercion does to a `float` field
    assert canonical_bytes(wire) == canonical_bytes(doc)
    assert canonical_bytes({"v": True}) != canonical_bytes({"v": 1})
    assert canonical_bytes({"v": "1"}) != canonical_bytes({"v": 1})


def test_canonical_bytes_reject_non_plain_data():
    with pytest.raises(TypeError, match="not plain data"):
        canonical_bytes({"x": object()})
    with pytest.raises(TypeError, match="non-finite"):
        canonical_bytes({"x": float("nan")})


# --------------------------------------------------------------------------------------------- sign / verify

def test_signed_manifest_verifies_after_the_wire_round_trip(keys):
    doc = _manifest_doc()
    signed = sign_document(doc, keys)
    assert set(signed) == set(doc) | {"sig"}
    assert signed["sig"]["alg"] == "ed25519" and signed["sig"]["key_id"] == keys.key_id
    assert len(signed["sig"]["value"]) == 64
    wire = msgpack.unpackb(msgpack.packb(signed, use_bin_type=True), raw=False)
    assert verify_document(wire, [keys.public_only()]) is wire


def test_signed_manifest_message_verifies_after_manifest_encode_decode(keys):
    doc = _manifest_doc(created=1700000000, expires=0)  # int in a float field: decoded as 1700000000.0
    m = Manifest(**doc)
    m.sig = sign_document(m.signed_fields(), keys)["sig"]
    got = Manifest.from_bytes(m.to_bytes())
    assert isinstance(got.created, float) and got.sig["key_id"] == keys.key_id
    received = {**got.signed_fields(), "sig": got.sig}
    verify_document(received, [keys.public_only()], now=1800000000)  # expires=0: never
    got.version += 1
    with pytest.raises(SignatureError, match="bad signature"):
        verify_document({**got.signed_fields(), "sig": got.sig}, [keys.public_only()])


@pytest.mark.parametrize("field, value", [("version", 4), ("operator", "mallory"),
                                          ("stages", [{"index": 0, "device": "evil"}]),
                                          ("expires", 4e9), ("extra", "added")])
def test_tampered_field_is_rejected_as_bad_signature(keys, field, value):
    signed = sign_document(_manifest_doc(), keys)
    signed[field] = value
    with pytest.raises(SignatureError, match="bad signature"):
        verify_document(signed, [keys])


def test_tampered_nested_value_is_rejected_as_bad_signature(keys):
    signed = sign_document(_manifest_doc(), keys)
    signed["stages"][0]["shard_sha256"] = "00" * 32
    with pytest.raises(SignatureError, match="bad signature"):
        verify_document(signed, [keys])


def test_unsigned_document_is_rejected(keys):
    with pytest.raises(SignatureError, match="unsigned"):
        verify_document(_manifest_doc(), [keys])
    with pytest.raises(SignatureError, match="unsigned"):
        verify_document({**_manifest_doc(), "sig": None}, [keys])


def test_document_signed_by_another_key_is_rejected_as_unknown_key_id(keys):
    other = FleetKeys.generate()
    signed = sign_document(_manifest_doc(), other)
    with pytest.raises(SignatureError, match="unknown key id"):
        verify_document(signed, [keys.public_only()])


def test_forged_key_id_with_foreign_signature_is_rejected_as_bad_signature(keys):
    other = FleetKeys.generate()
    signed = sign_document(_manifest_doc(), other)
    signed["sig"] = {**signed["sig"], "key_id": keys.key_id}
    with pytest.raises(SignatureError, match="bad signature"):
        verify_document(signed, [keys])


def test_rotated_keys_are_both_trusted(keys):
    new = FleetKeys.generate()
    trusted = [keys.public_only(), new.public_only()]
    verify_document(sign_document(_manifest_doc(), keys), trusted)
    verify_document(sign_document(_manifest_doc(), new), trusted)


def test_expired_document_is_rejected(keys):
    now = time.time()
    signed = sign_document(_manifest_doc(created=now - 7200, expires=now - 10), keys)
    with pytest.raises(SignatureError, match="expired"):
        verify_document(signed, [keys], now=now)
    assert verify_document(signed, [keys], now=now - 20) is signed


def test_document_from_the_future_is_not_yet_valid(keys):
    now = time.time()
    signed = sign_document(_manifest_doc(created=now + 3600, expires=now + 7200), keys)
    with pytest.raises(SignatureError, match="not yet valid"):
        verify_document(signed, [keys], now=now)
    verify_document(signed, [keys], now=now + 3600)
    early = sign_document(_manifest_doc(created=now, not_before=now + 600), keys)
    with pytest.raises(SignatureError, match="not yet valid"):
        verify_document(early, [keys], now=now)


def test_malformed_signature_fields_are_rejected(keys):
    signed = sign_document(_manifest_doc(), keys)
    with pytest.raises(SignatureError, match="algorithm"):
        verify_document({**signed, "sig": {**signed["sig"], "alg": "none"}}, [keys])
    with pytest.raises(SignatureError, match="malformed signature"):
        verify_document({**signed, "sig": {**signed["sig"], "value": "text"}}, [keys])
    with pytest.raises(SignatureError, match="malformed signature"):
        verify_document({**signed, "sig": b"xx"}, [keys])
    with pytest.raises(SignatureError, match="bad signature"):
        verify_document({**signed, "sig": {**signed["sig"], "value": b"\0" * 64}}, [keys])
    bad_time = sign_document(_manifest_doc(expires="tomorrow"), keys)
    with pytest.raises(SignatureError, match="malformed 'expires'"):
        verify_document(bad_time, [keys])


def test_signing_needs_a_private_key_and_an_unsigned_document(keys):
    with pytest.raises(SignatureError, match="private"):
        sign_document(_manifest_doc(), keys.public_only())
    signed = sign_document(_manifest_doc(), keys)
    with pytest.raises(SignatureError, match="already carries"):
        sign_document(signed, keys)
    placeholder = sign_document({**_manifest_doc(), "sig": {}}, keys)  # unsigned Manifest.sig default
    verify_document(placeholder, [keys])
