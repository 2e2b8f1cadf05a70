"""A malicious shard peer, for red-team tests: a process holding a (stolen) device credential that claims, in its
own state, to hold shards, and then serves them badly.

    python -m edge_agent.lab.rogue_peer --credentials gw-01.cred --blob SHA=PATH [--serve-chunks 1] --count FILE

It reports itself online holding every ``--blob`` (the only state the broker lets it publish is its own), answers
the first ``--serve-chunks`` chunks it is asked for with the real bytes (so it looks like a working source),
then goes silent (requests are counted, written to ``--count``, never answered), or with ``--trickle S``
answers one more chunk every S seconds (slow enough to be useless, each chunk inside any stall window shorter
than S). A fetcher that keeps asking it never finishes; one with a stall/rate rule drops it and fetches from
the other sources.
"""

from __future__ import annotations

import argparse
import queue
import signal
import threading
import time
from pathlib import Path

from edge_agent.protocol import topics
from edge_agent.protocol.messages import BlobChunk, BlobRequest, DeviceState
from edge_agent.security.pki import Credentials
from edge_agent.transport.mqtt import Transport


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_agent.lab.rogue_peer")
    ap.add_argument("--credentials", required=True)
    ap.add_argument("--blob", action="append", default=[], metavar="SHA=PATH")
    ap.add_argument("--serve-chunks", type=int, default=1, help="answer this many chunks, then go silent")
    ap.add_argument("--count", required=True, help="file the number of blob requests received is written to")
    ap.add_argument("--trickle", type=float, default=0.0, metavar="S",
                    help="after --serve-chunks, answer one chunk every S seconds (0: never)")
    args = ap.parse_args(argv)
    creds = Credentials.from_file(args.credentials)
    blobs = {sha: Path(path).read_bytes() for sha, path in (b.split("=", 1) for b in args.blob)}
    name, fleet = creds.username, creds.fleet
    endpoint = topics.device_endpoint(fleet, name)
    t = Transport(creds.broker_url, client_id=name, **creds.transport_kwargs())
    lock = threading.Lock()
    seen = {"requests": 0, "served": 0}

    later: queue.Queue[tuple[BlobRequest, int]] = queue.Queue()

    def answer(req: BlobRequest, idx: int) -> None:
        data, cs = blobs[req.sha256], req.chunk_size
        chunk = BlobChunk(req.sha256, idx, len(data), cs, data[idx * cs:(idx + 1) * cs], sender=endpoint,
                          nonce=req.nonce)
        t.publish(topics.inbox(req.reply_to, "blob", name), chunk.to_bytes(), qos=1)

    def on_cmd(topic: str, payload: bytes, retained: bool) -> None:
        req = BlobRequest.from_bytes(payload)
        with lock:
            seen["requests"] += 1
            Path(args.count).write_text(str(seen["requests"]))
            if req.sha256 not in blobs:
                return
            for idx in req.chunks:
                if seen["served"] < args.serve_chunks:
                    seen["served"] += 1
                    answer(req, idx)
                elif args.trickle > 0:
                    later.put((req, idx))
                # else silent from here on: never an error (that would drop it at once)

    def trickle() -> None:
        while args.trickle > 0:
            time.sleep(args.trickle)
            try:
                answer(*later.get_nowait())
            except queue.Empty:
                pass

    threading.Thread(target=trickle, daemon=True).start()

    t.subscribe(topics.inbox_filter(endpoint, "cmd"), on_cmd)
    t.start()
    Path(args.count).write_text("0")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        st = DeviceState(name, fleet, online=True, endpoint=endpoint, blobs=sorted(blobs), dev_mode=False)
        t.publish(topics.state(fleet, name), st.to_bytes(), qos=1, retain=True)
        stop.wait(1.0)
    t.publish(topics.state(fleet, name), DeviceState(name, fleet, online=False, endpoint=endpoint).to_bytes(),
              qos=1, retain=True)
    time.sleep(0.2)
    t.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
