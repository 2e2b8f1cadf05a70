"""A fault-injecting TCP proxy: added latency and jitter, a black hole, and cutting every connection.

This kernel has no ``netem`` qdisc, so tests put latency between an agent and the broker with this proxy::

    with FaultProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", 1883), delay_ms=50) as p:
        ...connect to 127.0.0.1:p.port...
        p.delay_ms = 200      # applies to bytes read from now on
        p.sever()             # reset every connection (the listener stays: clients reconnect)

``delay_ms`` is one-way and applies to each direction, so a round trip gains ``2 * delay_ms``. Jitter
adds ``uniform(-jitter_ms, +jitter_ms)`` per chunk without ever reordering bytes. ``drop`` swallows
everything in both directions while connections stay open (a stalled path, not a closed one).

Sockets can live in another network namespace (``listen_netns`` / ``target_netns``, see
:mod:`edge_agent.lab.netns`); or run it inside one as a process::

    ip netns exec NS python -m edge_agent.lab.faultproxy --listen 127.0.0.1:1884 --target 10.231.0.10:1883 \\
        --delay-ms 50

which prints ``listening on HOST:PORT``, then takes commands on stdin (``delay MS [JITTER]``,
``drop on|off``, ``sever``, ``quit``); SIGUSR1 severs, SIGTERM stops.
"""

from __future__ import annotations

import argparse
import logging
import queue
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence

from edge_agent.lab.netns import netns_socket

log = logging.getLogger("edge_agent.lab.faultproxy")

CHUNK = 64 * 1024
_EOF = b""


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees a cut connection, not a polite goodbye."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Link:
    """One proxied connection: two directions, each a reader thread and a delayed writer thread."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket, peer: str) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.peer = peer
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open_dirs = 2
        self.bytes = [0, 0]  # client->server, server->client
        for i, (src, dst) in enumerate(((client, server), (server, client))):
            q: queue.Queue[tuple[float, bytes]] = queue.Queue()
            threading.Thread(target=self._read, args=(src, q, i), daemon=True, name=f"proxy-rd{i}-{peer}").start()
            threading.Thread(target=self._write, args=(dst, q, i), daemon=True, name=f"proxy-wr{i}-{peer}").start()

    def _read(self, src: socket.socket, q: queue.Queue, direction: int) -> None:
        last = 0.0
        try:
            while not self._closed.is_set():
                data = src.recv(CHUNK)
                if not data:
                    break
                if self.proxy.drop:
                    continue
                delay = self.proxy.delay_ms
                jitter = self.proxy.jitter_ms
                if jitter:
                    delay = max(0.0, delay + random.uniform(-jitter, jitter))
                last = max(last, time.monotonic() + delay / 1000.0)  # never reorder
                q.put((last, data))
        except OSError:
            pass
        q.put((last, _EOF))

    def _write(self, dst: socket.socket, q: queue.Queue, direction: int) -> None:
        try:
            while True:
                due, data = q.get()
                wait = due - time.monotonic()
                if wait > 0 and self._closed.wait(wait):
                    return
                if self._closed.is_set():
                    return
                if not data:
                    dst.shutdown(socket.SHUT_WR)  # half-close: pass the EOF on once delivered
                    break
                dst.sendall(data)
                self.bytes[direction] += len(data)
        except OSError:
            self.cut()
            return
        with self._lock:
            self._open_dirs -= 1
            done = self._open_dirs == 0
        if done:
            self.close()

    def cut(self) -> None:
        """Reset both sides now."""
        if self._closed.is_set():
            return
        self._closed.set()
        _reset(self.client)
        _reset(self.server)
        self.proxy._forget(self)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.client.close()
        self.server.close()
        self.proxy._forget(self)


class FaultProxy:
    """Forward TCP from ``listen`` to ``target`` with controllable delay, jitter, black-holing and cuts.

    ``listen`` port 0 picks a free port (see :attr:`port`). ``delay_ms``, ``jitter_ms`` and ``drop`` are
    plain attributes, read for every chunk, so they can change while connections are open.
    """

    def __init__(self, listen: tuple[str, int] = ("127.0.0.1", 0), target: tuple[str, int] = ("127.0.0.1", 1883),
                 delay_ms: float = 0.0, jitter_ms: float = 0.0, drop: bool = False, *,
                 listen_netns: str | None = None, target_netns: str | None = None,
                 connect_timeout: float = 5.0) -> None:
        self.target = (target[0], int(target[1]))
        self.delay_ms = float(delay_ms)
        self.jitter_ms = float(jitter_ms)
        self.drop = bool(drop)
        self.target_netns = target_netns
        self.connect_timeout = connect_timeout
        self.accepted = 0       # connections accepted so far
        self.severed = 0        # connections cut by sever()
        self.failed = 0         # connections whose target could not be reached
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sock = netns_socket(listen_netns)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((listen[0], int(listen[1])))
            self._sock.listen(64)
        except OSError as exc:
            self._sock.close()
            raise OSError(exc.errno, f"fault proxy cannot listen on {listen[0]}:{listen[1]}: {exc.strerror}") from None
        self._sock.settimeout(0.2)  # lets the accept loop notice close()
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"proxy-{self.port}")
        self._thread.start()
        log.info("fault proxy %s:%d -> %s:%d (delay %.0f ms)", *self.address, *self.target, self.delay_ms)

    @property
    def port(self) -> int:
        """The port the proxy accepts on."""
        return self.address[1]

    @property
    def connections(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._links)

    def set_delay(self, delay_ms: float, jitter_ms: float | None = None) -> None:
        """Change the one-way delay (and jitter) for bytes read from now on."""
        self.delay_ms = float(delay_ms)
        if jitter_ms is not None:
            self.jitter_ms = float(jitter_ms)

    def sever(self) -> int:
        """Reset every open connection (both sides); keep listening. Returns how many were cut."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.cut()
        self.severed += len(links)
        log.info("fault proxy %d: severed %d connections", self.port, len(links))
        return len(links)

    def close(self) -> None:
        """Stop listening and reset every connection."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(2)
        self._sock.close()
        self.sever()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._connect, args=(client, f"{peer[0]}:{peer[1]}"), daemon=True).start()

    def _connect(self, client: socket.socket, peer: str) -> None:
        try:
            server = netns_socket(self.target_netns)
            server.settimeout(self.connect_timeout)
            server.connect(self.target)
            server.settimeout(None)
        except OSError as exc:
            log.info("fault proxy %d: cannot reach %s:%d for %s: %s", self.port, *self.target, peer, exc)
            self.failed += 1
            _reset(client)
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closed.is_set():
                _reset(client)
                _reset(server)
                return
            self.accepted += 1
            link = _Link(self, client, server, peer)
            self._links.add(link)

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- CLI
def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def _command(proxy: FaultProxy, line: str) -> str | None:
    """Apply one stdin command; returns a reply line, or None for ``quit``."""
    words = line.split()
    if not words:
        return ""
    cmd, args = words[0].lower(), words[1:]
    try:
        if cmd == "delay" and 1 <= len(args) <= 2:
            proxy.set_delay(float(args[0]), float(args[1]) if len(args) == 2 else None)
            return f"ok delay {proxy.delay_ms:g} jitter {proxy.jitter_ms:g}"
        if cmd == "drop" and len(args) == 1 and args[0] in ("on", "off"):
            proxy.drop = args[0] == "on"
            return f"ok drop {args[0]}"
        if cmd == "sever" and not args:
            return f"ok severed {proxy.sever()}"
        if cmd == "stats" and not args:
            return (f"ok connections {proxy.connections} accepted {proxy.accepted} severed {proxy.severed} "
                    f"failed {proxy.failed}")
        if cmd == "quit":
            return None
    except ValueError:
        pass
    return f"error: unknown command {line.strip()!r} (delay MS [JITTER], drop on|off, sever, stats, quit)"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge_agent.lab.faultproxy --listen HOST:PORT --target HOST:PORT [--delay-ms N]``."""
    ap = argparse.ArgumentParser(prog="python -m edge_agent.lab.faultproxy", description=__doc__.split("\n")[0])
    ap.add_argument("--listen", type=_hostport, required=True, help="HOST:PORT to accept on (port 0: any)")
    ap.add_argument("--target", type=_hostport, required=True, help="HOST:PORT to forward to")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay added in each direction")
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--drop", action="store_true", help="start black-holed")
    args = ap.parse_args(argv)
    stop = threading.Event()
    proxy = FaultProxy(args.listen, args.target, args.delay_ms, args.jitter_ms, args.drop)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: proxy.sever())
    print(f"listening on {proxy.address[0]}:{proxy.port}", flush=True)

    def read_commands() -> None:
        for line in sys.stdin:
            reply = _command(proxy, line)
            if reply is None:
                break
            if reply:
                print(reply, flush=True)
        else:
            return  # stdin closed: keep running until a signal
        stop.set()

    threading.Thread(target=read_commands, daemon=True, name="proxy-commands").start()
    while not stop.wait(0.5):
        pass
    proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
