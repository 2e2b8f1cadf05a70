"""The operator client parses a manifest's input specs once, and never checks a request against the specs of a
manifest it no longer holds (a redeploy under the same name, a canary beside stable): no broker."""

from __future__ import annotations

import types

import numpy as np

from edge_agent.operator.fleet import Fleet
from edge_agent.protocol.messages import Manifest


def manifest(version: int, shape: list[int], channel: str = "stable") -> Manifest:
    return Manifest("m", version, 0.0, "0" * 64, [{"name": "x", "dtype": "float32", "shape": shape}], [], [],
                    channel=channel)


def test_input_specs_follow_the_manifest_held_now() -> None:
    client = types.SimpleNamespace(_input_specs={})
    v1, v2, canary = manifest(1, [4]), manifest(2, [8]), manifest(3, [2], channel="canary")
    first = Fleet._inputs_of(client, v1)
    assert Fleet._inputs_of(client, v1) is first            # parsed once per manifest
    assert first[0].shape == (4,)
    assert Fleet._inputs_of(client, v2)[0].shape == (8,)   # a redeploy: the new manifest's specs
    assert Fleet._inputs_of(client, canary)[0].shape == (2,)
    assert Fleet._inputs_of(client, v2)[0].shape == (8,)   # the canary did not replace stable's specs
    # an equal-looking manifest decoded again (a re-signed or re-published one) is parsed again, not trusted
    again = manifest(2, [16])
    assert Fleet._inputs_of(client, again)[0].shape == (16,)
    assert np.dtype(Fleet._inputs_of(client, again)[0].dtype) == np.float32


def test_verified_picks_stable_then_canary_by_version() -> None:
    tables = {"stable": {"m": manifest(1, [4])}, "canary": {"m": manifest(2, [4], channel="canary")}}
    client = types.SimpleNamespace(current=lambda name, channel="stable": tables[channel].get(name))
    assert Fleet._verified(client, "m", 1) is tables["stable"]["m"]
    assert Fleet._verified(client, "m", 2) is tables["canary"]["m"]
    assert Fleet._verified(client, "m", 3) is None
    assert Fleet._verified(client, "other", 1) is None
    tables["canary"].clear()
    assert Fleet._verified(client, "m", 2) is None
