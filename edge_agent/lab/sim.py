"""Simulated fleets: a broker and N agent processes on this machine (demo, tests, benchmarks).

Each simulated device is a real ``edge-agent run`` process with its own data directory, bound to
loopback for mDNS. Nothing here is a mock: the same code runs on real devices. A device asked to be
slower runs :mod:`edge_agent.lab.device` instead (the same agent with a slowed backend).

A device can take a profile (:mod:`edge_agent.lab.profiles`: ``rpi4``, ``gateway``...): its agent then runs
in a CPU-quota and memory-limited cgroup (:mod:`edge_agent.lab.cgroups`) with the profile's threads, behind a
delay proxy when the profile adds delay. Where cgroups cannot be written, the device falls back to the
slowed backend (stage runs and GFLOP/s scaled by the quota) and says so in its ``emulation`` and the log.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.lab import cgroups
from edge_agent.lab.faultproxy import FaultProxy
from edge_agent.lab.profiles import DeviceProfile, FleetEntry, get_profile
from edge_agent.transport.broker import Broker
from edge_agent.transport.mqtt import BrokerURL

log = logging.getLogger("edge_agent.lab.sim")


def stop_process(proc: subprocess.Popen, kill: bool = False, timeout: float = 15.0) -> None:
    """SIGTERM (clean: goodbye + offline state) or SIGKILL (the Last Will tells the fleet); wait for it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def profile_limits(group: str, profile: DeviceProfile, threads: int,
                   layout: cgroups.CgroupLayout | None = None,
                   ) -> tuple[cgroups.DeviceCgroup | None, float | None, list[str]]:
    """The cgroup enforcing ``profile``'s CPU quota and memory limit (None when it has neither), or where
    cgroups cannot be written the fallback: a backend slowdown factor standing for the quota (``threads``
    unlimited cores over ``profile.cpu``), with a warning. Also returns notes on what was applied."""
    if profile.cpu is None and profile.memory_mb is None:
        return None, None, []
    try:
        cg = cgroups.create(group, cpu=profile.cpu, memory_mb=profile.memory_mb, layout=layout)
        return cg, None, [cg.describe()]
    except cgroups.CgroupUnavailable as exc:
        factor = None if profile.cpu is None else max(1.0, threads / profile.cpu)
        note = (f"FALLBACK: cgroups unavailable ({exc}); "
                + (f"backend {factor:.1f}x slower instead of a CPU quota, " if factor else "")
                + "no memory limit")
        log.warning("%s (profile %s): %s", group, profile.name, note)
        return None, factor, [note]


@dataclass
class SimDevice:
    name: str
    data_dir: Path
    log_path: Path
    argv: list[str]
    proc: subprocess.Popen | None = None
    profile: DeviceProfile | None = None
    cgroup: cgroups.DeviceCgroup | None = None
    proxy: FaultProxy | None = None
    emulation: str = ""                  # how the profile is emulated (or why it is not fully)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class SimFleet:
    """``with SimFleet(3) as sim: Fleet(sim.broker.url)...``

    Devices run in development mode (unsigned manifests) unless ``trust`` names a fleet public key.
    ``devices`` (from :func:`edge_agent.lab.profiles.parse_fleet_spec`) names the devices and their profiles
    instead of ``n``/``names``; ``cgroup_layout`` overrides where cgroups are made (tests)."""

    def __init__(self, n: int = 3, *, broker_kind: str = "auto", fleet: str = "default",
                 workdir: str | os.PathLike | None = None, threads: int = 1, gflops: list[float] | None = None,
                 discovery: bool = True, persistence: bool = False, extra_args: list[str] | None = None,
                 names: list[str] | None = None, env: dict[str, str] | None = None,
                 trust: str | None = None, broker_url: str | None = None,
                 credentials_dir: str | os.PathLike | None = None, devices: list[FleetEntry] | None = None,
                 cgroup_layout: cgroups.CgroupLayout | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ea-sim-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.fleet = fleet
        self.broker = None if broker_url else Broker.start(broker_kind, workdir=str(self.workdir / "broker"),
                                                           persistence=persistence)
        self.broker_url = broker_url or self.broker.url
        self._opts = dict(threads=threads, gflops=gflops, discovery=discovery, extra_args=extra_args or [],
                          trust=trust, credentials_dir=credentials_dir)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.devices: dict[str, SimDevice] = {}
        self._cgroup_layout = cgroup_layout
        try:
            if devices is not None:
                for e in devices:
                    self.add_device(e.name, profile=e.profile, start=False)
            else:
                names = names or [f"dev-{i}" for i in range(n)]
                for i, name in enumerate(names):
                    self.add_device(name, gflops=None if gflops is None else gflops[i], start=False)
            for name in self.devices:
                self.start_device(name)
        except BaseException:
            self.close()
            raise

    def add_device(self, name: str, gflops: float | None = None, start: bool = True,
                   extra_args: list[str] | None = None, slowdown: float | None = None,
                   profile: DeviceProfile | str | None = None) -> SimDevice:
        """Define (and by default start) one more simulated device. With ``slowdown`` N it is an emulated
        slower device (:mod:`edge_agent.lab.device`): every stage run takes N times as long. With ``profile``
        (a :class:`DeviceProfile` or a shipped profile's name) it runs under the profile's CPU quota, memory
        limit, threads and added delay (see the module docstring for the fallback)."""
        o = self._opts
        if name in self.devices:
            raise ValueError(f"device {name!r} already exists")
        if isinstance(profile, str):
            profile = get_profile(profile)
        threads = o["threads"]
        cgroup, proxy, notes = None, None, []
        broker_url = self.broker_url
        if profile is not None:
            threads = min(profile.threads, os.cpu_count() or 1)
            cgroup, fallback, notes = profile_limits(f"{self.workdir.name}-{name}", profile, threads,
                                                     self._cgroup_layout)
            slowdown = slowdown if slowdown is not None else fallback
            if profile.delay_ms:
                b = BrokerURL.parse(self.broker_url)
                proxy = FaultProxy(listen=("127.0.0.1", 0), target=(b.host, b.port), delay_ms=profile.delay_ms)
                broker_url = f"mqtt://127.0.0.1:{proxy.port}"
                notes.append(f"+{profile.delay_ms:g} ms each way (proxy)")
            if profile.link_mbit is not None:
                notes.append(f"link {profile.link_mbit:g} Mbit/s not applied (loopback; only netlab hosts)")
        entry = ["edge_agent.lab.device"] if slowdown is not None else ["edge_agent.cli", "run"]
        argv = [sys.executable, "-m", *entry, "--name", name, "--broker", broker_url,
                "--fleet", self.fleet, "--data-dir", str(self.workdir / name), "--threads", str(threads),
                "--interface", "127.0.0.1", "--log-level", "INFO"]
        if slowdown is not None:
            argv += ["--slowdown", str(slowdown)]
        if gflops is not None:
            argv += ["--gflops", str(gflops)]
        if not o["discovery"]:
            argv.append("--no-discovery")
        argv += ["--trust", str(o["trust"])] if o["trust"] else ["--dev"]
        if o["credentials_dir"]:
            argv += ["--credentials", str(Path(o["credentials_dir"]) / f"{name}.cred")]
        argv += o["extra_args"] + list(extra_args or [])
        dev = self.devices[name] = SimDevice(name, self.workdir / name, self.workdir / f"{name}.log", argv,
                                             profile=profile, cgroup=cgroup, proxy=proxy,
                                             emulation="; ".join(notes))
        if start:
            self.start_device(name)
        return dev

    def start_device(self, name: str) -> None:
        dev = self.devices[name]
        if dev.alive():
            return
        out = open(dev.log_path, "ab")  # noqa: SIM115 - handed to the child
        argv = dev.cgroup.wrap(dev.argv) if dev.cgroup is not None else dev.argv
        dev.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, start_new_session=True)

    def stop_device(self, name: str, kill: bool = False, timeout: float = 15.0) -> None:
        """SIGTERM (clean: goodbye + offline state) or SIGKILL (the Last Will tells the fleet)."""
        dev = self.devices[name]
        if dev.proc is not None:
            stop_process(dev.proc, kill, timeout)

    def restart_device(self, name: str) -> None:
        self.stop_device(name)
        self.start_device(name)

    def log(self, name: str) -> str:
        return read_log(self.devices[name].log_path)

    def close(self) -> None:
        stop_devices(self.devices.values())
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> SimFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_devices(devices: Iterable, grace_s: float = 15.0) -> None:
    """Stop simulated devices together: SIGTERM to all (clean goodbye), SIGKILL to those still running after
    ``grace_s``, then remove their cgroups and delay proxies (shared by SimFleet and the netlab's LabFleet)."""
    devices = list(devices)
    for dev in devices:
        if dev.alive():
            dev.proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + grace_s
    for dev in devices:
        if dev.proc is not None:
            try:
                dev.proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                dev.proc.kill()
                dev.proc.wait(5)
    for dev in devices:
        if getattr(dev, "cgroup", None) is not None:
            dev.cgroup.remove()
        if getattr(dev, "proxy", None) is not None:
            dev.proxy.close()
