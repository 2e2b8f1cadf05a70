"""Fleet signing keys and signed documents (Ed25519): what an agent trusts before it installs anything.

A *signed document* is a plain dict (for a deployment: every field of the ``Manifest``) plus one extra key,
``"sig"``::

    {"name": ..., "version": 3, "created": ..., "expires": ..., ...,
     "sig": {"alg": "ed25519", "key_id": "3f1c...", "value": b"<64 bytes>"}}

The signature covers ``canonical_bytes(doc without "sig")``: deterministic msgpack (map keys sorted, integral
floats encoded as integers) so the bytes are the same after a msgpack round trip through the broker, whatever
order the fields were built in. ``key_id`` names the fleet key (first 16 hex digits of the SHA-256 of the raw
public key); agents hold a list of trusted public keys, so keys can be rotated by trusting old and new for a
while.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.protocol.errors import EdgeAgentError

log = logging.getLogger("edge_agent.security")

SIG_FIELD = "sig"
ALG = "ed25519"
PRIVATE_KEY_NAME = "fleet.key"
PUBLIC_KEY_NAME = "fleet.pub"
# Devices without a real-time clock boot in the past and sync later; a little skew is tolerated for
# "not yet valid", none for "expired" (an expired document is never accepted).
DEFAULT_CLOCK_SKEW = 300.0
_INT64 = 1 << 63


class SignatureError(EdgeAgentError):
    """A signed document was rejected: unsigned, bad signature, unknown key id, expired or not yet valid."""


class KeyFileError(EdgeAgentError):
    """A key file is missing, of the wrong type, or not a valid PEM key."""


def key_id_of(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class FleetKeys:
    """A fleet signing key: ``private`` is None on agents, which only verify."""

    private: Ed25519PrivateKey | None
    public: Ed25519PublicKey
    key_id: str

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> FleetKeys:
        public = private.public_key()
        return cls(private, public, key_id_of(public))

    @classmethod
    def from_public(cls, public: Ed25519PublicKey) -> FleetKeys:
        return cls(None, public, key_id_of(public))

    @classmethod
    def generate(cls) -> FleetKeys:
        """A new key pair in memory (tests, ephemeral fleets)."""
        return cls.from_private(Ed25519PrivateKey.generate())

    def public_only(self) -> FleetKeys:
        """The same key without its private half (what a device is given)."""
        return FleetKeys(None, self.public, self.key_id)

    def public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)


# --------------------------------------------------------------------------------------------- key files

def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never world-readable, not even briefly)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)  # in case the umask or an odd filesystem changed it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_keys(out_dir: str | os.PathLike, force: bool = False, passphrase: bytes | None = None
                  ) -> tuple[Path, Path]:
    """Write a new fleet key pair: ``fleet.key`` (PEM PKCS#8, mode 0600) and ``fleet.pub`` (PEM SPKI).

    Refuses to replace an existing ``fleet.key`` unless ``force``: losing it means no agent will accept a
    deployment signed with the new key until it is given the new public key.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    if key_path.exists() and not force:
        raise KeyFileError(f"{key_path} already exists; refusing to overwrite a fleet key (use force=True, "
                           "then give every agent the new fleet.pub)")
    keys = FleetKeys.generate()
    assert keys.private is not None
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    pem = keys.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    _write_private(key_path, pem)
    pub_path.write_bytes(keys.public_pem())
    log.info("generated fleet key %s in %s", keys.key_id, out)
    return key_path, pub_path


def _read_pem(path: str | os.PathLike, what: str) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {p} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {p}: {exc}") from None
    if b"-----BEGIN" not in data:
        raise KeyFileError(f"{what} {p} is not a PEM file")
    return data


def load_private_key(path: str | os.PathLike, passphrase: bytes | None = None) -> FleetKeys:
    """Load an Ed25519 private key (PEM PKCS#8) written by :func:`generate_keys`."""
    data = _read_pem(path, "fleet private key")
    if b"PRIVATE KEY" not in data:
        raise KeyFileError(f"{path} holds no private key (is it the public fleet.pub?)")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:  # passphrase missing or given for an unencrypted key
        raise KeyFileError(f"fleet private key {path}: {exc}") from None
    except ValueError as exc:
        raise KeyFileError(f"fleet private key {path} is garbled or the passphrase is wrong: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 key")
    mode = Path(path).stat().st_mode & 0o077
    if mode:
        log.warning("fleet private key %s is readable by group/others (mode %o); chmod 600 it", path,
                    Path(path).stat().st_mode & 0o777)
    return FleetKeys.from_private(key)


def load_public_key(path: str | os.PathLike) -> FleetKeys:
    """Load an Ed25519 public key (PEM SubjectPublicKeyInfo); what an agent trusts."""
    data = _read_pem(path, "fleet public key")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path} holds a private key; give agents only the public fleet.pub")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"fleet public key {path} is garbled: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 key")
    return FleetKeys.from_public(key)


def load_trusted_keys(paths: Iterable[str | os.PathLike]) -> list[FleetKeys]:
    """Load several public keys (key rotation: trust the old and the new key for a while)."""
    return [load_public_key(p) for p in paths]


# --------------------------------------------------------------------------------------------- canonical form

def _canonical(obj: Any, where: str) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        if not -_INT64 <= obj < 2 * _INT64:
            raise TypeError(f"{where}: integer {obj} does not fit msgpack's 64 bits")
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise TypeError(f"{where}: cannot sign a non-finite float ({obj})")
        # msgpack decoders and our Message field coercion turn 3 into 3.0 and back; sign the value, not
        # the encoding, so a round trip does not break the signature.
        if obj.is_integer() and -_INT64 <= obj < _INT64:
            return int(obj)
        return obj
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            ck = _canonical(k, f"{where} key")
            if isinstance(ck, (list, dict)):
                raise TypeError(f"{where}: map key {k!r} must be a scalar")
            items.append((msgpack.packb(ck, use_bin_type=True), ck, _canonical(v, f"{where}.{k}")))
        items.sort(key=lambda t: t[0])
        for a, b in zip(items, items[1:]):
            if a[0] == b[0]:
                raise TypeError(f"{where}: duplicate map key {a[1]!r} after normalisation")
        return {ck: cv for _, ck, cv in items}
    raise TypeError(f"{where}: {type(obj).__name__} is not plain data (use dict/list/str/bytes/int/float/bool/None)")


def canonical_bytes(obj: Any) -> bytes:
    """Deterministic msgpack of plain data: the exact bytes that are signed.

    Maps are written with keys sorted by their encoding (recursively), tuples as lists, bytes-likes as bin,
    floats with an integral value as integers. Raises TypeError for anything else (numpy scalars, objects).
    """
    return msgpack.packb(_canonical(obj, "document"), use_bin_type=True)


# --------------------------------------------------------------------------------------------- sign / verify

def sign_document(doc: Mapping[str, Any], keys: FleetKeys) -> dict[str, Any]:
    """Return a copy of ``doc`` with ``"sig": {"alg", "key_id", "value"}`` over ``canonical_bytes(doc)``.

    An empty ``sig`` placeholder (``{}``/None, as in an unsigned ``Manifest``) is replaced; a real one is
    refused. For a manifest: ``m.sig = sign_document(m.signed_fields(), keys)["sig"]``.
    """
    if keys.private is None:
        raise SignatureError(f"key {keys.key_id} has no private half; only the operator's fleet.key can sign")
    if doc.get(SIG_FIELD):
        raise SignatureError(f"document already carries a signature ('{SIG_FIELD}'); remove it before re-signing")
    body = {k: v for k, v in doc.items() if k != SIG_FIELD}  # an empty placeholder ({} / None) is not signed
    value = keys.private.sign(canonical_bytes(body))
    return {**body, SIG_FIELD: {"alg": ALG, "key_id": keys.key_id, "value": value}}


def _describe(doc: Mapping[str, Any]) -> str:
    name, version = doc.get("name"), doc.get("version")
    if name is None:
        return "document"
    return f"'{name}'" + (f" v{version}" if version is not None else "")


def _timestamp(doc: Mapping[str, Any], field: str, what: str) -> float | None:
    """A validity bound in epoch seconds; absent, None or 0 mean "no bound" (``Manifest.expires = 0``)."""
    value = doc.get(field)
    if value is None or (value == 0 and not isinstance(value, bool)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SignatureError(f"{what}: malformed '{field}' {value!r} (epoch seconds expected)")
    return float(value)


def verify_document(doc: Mapping[str, Any], trusted: Iterable[FleetKeys], now: float | None = None,
                    clock_skew: float = DEFAULT_CLOCK_SKEW) -> Mapping[str, Any]:
    """Check ``doc``'s signature against the trusted key with the same key id, then its validity window.

    The window: ``expires`` (epoch s; 0 or absent = never) must not be in the past; ``not_before`` (else
    ``created``) must not be more than ``clock_skew`` seconds in the future. Returns ``doc`` unchanged; raises SignatureError saying
    why (unsigned / unknown key id / bad signature / expired / not yet valid).
    """
    if not isinstance(doc, Mapping):
        raise SignatureError(f"signed document must be a map, got {type(doc).__name__}")
    what = _describe(doc)
    sig = doc.get(SIG_FIELD)
    if not sig:
        raise SignatureError(f"{what} is unsigned")
    if not isinstance(sig, Mapping):
        raise SignatureError(f"{what}: malformed signature (expected a map, got {type(sig).__name__})")
    alg, key_id, value = sig.get("alg"), sig.get("key_id"), sig.get("value")
    if alg != ALG:
        raise SignatureError(f"{what}: unsupported signature algorithm {alg!r} (expected {ALG!r})")
    if not isinstance(key_id, str) or not isinstance(value, (bytes, bytearray, memoryview)):
        raise SignatureError(f"{what}: malformed signature (key_id must be text, value bytes)")
    trusted = list(trusted)
    key = next((k for k in trusted if k.key_id == key_id), None)
    if key is None:
        known = ", ".join(k.key_id for k in trusted) or "none"
        raise SignatureError(f"{what}: signed with unknown key id {key_id} (trusted: {known})")
    body = {k: v for k, v in doc.items() if k != SIG_FIELD}
    try:
        key.public.verify(bytes(value), canonical_bytes(body))
    except InvalidSignature:
        raise SignatureError(f"{what}: bad signature for key {key_id} (content was altered or forged)") from None
    except TypeError as exc:
        raise SignatureError(f"{what}: cannot be verified: {exc}") from None
    now = time.time() if now is None else now
    expires = _timestamp(doc, "expires", what)
    if expires is not None and now > expires:
        raise SignatureError(f"{what} expired {now - expires:.0f} s ago (expires {expires:.0f}, now {now:.0f})")
    start = _timestamp(doc, "not_before", what)
    if start is None:
        start = _timestamp(doc, "created", what)
    if start is not None and start > now + clock_skew:
        raise SignatureError(f"{what} is not yet valid: starts {start - now:.0f} s in the future "
                             f"(clock skew allowed {clock_skew:.0f} s; is this device's clock right?)")
    return doc
