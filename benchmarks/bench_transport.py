"""Transport costs of edge-agent next to raw paho-mqtt through the same broker.

1. Added latency per pipeline hop: a chain model of K cheap stages (one ``Add`` each) on K agents, for a
   4 KiB and a 1 MiB float32 activation, against a chain of K raw relay processes forwarding the same
   payload size (caller -> relay 1 -> ... -> relay K -> caller). Per-hop cost = slope of the median over K.
   Both are measured interleaved (ours K=1, raw K=1, ours K=2, ...) so background load hits both alike.
2. Shard transfer: BlobServer -> BlobFetcher (256 KiB chunks, each verified, written to a temp dir, then
   assembled and verified) against a raw one-way bulk publish of the same bytes in 256 KiB QoS 1 messages.
   On both sides the sender is a separate process (as an operator or peer is to a device), the receiver
   this one.

``python -m benchmarks transport [--quick] [--json out.json] [--brokers mosquitto,embedded]``
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.common import (
    Helper,
    Latency,
    RawRelayChain,
    bulk_data,
    console,
    cpu_of,
    fmt,
    fmt_ratio,
    parser,
    process_cpu_s,
    ratio,
    raw_bulk_transfer,
    size_label,
    slope,
    table,
    write_json,
)
from edge_agent import Fleet
from edge_agent.lab.sim import SimFleet
from edge_agent.protocol import topics
from edge_agent.transport.blobs import BlobFetcher, BlobServer, TransferSpec
from edge_agent.transport.broker import Broker, find_mosquitto
from edge_agent.transport.mqtt import Transport
from edge_agent.transport.store import CHUNK_SIZE, BlobStore, chunk_digests, sha256_hex

HOP_SIZES = (4096, 1 << 20)
KS = (1, 2, 3)
TRANSFER_SIZES = (16 << 20, 64 << 20)


def chain_model(k: int, n_elements: int) -> onnx.ModelProto:
    """``y = x + 1 + 1 ...`` with ``k`` Add nodes on a float32 vector: one cheap node per pipeline stage."""
    nodes, inits = [], []
    prev = "x"
    for i in range(k):
        one = f"one_{i}"
        inits.append(numpy_helper.from_array(np.ones((1,), np.float32), one))
        out = "y" if i == k - 1 else f"h_{i}"
        nodes.append(helper.make_node("Add", [prev, one], [out], name=f"add_{i}"))
        prev = out
    graph = helper.make_graph(nodes, f"chain{k}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n_elements])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n_elements])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="benchmarks")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------------------------------------- hop latency
def hop_latency(broker_kind: str, n_requests: int, workdir: Path, sizes: Sequence[int] = HOP_SIZES,
                ks: Sequence[int] = KS) -> list[dict[str, Any]]:
    """Per-K latencies and per-hop slopes of edge-agent and of raw relays, one dict per payload size.

    Payloads of 1 MiB and more get half of ``n_requests`` (each round trip costs ~10x more)."""
    results = []
    with SimFleet(max(ks), broker_kind=broker_kind, workdir=workdir / f"hop-{broker_kind}", discovery=False,
                  threads=1) as sim, Fleet(sim.broker.url) as fleet:
        fleet.wait_for_devices(max(ks), timeout=60)
        with RawRelayChain(sim.broker.url, max(ks)) as raw:
            for size in sizes:
                n = n_requests if size < (1 << 20) else max(10, n_requests // 2)
                agent_pids = [sim.devices[f"dev-{i}"].proc.pid for i in range(max(ks))]
                relay_pids = [p.pid for p in raw.procs]
                results.append(_hop_one_size(fleet, raw, broker_kind, size, n, ks, agent_pids, relay_pids))
    return results


def _hop_one_size(fleet: Fleet, raw: RawRelayChain, broker_kind: str, size: int, n_requests: int,
                  ks: Sequence[int], agent_pids: Sequence[int], relay_pids: Sequence[int]) -> dict[str, Any]:
    """Latencies per K, per-hop slopes, and CPU per hop: the agents' (and the relays') CPU seconds over the
    timed requests divided by the hops they served (a chain of K stages is K hops). Agent CPU includes their
    background work (heartbeats, probes, load reports) over the same wall time, so it is an upper bound."""
    n_el = size // 4
    x = np.random.default_rng(size).standard_normal(n_el).astype(np.float32)
    names = {}
    for k in ks:
        name = f"bench-chain-{n_el}-k{k}"
        devices = [f"dev-{i}" for i in range(k)]
        dep = fleet.deploy(chain_model(k, n_el), name, stages=k, devices=devices, timeout=120)
        placed = [st.device for st in dep.manifest.stages]
        if sorted(placed) != devices:
            raise RuntimeError(f"{name}: planner placed stages on {placed}, wanted one stage on each of {devices}")
        out = fleet.infer(name, {"x": x})["y"]
        if not np.allclose(out, x + k):
            raise RuntimeError(f"{name}: wrong result through the pipeline")
        names[k] = name
    payload = bytearray(size)
    ours: dict[int, list[float]] = {k: [] for k in ks}
    base: dict[int, list[float]] = {k: [] for k in ks}
    run_ms: dict[int, list[float]] = {k: [] for k in ks}
    warmup = max(3, n_requests // 20)
    cpu0 = (0.0, 0.0)
    for i in range(warmup + n_requests):
        if i == warmup:
            cpu0 = (cpu_of(agent_pids), cpu_of(relay_pids))
        for k in ks:
            t0 = time.perf_counter()
            _, timings = fleet.infer(names[k], {"x": x}, with_timings=True)
            t1 = time.perf_counter()
            raw.round_trip(k, payload)
            t2 = time.perf_counter()
            if i >= warmup:
                ours[k].append((t1 - t0) * 1e3)
                base[k].append((t2 - t1) * 1e3)
                run_ms[k].append(sum(t["run_ms"] for t in timings))
    hops = n_requests * sum(ks)
    agent_cpu_ms = (cpu_of(agent_pids) - cpu0[0]) * 1e3 / hops
    relay_cpu_ms = (cpu_of(relay_pids) - cpu0[1]) * 1e3 / hops
    for name in names.values():
        fleet.undeploy(name)
    lo = {k: Latency.of(v) for k, v in ours.items()}
    lr = {k: Latency.of(v) for k, v in base.items()}
    ours_hop = slope(ks, [lo[k].p50 for k in ks])
    raw_hop = slope(ks, [lr[k].p50 for k in ks])
    ours_hop95 = slope(ks, [lo[k].p95 for k in ks])
    raw_hop95 = slope(ks, [lr[k].p95 for k in ks])
    return {
        "broker": broker_kind, "payload_bytes": size, "requests": n_requests,
        "per_k": [{"k": k, "ours": lo[k].to_dict(), "raw": lr[k].to_dict(),
                   "stage_run_ms_mean": round(float(np.mean(run_ms[k])), 4)} for k in ks],
        "ours_hop_p50_ms": round(ours_hop, 4), "raw_hop_p50_ms": round(raw_hop, 4),
        "hop_ratio_p50": ratio(ours_hop, raw_hop),
        "ours_hop_p95_ms": round(ours_hop95, 4), "raw_hop_p95_ms": round(raw_hop95, 4),
        "hop_ratio_p95": ratio(ours_hop95, raw_hop95),
        "agent_cpu_ms_per_hop": round(agent_cpu_ms, 4), "relay_cpu_ms_per_hop": round(relay_cpu_ms, 4),
        "cpu_ratio": ratio(agent_cpu_ms, relay_cpu_ms),
    }


# ---------------------------------------------------------------------------------------------- transfer
def shard_transfer(broker_kind: str, workdir: Path, sizes: Sequence[int] = TRANSFER_SIZES,
                   repeats: int = 2) -> list[dict[str, Any]]:
    """MiB/s of BlobServer (another process) -> BlobFetcher and of a raw bulk publish (another process),
    median of ``repeats`` runs each."""
    results = []
    with Broker.start(broker_kind, workdir=str(workdir / f"xfer-{broker_kind}")) as broker:
        client_t = Transport(broker.url).start()
        server_ep = topics.client_endpoint("bench", "server")
        client_ep = topics.device_endpoint("bench", "client")
        try:
            with Helper(broker.url, "benchmarks.bench_transport", "serve", [server_ep, *map(str, sizes)]) as sender:
                for size in sizes:
                    data = bulk_data(size)
                    sha = sha256_hex(data)
                    spec = TransferSpec(sha, size, CHUNK_SIZE, chunk_digests(data, CHUNK_SIZE))
                    ours_s, raw_s = [], []
                    ours_cpu: dict[str, list[float]] = {}
                    raw_cpu: dict[str, list[float]] = {}
                    for _ in range(repeats):
                        with tempfile.TemporaryDirectory(prefix="ea-bench-store-", dir=workdir) as tmp:
                            store = BlobStore(tmp)
                            fetcher = BlobFetcher(client_t, client_ep, store)
                            client_t.subscribe(topics.inbox_filter(client_ep, "blob"), fetcher.deliver)
                            c0, s0 = time.process_time(), process_cpu_s(sender.proc.pid)
                            t0 = time.perf_counter()
                            fetcher.fetch(spec, [server_ep], timeout=300)
                            ours_s.append(time.perf_counter() - t0)
                            ours_cpu.setdefault("recv", []).append(time.process_time() - c0)
                            ours_cpu.setdefault("send", []).append(process_cpu_s(sender.proc.pid) - s0)
                            if store.path(sha).stat().st_size != size:
                                raise RuntimeError(f"blob transfer of {size} bytes stored the wrong size")
                            client_t.unsubscribe(topics.inbox_filter(client_ep, "blob"))
                        raw_s.append(raw_bulk_transfer(broker.url, size, CHUNK_SIZE, cpu=raw_cpu))
                    store_s = _store_only(data, spec, workdir)
                    mib = size / (1 << 20)
                    ours_mibs = mib / float(np.median(ours_s))
                    raw_mibs = mib / float(np.median(raw_s))
                    results.append({"broker": broker_kind, "bytes": size, "chunk_bytes": CHUNK_SIZE,
                                    "repeats": repeats, "ours_mib_s": round(ours_mibs, 2),
                                    "raw_mib_s": round(raw_mibs, 2), "ratio": ratio(ours_mibs, raw_mibs),
                                    "store_only_mib_s": round(mib / store_s, 2),
                                    "ours_seconds": [round(x, 4) for x in ours_s],
                                    "raw_seconds": [round(x, 4) for x in raw_s],
                                    # CPU seconds over the transfer (median): receiver = this process,
                                    # sender = the serving process (10 ms clock ticks)
                                    "ours_recv_cpu_s": round(float(np.median(ours_cpu["recv"])), 3),
                                    "ours_send_cpu_s": round(float(np.median(ours_cpu["send"])), 3),
                                    "raw_recv_cpu_s": round(float(np.median(raw_cpu["recv"])), 3),
                                    "raw_send_cpu_s": round(float(np.median(raw_cpu["send"])), 3)})
        finally:
            client_t.close()
    return results


def serve_main(argv: Sequence[str]) -> None:
    """``serve URL READY ENDPOINT SIZE...``: a BlobServer process holding ``bulk_data(SIZE)`` for each size
    (the sender of the shard transfer benchmark, as an operator or a peer device is)."""
    url, ready, endpoint, *sizes = argv
    t = Transport(url).start()
    server = BlobServer(t, endpoint, max_uploads=None)
    for size in sizes:
        server.add(bulk_data(int(size)))
    t.subscribe(topics.inbox_filter(endpoint, "cmd"), server.handle)
    t.publish(ready, b"1").wait_for_publish(10)   # after the SUBSCRIBE on the same connection: in force
    threading.Event().wait()


def _store_only(data: bytes, spec: TransferSpec, workdir: Path) -> float:
    """Seconds the store alone needs for a blob: verify + write every chunk, assemble, verify (no MQTT)."""
    cs = spec.chunk_size
    with tempfile.TemporaryDirectory(prefix="ea-bench-store-", dir=workdir) as tmp:
        store = BlobStore(tmp)
        t0 = time.perf_counter()
        for i, digest in enumerate(spec.chunk_sha256):
            store.put_chunk(spec.sha256, i, data[i * cs:(i + 1) * cs], digest, cs)
        store.assemble(spec.sha256, len(spec.chunk_sha256), spec.chunk_sha256, cs, spec.size)
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- report
def print_hop(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        for pk in r["per_k"]:
            rows.append([f"{r['broker']} {size_label(r['payload_bytes'])}", pk["k"],
                         fmt(pk["ours"]["p50_ms"]), fmt(pk["ours"]["p95_ms"]),
                         fmt(pk["raw"]["p50_ms"]), fmt(pk["raw"]["p95_ms"]), fmt(pk["stage_run_ms_mean"])])
    table("Pipeline round trip by stage count K (ms, sequential requests)",
          ["broker / activation", "K", "ours p50", "ours p95", "raw p50", "raw p95", "stage run (sum)"], rows)
    table("Added latency per pipeline hop (slope over K, ms)",
          ["broker / activation", "ours p50", "raw p50", "ratio", "ours p95", "raw p95", "ratio p95"],
          [[f"{r['broker']} {size_label(r['payload_bytes'])}", fmt(r["ours_hop_p50_ms"]), fmt(r["raw_hop_p50_ms"]),
            fmt_ratio(r["hop_ratio_p50"]), fmt(r["ours_hop_p95_ms"]), fmt(r["raw_hop_p95_ms"]),
            fmt_ratio(r["hop_ratio_p95"])] for r in results],
          caption="raw = paho relay processes, QoS 1, TCP_NODELAY, same broker; ratio = ours / raw")
    table("Device CPU per pipeline hop (ms of user+system CPU, /proc/<pid>/stat over the timed requests)",
          ["broker / activation", "agent", "raw relay", "ratio"],
          [[f"{r['broker']} {size_label(r['payload_bytes'])}", fmt(r["agent_cpu_ms_per_hop"]),
            fmt(r["relay_cpu_ms_per_hop"]), fmt_ratio(r["cpu_ratio"])] for r in results],
          caption="agent = edge-agent process serving one stage (incl. its background threads); "
                  "raw relay = a paho process forwarding the payload; 10 ms clock ticks, so many requests")


def print_transfer(results: list[dict[str, Any]]) -> None:
    table("Shard transfer throughput (MiB/s, 256 KiB chunks, QoS 1)",
          ["broker / blob", "ours (verified, on disk)", "raw paho one-way", "ratio", "store alone (no MQTT)",
           "CPU s recv / send: ours", "raw"],
          [[f"{r['broker']} {size_label(r['bytes'])}", fmt(r["ours_mib_s"]), fmt(r["raw_mib_s"]),
            fmt_ratio(r["ratio"]), fmt(r["store_only_mib_s"]),
            f"{fmt(r['ours_recv_cpu_s'])} / {fmt(r['ours_send_cpu_s'])}",
            f"{fmt(r['raw_recv_cpu_s'])} / {fmt(r['raw_send_cpu_s'])}"] for r in results],
          caption="ratio = ours / raw (1.00x = as fast as raw MQTT); store alone = BlobStore.put_chunk for every "
                  "chunk + assemble, the disk and hashing share of 'ours'")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the transport benchmarks, print tables, return (and optionally write) the results."""
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--brokers", default=None,
                   help="comma-separated broker kinds (default: mosquitto,embedded; --quick: mosquitto)")
    args = p.parse_args(argv)
    kinds = (args.brokers or ("mosquitto" if args.quick else "mosquitto,embedded")).split(",")
    if find_mosquitto() is None:
        console.print("[yellow]mosquitto not installed: embedded broker only[/yellow]")
        kinds = [k for k in kinds if k != "mosquitto"] or ["embedded"]
    n_req = 40 if args.quick else 200
    out: dict[str, Any] = {"load_avg_1m_at_start": round(os.getloadavg()[0], 2), "hop_latency": [],
                           "shard_transfer": []}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ea-bench-transport-") as tmp:
        work = Path(tmp)
        for kind in kinds:
            # the embedded broker is pure Python and ~5x slower per message: fewer requests keep the run short
            n = n_req if kind == "mosquitto" else max(20, n_req // 5)
            console.print(f"[bold]hop latency[/bold] on {kind}: {n} requests per K (half that at 1 MiB) ...")
            out["hop_latency"] += hop_latency(kind, n, work)
        print_hop(out["hop_latency"])
        for kind in kinds:
            sizes = TRANSFER_SIZES if kind == "mosquitto" else TRANSFER_SIZES[:1]
            console.print(f"[bold]shard transfer[/bold] on {kind}: {', '.join(map(size_label, sizes))} ...")
            out["shard_transfer"] += shard_transfer(kind, work, sizes, repeats=1 if args.quick else 2)
        print_transfer(out["shard_transfer"])
    out["seconds"] = round(time.monotonic() - t0, 1)
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "serve":
        serve_main(sys.argv[2:])
    else:
        main()
