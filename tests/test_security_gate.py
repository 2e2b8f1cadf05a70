"""The manifest gate and the version ledger: trust decisions without a broker."""

from __future__ import annotations

import dataclasses
import time

import pytest

from edge_agent.operator.gates import canary_count, check_gates, parse_gates
from edge_agent.protocol.messages import Manifest
from edge_agent.security.freshness import FreshnessGate, make_statement
from edge_agent.security.gate import ManifestGate, VersionLedger
from edge_agent.security.keys import FleetKeys, sign_document


def manifest(version: int = 1, fleet: str = "f", **over) -> Manifest:
    stage = {"index": 0, "device": "a", "shard_sha256": "ab" * 32, "shard_size": 1, "chunk_size": 1,
             "chunk_sha256": [], "inputs": ["x"], "outputs": ["y"]}
    return Manifest("m", version, time.time(), "", [], [], [stage], fleet=fleet, **over)


def signed(m: Manifest, keys: FleetKeys) -> Manifest:
    m.sig = sign_document(m.signed_fields(), keys)["sig"]
    return m


@pytest.fixture(scope="module")
def keys() -> FleetKeys:
    return FleetKeys.generate()


def test_signed_manifest_of_the_fleet_passes(keys) -> None:
    gate = ManifestGate("f", [keys.public_only()])
    assert gate.check(signed(manifest(), keys)) is None


@pytest.mark.parametrize("make, kind", [
    (lambda k: manifest(), "unsigned"),
    (lambda k: signed(manifest(fleet="other"), k), "foreign_fleet"),
    (lambda k: signed(manifest(expires=time.time() - 1), k), "expired"),
    (lambda k: signed(manifest(), FleetKeys.generate()), "signature"),
])
def test_gate_rejects_with_the_reason(keys, make, kind) -> None:
    rejection = ManifestGate("f", [keys.public_only()]).check(make(keys))
    assert rejection is not None and rejection.kind == kind and rejection.reason


def test_tampered_content_fails_the_signature(keys) -> None:
    m = signed(manifest(), keys)
    m.stages[0].shard_sha256 = "00" * 32
    assert ManifestGate("f", [keys.public_only()]).check(m).kind == "signature"


def test_ledger_refuses_replays_and_conflicting_content_and_persists(tmp_path, keys) -> None:
    path = tmp_path / "versions.json"
    gate = ManifestGate("f", [keys.public_only()], VersionLedger(path))
    v2 = signed(manifest(2), keys)
    assert gate.admit(v2) is None
    assert gate.admit(v2) is None                                      # the same content again: fine
    restarted = ManifestGate("f", [keys.public_only()], VersionLedger(path))
    assert restarted.check(signed(manifest(1), keys)).kind == "replay"
    other = signed(dataclasses.replace(manifest(2), operator="someone else"), keys)
    assert restarted.check(other).kind == "conflict"
    assert restarted.check(signed(manifest(3), keys)) is None


def test_check_has_no_side_effect_admit_records(keys) -> None:
    gate = ManifestGate("f", [keys.public_only()])
    gate.check(signed(manifest(5), keys))
    assert gate.ledger.last("stable", "m") == {}
    gate.admit(signed(manifest(5), keys))
    assert gate.ledger.last("stable", "m")["version"] == 5


def test_development_mode_accepts_unsigned_but_still_refuses_replays() -> None:
    gate = ManifestGate("f", [])
    assert gate.admit(manifest(4, fleet="")) is None
    assert gate.check(manifest(3, fleet="")).kind == "replay"


def test_rollout_gates_parse_and_report_violations() -> None:
    gates = parse_gates("p95_ms<=120, error_rate<0.01")
    assert gates == [("p95_ms", "<=", 120.0), ("error_rate", "<", 0.01)]
    assert check_gates(gates, {"p95_ms": 100.0, "error_rate": 0.0}) == []
    failed = check_gates(gates, {"p95_ms": 130.0, "error_rate": None})
    assert len(failed) == 2 and "p95_ms = 130.0 violates p95_ms<=120" in failed[0]
    with pytest.raises(ValueError, match="unknown metric"):
        parse_gates("latency<=3")
    assert canary_count("25%", 8) == 2 and canary_count(3, 2) == 2


# --------------------------------------------------------------------------------------------- freshness

def _fresh_gate(keys: FleetKeys, tmp_path=None) -> tuple[ManifestGate, FreshnessGate]:
    fresh = FreshnessGate("f", [keys.public_only()], None if tmp_path is None else tmp_path / "fresh.msg")
    return ManifestGate("f", [keys.public_only()], freshness=fresh), fresh


def test_an_expired_manifest_passes_only_while_a_valid_statement_names_exactly_it(keys, tmp_path) -> None:
    gate, fresh = _fresh_gate(keys, tmp_path)
    old = signed(manifest(3, expires=time.time() - 60), keys)
    assert gate.check(old).kind == "expired"                           # nothing vouches for it yet
    assert fresh.admit(make_statement("f", [old], keys, ttl_s=600)) is None
    assert gate.check(old) is None                                     # the operator vouched for it recently
    other = signed(manifest(3, expires=time.time() - 60, replicas=2), keys)     # same version, other content
    assert gate.check(other).kind == "expired"
    assert gate.check(old, now=time.time() + 3600).kind == "expired"   # the statement itself ran out
    # a restart keeps the statement (it was stored) and with it the vouching
    again, _ = _fresh_gate(keys, tmp_path)
    assert again.check(old) is None


@pytest.mark.parametrize("make, why", [
    (lambda k: make_statement("f", [], FleetKeys.generate()), "unknown key"),
    (lambda k: make_statement("other", [], k), "fleet"),
    (lambda k: make_statement("f", [], k, ttl_s=-1), "expired"),
])
def test_bad_statements_are_refused_with_the_reason(keys, make, why) -> None:
    _, fresh = _fresh_gate(keys)
    reason = fresh.admit(make(keys))
    assert reason is not None and why in reason and fresh.current is None


def test_an_older_statement_is_a_replay_and_a_newer_version_shows_the_device_is_held_back(keys) -> None:
    _, fresh = _fresh_gate(keys)
    v1, v2 = signed(manifest(1), keys), signed(manifest(2), keys)
    first = make_statement("f", [v1], keys, now=time.time() - 10)
    assert fresh.admit(make_statement("f", [v2], keys)) is None
    assert "replay" in fresh.admit(first)
    st = fresh.status({"stable/m": 1})                                 # runs v1; the operator says v2 (freeze)
    assert st["behind"] == ["stable/m"] and not st["expired"]
    assert fresh.status({"stable/m": 2})["behind"] == []
    assert fresh.status({"stable/m": 2}, now=time.time() + 2 * 86400)["expired"]
