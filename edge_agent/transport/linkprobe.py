"""Measuring a client's link to its broker: round trip and throughput, through the broker itself.

The messages go to the client's own probe topic (the one :class:`~edge_agent.transport.mqtt.Transport`
checks its session on, and the one the broker ACL lets only this identity read and write), at QoS 1:
what is measured is the path a request takes (client -> broker -> client), not an ICMP ping. A link probe
message starts with ``MAGIC``, a run id and a sequence number, so session probes (empty) and echoes of an
earlier, timed-out run are told apart.

- round trip: ``rtt_count`` small messages one after the other; the median.
- throughput: ``burst_bytes`` in ``chunk_bytes`` messages, all published at once; the burst crosses the
  link up and back concurrently, so bytes over (time to the last echo - one round trip) is the rate of the
  slower direction; the best of a few bursts.
"""

from __future__ import annotations

import os
import statistics
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAGIC = b"EAlp1"
_HEAD = struct.Struct("!5sII")   # magic, run id, sequence


@dataclass(frozen=True)
class LinkStats:
    """One measurement of the link to the broker."""

    rtt_ms: float        # median QoS 1 round trip of a small message
    mbps: float          # Mbit/s of a burst (one direction), 0 when the burst did not complete
    at: float            # time.time() of the measurement


class LinkProbe:
    """Echo bookkeeping and the measurement itself. ``publish(payload)`` sends to the probe topic;
    the transport hands every non-empty echo to :meth:`on_echo` (on its network thread: it only records)."""

    def __init__(self, publish: Callable[[bytes], object], clock: Callable[[], float] = time.perf_counter) -> None:
        self._publish = publish
        self._clock = clock
        self._cond = threading.Condition()
        self._run = 0
        self._arrived: dict[int, float] = {}
        self._busy = threading.Lock()     # one measurement at a time

    def on_echo(self, payload: bytes) -> bool:
        """Record an echo; False when ``payload`` is not a link probe message."""
        if len(payload) < _HEAD.size or not payload.startswith(MAGIC):
            return False
        _, run, seq = _HEAD.unpack_from(payload)
        now = self._clock()
        with self._cond:
            if run == self._run:
                self._arrived.setdefault(seq, now)
                self._cond.notify_all()
        return True

    def round_trip(self, timeout_s: float = 5.0) -> float | None:
        """One small message to the probe topic and back: its round trip in seconds, None if it did not come
        back within ``timeout_s`` (waiting for a measurement under way counts). The echo arrives at QoS 1
        behind every QoS 1 message the broker queued for this client before it (``Transport.sync``)."""
        deadline = self._clock() + timeout_s
        if not self._busy.acquire(timeout=max(timeout_s, 0.0)):
            return None
        try:
            self._new_run()
            t = self._send(0, 64)
            return self._arrived[0] - t if self._wait(range(1), deadline) else None
        finally:
            self._busy.release()

    def _new_run(self) -> None:
        """Echoes of earlier runs no longer count."""
        with self._cond:
            self._run = (self._run + 1) & 0xFFFFFFFF
            self._arrived = {}

    def _payload(self, seq: int, size: int) -> bytes:
        payload = _HEAD.pack(MAGIC, self._run, seq)
        if size > len(payload):
            payload += os.urandom(size - len(payload))   # incompressible, should any hop compress
        return payload

    def _send(self, seq: int, size: int, payload: bytes | None = None) -> float:
        payload = payload if payload is not None else self._payload(seq, size)
        t = self._clock()
        self._publish(payload)
        return t

    def _wait(self, seqs: range, deadline: float) -> bool:
        with self._cond:
            while not all(s in self._arrived for s in seqs):
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def measure(self, rtt_count: int = 5, burst_bytes: int = 1 << 20, chunk_bytes: int = 64 << 10,
                timeout_s: float = 5.0, bursts: int = 3) -> LinkStats:
        """Round trip, then throughput: the best of ``bursts`` bursts (a link's capacity is its best rate;
        a slower burst met other work on the device or the broker: on loopback one 1 MiB burst measured
        600-2300 Mbit/s in five tries). Raises TimeoutError naming what did not come back in time; a burst
        after the first that times out ends the measurement with the best rate so far."""
        with self._busy:
            self._new_run()
            deadline = self._clock() + timeout_s
            rtts = []
            for seq in range(rtt_count):
                t = self._send(seq, 64)
                if not self._wait(range(seq, seq + 1), deadline):
                    raise TimeoutError(f"link probe: round trip {seq + 1}/{rtt_count} not echoed "
                                       f"within {timeout_s:g} s")
                rtts.append(self._arrived[seq] - t)
            rtt = statistics.median(rtts)
            n = max(1, -(-burst_bytes // chunk_bytes))
            best = 0.0
            for b in range(max(1, bursts)):
                first = rtt_count + b * n
                # made before the clock starts: generating 1 MiB of random bytes takes milliseconds, which
                # the rate would otherwise count as the link's
                burst = [self._payload(first + i, chunk_bytes) for i in range(n)]
                t0 = self._clock()
                for i, payload in enumerate(burst):
                    self._send(first + i, chunk_bytes, payload)
                if not self._wait(range(first, first + n), t0 + timeout_s):
                    if b > 0:
                        break
                    with self._cond:
                        got = sum(1 for s in range(first, first + n) if s in self._arrived)
                    raise TimeoutError(f"link probe: {got}/{n} burst messages of {chunk_bytes} B echoed "
                                       f"within {timeout_s:g} s")
                total = max(self._arrived[s] for s in range(first, first + n)) - t0
                elapsed = max(total - rtt, 0.1 * total, 1e-6)   # a jittery round trip never makes it negative
                best = max(best, n * chunk_bytes * 8 / elapsed / 1e6)
            return LinkStats(rtt_ms=rtt * 1e3, mbps=best, at=time.time())
