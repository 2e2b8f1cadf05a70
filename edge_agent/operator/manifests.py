"""Building a deployment's manifest: plan the model onto devices, cut the shards, describe them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edge_agent.cluster.placement import assign_replicas
from edge_agent.protocol import topics
from edge_agent.protocol.errors import DeployError
from edge_agent.protocol.manifest import StageSpec
from edge_agent.protocol.messages import Manifest
from edge_agent.transport.store import CHUNK_SIZE, chunk_digests, sha256_hex

log = logging.getLogger("edge_agent.fleet")


def device_spec(d: Any) -> Any:
    """The planner's view of a device (``device_id``, ``gflops``, ``ram_mb`` and, when the device measured
    it, ``link_mbps``): its measured link rate, else the planner's default."""
    from models.partition import DeviceSpec

    spec = DeviceSpec(d.device_id, gflops=max(d.gflops, 0.01), ram_bytes=max(d.ram_mb, 1) << 20)
    mbps = getattr(d, "link_mbps", None)
    if mbps:
        spec.link_bytes_per_s = float(mbps) * 1e6 / 8
    return spec


def build_manifest(model: Any, name: str, devices: Sequence[Any], *, add_shard: Callable[[bytes], str],
                   version: int, fleet: str, operator: str, sources: list[str], stages: int | None = None,
                   input_shapes: dict[str, Sequence[int]] | None = None, replicas: int = 1,
                   failover: bool = True, channel: str = "stable", expires: float = 0.0,
                   sample: dict[str, Any] | None = None,
                   standby: Sequence[str] | None = None) -> tuple[Manifest, Any]:
    """Plan ``model`` (path, bytes or ModelProto) onto ``devices`` (objects with ``device_id``, ``gflops``,
    ``ram_mb``), cut it into shards (each handed to ``add_shard``, which returns its sha256) and return the
    unsigned manifest and the plan. Dynamic input dimensions are planned on ``input_shapes``, else the shapes
    of ``sample``, else a default per dimension role (logged, and kept in ``manifest.plan["notes"]``); the
    deployment serves any shape the model accepts. ``standby`` names the devices that may adopt a stage whose
    replicas are all gone (signed with the manifest; None lets any device adopt). Raises DeployError saying
    why it cannot be planned."""
    from models.extract import split_model
    from models.graph import input_specs, load_model, output_specs
    from models.partition import plan_pipeline

    topics.check_segment("model name", name)
    try:
        proto = load_model(model)
    except ValueError as exc:
        raise DeployError(f"cannot deploy '{name}': {exc}") from None
    if not devices:
        raise DeployError(f"cannot deploy '{name}': no device is online in fleet '{fleet}'")
    if replicas < 1:
        raise DeployError(f"cannot deploy '{name}': replicas must be at least 1")
    specs = [device_spec(d) for d in devices]
    shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()} or None
    try:
        plan = plan_pipeline(proto, specs, stages=stages, input_shapes=shapes, model_name=name, sample=sample)
        shards = [s.SerializeToString() for s in split_model(proto, plan)]
    except ValueError as exc:
        raise DeployError(f"cannot plan '{name}': {exc}") from None
    for note in plan.notes:
        log.warning("%s: %s", name, note)
    placement = assign_replicas([st.device_id for st in plan.stages], [st.est_ms for st in plan.stages],
                                specs, replicas)
    stage_specs = []
    for st, shard in zip(plan.stages, shards):
        stage_specs.append(StageSpec(
            index=st.index, device=st.device_id, devices=placement[st.index], shard_sha256=add_shard(shard),
            shard_size=len(shard), chunk_size=CHUNK_SIZE, chunk_sha256=chunk_digests(shard, CHUNK_SIZE),
            inputs=list(st.inputs), outputs=list(st.outputs), carry=list(st.carry), flops=int(st.flops),
            est_ms=round(float(st.est_ms), 3), nodes=[st.first_node, st.last_node],
            n_nodes=st.node_end - st.node_start))
    manifest = Manifest(
        name=name, version=int(version), created=time.time(),
        model_sha256=sha256_hex(proto.SerializeToString()),
        inputs=[s.to_dict() for s in input_specs(proto)], outputs=[s.to_dict() for s in output_specs(proto)],
        stages=stage_specs, sources=sources,
        plan={"bottleneck_ms": round(plan.bottleneck_ms, 3), "total_ms": round(plan.total_ms, 3),
              "reason": plan.reason, "input_shapes": {k: list(v) for k, v in plan.input_shapes.items()},
              "notes": list(plan.notes)}, operator=operator, replicas=replicas, failover=failover,
        channel=channel, expires=expires, fleet=fleet, standby=None if standby is None else list(standby))
    return manifest, plan


def load_sample(sample: Any) -> dict[str, np.ndarray] | None:
    """A sample input given as a dict of arrays or an .npz path (arrays by input name)."""
    if sample is None or isinstance(sample, dict):
        return sample
    with np.load(sample, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
