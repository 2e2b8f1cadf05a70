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


def model_device(d: Any, efficiency: float | None = None) -> Any:
    """The performance model's view of a device (:class:`models.planner.Device`): measured GFLOP/s, and its
    measured link (rate and round trip) when it reported one, else the planner's defaults. ``efficiency``:
    what the model being planned reached on this device before (learned from its run times), else None
    (the calibration's)."""
    from models.planner import Device

    spec = device_spec(d)
    rtt = getattr(d, "link_rtt_ms", None)
    burst = getattr(d, "burst_gflops", None)
    return Device(spec.id, spec.gflops, link_bytes_per_s=spec.link_bytes_per_s, ram_bytes=spec.ram_bytes,
                  rtt_ms=float(rtt) if rtt else 1.0, peak_gflops=float(burst) if burst else None,
                  efficiency=efficiency)


def calibration_for(devices: Sequence[Any], client: Any = None) -> Any:
    """The model's constants for this fleet: the broker's rate is estimated from the fastest link a device
    measured through it (a link probe's burst crosses the broker in and out at once: twice its rate), when
    that is above the default's floor; ``client`` (the operator's own :class:`LinkStats`, or None) gives the
    caller's round trip and link rate."""
    import dataclasses

    from models.planner import Calibration

    cal = Calibration()
    rates = [float(d.link_mbps) * 1e6 / 8 for d in devices if getattr(d, "link_mbps", None)]
    if rates:
        # a probe through an agent under a CPU quota measures that agent's CPU, not the broker: never below
        # the default (bench_bytes: this machine's loopback Mosquitto in and out)
        cal = dataclasses.replace(cal, broker_bytes_per_s=max(cal.broker_bytes_per_s, 2 * max(rates)))
    if client is not None and client.rtt_ms > 0:
        cal = dataclasses.replace(cal, client_rtt_ms=float(client.rtt_ms),
                                  client_link_bytes_per_s=float(client.mbps) * 1e6 / 8 if client.mbps > 0 else None)
    return cal


def _planned(proto: Any, name: str, devices: Sequence[Any], objective: str,
             shapes: dict[str, tuple[int, ...]] | None, sample: dict[str, Any] | None,
             shape: Any = None, client: Any = None, learned: dict[str, float] | None = None) -> Any:
    """The best shape for ``objective`` as a Plan (cuts, replicas, weights, prediction and alternatives);
    or, given ``shape`` (a :class:`models.planner.Shape`, e.g. an alternative the search listed), that one."""
    from models.partition import plan_from_cuts, profile_model
    from models.planner import Candidate, Search, evaluate, search

    prof = profile_model(proto, shapes, sample, model_name=name)
    specs = {d.device_id: device_spec(d) for d in devices}
    learned = learned or {}
    if shape is not None:
        unknown = sorted(set(shape.devices) - set(specs))
        if unknown:
            raise DeployError(f"cannot deploy '{name}': shape {shape.label()!r} names devices {unknown} "
                              f"that are not online")
        by_id = {d.device_id: model_device(d, learned.get(d.device_id)) for d in devices}
        found = Search("given", [Candidate(shape, evaluate(prof, by_id, shape, calibration_for(devices, client)))])
        objective = "given"
    else:
        found = search(prof, [model_device(d, learned.get(d.device_id)) for d in devices],
                       calibration_for(devices, client), objective)
    best = found.best
    plan = plan_from_cuts(prof, list(best.shape.cuts), [specs[g[0]] for g in best.shape.groups],
                          reason=f"Objective {objective}: {found.why()}")
    plan.replicas = [list(g) for g in best.shape.groups]
    plan.weights = [list(w) for w in best.shape.weights]
    plan.bottleneck_ms = 1e3 / best.prediction.throughput_rps
    plan.total_ms = best.prediction.latency_ms
    plan.prediction = prediction_summary(objective, best, found.alternatives(), found.notes)
    return plan


def prediction_summary(objective: str, chosen: Any, alternatives: Sequence[Any], notes: Sequence[str] = ()) -> dict:
    """What the manifest and ``deploy`` show: the chosen shape's prediction and the top alternatives."""
    p = chosen.prediction
    return {"objective": objective, "shape": chosen.shape.label(), "kind": chosen.shape.kind,
            "throughput_rps": round(p.throughput_rps, 3), "latency_ms": round(p.latency_ms, 3),
            "bottleneck": p.bottleneck, "alternatives": [c.row() for c in alternatives], "notes": list(notes)}


def _predict_given(proto: Any, name: str, plan: Any, placement: list[list[str]], devices: Sequence[Any],
                   shapes: dict[str, tuple[int, ...]] | None, sample: dict[str, Any] | None,
                   client: Any = None, learned: dict[str, float] | None = None) -> dict:
    """The model's prediction for a shape the operator fixed (``--stages``/``--replicas``)."""
    from models.partition import profile_model
    from models.planner import Candidate, Shape, evaluate

    prof = profile_model(proto, shapes, sample, model_name=name)
    cuts = [0] + [next(i for i in range(prof.n + 1) if i == prof.n or
                       prof.structure.anchors[i] >= st.node_end) for st in plan.stages]
    weights = tuple(tuple(1.0 / len(g) for g in group) for group in [placement[i] for i in range(len(placement))])
    shape = Shape(tuple(cuts), tuple(tuple(g) for g in placement), weights)
    by_id = {d.device_id: model_device(d, (learned or {}).get(d.device_id)) for d in devices}
    cand = Candidate(shape, evaluate(prof, by_id, shape, calibration_for(devices, client)))
    return prediction_summary("given", cand, [cand])


def build_manifest(model: Any, name: str, devices: Sequence[Any], *, add_shard: Callable[[bytes], str],
                   version: int, fleet: str, operator: str, sources: list[str], stages: int | None = None,
                   input_shapes: dict[str, Sequence[int]] | None = None, replicas: int | None = None,
                   failover: bool = True, channel: str = "stable", expires: float = 0.0,
                   sample: dict[str, Any] | None = None, objective: str = "throughput",
                   shape: Any = None, standby: Sequence[str] | None = None,
                   client_link: Any = None,
                   learned: Callable[[str], dict[str, float]] | None = None) -> tuple[Manifest, Any]:
    """Plan ``model`` (path, bytes or ModelProto) onto ``devices`` (objects with ``device_id``, ``gflops``,
    ``ram_mb``), cut it into shards (each handed to ``add_shard``, which returns its sha256) and return the
    unsigned manifest and the plan. Dynamic input dimensions are planned on ``input_shapes``, else the shapes
    of ``sample``, else a default per dimension role (logged, and kept in ``manifest.plan["notes"]``); the
    deployment serves any shape the model accepts. ``standby`` names the devices that may adopt a stage whose
    replicas are all gone (signed with the manifest; None lets any device adopt). Raises DeployError saying
    why it cannot be planned.

    With neither ``stages`` nor ``replicas`` the performance model (:mod:`models.planner`) picks the shape
    (replicas, stages or a hybrid) best for ``objective`` ("throughput" or "latency") among ``devices``;
    otherwise the min-max partitioner cuts ``stages`` and replicas are added (the model still predicts).
    ``shape`` (a :class:`models.planner.Shape`) deploys exactly that shape, with the model's prediction.
    ``client_link`` (the operator's measured :class:`LinkStats`) gives the caller's terms of the prediction.
    ``learned`` maps the model's content hash to the efficiency each device reached running it before
    (:class:`edge_agent.operator.telemetry.LearnedEfficiency`): those devices' compute is predicted from it."""
    from models.extract import split_model
    from models.graph import input_specs, load_model, output_specs
    from models.partition import plan_pipeline
    from models.planner import OBJECTIVES

    topics.check_segment("model name", name)
    try:
        proto = load_model(model)
    except ValueError as exc:
        raise DeployError(f"cannot deploy '{name}': {exc}") from None
    if not devices:
        raise DeployError(f"cannot deploy '{name}': no device is online in fleet '{fleet}'")
    if replicas is not None and replicas < 1:
        raise DeployError(f"cannot deploy '{name}': replicas must be at least 1")
    if objective not in OBJECTIVES:
        raise DeployError(f"cannot deploy '{name}': objective must be one of {', '.join(OBJECTIVES)}, "
                          f"got {objective!r}")
    specs = [device_spec(d) for d in devices]
    shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()} or None
    model_sha = sha256_hex(proto.SerializeToString())
    known = learned(model_sha) if learned else {}
    eff = {d.device_id: known[d.device_id] for d in devices if d.device_id in known}
    try:
        if shape is not None or (stages is None and replicas is None):
            plan = _planned(proto, name, devices, objective, shapes, sample, shape, client_link, eff)
            placement = plan.replicas
        else:
            plan = plan_pipeline(proto, specs, stages=stages, input_shapes=shapes, model_name=name, sample=sample)
            placement = assign_replicas([st.device_id for st in plan.stages], [st.est_ms for st in plan.stages],
                                        specs, replicas or 1)
            plan.replicas = placement
            plan.prediction = _predict_given(proto, name, plan, placement, devices, shapes, sample, client_link, eff)
        shards = [s.SerializeToString() for s in split_model(proto, plan)]
    except ValueError as exc:
        raise DeployError(f"cannot plan '{name}': {exc}") from None
    for note in plan.notes:
        log.warning("%s: %s", name, note)
    if eff:
        plan.notes.append("compute predicted from the efficiency this model reached before on "
                          + ", ".join(f"{d} ({e:.2f})" for d, e in sorted(eff.items()))
                          + " (their reported run times); other devices: the calibration's")
    stage_specs = []
    for st, shard in zip(plan.stages, shards):
        weights = plan.weights[st.index] if plan.weights and len(placement[st.index]) > 1 else None
        stage_specs.append(StageSpec(
            index=st.index, device=st.device_id, devices=placement[st.index], weights=weights,
            shard_sha256=add_shard(shard),
            shard_size=len(shard), chunk_size=CHUNK_SIZE, chunk_sha256=chunk_digests(shard, CHUNK_SIZE),
            inputs=list(st.inputs), outputs=list(st.outputs), carry=list(st.carry), flops=int(st.flops),
            est_ms=round(float(st.est_ms), 3), nodes=[st.first_node, st.last_node],
            n_nodes=st.node_end - st.node_start))
    manifest = Manifest(
        name=name, version=int(version), created=time.time(),
        model_sha256=model_sha,
        inputs=[s.to_dict() for s in input_specs(proto)], outputs=[s.to_dict() for s in output_specs(proto)],
        stages=stage_specs, sources=sources,
        plan={"bottleneck_ms": round(plan.bottleneck_ms, 3), "total_ms": round(plan.total_ms, 3),
              "reason": plan.reason, "input_shapes": {k: list(v) for k, v in plan.input_shapes.items()},
              "notes": list(plan.notes), "predicted": plan.prediction}, operator=operator,
        replicas=max(len(p) for p in placement), failover=failover,
        channel=channel, expires=expires, fleet=fleet, standby=None if standby is None else list(standby))
    return manifest, plan


def load_sample(sample: Any) -> dict[str, np.ndarray] | None:
    """A sample input given as a dict of arrays or an .npz path (arrays by input name)."""
    if sample is None or isinstance(sample, dict):
        return sample
    with np.load(sample, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
