"""A network lab on one machine: hosts in their own network namespaces, real links between them, faults.

(Over 500 lines because namespaces, hosts and the LabFleet on them share one lifecycle and cleanup.)

::

    with NetLab(4) as lab, LabFleet(lab, 3) as lf, Fleet(lf.broker_url) as fleet:
        fleet.wait_for_devices(3)
        lab.host(2).partition()     # nftables drop on the host's link, inside its namespace
        lab.host(2).heal()

Topology: one bridge namespace ``<prefix>-br`` holding bridge ``br0`` (multicast snooping off, so mDNS
floods to every port), and host namespaces ``<prefix>-h0``, ``<prefix>-h1``... each with one veth
``eth0`` (address ``10.231.0.(10+i)/24``) whose peer ``h<i>`` is a port of the bridge. Everything is
created inside those namespaces (the veth pairs are born in the bridge namespace), so the machine's own
interfaces, routes and nftables ruleset are never touched; the hosts have no route off the bridge subnet.

Faults come from what this kernel has: nftables inside a host's namespace (partition = drop all,
loss = ``numgen random mod 100 < N`` drop), ``ip link set eth0 down``; there is no ``netem`` qdisc, so
latency comes from :class:`edge_agent.lab.faultproxy.FaultProxy`.

The test process stays in the root namespace; :func:`edge_agent.lab.netns.netns_socket` creates a socket
inside a lab namespace (``setns`` on a short-lived thread), which is how the operator reaches the broker
(``LabFleet.broker_url`` is a loopback forward) and how a FaultProxy sits inside a host.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from edge_agent.lab import cgroups
from edge_agent.lab.faultproxy import FaultProxy
from edge_agent.lab.netns import NetLabError, netns_connect, netns_socket, wait_port_in
from edge_agent.lab.profiles import DeviceProfile, get_profile
from edge_agent.lab.sim import profile_limits, read_log, stop_devices, stop_process
from edge_agent.protocol.errors import BrokerError
from edge_agent.transport.broker import find_mosquitto, mosquitto_config

log = logging.getLogger("edge_agent.netlab")

HOST_IFACE = "eth0"
BRIDGE = "br0"
FIRST_HOST_OCTET = 10          # host i gets <subnet>.(10 + i)
BROKER_PORT = 1883             # every namespace has its own port space: no collisions between labs
_PARTITION_TABLE = "ea_partition"
_LOSS_TABLE = "ea_loss"
_OWN_NAME = re.compile(r"^ea(\d+)-(br|h\d+)$")  # names of default-prefixed labs: ea<pid>-...


# ---------------------------------------------------------------------------------------- helpers
def _run(argv: list[str], *, check: bool = True, input: str | None = None,
         timeout: float = 20.0) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    except FileNotFoundError as exc:
        raise NetLabError(f"{argv[0]} is not installed ({exc})") from None
    if check and res.returncode != 0:
        raise NetLabError(f"`{' '.join(argv)}` failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", *args], check=check)


def list_netns() -> list[str]:
    """Names of the named network namespaces on this machine (``ip netns list``)."""
    res = _ip("netns", "list", check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def netns_supported() -> tuple[bool, str]:
    """Whether network namespaces can be created here (root and a working ``ip netns add``); why not.

    Only this decides whether lab tests skip; a missing ``nft`` is an error when a fault is injected.
    """
    if os.geteuid() != 0:
        return False, "network namespaces cannot be created here: not running as root"
    probe = f"eaprobe{os.getpid()}"
    try:
        res = _ip("netns", "add", probe, check=False)
    except NetLabError as exc:
        return False, f"network namespaces cannot be created here: {exc}"
    if res.returncode != 0:
        return False, f"network namespaces cannot be created here: `ip netns add` said {res.stderr.strip()!r}"
    _ip("netns", "del", probe, check=False)
    return True, "network namespaces can be created"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_processes(netns: str, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, every process inside ``netns`` (never this process)."""
    def pids() -> list[int]:
        res = _ip("netns", "pids", netns, check=False)
        return [int(p) for p in res.stdout.split() if p.isdigit() and int(p) != os.getpid()]

    found = pids()
    for pid in found:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while found and time.monotonic() < deadline:
        found = [p for p in found if _pid_alive(p)]
        time.sleep(0.05)
    for pid in pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def delete_netns(netns: str) -> None:
    """Kill what runs inside ``netns`` and delete it (its veth ends and nft tables go with it)."""
    _kill_netns_processes(netns)
    _ip("netns", "del", netns, check=False)


def remove_stale_labs(prefix: str | None = None) -> list[str]:
    """Delete lab namespaces left by crashed runs; returns their names.

    With ``prefix``: every namespace named ``<prefix>-br`` or ``<prefix>-h<i>``. Always: every
    ``ea<pid>-...`` namespace (the default prefix) whose creating process no longer exists.
    """
    removed = []
    for name in list_netns():
        stale = prefix is not None and re.fullmatch(re.escape(prefix) + r"-(br|h\d+)", name) is not None
        m = _OWN_NAME.match(name)
        if m and not _pid_alive(int(m.group(1))):
            stale = True
        if stale:
            delete_netns(name)
            removed.append(name)
    if removed:
        log.info("removed stale lab namespaces %s", removed)
    return removed


# ---------------------------------------------------------------------------------------- hosts
@dataclass
class Host:
    """One machine of the lab: a network namespace with one link (``eth0``) to the bridge."""

    lab: NetLab = field(repr=False)
    index: int
    name: str         # "h0"
    ns: str           # "<prefix>-h0"
    addr: str         # "10.231.0.10"
    prefixlen: int
    iface: str = HOST_IFACE

    # ------------------------------------------------------------------ processes
    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen:
        """Start a process inside this host; the lab kills it on close. Own session unless told otherwise."""
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(argv), **kw)
        self.lab._procs.append(proc)
        return proc

    def run(self, argv: list[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """Run a command to completion inside this host."""
        return _run(self.argv(argv), check=check, timeout=timeout)

    def connect(self, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
        """A TCP connection made from this host (the socket lives in its namespace)."""
        return netns_connect(self.ns, address, timeout)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A new socket in this host's namespace."""
        return netns_socket(self.ns, family, kind)

    # ------------------------------------------------------------------ faults
    def _nft(self, script: str) -> None:
        _run(self.argv(["nft", "-f", "-"]), input=script)

    def _drop_table(self, table: str) -> None:
        # "add" then "delete" in one transaction: deleting works whether or not the table exists
        self._nft(f"add table inet {table}\ndelete table inet {table}\n")

    def _filter_table(self, table: str, match: str) -> str:
        return (f"add table inet {table}\ndelete table inet {table}\n"
                f"table inet {table} {{\n"
                f"  chain input {{ type filter hook input priority -300; policy accept; "
                f"iifname \"{self.iface}\" {match} counter drop; }}\n"
                f"  chain output {{ type filter hook output priority -300; policy accept; "
                f"oifname \"{self.iface}\" {match} counter drop; }}\n"
                f"}}\n")

    def partition(self) -> None:
        """Cut this host off: drop every packet in and out of its link (the link itself stays up)."""
        self._nft(self._filter_table(_PARTITION_TABLE, ""))
        log.info("%s partitioned", self.ns)

    def heal(self) -> None:
        """Undo :meth:`partition`."""
        self._drop_table(_PARTITION_TABLE)
        log.info("%s healed", self.ns)

    def loss(self, percent: float) -> None:
        """Drop ``percent`` % of packets at random, each way (0 removes the rule)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss percent must be within 0..100, got {percent}")
        n = round(percent)
        if n == 0:
            self._drop_table(_LOSS_TABLE)
        else:
            self._nft(self._filter_table(_LOSS_TABLE, f"numgen random mod 100 < {n}"))
        log.info("%s loss %d%%", self.ns, n)

    def link_down(self) -> None:
        """Take the host's link down (its connected route goes with it)."""
        _ip("-n", self.ns, "link", "set", self.iface, "down")

    def link_up(self) -> None:
        """Bring the link back; the kernel restores the subnet route from the address."""
        _ip("-n", self.ns, "link", "set", self.iface, "up")

    def set_link_rate(self, mbit: float | None) -> None:
        """Shape the host's link to ``mbit`` Mbit/s each way with an htb qdisc (this kernel has htb, not
        netem): on ``eth0`` for what the host sends, on its bridge port for what it receives. None removes it."""
        for ns, dev in ((self.ns, self.iface), (self.lab.bridge_ns, self.name)):
            _run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
            if mbit is not None:
                _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"])
                _run(["tc", "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
                      "rate", f"{mbit:g}mbit", "ceil", f"{mbit:g}mbit"])
        log.info("%s link rate %s", self.ns, "unlimited" if mbit is None else f"{mbit:g} Mbit/s")

    def clear_faults(self) -> None:
        """Heal, no loss, link up."""
        self.heal()
        self.loss(0)
        self.link_up()

    def dropped_packets(self) -> int:
        """Packets dropped so far by this host's partition and loss rules (counters reset when removed)."""
        text = self.run(["nft", "list", "ruleset"]).stdout
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", text))

    def nft_ruleset(self) -> str:
        """This host's nftables ruleset (for debugging)."""
        return self.run(["nft", "list", "ruleset"]).stdout


# ---------------------------------------------------------------------------------------- lab
_open_labs: weakref.WeakSet[NetLab] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for lab in list(_open_labs):
        try:
            lab.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            log.exception("closing lab %s at exit failed", lab.prefix)


atexit.register(_close_all_at_exit)


class NetLab:
    """``n_hosts`` host namespaces joined by a bridge namespace; removed on close (and at exit)."""

    def __init__(self, n_hosts: int, subnet: str = "10.231.0.0/24", prefix: str | None = None) -> None:
        if n_hosts < 1:
            raise ValueError("a lab needs at least one host")
        net = ipaddress.IPv4Network(subnet)
        if net.num_addresses < FIRST_HOST_OCTET + n_hosts + 2:
            raise ValueError(f"subnet {subnet} is too small for {n_hosts} hosts")
        ok, reason = netns_supported()
        if not ok:
            raise NetLabError(reason)
        self.prefix = prefix or f"ea{os.getpid()}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", self.prefix):
            raise ValueError(f"lab prefix {self.prefix!r}: use letters, digits, '-', '_', '.' (<= 40)")
        self.subnet = net
        self.bridge_ns = f"{self.prefix}-br"
        self.hosts: list[Host] = []
        self._procs: list[subprocess.Popen] = []
        self._closed = False
        remove_stale_labs(self.prefix)
        _open_labs.add(self)
        try:
            self._build(n_hosts)
        except BaseException:
            self.close()
            raise

    def _build(self, n_hosts: int) -> None:
        br = self.bridge_ns
        _ip("netns", "add", br)
        _ip("-n", br, "link", "set", "lo", "up")
        _ip("-n", br, "link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0")
        _ip("-n", br, "link", "set", BRIDGE, "up")
        for i in range(n_hosts):
            ns = f"{self.prefix}-h{i}"
            addr = str(self.subnet.network_address + FIRST_HOST_OCTET + i)
            port = f"h{i}"
            _ip("netns", "add", ns)
            # the pair is born in the bridge namespace: nothing is ever created in the root namespace
            _ip("-n", br, "link", "add", port, "type", "veth", "peer", "name", HOST_IFACE, "netns", ns)
            _ip("-n", br, "link", "set", port, "master", BRIDGE, "multicast", "on", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/{self.subnet.prefixlen}", "dev", HOST_IFACE)
            _ip("-n", ns, "link", "set", HOST_IFACE, "multicast", "on", "up")
            self.hosts.append(Host(self, i, f"h{i}", ns, addr, self.subnet.prefixlen))
        log.info("lab %s: %d hosts on %s", self.prefix, n_hosts, self.subnet)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this lab (bridge first)."""
        return [self.bridge_ns] + [h.ns for h in self.hosts]

    def host(self, i: int) -> Host:
        """Host number ``i`` (0-based)."""
        return self.hosts[i]

    def __len__(self) -> int:
        return len(self.hosts)

    def close(self) -> None:
        """Stop every process started in the lab, then delete its namespaces (links and nft tables go too)."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        names = set(list_netns())
        for ns in [f"{self.prefix}-h{i}" for i in range(len(self.hosts) + 1)] + [self.bridge_ns]:
            if ns in names:
                delete_netns(ns)
        # hosts whose creation failed half-way still carry the prefix
        remove_stale_labs(self.prefix)
        _open_labs.discard(self)
        log.info("lab %s removed", self.prefix)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- fleet
@lru_cache(maxsize=1)
def agent_run_flags() -> frozenset[str]:
    """The long options ``edge-agent run`` accepts (so the lab passes ``--dev`` only where it exists)."""
    res = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--help"], capture_output=True,
                         text=True, timeout=60)
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", res.stdout))


@dataclass
class LabDevice:
    """One agent process on one lab host."""

    name: str
    host: Host
    data_dir: Path
    log_path: Path
    argv: list[str]
    proc: subprocess.Popen | None = None
    profile: DeviceProfile | None = None
    cgroup: cgroups.DeviceCgroup | None = None
    emulation: str = ""

    def alive(self) -> bool:
        """Whether the agent process is running."""
        return self.proc is not None and self.proc.poll() is None


class LabFleet:
    """Like :class:`edge_agent.lab.sim.SimFleet`, but each agent runs on its own lab host.

    Mosquitto runs on ``broker_host`` listening on that host's address (``lab_broker_url``, what the
    agents use). ``broker_url`` is a loopback forward into the broker host for clients in *this*
    process's namespace: ``Fleet(lab_fleet.broker_url)``. Agents go on ``agent_hosts``; by default the
    hosts other than the broker's when the lab has enough of them, else hosts ``0..n_agents-1``.
    """

    def __init__(self, lab: NetLab, n_agents: int = 3, *, broker_host: int = 0,
                 agent_hosts: list[int] | None = None, fleet: str = "default",
                 workdir: str | os.PathLike | None = None, threads: int = 1,
                 gflops: list[float] | None = None, discovery: bool = True,
                 extra_args: list[str] | None = None, names: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.lab = lab
        self.fleet = fleet
        self.threads = threads
        self.discovery = discovery
        self.extra_args = list(extra_args or [])
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ea-lab-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.devices: dict[str, LabDevice] = {}
        self.broker_host = lab.host(broker_host)
        self.broker_port = BROKER_PORT
        self.lab_broker_url = f"mqtt://{self.broker_host.addr}:{self.broker_port}"
        self._broker: subprocess.Popen | None = None
        self._forward: FaultProxy | None = None
        if agent_hosts is None:
            others = [h.index for h in lab.hosts if h.index != broker_host]
            agent_hosts = others[:n_agents] if len(others) >= n_agents else list(range(n_agents))
        if len(agent_hosts) < n_agents or max(agent_hosts, default=0) >= len(lab):
            raise ValueError(f"{n_agents} agents need {n_agents} hosts of the lab's {len(lab)}, got {agent_hosts}")
        names = names or [f"dev-{i}" for i in range(n_agents)]
        try:
            self._start_broker()
            self._forward = FaultProxy(listen=("127.0.0.1", 0), target=(self.broker_host.addr, self.broker_port),
                                       target_netns=self.broker_host.ns)
            for i, name in enumerate(names[:n_agents]):
                self.add_device(name, agent_hosts[i], gflops=None if gflops is None else gflops[i])
        except BaseException:
            self.close()
            raise

    @property
    def broker_url(self) -> str:
        """Broker URL usable from this process (a loopback forward into the broker host)."""
        assert self._forward is not None
        return f"mqtt://127.0.0.1:{self._forward.port}"

    def _start_broker(self) -> None:
        exe = find_mosquitto()
        if exe is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        bdir = self.workdir / "broker"
        bdir.mkdir(exist_ok=True)
        conf = bdir / "mosquitto.conf"
        # (mosquitto_config keeps the caller's user when run as root: a private 0700 test tree stays writable)
        conf.write_text(mosquitto_config(self.broker_port, self.broker_host.addr,
                                         log_file=str(bdir / "mosquitto.log")))
        out = open(bdir / "broker.out", "ab")  # noqa: SIM115 - handed to the child
        self._broker = self.broker_host.popen([exe, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        out.close()
        wait_port_in(self.broker_host.ns, (self.broker_host.addr, self.broker_port), 10, self._broker)

    def add_device(self, name: str, host: int, *, broker_url: str | None = None, gflops: float | None = None,
                   extra_args: list[str] | None = None, start: bool = True,
                   profile: DeviceProfile | str | None = None) -> LabDevice:
        """Add an agent on lab host ``host`` (``broker_url`` as seen from that host; default the lab broker).
        A ``profile`` (:mod:`edge_agent.lab.profiles`) sets its threads, CPU quota and memory limit (cgroup,
        or the slowed-backend fallback) and the host's link rate (htb); its added delay is not applied here
        (put a :class:`FaultProxy` in the path)."""
        if name in self.devices:
            raise ValueError(f"device {name!r} already exists")
        h = self.lab.host(host)
        threads, cgroup, slowdown, notes = self.threads, None, None, []
        if isinstance(profile, str):
            profile = get_profile(profile)
        if profile is not None:
            threads = min(profile.threads, os.cpu_count() or 1)
            cgroup, slowdown, notes = profile_limits(f"{self.workdir.name}-{name}", profile, threads)
            if profile.link_mbit is not None:
                h.set_link_rate(profile.link_mbit)
                notes.append(f"link {profile.link_mbit:g} Mbit/s (htb)")
        entry = ["edge_agent.lab.device"] if slowdown is not None else ["edge_agent.cli", "run"]
        argv = [sys.executable, "-m", *entry, "--name", name,
                "--broker", broker_url or self.lab_broker_url, "--fleet", self.fleet,
                "--data-dir", str(self.workdir / name), "--threads", str(threads),
                "--interface", h.addr, "--log-level", "INFO"]
        if slowdown is not None:
            argv += ["--slowdown", str(slowdown)]
        if "--dev" in agent_run_flags():
            argv.append("--dev")
        if gflops is not None:
            argv += ["--gflops", str(gflops)]
        if not self.discovery:
            argv.append("--no-discovery")
        argv += self.extra_args + list(extra_args or [])
        dev = LabDevice(name, h, self.workdir / name, self.workdir / f"{name}.log", argv, profile=profile,
                        cgroup=cgroup, emulation="; ".join(notes))
        self.devices[name] = dev
        if start:
            self.start_device(name)
        return dev

    def host_of(self, name: str) -> Host:
        """The lab host device ``name`` runs on."""
        return self.devices[name].host

    def start_device(self, name: str) -> None:
        """Start (or start again) device ``name``'s agent on its host; its log is appended to."""
        dev = self.devices[name]
        if dev.alive():
            return
        with open(dev.log_path, "ab") as out:
            if dev.cgroup is None:
                dev.proc = dev.host.popen(dev.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
            else:   # join the cgroup before `ip netns exec`, which remounts /sys without the cgroup tree
                dev.proc = subprocess.Popen(dev.cgroup.wrap(dev.host.argv(dev.argv)), stdout=out,
                                            stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                                            stdin=subprocess.DEVNULL)
                self.lab._procs.append(dev.proc)

    def stop_device(self, name: str, kill: bool = False, timeout: float = 15.0) -> None:
        """SIGTERM (clean goodbye) or SIGKILL (the broker's Last Will tells the fleet)."""
        dev = self.devices[name]
        if dev.proc is not None:
            stop_process(dev.proc, kill, timeout)

    def restart_device(self, name: str) -> None:
        """Clean stop, then start: same host, same data directory (its shards survive)."""
        self.stop_device(name)
        self.start_device(name)

    def log(self, name: str) -> str:
        """Everything device ``name`` wrote to its log so far."""
        return read_log(self.devices[name].log_path)

    def exited(self, lines: int = 5) -> dict[str, str]:
        """Agents that were started and are no longer running: name -> exit code and last log lines."""
        out = {}
        for name, dev in self.devices.items():
            if dev.proc is not None and dev.proc.poll() is not None:
                tail = "\n".join(self.log(name).splitlines()[-lines:])
                out[name] = f"exit code {dev.proc.returncode}: {tail}"
        return out

    def broker_log(self) -> str:
        """Mosquitto's log (connections, disconnections, errors)."""
        try:
            return (self.workdir / "broker" / "mosquitto.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop agents (SIGTERM, then SIGKILL), the loopback forward and the broker."""
        stop_devices(self.devices.values())
        if self._forward is not None:
            self._forward.close()
        if self._broker is not None and self._broker.poll() is None:
            self._broker.terminate()
            try:
                self._broker.wait(10)
            except subprocess.TimeoutExpired:
                self._broker.kill()
                self._broker.wait(5)

    def __enter__(self) -> LabFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
