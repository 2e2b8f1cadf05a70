"""Prometheus metrics of an agent (``edge-agent run --metrics-port N``), with the official ``prometheus_client``.

Most values are read from the agent when Prometheus scrapes (a custom collector over its counters, stage
table, store, transport and capabilities), so the serving path pays only for the latency histogram. The
endpoint binds loopback unless told otherwise.

Metric names (all prefixed ``edge_agent_``):

- ``requests_total{model,version,stage}`` (counter): stage runs that produced an answer;
- ``request_duration_seconds{model,stage}`` (histogram): run time of a stage on this device;
- ``errors_total{code}`` (counter): requests answered with an error, by code (invalid_input, run_failed...);
- ``rejected_total{reason}`` (counter): messages refused (malformed, oversized, manifest_signature...);
- ``queue_depth`` (gauge): requests waiting for the stage worker;
- ``stage_info{model,version,stage,status,backend,role}`` (gauge, 1): each stage this device holds;
- ``shard_bytes_served_total``, ``shard_bytes_fetched_total`` (counters): shard transfer to and from peers;
- ``broker_reconnects_total``, ``session_stalls_total`` (counters): reconnections, and sessions the self-probe
  found dead;
- ``gflops`` (gauge): measured FP32 GEMM throughput; ``info{device,fleet,isa,version}`` (gauge, 1).

Streams, on the device that runs a stream's ingress (counted since the agent started; see docs/streams.md):

- ``stream_frames_in_total{stream}``, ``stream_frames_out_total{stream}`` (counters): frames that arrived on
  the source topic, results published on the sink;
- ``stream_dropped_total{stream,policy,reason}`` (counter): frames dropped by backpressure (``stale`` under
  ``latest``, ``queue_full`` under ``queue:N``, ``timeout`` when a result never came);
- ``stream_errors_total{stream,reason}`` (counter): bad input (malformed, shape, image, oversized...) and
  pipeline errors;
- ``stream_in_flight{stream}``, ``stream_backlog{stream}`` (gauges): frames in the pipeline, frames waiting;
- ``stream_fps_in{stream}``, ``stream_fps_out{stream}`` (gauges): rates over the last report period;
- ``stream_latency_seconds{stream}`` (histogram): end to end, source timestamp to the sink publish.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from edge_agent._version import __version__

if TYPE_CHECKING:
    from edge_agent.agent.daemon import Agent

PREFIX = "edge_agent"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class AgentCollector:
    """Reads the agent's state at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[object]:
        a = self.agent
        runs = CounterMetricFamily(f"{PREFIX}_requests", "stage runs that produced an answer",
                                   labels=["model", "version", "stage"])
        for (model, version, stage), n in sorted(a.server.served_by_stage.items()):
            runs.add_metric([model, str(version), str(stage)], n)
        yield runs
        counters = dict(a.counters)
        errors = CounterMetricFamily(f"{PREFIX}_errors", "requests answered with an error", labels=["code"])
        rejected = CounterMetricFamily(f"{PREFIX}_rejected", "messages refused", labels=["reason"])
        for key, n in sorted(counters.items()):
            if key.startswith("error_"):
                errors.add_metric([key[len("error_"):]], n)
            elif key.startswith("rejected_"):
                rejected.add_metric([key[len("rejected_"):]], n)
        yield errors
        yield rejected
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "requests waiting for the stage worker",
                                value=a.server.queue_depth())
        stages = GaugeMetricFamily(f"{PREFIX}_stage_info", "stages this device holds",
                                   labels=["model", "version", "stage", "status", "backend", "role"])
        for e in a.stages.report():
            stages.add_metric([str(e.get("model")), str(e.get("version")), str(e.get("stage")),
                               str(e.get("status", "")), str(e.get("backend", "")), str(e.get("role", ""))], 1)
        yield stages
        yield CounterMetricFamily(f"{PREFIX}_shard_bytes_served", "shard bytes sent to peers and operators",
                                  value=a.blob_server.served_bytes)
        yield CounterMetricFamily(f"{PREFIX}_shard_bytes_fetched", "shard bytes received and verified",
                                  value=a.fetcher.fetched_bytes)
        yield CounterMetricFamily(f"{PREFIX}_broker_reconnects", "reconnections to the broker",
                                  value=max(0, a.transport.connect_count - 1))
        yield CounterMetricFamily(f"{PREFIX}_session_stalls", "sessions found dead by the self-probe",
                                  value=a.transport.stalls)
        yield GaugeMetricFamily(f"{PREFIX}_gflops", "measured FP32 GEMM throughput", value=a.gflops)
        info = GaugeMetricFamily(f"{PREFIX}_info", "this device", labels=["device", "fleet", "isa", "version"])
        info.add_metric([a.device_id, a.cfg.fleet, a.isa, __version__], 1)
        yield info
        yield from stream_metrics(a.streams.totals(), set(a.streams.running))


def stream_metrics(totals: dict, running: set[str]) -> Iterator[object]:
    """The per-stream families from :meth:`StreamHost.totals` (``running``: streams ingested here now)."""
    fin = CounterMetricFamily(f"{PREFIX}_stream_frames_in", "frames that arrived on the source topic",
                              labels=["stream"])
    fout = CounterMetricFamily(f"{PREFIX}_stream_frames_out", "results published on the sink", labels=["stream"])
    dropped = CounterMetricFamily(f"{PREFIX}_stream_dropped", "frames dropped by backpressure",
                                  labels=["stream", "policy", "reason"])
    errors = CounterMetricFamily(f"{PREFIX}_stream_errors", "bad input and pipeline errors",
                                 labels=["stream", "reason"])
    gauges = {k: GaugeMetricFamily(f"{PREFIX}_stream_{k}", text, labels=["stream"]) for k, text in (
        ("in_flight", "frames in the pipeline"), ("backlog", "frames waiting for the pipeline"),
        ("fps_in", "frames per second arriving"), ("fps_out", "results per second published"))}
    for name, st in sorted(totals.items()):
        fin.add_metric([name], st.frames_in)
        fout.add_metric([name], st.frames_out)
        for reason, n in sorted(st.dropped.items()):
            dropped.add_metric([name, st.policy, reason], n)
        for reason, n in sorted(st.errors.items()):
            errors.add_metric([name, reason], n)
        live = name in running
        for k, g in gauges.items():
            g.add_metric([name], getattr(st, k) if live else 0)
    yield from (fin, fout, dropped, errors, *gauges.values())


class AgentMetrics:
    """The agent's registry: the collector and the stage latency histogram."""

    def __init__(self, agent: Agent) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(AgentCollector(agent))
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds", "run time of a stage on this device",
                                 ["model", "stage"], buckets=BUCKETS, registry=self.registry)

        self.stream_latency = Histogram(f"{PREFIX}_stream_latency_seconds",
                                        "stream end-to-end latency, source timestamp to sink", ["stream"],
                                        buckets=BUCKETS, registry=self.registry)

    def observe_stream(self, stream: str, seconds: float) -> None:
        self.stream_latency.labels(stream).observe(seconds)

    def observe(self, model: str, stage: int, seconds: float) -> None:
        self.latency.labels(model, str(stage)).observe(seconds)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``host:port`` (a daemon thread of prometheus_client)."""
        start_http_server(port, addr=host, registry=self.registry)
