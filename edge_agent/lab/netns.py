"""Sockets inside a network namespace, for the lab's hosts (:mod:`edge_agent.lab.netlab`) and the fault
proxy (:mod:`edge_agent.lab.faultproxy`): create one, connect from one, wait for a port in one.

Linux only, and entering a namespace needs root (CAP_SYS_ADMIN).
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000     # linux/sched.h


class NetLabError(RuntimeError):
    """A namespace, link or nftables rule could not be created or changed; the message has the command."""


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def netns_socket(netns: str | None, family: int = socket.AF_INET,
                 kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket that lives in network namespace ``netns`` (None: this process's namespace).

    A socket keeps the namespace it was created in, so only a throw-away thread enters the namespace
    (``setns`` changes just the calling thread); the socket is then used from any thread.
    """
    if netns is None:
        return socket.socket(family, kind)
    out: dict[str, Any] = {}

    def enter_and_create() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
        except OSError as exc:
            out["error"] = NetLabError(f"no network namespace {netns!r}: {exc}")
            return
        try:
            if _libc().setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                out["error"] = NetLabError(f"setns into {netns!r} failed: {os.strerror(err)}")
                return
            out["sock"] = socket.socket(family, kind)
        except OSError as exc:
            out["error"] = exc
        finally:
            os.close(fd)

    t = threading.Thread(target=enter_and_create, name=f"setns-{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["sock"]


def netns_connect(netns: str | None, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """A TCP connection to ``address`` made from inside ``netns``."""
    sock = netns_socket(netns)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def wait_port_in(netns: str | None, address: tuple[str, int], timeout: float,
                 proc: subprocess.Popen | None = None) -> None:
    """Poll until ``address`` accepts TCP connections from inside ``netns``; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NetLabError(f"process {proc.args!r} exited with code {proc.returncode} before listening "
                              f"on {address[0]}:{address[1]} in {netns}")
        try:
            netns_connect(netns, address, timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise NetLabError(f"nothing listened on {address[0]}:{address[1]} in {netns} within {timeout:.0f} s")
