"""Chunked, verified, resumable shard transfer over MQTT.

Transfers are *pulled*: the receiver asks a holder for a window of chunks and asks for more as verified
chunks arrive. That bounds what is in flight (window x chunk size), lets a transfer resume after a
restart (chunks already on disk are never asked for again), and lets any holder (the operator or a peer
device) serve a blob the same way. Every chunk is checked against the manifest's per-chunk sha256, and the
assembled shard against its sha256, before it is used.

Distribution to many devices is a tree, not a star: a holder serves a blob to at most ``max_uploads``
requesters at a time and answers the others "busy"; a busy source is not a failed one, the requester
backs off, looks again for peers that hold the blob by now, and asks them. A model replicated to N
devices thus leaves the operator about ``max_uploads`` times (measured in ``benchmarks/bench_scale.py``),
and the number of holders roughly multiplies with each round. A seeding server (the operator) that knows
live peers hold the blob (``peer_holders``) also sends *new* requesters to them, for up to
``PEER_PATIENCE_S``, so its slots do not refill as soon as its first requesters finish.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.protocol import topics
from edge_agent.protocol.errors import ProtocolError, StoreError
from edge_agent.protocol.messages import BlobChunk, BlobRequest
from edge_agent.transport.fairqueue import FairQueue, Full, ShedLog
from edge_agent.transport.mqtt import Transport
from edge_agent.transport.store import BlobStore, sha256_hex

log = logging.getLogger("edge_agent.blobs")

WINDOW = 32              # chunks in flight per transfer (32 x 256 KiB = 8 MiB): 16 left the pipe idle at times
REFILL = WINDOW // 4     # ask for more once this many slots are free (one request per few chunks, not per chunk)
CHUNK_TIMEOUT = 5.0      # re-ask for a chunk not seen within this many seconds
MAX_REQUEST_CHUNKS = 64  # a single request may name at most this many chunks
MAX_BAD_COPIES = 5       # a chunk that fails verification this many times ends the transfer
MAX_UPLOADS = 3          # requesters one holder serves a blob to at a time (the others: BUSY)
UPLOAD_IDLE_S = 3.0      # a requester that asked nothing for this long no longer counts as served
BUSY = "busy"            # the error text of a chunk refused for that reason (retry later, elsewhere)
BUSY_BACKOFF_S = 1.0     # how long a requester leaves a busy source alone
PEER_PATIENCE_S = 10.0   # a seeder sends a new requester to peers for this long, then serves it anyway
STALL_S = 5.0            # a source with chunks outstanding that delivers none for this long is dropped...
SLOW_AFTER_S = 10.0      # ...and one that, over this much time owing chunks, delivered below MIN_RATE_BPS
MIN_RATE_BPS = 128 << 10  # ~1 Mbit/s: far below any link a shard peer should serve from, far above a trickle


class TransferCancelled(StoreError):
    """The transfer was abandoned because a newer desired state superseded it."""


def _is_sha(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class BlobServer:
    """Answers BlobRequests for blobs held in memory (operator) or in a BlobStore (device)."""

    def __init__(self, transport: Transport, endpoint: str, store: BlobStore | None = None,
                 on_reject: Callable[[str], None] | None = None, max_uploads: int | None = MAX_UPLOADS,
                 peer_holders: Callable[[str], int] | None = None) -> None:
        self.transport = transport
        self.max_uploads = max_uploads                        # None: serve every requester at once
        self._uploads: dict[str, dict[str, float]] = {}      # sha -> requester endpoint -> last request
        # live peers that hold a blob (a seeder's view of the fleet); None: serve whoever fits
        self.peer_holders = peer_holders
        self._deferred: dict[tuple[str, str], float] = {}    # (sha, requester) -> first sent to peers
        self.endpoint = endpoint
        self.store = store
        self._memory: dict[str, bytes] = {}
        # requests wait in turns per requester (the topic's writer id): one requester flooding blob requests
        # delays another's by one request, and its own backlog is shed first when the queue is full
        self._queue: FairQueue[BlobRequest] = FairQueue(1024)
        self._shed_log = ShedLog(log, "blob requests")
        # store blobs verified by this server, by (size, mtime): each is hashed once, not on every request
        # (a request names up to a window of chunks; re-reading a 100 MiB shard per window was the cost)
        self._verified: dict[str, tuple[int, int]] = {}
        self._on_reject = on_reject
        self.served_chunks = 0
        self.served_bytes = 0
        self.busy_refusals = 0
        self.budget: int | None = None   # serve at most this many more chunks (fault injection in tests)
        self._thread = threading.Thread(target=self._run, name="blob-server", daemon=True)
        self._thread.start()

    def add(self, data: bytes) -> str:
        """Serve ``data`` from memory; returns its sha256."""
        sha = sha256_hex(data)
        self._memory[sha] = data
        return sha

    def holds(self, sha: str) -> bool:
        return sha in self._memory or (self.store is not None and self.store.has(sha))

    def handle(self, topic: str, payload: bytes, retained: bool) -> None:
        """Transport handler for the ``cmd`` inbox: queue a decoded BlobRequest."""
        try:
            req = BlobRequest.from_bytes(payload)
            if not isinstance(req.chunks, list) or len(req.chunks) > MAX_REQUEST_CHUNKS:
                raise ProtocolError(f"blob request names {len(req.chunks)} chunks (max {MAX_REQUEST_CHUNKS})")
            if not topics.is_endpoint(req.reply_to):
                raise ProtocolError(f"blob request reply_to {req.reply_to!r} is not an endpoint")
            if topics.last_segment(req.reply_to) != topics.sender_of(topic):
                # answers go only to whoever asked: nobody can aim a shard's megabytes at someone else
                raise ProtocolError(f"blob request from {topics.sender_of(topic)!r} for reply_to {req.reply_to!r}")
            if not 0 < req.chunk_size <= (64 << 20):
                raise ProtocolError(f"blob request chunk size {req.chunk_size} out of range")
            shed = self._queue.put(topics.sender_of(topic), req)
            if shed is not None:
                self._shed_log.note(shed[0], "pushed out for a requester with a smaller backlog")
                if self._on_reject:
                    self._on_reject("blob_request_shed")
        except Full as exc:
            self._shed_log.note(topics.sender_of(topic), str(exc))
            if self._on_reject:
                self._on_reject("blob_request_shed")
        except ProtocolError as exc:
            log.warning("rejected blob request on %s: %s", topic, exc)
            if self._on_reject:
                self._on_reject("blob_request")

    def close(self) -> None:
        self._queue.close()

    def _load(self, sha: str) -> _Source | None:
        """The bytes (memory) or a reader (store, verified once while unchanged) of a blob held here."""
        if not _is_sha(sha):
            return None   # answered with "not held here"
        data = self._memory.get(sha)
        if data is not None:
            return _Source(len(data), lambda off, n: memoryview(data)[off:off + n])
        if self.store is None:
            return None
        store = self.store
        try:
            st = store.path(sha).stat()
            stamp = (st.st_size, st.st_mtime_ns)
            if self._verified.get(sha) != stamp:
                store.get(sha)              # verifies (a corrupt blob is removed and reported)
                self._verified[sha] = stamp
        except FileNotFoundError:
            return None
        except StoreError as exc:
            self._verified.pop(sha, None)
            log.warning("cannot serve blob: %s", exc)
            return None
        return _Source(stamp[0], lambda off, n: store.read_range(sha, off, n))

    def _run(self) -> None:
        while True:
            req = self._queue.get()
            if req is None:
                return
            try:
                self._serve(req)
            except Exception:  # the server thread must outlive any request
                log.exception("blob request for %s failed", req.sha256[:12])

    def _admit(self, sha: str, requester: str) -> bool:
        """Whether ``requester`` is (or may become) one of the at most ``max_uploads`` served now."""
        if self.max_uploads is None:
            return True
        now = time.monotonic()
        served = self._uploads.setdefault(sha, {})
        for who in [w for w, t in served.items() if now - t > UPLOAD_IDLE_S]:
            del served[who]
        if requester not in served:
            if len(served) >= self.max_uploads:
                return False
            if self.peer_holders is not None and self.peer_holders(sha) > 0:
                # peers can serve it: a new requester goes to them, unless it has tried for a while (it may
                # not reach them: an ACL, a partition), so nobody waits on the seeder forever
                for key in [k for k, t in self._deferred.items() if now - t > 5 * PEER_PATIENCE_S]:
                    del self._deferred[key]
                if now - self._deferred.setdefault((sha, requester), now) < PEER_PATIENCE_S:
                    return False
        served[requester] = now
        return True

    def _serve(self, req: BlobRequest) -> None:
        data = self._load(req.sha256)
        dest = topics.inbox(req.reply_to, "blob", topics.last_segment(self.endpoint))
        cs = int(req.chunk_size)
        if data is not None and not self._admit(req.sha256, req.reply_to):
            first = req.chunks[0] if req.chunks and isinstance(req.chunks[0], int) else -1
            self.busy_refusals += 1
            self.transport.publish(dest, BlobChunk(req.sha256, first, 0, cs, sender=self.endpoint, nonce=req.nonce,
                                                   error=BUSY).to_bytes(), qos=1)   # one answer for the request
            return
        for idx in req.chunks:
            if self.budget is not None:
                if self.budget <= 0:
                    continue   # an interrupted source: the request goes unanswered
                self.budget -= 1
            if data is None or not isinstance(idx, int) or cs <= 0 or idx < 0 or idx * cs >= max(data.size, 1):
                msg = BlobChunk(req.sha256, int(idx) if isinstance(idx, int) else -1, 0, cs,
                                sender=self.endpoint, nonce=req.nonce,
                                error="not held here" if data is None else f"no chunk {idx}")
            else:
                try:
                    chunk = data.read(idx * cs, cs)
                except StoreError as exc:   # removed meanwhile (a newer deployment pruned it)
                    log.warning("cannot serve chunk %d: %s", idx, exc)
                    chunk, data = None, None
                if chunk is None:
                    msg = BlobChunk(req.sha256, idx, 0, cs, sender=self.endpoint, nonce=req.nonce,
                                    error="not held here")
                else:
                    msg = BlobChunk(req.sha256, idx, data.size, cs, chunk, sender=self.endpoint, nonce=req.nonce)
                    self.served_chunks += 1
                    self.served_bytes += len(chunk)
            self.transport.publish(dest, msg.to_bytes(), qos=1)


@dataclass(frozen=True)
class _Source:
    """A blob a server holds: its size and how to read a range of it."""

    size: int
    read: Callable[[int, int], bytes | memoryview]


@dataclass
class TransferSpec:
    """What the manifest says about one shard."""

    sha256: str
    size: int
    chunk_size: int
    chunk_sha256: list[str]


class BlobFetcher:
    """Pulls blobs into a BlobStore. ``deliver`` is the transport handler of the ``blob`` inbox."""

    def __init__(self, transport: Transport, endpoint: str, store: BlobStore,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.store = store
        self._active: dict[str, queue.Queue[tuple[BlobChunk, str]]] = {}
        self._done_events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._on_reject = on_reject
        self.fetched_bytes = 0
        self.stall_s = STALL_S
        self.slow_after_s = SLOW_AFTER_S
        self.min_rate_bps = MIN_RATE_BPS
        self.stalled_sources = 0   # sources dropped because they stopped delivering (slow or silent peers)

    def deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            chunk = BlobChunk.from_bytes(payload)
        except ProtocolError as exc:
            log.warning("rejected blob chunk on %s: %s", topic, exc)
            if self._on_reject:
                self._on_reject("blob_chunk")
            return
        with self._lock:
            q = self._active.get(chunk.sha256)
        if q is not None:
            q.put((chunk, topics.sender_of(topic)))

    def fetch(self, spec: TransferSpec, sources: list[str], timeout: float = 300.0,
              progress: Callable[[int, int], None] | None = None,
              cancel: threading.Event | None = None,
              more_sources: Callable[[], list[str]] | None = None) -> str:
        """Make sure the blob is in the store; returns its sha256. Raises StoreError when no source can
        provide it before ``timeout``. Chunks already on disk are kept, so a later call resumes.
        ``more_sources`` is asked again while every source is busy (peers that finished the blob since)."""
        if self.store.has(spec.sha256):
            return spec.sha256
        n = len(spec.chunk_sha256)
        if n != max(1, -(-spec.size // spec.chunk_size)):
            raise StoreError(f"blob {spec.sha256[:12]}: manifest lists {n} chunk digests for "
                             f"{spec.size} bytes in {spec.chunk_size}-byte chunks")
        if not sources:
            raise StoreError(f"blob {spec.sha256[:12]}: no source to fetch it from")
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                other = self._done_events.get(spec.sha256)
                if other is None:
                    done = self._done_events[spec.sha256] = threading.Event()
                    q: queue.Queue[tuple[BlobChunk, str]] = queue.Queue()
                    self._active[spec.sha256] = q
                    break
            # another thread is fetching the same blob: wait for it rather than compete for its chunks
            while not other.wait(0.2):
                if cancel is not None and cancel.is_set():
                    raise TransferCancelled(f"blob {spec.sha256[:12]}: transfer cancelled")
                if time.monotonic() > deadline:
                    raise StoreError(f"blob {spec.sha256[:12]}: timed out waiting for a parallel transfer")
            if self.store.has(spec.sha256):
                return spec.sha256
        try:
            return self._fetch(spec, sources, q, max(0.0, deadline - time.monotonic()), progress, cancel,
                               more_sources)
        finally:
            self.store.release(spec.sha256)
            with self._lock:
                self._active.pop(spec.sha256, None)
                self._done_events.pop(spec.sha256, None)
            done.set()

    def _fetch(self, spec: TransferSpec, sources: list[str], q: queue.Queue[tuple[BlobChunk, str]], timeout: float,
               progress: Callable[[int, int], None] | None, cancel: threading.Event | None,
               more_sources: Callable[[], list[str]] | None = None) -> str:
        n = len(spec.chunk_sha256)
        have = {i for i in self.store.have_chunks(spec.sha256, spec.chunk_sha256, spec.chunk_size) if i < n}
        todo = [i for i in range(n) if i not in have]
        asked: dict[int, float] = {}
        asked_of: dict[int, str] = {}         # chunk -> the source it was last asked of
        busy_until: dict[str, float] = {}     # sources that answered BUSY, left alone until then
        sources = list(sources)
        # one unguessable nonce per source: an answer counts only for the source it was asked of, so a
        # third party (whatever "sender" it writes) can neither fail nor poison this transfer
        nonce_of = {src: secrets.token_hex(12) for src in sources}
        source_of = {v: k for k, v in nonce_of.items()}
        live = list(sources)                 # sources not yet dropped
        src_idx = 0
        failures: dict[str, str] = {}
        bad_copies: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        if progress:
            progress(len(have), n)

        # when each source last showed progress: a good chunk, or being asked while it owed nothing. A source
        # that owes chunks and shows none for ``stall_s`` is dropped (a peer that serves slowly or stops
        # mid-transfer, e.g. a stolen identity claiming to hold the shard) and what it owes goes elsewhere
        progress_at: dict[str, float] = {}
        # and how long each source has owed chunks in total, and the bytes it delivered: a source that trickles
        # (a chunk just inside every stall window) is dropped for its rate once it has had a fair chance
        owing_s: dict[str, float] = {}
        bytes_from: dict[str, int] = {}
        last_tick = time.monotonic()

        def drop(src: str, why: str, back: list[int]) -> None:
            failures[src] = why
            live.remove(src)
            self.stalled_sources += 1
            log.warning("blob %s: dropped source %s (%s); asking the others", spec.sha256[:12], src, why)
            if self._on_reject:
                self._on_reject("stalled_source")
            for i in back:
                asked.pop(i, None)
            todo[:0] = [i for i in back if i not in todo and i not in have]

        def owed(src: str) -> list[int]:
            # over the chunks in flight (at most a window), not every chunk ever asked for: this runs per chunk
            return [i for i in asked if asked_of.get(i) == src]

        def ask(indices: list[int]) -> None:
            now = time.monotonic()
            free = [s for s in live if busy_until.get(s, 0.0) <= now]
            # peer devices before operators: an operator's uploads are the scarce ones (it seeds, peers spread)
            free = [s for s in free if "/dev/" in s] or free
            if not free:   # every source is busy: keep the chunks for later
                todo.extend(i for i in indices if i not in todo)
                for i in indices:
                    asked.pop(i, None)
                return
            src = free[src_idx % len(free)]
            if not owed(src):
                progress_at[src] = now
            req = BlobRequest(spec.sha256, indices, spec.chunk_size, reply_to=self.endpoint,
                              requester=self.endpoint, nonce=nonce_of[src])
            self.transport.publish(topics.inbox(src, "cmd", topics.last_segment(self.endpoint)), req.to_bytes(), qos=1)
            for i in indices:
                asked[i] = now
                asked_of[i] = src

        def look_again() -> None:
            """New holders (peers that finished since) join the sources, first in line."""
            if more_sources is None:
                return
            for src in more_sources():
                if src not in nonce_of and src != self.endpoint:
                    nonce_of[src] = secrets.token_hex(12)
                    source_of[nonce_of[src]] = src
                    sources.append(src)
                    live.insert(0, src)

        last_look = time.monotonic()

        while len(have) < n:
            if cancel is not None and cancel.is_set():
                raise TransferCancelled(f"blob {spec.sha256[:12]}: transfer cancelled at {len(have)}/{n} chunks")
            now = time.monotonic()
            if now > deadline:
                raise StoreError(f"blob {spec.sha256[:12]}: transfer timed out with {len(have)}/{n} chunks "
                                 f"(sources {', '.join(sources)})")
            tick, last_tick = now - last_tick, now
            for src in list(live):
                if len(live) < 2:                  # the last source is never dropped: the timeout ends that
                    break
                back = owed(src)
                if not back:
                    continue
                owing_s[src] = owing_s.get(src, 0.0) + tick
                rate = bytes_from.get(src, 0) / max(owing_s[src], 1e-9)
                if now - progress_at.get(src, now) > self.stall_s:
                    drop(src, f"stalled: no chunk for {self.stall_s:.0f} s with {len(back)} outstanding", back)
                elif owing_s[src] >= self.slow_after_s and rate < self.min_rate_bps:
                    drop(src, f"too slow: {rate / 1024:.0f} KiB/s over {owing_s[src]:.0f} s", back)
            # re-ask for chunks that went missing, then fill the window
            stale = [i for i, t in asked.items() if now - t > CHUNK_TIMEOUT]
            if stale:
                src_idx += 1
                ask(stale)
            if busy_until and now - last_look > BUSY_BACKOFF_S / 2:
                last_look = now
                look_again()
            room = WINDOW - len(asked)
            if room > 0 and todo and (room >= REFILL or len(todo) <= room):
                batch, todo = todo[:room], todo[room:]
                ask(batch)
            try:
                chunk, sender = q.get(timeout=0.5)
            except queue.Empty:
                continue
            idx = chunk.index
            src = source_of.get(chunk.nonce)
            if src is None or topics.last_segment(src) != sender:
                if self._on_reject:
                    self._on_reject("foreign_chunk")   # not an answer to any request of this transfer
                continue
            if chunk.error == BUSY:
                # not a failure: that holder serves others right now. Everything asked of it goes back
                # in the queue for another source, or for it again after the back-off
                busy_until[src] = time.monotonic() + BUSY_BACKOFF_S
                back = owed(src)
                for i in back:
                    asked.pop(i, None)
                todo[:0] = [i for i in back if i not in todo and i not in have]
                continue
            if chunk.error:
                if src in live:
                    failures[src] = chunk.error
                    live.remove(src)                   # that source is dropped, never the transfer...
                if not live:                           # ...unless every source it was given failed
                    raise StoreError(f"blob {spec.sha256[:12]}: no source holds it ("
                                     + "; ".join(f"{s}: {e}" for s, e in failures.items()) + ")")
                if 0 <= idx < n and idx not in have:
                    ask([idx])
                continue
            if not (0 <= idx < n) or idx in have:
                continue  # duplicate or stray chunk (QoS 1 may deliver twice)
            try:
                self.store.put_chunk(spec.sha256, idx, chunk.data, spec.chunk_sha256[idx], spec.chunk_size)
            except StoreError as exc:
                log.warning("%s; asking again", exc)
                if self._on_reject:
                    self._on_reject("corrupt_chunk")
                bad_copies[idx] = bad_copies.get(idx, 0) + 1
                if src in live and len(live) > 1:   # a peer serving corrupt data: use the others
                    failures[src] = f"served a corrupt chunk {idx}"
                    live.remove(src)
                if bad_copies[idx] >= MAX_BAD_COPIES:
                    raise StoreError(f"blob {spec.sha256[:12]}: chunk {idx} failed verification "
                                     f"{MAX_BAD_COPIES} times (sources {', '.join(sources)}); giving up") from None
                src_idx += 1
                ask([idx])
                continue
            have.add(idx)
            asked.pop(idx, None)
            progress_at[src] = time.monotonic()
            bytes_from[src] = bytes_from.get(src, 0) + len(chunk.data)
            self.fetched_bytes += len(chunk.data)
            if progress:
                progress(len(have), n)
        return self.store.assemble(spec.sha256, n, spec.chunk_sha256, spec.chunk_size, spec.size)
