"""Content-addressed store and chunked shard transfer over a real broker."""

from __future__ import annotations

import os
import threading

import pytest

from edge_agent.protocol import topics
from edge_agent.protocol.errors import StoreError
from edge_agent.transport.blobs import BlobFetcher, BlobServer, TransferSpec
from edge_agent.transport.mqtt import Transport
from edge_agent.transport.store import BlobStore, chunk_digests, sha256_hex


def test_put_get_and_corruption_is_detected(tmp_path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(1000)
    sha = store.put(data)
    assert store.has(sha) and store.get(sha) == data and store.list() == [sha]
    store.path(sha).write_bytes(b"x" + data[1:])
    with pytest.raises(StoreError, match="corrupt"):
        store.get(sha)
    assert not store.has(sha)  # a corrupt blob is removed so it is fetched again


def test_put_with_wrong_expected_hash_is_refused(tmp_path) -> None:
    with pytest.raises(StoreError, match="expected"):
        BlobStore(tmp_path).put(b"abc", expected_sha="0" * 64)


def test_chunks_assemble_into_verified_blob(tmp_path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(10_000)
    shas = chunk_digests(data, 4096)
    assert len(shas) == 3
    for i in (2, 0, 1):
        store.put_chunk(sha256_hex(data), i, data[i * 4096:(i + 1) * 4096], shas[i], 4096)
    assert store.have_chunks(sha256_hex(data)) == {0, 1, 2}
    store.assemble(sha256_hex(data), 3, shas)
    assert store.get(sha256_hex(data)) == data
    assert store.have_chunks(sha256_hex(data)) == set()


def test_resume_refetches_a_chunk_torn_on_disk(tmp_path) -> None:
    """After a crash the index may list a chunk whose bytes never reached the disk: it is not trusted."""
    store = BlobStore(tmp_path)
    data = os.urandom(3 * 4096)
    sha, shas = sha256_hex(data), chunk_digests(data, 4096)
    for i in range(3):
        store.put_chunk(sha, i, data[i * 4096:(i + 1) * 4096], shas[i], 4096)
    with open(store._part(sha), "r+b") as f:  # simulate a torn write of chunk 1
        f.seek(4096 + 10)
        f.write(b"\0" * 100)
    assert store.have_chunks(sha, shas, 4096) == {0, 2}


def test_corrupt_chunk_is_refused(tmp_path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(StoreError, match="chunk 0 .* corrupt"):
        store.put_chunk("a" * 64, 0, b"evil", sha256_hex(b"good"), 4096)


def _pair(url: str, tmp_path):
    server_t = Transport(url).start()
    client_t = Transport(url).start()
    server_ep = topics.client_endpoint("t", "server")
    client_ep = topics.device_endpoint("t", "client")
    server = BlobServer(server_t, server_ep)
    server_t.subscribe(topics.inbox_filter(server_ep, "cmd"), server.handle)
    store = BlobStore(tmp_path / "client")
    fetcher = BlobFetcher(client_t, client_ep, store)
    client_t.subscribe(topics.inbox_filter(client_ep, "blob"), fetcher.deliver)
    return server_t, client_t, server, server_ep, store, fetcher


def test_transfer_of_multi_chunk_blob_over_both_brokers(any_broker, tmp_path) -> None:
    server_t, client_t, server, server_ep, store, fetcher = _pair(any_broker.url, tmp_path)
    try:
        data = os.urandom(3 * 256 * 1024 + 123)
        sha = server.add(data)
        seen = []
        spec = TransferSpec(sha, len(data), 256 * 1024, chunk_digests(data, 256 * 1024))
        fetcher.fetch(spec, [server_ep], timeout=30, progress=lambda h, n: seen.append((h, n)))
        assert store.get(sha) == data
        assert seen[-1] == (4, 4)
    finally:
        server.close()
        server_t.close()
        client_t.close()


def test_transfer_resumes_with_only_missing_chunks(mosquitto, tmp_path) -> None:
    server_t, client_t, server, server_ep, store, fetcher = _pair(mosquitto.url, tmp_path)
    try:
        cs = 64 * 1024
        data = os.urandom(10 * cs)
        sha = server.add(data)
        digests = chunk_digests(data, cs)
        for i in range(6):  # an earlier, interrupted transfer left 6 chunks on disk
            store.put_chunk(sha, i, data[i * cs:(i + 1) * cs], digests[i], cs)
        before = server.served_chunks
        fetcher.fetch(TransferSpec(sha, len(data), cs, digests), [server_ep], timeout=30)
        assert store.get(sha) == data
        assert server.served_chunks - before == 4
    finally:
        server.close()
        server_t.close()
        client_t.close()


def test_fetch_from_source_without_blob_fails_clearly(mosquitto, tmp_path) -> None:
    server_t, client_t, server, server_ep, store, fetcher = _pair(mosquitto.url, tmp_path)
    try:
        spec = TransferSpec("b" * 64, 10, 1024, [sha256_hex(b"x" * 10)])
        with pytest.raises(StoreError, match="no source holds it"):
            fetcher.fetch(spec, [server_ep], timeout=20)
    finally:
        server.close()
        server_t.close()
        client_t.close()


def test_corrupted_chunks_in_transit_are_refetched(mosquitto, tmp_path) -> None:
    """A source that corrupts the first copy of a chunk: the chunk is rejected, asked again, blob is intact."""
    server_t, client_t, server, server_ep, store, fetcher = _pair(mosquitto.url, tmp_path)
    try:
        cs = 32 * 1024
        data = os.urandom(4 * cs)
        sha = sha256_hex(data)
        corrupted_once = threading.Event()

        class FlakyMemory(dict):
            def get(self, key, default=None):  # noqa: ANN001, ANN202
                if key == sha and not corrupted_once.is_set():
                    corrupted_once.set()
                    return b"\0" * len(data)
                return data if key == sha else default

        server._memory = FlakyMemory()  # type: ignore[assignment]
        rejects = []
        fetcher._on_reject = rejects.append
        fetcher.fetch(TransferSpec(sha, len(data), cs, chunk_digests(data, cs)), [server_ep], timeout=30)
        assert store.get(sha) == data
        assert "corrupt_chunk" in rejects
    finally:
        server.close()
        server_t.close()
        client_t.close()


def test_parallel_fetches_of_one_blob_share_one_transfer(mosquitto, tmp_path) -> None:
    server_t, client_t, server, server_ep, store, fetcher = _pair(mosquitto.url, tmp_path)
    try:
        cs = 64 * 1024
        data = os.urandom(20 * cs)
        sha = server.add(data)
        spec = TransferSpec(sha, len(data), cs, chunk_digests(data, cs))
        results, errors = [], []

        def run() -> None:
            try:
                results.append(fetcher.fetch(spec, [server_ep], timeout=30))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert not errors and results == [sha] * 3
        assert store.get(sha) == data
        assert server.served_chunks == 20  # one transfer, not three
    finally:
        server.close()
        server_t.close()
        client_t.close()


def test_forged_error_and_corrupt_chunks_from_a_third_party_cannot_stop_a_transfer(mosquitto, tmp_path) -> None:
    """An attacker on the broker publishes to the fetcher's inbox: "not held here" errors and garbage chunks
    for the same blob, claiming to be the source. Answers are tied to their request by a nonce, so the
    transfer ignores them (counted as foreign) and completes from the real source."""
    server_t, client_t, server, server_ep, store, fetcher = _pair(mosquitto.url, tmp_path)
    attacker = Transport(mosquitto.url).start()
    stop = threading.Event()
    try:
        from edge_agent.protocol.messages import BlobChunk
        cs = 16 * 1024
        data = os.urandom(40 * cs)
        sha = server.add(data)
        inbox = topics.inbox(fetcher.endpoint, "blob", "server")   # claiming to be the source in the topic too

        def flood() -> None:
            i = 0
            while not stop.is_set():
                attacker.publish(inbox, BlobChunk(sha, i % 40, 0, cs, sender=server_ep, error="not held here",
                                                  nonce="0" * 24).to_bytes(), qos=1)
                attacker.publish(inbox, BlobChunk(sha, i % 40, len(data), cs, b"\0" * cs, sender=server_ep)
                                 .to_bytes(), qos=1)
                i += 1
                stop.wait(0.002)

        rejects: list[str] = []
        fetcher._on_reject = rejects.append
        t = threading.Thread(target=flood, daemon=True)
        t.start()
        fetcher.fetch(TransferSpec(sha, len(data), cs, chunk_digests(data, cs)), [server_ep], timeout=60)
        assert store.get(sha) == data
        assert "foreign_chunk" in rejects and "corrupt_chunk" not in rejects
    finally:
        stop.set()
        attacker.close()
        server.close()
        server_t.close()
        client_t.close()


def test_a_source_that_fails_is_dropped_and_the_next_one_serves(mosquitto, tmp_path) -> None:
    server_t, client_t, server, server_ep, store, fetcher = _pair(mosquitto.url, tmp_path)
    empty_t = Transport(mosquitto.url).start()
    empty_ep = topics.device_endpoint("t", "empty")
    empty = BlobServer(empty_t, empty_ep)        # reachable, but holds nothing
    empty_t.subscribe(topics.inbox_filter(empty_ep, "cmd"), empty.handle)
    try:
        data = os.urandom(5 * 1024)
        sha = server.add(data)
        fetcher.fetch(TransferSpec(sha, len(data), 1024, chunk_digests(data, 1024)), [empty_ep, server_ep],
                      timeout=30)
        assert store.get(sha) == data
    finally:
        for s in (empty, server):
            s.close()
        for tr in (empty_t, server_t, client_t):
            tr.close()


def test_a_busy_holder_sends_the_next_requester_to_a_peer_that_has_the_blob(mosquitto, tmp_path) -> None:
    """The operator serves a blob to one requester at a time here: the second is answered "busy", backs off,
    looks again for holders and fetches it from the first, which by then has it. One copy leaves the
    operator, and the second transfer still completes."""
    server_t = Transport(mosquitto.url).start()
    server_ep = topics.client_endpoint("t", "op")
    server = BlobServer(server_t, server_ep, max_uploads=1)
    server_t.subscribe(topics.inbox_filter(server_ep, "cmd"), server.handle)
    peers = []
    for name in ("first", "second"):
        t = Transport(mosquitto.url).start()
        ep = topics.device_endpoint("t", name)
        store = BlobStore(tmp_path / name)
        fetcher, serving = BlobFetcher(t, ep, store), BlobServer(t, ep, store)
        t.subscribe(topics.inbox_filter(ep, "blob"), fetcher.deliver)
        t.subscribe(topics.inbox_filter(ep, "cmd"), serving.handle)
        peers.append((t, ep, store, fetcher, serving))
    try:
        cs = 64 * 1024
        data = os.urandom(40 * cs)
        sha = server.add(data)
        spec = TransferSpec(sha, len(data), cs, chunk_digests(data, cs))
        (_, first_ep, first_store, first, _), (_, _, second_store, second, _) = peers
        results: dict[str, str] = {}
        t1 = threading.Thread(target=lambda: results.setdefault("first", first.fetch(spec, [server_ep], timeout=60)))
        t1.start()
        while not first_store.have_chunks(sha, spec.chunk_sha256, cs):   # the first transfer is under way
            threading.Event().wait(0.01)
        holders = lambda: [first_ep] if first_store.has(sha) else []     # noqa: E731 - what peers' states say
        second.fetch(spec, [server_ep], timeout=60, more_sources=holders)
        t1.join(60)
        assert first_store.get(sha) == data and second_store.get(sha) == data
        assert server.busy_refusals >= 1
        assert server.served_bytes == len(data)          # one copy from the operator; the other from "first"
        assert peers[0][4].served_bytes == len(data)
    finally:
        server.close()
        server_t.close()
        for t, _, _, _, serving in peers:
            serving.close()
            t.close()


def _blob_node(url: str, tmp_path, name: str):  # noqa: ANN001, ANN202 - test helper
    t = Transport(url).start()
    ep = topics.device_endpoint("t", name)
    store = BlobStore(tmp_path / name)
    fetcher, serving = BlobFetcher(t, ep, store), BlobServer(t, ep, store)
    t.subscribe(topics.inbox_filter(ep, "blob"), fetcher.deliver)
    t.subscribe(topics.inbox_filter(ep, "cmd"), serving.handle)
    return t, ep, store, fetcher, serving


def test_a_seeder_sends_new_requesters_to_peers_that_hold_the_blob_and_serves_them_only_if_peers_fail(
        mosquitto, tmp_path, monkeypatch) -> None:
    """The operator has free upload slots, but its fleet view says a live peer holds the blob: a new
    requester is answered "busy" and fetches from the peer (nothing leaves the operator). A requester whose
    only peer never answers drops it (the stall rule) and is served by the operator once PEER_PATIENCE_S
    has passed, so nobody waits forever."""
    import edge_agent.transport.blobs as blobs

    monkeypatch.setattr(blobs, "PEER_PATIENCE_S", 2.0)
    server_t = Transport(mosquitto.url).start()
    server_ep = topics.client_endpoint("t", "op")
    holders: list[str] = []
    server = BlobServer(server_t, server_ep, max_uploads=2, peer_holders=lambda sha: len(holders))
    server_t.subscribe(topics.inbox_filter(server_ep, "cmd"), server.handle)
    nodes = [_blob_node(mosquitto.url, tmp_path, n) for n in ("peer", "new", "stranded")]
    try:
        cs = 64 * 1024
        data = os.urandom(24 * cs)
        sha = server.add(data)
        spec = TransferSpec(sha, len(data), cs, chunk_digests(data, cs))
        (_, peer_ep, peer_store, peer, peer_server), (_, _, new_store, new, _), (_, _, lost_store, lost, _) = nodes
        peer.fetch(spec, [server_ep], timeout=60)        # nobody holds it yet: the operator seeds the peer
        assert server.served_bytes == len(data)
        holders.append(peer_ep)                          # what the peer's next state tells the operator

        new.fetch(spec, [server_ep], timeout=60, more_sources=lambda: holders)
        assert new_store.get(sha) == data
        assert server.served_bytes == len(data), "the second copy came from the peer, not the operator"
        assert peer_server.served_bytes == len(data) and server.busy_refusals >= 1

        peer_server.budget = 0                           # the peer now answers nothing (unreachable)
        lost.fetch(spec, [server_ep], timeout=60, more_sources=lambda: holders)
        assert lost_store.get(sha) == data
        assert server.served_bytes == 2 * len(data), "after its patience ran out the operator served it"

    finally:
        server.close()
        server_t.close()
        for t, _, _, _, serving in nodes:
            serving.close()
            t.close()
