"""The fleet-wide view in Prometheus format, from the operator's process (official ``prometheus_client``).

Everything is read from the :class:`~edge_agent.operator.fleet.Fleet` when Prometheus scrapes (a custom
collector), so an operator that is never scraped pays nothing. The dashboard serves it at ``/metrics``;
``edge-agent metrics`` serves it alone. Device figures come from the devices' retained states and load
reports (as this operator sees them), ``client_*`` figures from this operator's own requests.

Metric names (all prefixed ``edge_agent_fleet_``):

- ``devices{state}`` (gauge): devices online / offline; ``device_up{device}`` (gauge, 1/0);
- ``device_info{device,isa,mode,version}`` (gauge, 1): mode is ``dev`` (unsigned manifests accepted) or ``signed``;
- ``device_gflops{device}``, ``device_link_rtt_seconds{device}``, ``device_link_mbps{device}`` (gauges): measured;
- ``device_queue_depth{device}``, ``device_service_seconds{device}`` (gauges): load (queue, run time EWMA);
- ``deployment_version{model,channel}`` (gauge), ``deployment_stages{model}`` (gauge): what is deployed;
- ``stage_replicas{model,version,stage,status}`` (gauge): replicas of each stage by reported status (ready...);
- ``stage_served_total{model,version,stage,device}``, ``stage_errors_total{...}`` (counters): from the agents'
  load reports (all clients and streams, not only this one); ``stage_run_seconds{model,version,stage,device}``;
- ``client_requests_total{model}``, ``client_errors_total{model,code}`` (counters) and
  ``client_request_duration_seconds{model}`` (histogram): this operator's own requests, end to end;
- ``client_retries_total``, ``client_duplicates_total``, ``client_failovers_total`` (counters);
- ``stream_fps_in{stream}``, ``stream_fps_out{stream}``, ``stream_in_flight{stream}`` (gauges),
  ``stream_dropped_total{stream}`` (counter), ``stream_latency_seconds{stream,quantile}`` (gauge), when the
  fleet client knows streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from edge_agent.operator.status import stage_rows
from edge_agent.operator.telemetry import BUCKETS

if TYPE_CHECKING:
    from edge_agent.operator.fleet import Fleet

PREFIX = "edge_agent_fleet"


def fleet_streams(fleet: Any) -> list[dict]:
    """The fleet client's streams as dicts, or [] when this client has no streams API."""
    get = getattr(fleet, "streams", None)
    if not callable(get):
        return []
    try:
        return [s if isinstance(s, dict) else getattr(s, "to_dict", lambda s=s: dict(vars(s)))() for s in get()]
    except Exception:   # a streams table being rebuilt must not break a scrape or the dashboard
        return []


class FleetCollector:
    """Reads the fleet client's view at scrape time."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[object]:
        yield from self._devices()
        yield from self._deployments()
        yield from self._client()
        yield from self._streams()

    def _devices(self) -> Iterator[object]:
        f = self.fleet
        states = sorted(f.view.states(), key=lambda s: s.device_id)
        online = {s.device_id: f.view.online(s.device_id) for s in states}
        count = GaugeMetricFamily(f"{PREFIX}_devices", "devices known to the fleet", labels=["state"])
        count.add_metric(["online"], sum(online.values()))
        count.add_metric(["offline"], len(states) - sum(online.values()))
        yield count
        up = GaugeMetricFamily(f"{PREFIX}_device_up", "1 if the device is online", labels=["device"])
        info = GaugeMetricFamily(f"{PREFIX}_device_info", "a device", labels=["device", "isa", "mode", "version"])
        gflops = GaugeMetricFamily(f"{PREFIX}_device_gflops", "measured FP32 GEMM GFLOP/s", labels=["device"])
        rtt = GaugeMetricFamily(f"{PREFIX}_device_link_rtt_seconds", "measured round trip to the broker",
                                labels=["device"])
        mbps = GaugeMetricFamily(f"{PREFIX}_device_link_mbps", "measured burst throughput to the broker, Mbit/s",
                                 labels=["device"])
        queue = GaugeMetricFamily(f"{PREFIX}_device_queue_depth", "requests queued on the device",
                                  labels=["device"])
        service = GaugeMetricFamily(f"{PREFIX}_device_service_seconds", "run time per request (EWMA)",
                                    labels=["device"])
        for s in states:
            d = s.device_id
            up.add_metric([d], 1 if online[d] else 0)
            info.add_metric([d, s.isa, "dev" if s.dev_mode else "signed", s.version], 1)
            gflops.add_metric([d], s.gflops)
            if s.link_rtt_ms is not None:
                rtt.add_metric([d], s.link_rtt_ms / 1e3)
            if s.link_mbps is not None:
                mbps.add_metric([d], s.link_mbps)
            if online[d]:
                load = f.view.load(d)
                queue.add_metric([d], load.queue if load.ts else s.queue_depth)
                service.add_metric([d], load.service_ms / 1e3)
        yield from (up, info, gflops, rtt, mbps, queue, service)

    def _deployments(self) -> Iterator[object]:
        f = self.fleet
        version = GaugeMetricFamily(f"{PREFIX}_deployment_version", "deployed version", labels=["model", "channel"])
        n_stages = GaugeMetricFamily(f"{PREFIX}_deployment_stages", "pipeline stages", labels=["model"])
        replicas = GaugeMetricFamily(f"{PREFIX}_stage_replicas", "replicas of a stage by reported status",
                                     labels=["model", "version", "stage", "status"])
        for m in sorted(f.deployments(), key=lambda m: m.name):
            version.add_metric([m.name, "stable"], m.version)
            n_stages.add_metric([m.name], len(m.stages))
            canary = f.current(m.name, "canary")
            if canary is not None:
                version.add_metric([m.name, "canary"], canary.version)
            for man in (m, canary) if canary is not None else (m,):
                by: dict[tuple[int, str], int] = {}
                for row in stage_rows(f.view, man):
                    status = row["status"] if row["online"] else "offline"
                    by[(row["stage"], status)] = by.get((row["stage"], status), 0) + 1
                for (stage, status), n in sorted(by.items()):
                    replicas.add_metric([man.name, str(man.version), str(stage), status], n)
        yield from (version, n_stages, replicas)
        labels = ["model", "version", "stage", "device"]
        served = CounterMetricFamily(f"{PREFIX}_stage_served", "stage runs reported by devices", labels=labels)
        errors = CounterMetricFamily(f"{PREFIX}_stage_errors", "stage errors reported by devices", labels=labels)
        run = GaugeMetricFamily(f"{PREFIX}_stage_run_seconds", "stage run time on a device (EWMA)", labels=labels)
        for (model, ver, stage), device, (n, e, run_ms) in f.stage_rates.latest():
            lab = [model, str(ver), str(stage), device]
            served.add_metric(lab, n)
            errors.add_metric(lab, e)
            run.add_metric(lab, run_ms / 1e3)
        yield from (served, errors, run)

    def _client(self) -> Iterator[object]:
        f = self.fleet
        reqs = CounterMetricFamily(f"{PREFIX}_client_requests", "requests this operator finished", labels=["model"])
        errs = CounterMetricFamily(f"{PREFIX}_client_errors", "requests of this operator that failed",
                                   labels=["model", "code"])
        hist = HistogramMetricFamily(f"{PREFIX}_client_request_duration_seconds",
                                     "end-to-end latency of this operator's requests", labels=["model"])
        for model, t in sorted(f.request_log.totals().items()):
            reqs.add_metric([model], t.requests)
            for code, n in sorted(t.errors.items()):
                errs.add_metric([model, code], n)
            cum, buckets = 0, []
            for bound, n in zip(BUCKETS, t.buckets):
                cum += n
                buckets.append((repr(float(bound)), cum))
            buckets.append(("+Inf", t.requests))
            hist.add_metric([model], buckets, t.sum_s)
        yield from (reqs, errs, hist)
        for key in ("retries", "duplicates", "failovers"):
            yield CounterMetricFamily(f"{PREFIX}_client_{key}", f"{key} of this operator's requests",
                                      value=f.stats.get(key, 0))

    def _streams(self) -> Iterator[object]:
        streams = fleet_streams(self.fleet)
        fin = GaugeMetricFamily(f"{PREFIX}_stream_fps_in", "frames per second into the stream", labels=["stream"])
        fout = GaugeMetricFamily(f"{PREFIX}_stream_fps_out", "results per second to the sink", labels=["stream"])
        inflight = GaugeMetricFamily(f"{PREFIX}_stream_in_flight", "frames in the pipeline", labels=["stream"])
        dropped = CounterMetricFamily(f"{PREFIX}_stream_dropped", "frames dropped by the policy", labels=["stream"])
        lat = GaugeMetricFamily(f"{PREFIX}_stream_latency_seconds", "source-to-sink latency percentiles",
                                labels=["stream", "quantile"])
        for s in streams:
            name = str(s.get("name", "?"))
            fin.add_metric([name], float(s.get("fps_in") or 0.0))
            fout.add_metric([name], float(s.get("fps_out") or 0.0))
            inflight.add_metric([name], float(s.get("in_flight") or 0))
            dropped.add_metric([name], float(s.get("dropped") or 0))
            for q, key in (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")):
                v = (s.get("latency_ms") or {}).get(key)
                if v is not None:
                    lat.add_metric([name, q], float(v) / 1e3)
        yield from (fin, fout, inflight, dropped, lat)


def fleet_registry(fleet: Fleet) -> CollectorRegistry:
    """A registry holding only the fleet collector (what ``/metrics`` of the dashboard serves)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet))
    return registry


def serve_metrics(fleet: Fleet, port: int, host: str = "127.0.0.1") -> CollectorRegistry:
    """Expose the fleet view at ``http://host:port/metrics`` (a daemon thread of prometheus_client)."""
    registry = fleet_registry(fleet)
    start_http_server(port, addr=host, registry=registry)
    return registry
