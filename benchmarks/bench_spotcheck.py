"""The cost of spot-checking results: throughput of a deployment with 0 %, 1 % and 10 % of its results
re-run on ONNX Runtime by the operator, in one run, alternating the three settings block by block.

Two agents (one stage each replica, MobileNetV2 from the zoo) on real Mosquitto; the operator's checks run
on its own thread on the same 2-core machine, so the cost shows as lost throughput.

``python -m benchmarks spotcheck [--quick] [--json out.json]``
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import console, fmt_ratio, machine_info, parser, ratio, table, write_json
from edge_agent import Fleet
from edge_agent.lab.sim import SimFleet
from edge_agent.operator.bench import run_bench
from models import zoo

FRACTIONS = (0.0, 0.01, 0.1)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parser(__doc__.split("\n")[0]).parse_args(argv)
    requests, blocks = (60, 2) if args.quick else (200, 3)
    model = zoo.build("mobilenetv2", seed=0)
    x = zoo.sample_inputs(model)
    rps: dict[float, list[float]] = {f: [] for f in FRACTIONS}
    with tempfile.TemporaryDirectory(prefix="ea-bench-spot-") as tmp, \
            SimFleet(2, broker_kind="mosquitto", workdir=Path(tmp), discovery=False, threads=1) as sim, \
            Fleet(sim.broker_url) as fleet:
        fleet.wait_for_devices(2, timeout=60)
        fleet.deploy(model, "spot", stages=1, replicas=2, timeout=180)
        run_bench(fleet, "spot", requests=20, concurrency=4, inputs=x)   # warm both replicas
        for _ in range(blocks):
            for f in FRACTIONS:
                if f > 0:
                    fleet.verify("spot", f, model)
                else:
                    fleet.spot.pop("spot", None)
                r = run_bench(fleet, "spot", requests=requests, concurrency=4, inputs=x)
                rps[f].append(r["throughput_rps"])
        checked = fleet.status("spot").get("spot_check", {})
    best = {f: max(v) for f, v in rps.items()}
    rows = [[f"{f:.0%}", f"{best[f]:.1f}", fmt_ratio(ratio(best[f], best[0.0]))] for f in FRACTIONS]
    table("spot-checking cost: throughput (best block) and ratio to no checking", ["checked", "req/s", "ratio"],
          rows, caption=f"{requests} requests x {blocks} blocks per setting, 4 in flight; load {machine_info()['load_avg_1m']}")
    out = {"throughput_rps": {str(f): v for f, v in rps.items()}, "last_check": checked}
    write_json(args.json, out)
    console.print(f"last 10 % block: {checked.get('checked', 0)} checked, {checked.get('disagreed', 0)} disagreed")
    return out


if __name__ == "__main__":
    main()
