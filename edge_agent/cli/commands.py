"""The operator's commands: each parses its arguments, calls the Python API (:class:`edge_agent.Fleet`,
keys, PKI, the model zoo) and hands the result to :mod:`edge_agent.cli.render`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.cli import render
from edge_agent.cli.inputs import load_inputs, parse_shapes

if TYPE_CHECKING:
    from edge_agent.operator.fleet import Fleet


def _fleet(args: argparse.Namespace) -> Fleet:
    from edge_agent.operator.fleet import Fleet
    return Fleet(args.broker, fleet=args.fleet, interfaces=args.interfaces or ["127.0.0.1"],
                 key=getattr(args, "key", None), credentials=args.credentials, insecure=args.insecure)


def _csv(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


# ------------------------------------------------------------------------------------------ set-up
def cmd_keys(args: argparse.Namespace) -> int:
    from edge_agent.security.keys import generate_keys, load_public_key
    priv, pub = generate_keys(args.out, force=args.force)
    render.keys_written(priv, pub, load_public_key(pub).key_id)
    return 0


def cmd_fleet_init(args: argparse.Namespace) -> int:
    from edge_agent.security.pki import init_fleet
    res = init_fleet(args.out, _csv(args.devices), fleet=args.fleet, operator=args.operator, host=args.host,
                     port=args.port, plain_port=args.plain_port, overwrite=args.overwrite,
                     stream_topics=_csv(args.stream_topics), viewers=_csv(args.viewer))
    render.fleet_initialised(res)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from edge_agent.operator.inspect import inspect_model, parse_devices
    from edge_agent.protocol.errors import EdgeAgentError

    sample = None
    if args.sample_input:
        with np.load(args.sample_input, allow_pickle=False) as z:
            sample = {k: z[k] for k in z.files}
    devices, where = None, ""
    if args.devices:
        devices, where = parse_devices(args.devices), f"--devices {args.devices}"
    else:
        try:
            with _fleet(args) as fleet:
                devices, where = fleet.devices(), f"the live fleet '{args.fleet}'"
        except EdgeAgentError as exc:   # no broker: inspect the model alone
            where = f"no plan: {exc}"
    report = inspect_model(args.model, input_shapes=parse_shapes(args.input_shape) or None, sample=sample,
                           devices=devices, stages=args.stages)
    report["planned_on"] = where
    render.inspected(args.model, report, args.json)
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    import onnx

    from models import zoo
    model = zoo.build(args.model, seed=args.seed)
    onnx.save(model, args.out)
    if args.sample_input:
        np.savez(args.sample_input, **zoo.sample_inputs(model, seed=args.seed))
    render.wrote(args.out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge_agent.lab.demo import run_demo
    return run_demo(model=args.model, stages=args.stages, requests=args.requests, broker_kind=args.broker_kind,
                    dashboard_port=args.dashboard_port if args.dashboard else None)


# ------------------------------------------------------------------------------------------ watching
def cmd_dashboard(args: argparse.Namespace) -> int:
    from edge_agent.dashboard.server import Dashboard
    from edge_agent.lab.simrun import hold

    with _fleet(args) as fleet, Dashboard(fleet, args.bind, args.port, write=args.key is not None,
                                          interval=args.interval) as dash:
        render.dashboard_started(dash.url, dash.write, args.bind)
        hold()
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from edge_agent.lab.simrun import hold
    from edge_agent.operator.metrics import serve_metrics

    with _fleet(args) as fleet:
        serve_metrics(fleet, args.port, args.bind)
        render.metrics_started(f"http://{args.bind}:{args.port}/metrics")
        hold()
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from edge_agent.lab.profiles import fleet_from_arg
    from edge_agent.lab.sim import SimFleet
    from edge_agent.lab.simrun import hold, load_model_arg, wait_measured
    from edge_agent.operator.fleet import Fleet

    entries = fleet_from_arg(args.devices)
    with SimFleet(devices=entries, broker_kind=args.broker_kind, fleet=args.fleet) as sim:
        render.sim_started(sim)
        with Fleet(sim.broker_url, fleet=args.fleet) as fleet:
            devs = wait_measured(fleet, [e.name for e in entries], timeout=args.timeout)
            render.devices(devs, args.fleet, as_json=False)
            if args.model:
                model, name = load_model_arg(args.model)
                render.deployed(fleet.deploy(model, name, stages=args.stages, timeout=args.timeout), as_json=False)
        render.sim_running(sim)
        hold()
    return 0


# ------------------------------------------------------------------------------------------ fleet
def cmd_fleet_ls(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        devs = fleet.devices(include_offline=args.all)
    render.devices(devs, args.fleet, args.json)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    shapes = parse_shapes(args.input_shape)
    kwargs = dict(stages=args.stages, devices=_csv(args.devices) if args.devices else None, version=args.version,
                  input_shapes=shapes or None, timeout=args.timeout, replicas=args.replicas,
                  failover=not args.no_failover, canary=args.canary, gates=args.gate, check_data=args.check_data,
                  sample_input=args.sample_input, verify_fraction=args.verify_fraction, objective=args.objective)
    with _fleet(args) as fleet:
        if args.json:
            dep = fleet.deploy(args.model, args.name, **kwargs)
        else:
            with render.deploy_progress() as progress:
                dep = fleet.deploy(args.model, args.name, progress=progress, **kwargs)
    render.deployed(dep, args.json)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        st = fleet.status(args.name)
    render.status(args.name, st, args.json)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        dep = fleet.rollback(args.name, to_version=args.to, timeout=args.timeout)
    render.rolled_back(args.name, dep)
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        fleet.fresh_ttl_s = args.ttl
        fleet._settle()      # the retained manifests first: the statement names what the broker holds
        while True:
            f = fleet.refresh()
            print(f"freshness statement: {len(f.versions)} slot(s), valid until "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(f.expires))}", flush=True)
            if args.every <= 0:
                return 0
            time.sleep(args.every)


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_agent.operator.bench import run_bench
    inputs = load_inputs(args.input) if args.input else None
    with _fleet(args) as fleet:
        res = run_bench(fleet, args.name, requests=args.requests, concurrency=args.concurrency,
                        timeout=args.timeout, inputs=inputs)
    render.bench(args.name, args.requests, args.concurrency, res, args.json)
    return 0 if res["lost"] == 0 else 1


def cmd_infer(args: argparse.Namespace) -> int:
    inputs = load_inputs(args.input)
    with _fleet(args) as fleet:
        t0 = time.perf_counter()
        outputs, timings = fleet.infer(args.name, inputs, timeout=args.timeout, with_timings=True)
        total_ms = (time.perf_counter() - t0) * 1e3
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, arr in outputs.items():
            np.save(out / f"{_safe_filename(name)}.npy", arr)
    render.inferred(outputs, timings, total_ms, args.json)
    return 0


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def cmd_undeploy(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        fleet.undeploy(args.name, timeout=args.timeout)
    render.undeployed(args.name)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        deps = fleet.deployments()
    rows = [{"name": m.name, "version": m.version, "stages": len(m.stages),
             "devices": [s.device for s in m.stages], "created": m.created} for m in deps]
    render.deployments(rows, args.json)
    return 0


# ------------------------------------------------------------------------------------------ streams
def cmd_stream_start(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        rec = fleet.stream_start(args.name, args.model, args.source, args.sink, policy=args.policy,
                                 batch=args.batch, input=args.input, preprocess=args.preprocess,
                                 timeout=args.timeout)
    render.stream_started(rec.to_dict(), args.json)
    return 0


def cmd_stream_ls(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        _settle_reports(fleet)
        rows = fleet.streams()
    render.streams(rows, args.json)
    return 0


def cmd_stream_stats(args: argparse.Namespace) -> int:
    from edge_agent.protocol.errors import UnknownModelError

    with _fleet(args) as fleet:
        _settle_reports(fleet)
        rows = [r for r in fleet.streams() if args.name is None or r["name"] == args.name]
    if args.name is not None and not rows:
        raise UnknownModelError(f"no stream named '{args.name}' in fleet '{args.fleet}'")
    render.stream_stats(rows, args.json)
    return 0


def cmd_stream_stop(args: argparse.Namespace) -> int:
    with _fleet(args) as fleet:
        fleet.stream_stop(args.name, timeout=args.timeout)
    render.stream_stopped(args.name)
    return 0


def _settle_reports(fleet: Fleet) -> None:
    """A fresh client has the retained reports; give the running ingresses one report period to refresh
    their fps (the retained copy may be up to a second old)."""
    time.sleep(1.1)
