"""Start an MQTT broker for demos, tests and small fleets: Mosquitto when installed, else embedded amqtt.

Mosquitto is configured for this workload: TCP_NODELAY on (88 ms -> 0.6 ms round trips), a queue limit far
above its silent-drop default of 1000 messages per client, loopback-only listener unless told otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_agent.protocol.errors import BrokerError

log = logging.getLogger("edge_agent.broker")

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (brokers have no 'port 0')."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll until host:port accepts TCP connections; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker process exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise BrokerError(f"broker did not listen on {host}:{port} within {timeout:.0f} s")


def mosquitto_config(port: int, host: str = "127.0.0.1", *, persistence_dir: str | None = None,
                     log_file: str | None = None, extra: str = "") -> str:
    """A Mosquitto configuration tuned for edge-agent traffic."""
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        "set_tcp_nodelay true",
        # default 1000 drops silently; chunked shards and bursts of requests need more room
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        "max_keepalive 120",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Started as root, Mosquitto drops to the 'mosquitto' user, which cannot write the log and persistence
        # files into the caller's (root-owned, often 0700) work directory: both would be lost silently. This
        # broker is the caller's own child process (tests, demos, small fleets), so it keeps the caller's user.
        lines.append("user root")
    if persistence_dir:
        lines += ["persistence true", f"persistence_location {persistence_dir.rstrip('/')}/",
                  "autosave_interval 1"]
    else:
        lines.append("persistence false")
    if log_file:
        lines += [f"log_dest file {log_file}", "log_type error", "log_type warning", "log_type notice"]
    else:
        lines.append("log_dest none")
    return "\n".join(lines) + "\n" + extra


class Broker:
    """A broker process owned by this object: ``with Broker.start() as b: b.url``."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, kind: str, workdir: str,
                 argv: list[str]) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.kind = kind
        self.workdir = workdir
        self._argv = argv

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @classmethod
    def start(cls, kind: str = "auto", port: int | None = None, host: str = "127.0.0.1",
              persistence: bool = False, workdir: str | None = None, timeout: float = 10.0) -> Broker:
        """Start ``mosquitto``, ``embedded`` (amqtt) or ``auto`` (Mosquitto if installed)."""
        if kind == "auto":
            kind = "mosquitto" if find_mosquitto() else "embedded"
        port = port or free_port(host)
        workdir = workdir or tempfile.mkdtemp(prefix=f"ea-broker-{port}-")
        Path(workdir).mkdir(parents=True, exist_ok=True)
        if kind == "mosquitto":
            exe = find_mosquitto()
            if exe is None:
                raise BrokerError("mosquitto is not installed (apt-get install mosquitto), use kind='embedded'")
            conf = Path(workdir) / "mosquitto.conf"
            pdir = str(Path(workdir) / "persist") if persistence else None
            if pdir:
                Path(pdir).mkdir(exist_ok=True)
            conf.write_text(mosquitto_config(port, host, persistence_dir=pdir,
                                             log_file=str(Path(workdir) / "mosquitto.log")))
            argv = [exe, "-c", str(conf)]
        elif kind == "embedded":
            if importlib.util.find_spec("amqtt") is None:
                raise BrokerError("the embedded broker needs amqtt: pip install 'edge-agent[demo]' "
                                  "(or install Mosquitto: apt-get install mosquitto)")
            argv = [sys.executable, "-m", "edge_agent.transport.embedded_broker", "--host", host, "--port", str(port)]
        else:
            raise BrokerError(f"unknown broker kind {kind!r} (mosquitto, embedded, auto)")
        broker = cls(cls._spawn(argv, workdir), host, port, kind, workdir, argv)
        try:
            wait_port(host, port, timeout, broker.proc)
        except BrokerError:
            broker.stop()
            raise
        log.info("%s broker on %s", kind, broker.url)
        return broker

    @staticmethod
    def _spawn(argv: list[str], workdir: str) -> subprocess.Popen:
        out = open(Path(workdir) / "broker.out", "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def stop(self, kill: bool = False) -> None:
        """Stop the broker (SIGTERM lets Mosquitto save persistence; ``kill`` = SIGKILL)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop and start again on the same port (same config, same persistence)."""
        self.stop(kill=kill)
        deadline = time.monotonic() + timeout
        while True:
            self.proc = self._spawn(self._argv, self.workdir)
            try:
                wait_port(self.host, self.port, min(timeout, 5.0), self.proc)
                return
            except BrokerError:
                # the port can linger briefly after the old process died
                self.stop(kill=True)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
