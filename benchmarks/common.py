"""Shared pieces of the benchmarks: command line, statistics, tables, JSON, and raw-paho baselines.

The raw baselines use paho-mqtt directly, configured like our transport (MQTT 3.1.1, QoS 1, TCP_NODELAY on
the client socket, the same in-flight window), so the ratio measures what edge-agent adds on top of MQTT:
encoding, routing, verification, queues, and the stage's own run.

``python -m benchmarks.common relay URL STAGE READY_TOPIC`` runs one raw relay process (see
:func:`relay_main`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from rich.console import Console
from rich.table import Table

from edge_agent.transport.mqtt import BrokerURL

console = Console()
if not console.is_terminal:  # piped or captured: rich would wrap the tables at 80 columns
    console = Console(width=140)

RAW_MAX_INFLIGHT = 64  # same window as edge_agent.transport.Transport
RAW_PREFIX = "bench/raw"


# ------------------------------------------------------------------------------------------ command line
def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark module accepts: ``--quick`` and ``--json PATH``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer requests (under a minute)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return p


def write_json(path: str | os.PathLike | None, data: dict) -> None:
    """Write ``data`` (plus machine info) as indented JSON when a path is given."""
    if not path:
        return
    Path(path).write_text(json.dumps({"machine": machine_info(), **data}, indent=2, default=_json_default) + "\n")
    console.print(f"[dim]wrote {path}[/dim]")


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: cores, load, library versions."""
    import onnxruntime

    info: dict[str, Any] = {
        "python": platform.python_version(), "machine": platform.machine(), "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "onnxruntime": onnxruntime.__version__,
        "paho_mqtt": getattr(mqtt, "__version__", None) or _dist_version("paho-mqtt"),
    }
    try:
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=5).stdout
        info["mosquitto"] = out.splitlines()[0].strip() if out else None
    except (OSError, subprocess.TimeoutExpired):
        info["mosquitto"] = None
    return info


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Latency:
    """Summary of latency samples in milliseconds."""

    p50: float
    p95: float
    mean: float
    n: int

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Latency:
        from edge_agent.operator.stats import latency_summary
        s = latency_summary(samples_ms)
        return cls(float(s["p50_ms"]), float(s["p95_ms"]), float(s["mean_ms"]), len(samples_ms))

    def to_dict(self) -> dict[str, float | int]:
        return {"p50_ms": round(self.p50, 4), "p95_ms": round(self.p95, 4), "mean_ms": round(self.mean, 4),
                "n": self.n}


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (per-hop cost from latencies at K = 1..n)."""
    return float(np.polyfit(np.asarray(xs, np.float64), np.asarray(ys, np.float64), 1)[0])


def ratio(ours: float, base: float) -> float | None:
    """``ours / base``, or None when the baseline is zero or negative (a slope lost in noise)."""
    return float(ours / base) if base > 0 else None


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used, from /proc/<pid>/stat; 0.0 where
    there is no /proc. The clock ticks are 10 ms, so use it over many requests, not one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) ": state is field 3, utime 14, stime 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: Sequence[int]) -> float:
    """Summed CPU seconds of ``pids`` (see :func:`process_cpu_s`)."""
    return sum(process_cpu_s(p) for p in pids)


def timed(fn: Callable[[], object], n: int, warmup: int = 5) -> list[float]:
    """Call ``fn`` ``warmup`` times, then ``n`` times; the latencies of the timed calls in ms."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


# ------------------------------------------------------------------------------------------ rendering
def fmt(v: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (no scientific notation for the usual ranges)."""
    if v is None:
        return "n/a"
    if v == 0:
        return "0"
    mag = int(np.floor(np.log10(abs(v))))
    return f"{v:.{max(0, digits - 1 - mag)}f}"


def fmt_ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], caption: str | None = None) -> Table:
    """Print a rich table (numbers right-aligned) and return it."""
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*[str(c) for c in r])
    console.print(t)
    return t


def size_label(nbytes: int) -> str:
    """4 KiB, 1 MiB, 64 MiB..."""
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= div and nbytes % div == 0:
            return f"{nbytes // div} {unit}"
    return f"{nbytes} B"


# ------------------------------------------------------------------------------------------ raw paho
def _nodelay(client: mqtt.Client, userdata: object, sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class RawClient:
    """A bare paho client configured like our transport; ``subscribe`` waits for the SUBACK."""

    def __init__(self, url: str, on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
                 client_id: str | None = None) -> None:
        self.url = BrokerURL.parse(url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"raw-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.max_inflight_messages_set(RAW_MAX_INFLIGHT)
        self.client.on_socket_open = _nodelay
        self._connected = threading.Event()
        self._subacks: dict[int, threading.Event] = {}
        self.client.on_connect = lambda c, u, f, rc, p=None: self._connected.set()
        self.client.on_subscribe = self._on_subscribe
        if on_message is not None:
            self.client.on_message = lambda c, u, msg: on_message(msg)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, *rest: object) -> None:
        ev = self._subacks.setdefault(mid, threading.Event())
        ev.set()

    def start(self, timeout: float = 10.0) -> RawClient:
        """Connect and start paho's network thread."""
        self.client.connect(self.url.host, self.url.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise RuntimeError(f"raw client: no CONNACK from {self.url} within {timeout} s")
        return self

    def subscribe(self, topic: str, timeout: float = 10.0) -> None:
        """Subscribe with QoS 1 and return once the broker acknowledged it."""
        _, mid = self.client.subscribe(topic, qos=1)
        ev = self._subacks.setdefault(mid, threading.Event())
        if not ev.wait(timeout):
            raise RuntimeError(f"raw client: no SUBACK for {topic} within {timeout} s")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def relay_topic(run: str, k: int, stage: int) -> str:
    """Inbox of raw relay ``stage`` (1-based) in a chain of ``k`` relays; stage k+1 is the caller."""
    if stage == k + 1:
        # not "s<k+1>": relay k+1 subscribes to that for longer chains and would forward every reply too
        return f"{RAW_PREFIX}/{run}/k{k}/reply"
    return f"{RAW_PREFIX}/{run}/k{k}/s{stage}"


def relay_main(argv: Sequence[str]) -> None:
    """One raw relay process: forward every message on ``.../k<K>/s<stage>`` to ``.../k<K>/s<stage+1>``.

    It subscribes to its stage of every chain length at once (``+`` for K) and announces itself on the
    ready topic once the broker acknowledged the subscription. It never decodes the payload.
    """
    url, stage_s, ready = argv
    stage = int(stage_s)
    run = ready.rsplit("/", 2)[-2]
    prefix, suffix = f"{RAW_PREFIX}/{run}/", f"/s{stage}"

    def forward(msg: mqtt.MQTTMessage) -> None:
        if not (msg.topic.startswith(prefix) and msg.topic.endswith(suffix)):
            print(f"relay {stage}: ignored message on {msg.topic}", file=sys.stderr)
            return
        k = int(msg.topic[len(prefix):-len(suffix)].lstrip("k"))
        relay.publish(relay_topic(run, k, stage + 1), msg.payload, qos=1)

    relay = RawClient(url, forward, client_id=f"relay-{run}-{stage}")
    relay.start()
    relay.subscribe(f"{RAW_PREFIX}/{run}/+/s{stage}")
    relay.publish(ready, str(stage).encode()).wait_for_publish(10)
    threading.Event().wait()  # paho's thread forwards; SIGTERM ends the process


class RawRelayChain:
    """``n`` relay processes and a caller: caller -> relay 1 -> ... -> relay k -> caller, for any k <= n."""

    def __init__(self, url: str, n: int, timeout: float = 20.0) -> None:
        self.url = url
        self.run = uuid.uuid4().hex[:8]
        self._reply: dict[bytes, float] = {}
        self._cond = threading.Condition()
        self.caller = RawClient(url, self._on_message).start()
        ready_topic = f"{RAW_PREFIX}/{self.run}/ready"
        self.caller.subscribe(ready_topic)
        for k in range(1, n + 1):
            self.caller.subscribe(relay_topic(self.run, k, k + 1))
        self._ready: set[str] = set()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.common", "relay", url, str(i + 1),
                                        ready_topic], env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=self._log)
                      for i in range(n)]
        end = time.monotonic() + timeout
        with self._cond:
            while len(self._ready) < n:
                left = end - time.monotonic()
                dead = [p for p in self.procs if p.poll() is not None]
                if dead or left <= 0:
                    self._log.seek(0)
                    err = self._log.read().decode(errors="replace")[-2000:]
                    self.close()
                    raise RuntimeError(f"only {len(self._ready)} of {n} raw relays came up: {err}")
                self._cond.wait(min(left, 0.2))

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            if msg.topic.endswith("/ready"):
                self._ready.add(msg.payload.decode())
            else:
                self._reply[bytes(msg.payload[:16])] = time.perf_counter()
            self._cond.notify_all()

    def round_trip(self, k: int, payload: bytearray, timeout: float = 10.0) -> None:
        """Send ``payload`` through ``k`` relays and wait until it comes back (first 16 bytes = request id)."""
        rid = uuid.uuid4().bytes
        payload[:16] = rid
        self.caller.publish(relay_topic(self.run, k, 1), bytes(payload))
        end = time.monotonic() + timeout
        with self._cond:
            while rid not in self._reply:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"raw relay chain k={k}: no reply within {timeout} s")
                self._cond.wait(left)
            del self._reply[rid]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self._log.close()
        self.caller.close()

    def __enter__(self) -> RawRelayChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bulk_data(nbytes: int) -> bytes:
    """The deterministic payload of the transfer benchmarks (the same bytes in every process)."""
    return np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8).tobytes()


class Helper:
    """A benchmark helper process (``python -m MODULE CMD URL READY_TOPIC ARGS...``) that announces itself on
    READY_TOPIC once it is subscribed; ``close`` ends it. Senders and receivers of the transfer benchmarks
    run in different processes, as they do in a fleet (operator or peer -> device), for ours and raw alike:
    in one process they would share one GIL, which a real sender and receiver never do."""

    def __init__(self, url: str, module: str, cmd: str, args: Sequence[str], timeout: float = 30.0) -> None:
        self.ready_topic = f"{RAW_PREFIX}/{uuid.uuid4().hex[:8]}/ready"
        ready = threading.Event()
        self._watch = RawClient(url, lambda msg: ready.set()).start()
        self._watch.subscribe(self.ready_topic)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", module, cmd, url, self.ready_topic, *args], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log)
        end = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > end:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")[-2000:]
                self.close()
                raise RuntimeError(f"benchmark helper {module} {cmd} did not come up: {err}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
        self._watch.close()

    def __enter__(self) -> Helper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bulk_publisher_main(argv: Sequence[str]) -> None:
    """``bulkpub URL READY TOPIC TOTAL CHUNK``: on each message on ``TOPIC/go``, publish ``bulk_data(TOTAL)``
    to TOPIC in CHUNK-byte QoS 1 messages (the raw side of the shard transfer benchmark)."""
    url, ready, topic, total_s, chunk_s = argv
    total, chunk = int(total_s), int(chunk_s)
    data = bulk_data(total)
    go = threading.Event()
    pub = RawClient(url, lambda msg: go.set()).start()
    pub.subscribe(f"{topic}/go")
    pub.publish(ready, b"1").wait_for_publish(10)
    while True:
        go.wait()
        go.clear()
        for off in range(0, total, chunk):
            pub.publish(topic, data[off:off + chunk])


def raw_bulk_transfer(url: str, total_bytes: int, chunk_bytes: int, timeout: float = 120.0,
                      cpu: dict[str, list[float]] | None = None) -> float:
    """One-way bulk transfer with raw paho (a publisher process -> this process, QoS 1); seconds from the
    "go" message to the last byte. ``cpu``: appends the CPU seconds of the receiver (this process) and of the
    sender (the publisher process) over the transfer to its "recv" and "send" lists."""
    done = threading.Event()
    got = [0]

    def on_msg(msg: mqtt.MQTTMessage) -> None:
        got[0] += len(msg.payload)
        if got[0] >= total_bytes:
            done.set()

    topic = f"{RAW_PREFIX}/{uuid.uuid4().hex[:8]}/bulk"
    sub = RawClient(url, on_msg).start()
    try:
        sub.subscribe(topic)
        with Helper(url, "benchmarks.common", "bulkpub", [topic, str(total_bytes), str(chunk_bytes)]) as pub:
            c0, s0 = time.process_time(), process_cpu_s(pub.proc.pid)
            t0 = time.perf_counter()
            sub.publish(f"{topic}/go", b"")
            if not done.wait(timeout):
                raise TimeoutError(f"raw bulk transfer: {got[0]} of {total_bytes} bytes after {timeout} s")
            seconds = time.perf_counter() - t0
            if cpu is not None:
                cpu.setdefault("recv", []).append(time.process_time() - c0)
                cpu.setdefault("send", []).append(process_cpu_s(pub.proc.pid) - s0)
            return seconds
    finally:
        sub.close()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "relay":
        relay_main(sys.argv[2:])
    elif len(sys.argv) >= 2 and sys.argv[1] == "bulkpub":
        bulk_publisher_main(sys.argv[2:])
    else:
        sys.exit("usage: python -m benchmarks.common relay URL STAGE READY_TOPIC | bulkpub URL READY TOPIC TOTAL CHUNK")
