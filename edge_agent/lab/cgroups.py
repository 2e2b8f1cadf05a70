"""CPU quota and memory limit for an emulated device's process, with Linux control groups (root only).

Both hierarchies are handled and detected from ``/proc/self/mountinfo``:

- cgroup v1: the ``cpu`` controller (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) and the ``memory``
  controller (``memory.limit_in_bytes``), each its own mount;
- cgroup v2: one mount, ``cpu.max`` ("QUOTA PERIOD") and ``memory.max``.

Groups are created *below* this process's own group (``/proc/self/cgroup``), so whatever limits this
process already lives under still apply, and are named ``edge-agent-lab/<pid>-<device>`` so two test runs
never share one. A process joins its group before it executes anything: :meth:`DeviceCgroup.wrap` turns an
argv into ``sh -c 'echo $$ > .../cgroup.procs; exec "$@"'``. :meth:`DeviceCgroup.remove` deletes the
groups (the kernel refuses while a process is still inside); groups left by this process are removed
at exit.

Where no cgroup is writable (not root, a container with a read-only ``/sys/fs/cgroup``, or ``ip netns
exec``, which remounts ``/sys`` without the cgroup mounts: use ``nsenter --net=/run/netns/NAME`` there)
:func:`detect` says why and :class:`CgroupUnavailable` carries that sentence.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("edge_agent.lab.cgroups")

PERIOD_US = 100_000          # the CFS default: the quota is enforced per 100 ms period
MIN_QUOTA_US = 1_000         # the kernel refuses less than 1 ms a period
GROUP_PARENT = "edge-agent-lab"
# CPU weight of the edge-agent-lab parent group, in units of one ordinary task's weight. The parent is ONE
# scheduling entity beside every other process of the machine: at the default weight, all emulated devices
# together got one task's share, so on a machine busy with k other tasks a fleet whose quotas add up to 1.2
# cores received 2/(k+1) cores and stopped scaling beyond two devices (measured: bench_pool, N = 6 at load 6
# ran 4x slower than N = 4). With this weight the devices receive their quotas while other work competes; the
# quotas still cap them, so the lab never takes more than its devices' quotas add up to.
PARENT_WEIGHT_TASKS = 32
# A device group weighs this many ordinary tasks per core of its quota: devices inside the parent split it by
# their quotas, and a device still gets its quota beside groups left at the default weight (one task).
DEVICE_WEIGHT_TASKS_PER_CORE = 8


class CgroupUnavailable(RuntimeError):
    """CPU/memory limits cannot be applied here; the message says why and what to do."""


@dataclass(frozen=True)
class CgroupLayout:
    """Where this process's groups live. ``cpu_dir``/``memory_dir``: the directories new groups go under
    (None when that controller is not available); v2 has both in one tree."""

    version: int                       # 1 or 2
    cpu_dir: Path | None
    memory_dir: Path | None

    def describe(self) -> str:
        return f"cgroup v{self.version} (cpu: {self.cpu_dir or 'none'}, memory: {self.memory_dir or 'none'})"


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """``/proc/self/cgroup`` -> {controller: path}; v2's entry is under the key ""."""
    out: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctrl in parts[1].split(",") if parts[1] else [""]:
            out[ctrl] = parts[2]
    return out


def _mounts(mountinfo: str) -> list[tuple[str, str, set[str]]]:
    """(fstype, mount point, super options) of every cgroup mount in a ``mountinfo`` text."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((rfields[0], fields[4].replace("\\040", " "), set(rfields[2].split(","))))
    return out


def detect(mountinfo: str | None = None, proc_cgroup: str | None = None) -> CgroupLayout:
    """The writable cgroup layout of this process, or CgroupUnavailable saying why there is none."""
    if os.geteuid() != 0:
        raise CgroupUnavailable("CPU/memory limits need root (cgroups are writable by root only here)")
    try:
        mountinfo = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
        proc_cgroup = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read this process's cgroups: {exc}") from None
    own = _own_paths(proc_cgroup)
    mounts = _mounts(mountinfo)
    v1 = {opt: mp for kind, mp, opts in mounts if kind == "cgroup" for opt in opts if opt in ("cpu", "memory")}
    if "cpu" in v1:
        return CgroupLayout(1, Path(v1["cpu"]) / own.get("cpu", "/").lstrip("/"),
                            Path(v1["memory"]) / own.get("memory", "/").lstrip("/") if "memory" in v1 else None)
    for kind, mp, _ in mounts:
        if kind != "cgroup2":
            continue
        try:
            controllers = (Path(mp) / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "cpu" in controllers:
            base = Path(mp) / own.get("", "/").lstrip("/")
            return CgroupLayout(2, base, base if "memory" in controllers else None)
    if not mounts:
        raise CgroupUnavailable("no cgroup filesystem is mounted here (`ip netns exec` remounts /sys without "
                                "it: enter the namespace with `nsenter --net=/run/netns/NAME` instead)")
    raise CgroupUnavailable("no cgroup hierarchy here has the cpu controller "
                            f"({', '.join(mp for _, mp, _ in mounts)})")


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupUnavailable(f"cannot write {value.strip()!r} to {path}: {exc.strerror or exc}") from None


@dataclass
class DeviceCgroup:
    """The groups of one emulated device (one per controller on v1, one on v2)."""

    name: str
    layout: CgroupLayout
    cpu: float | None
    memory_mb: int | None
    dirs: list[Path] = field(default_factory=list)

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started so that the process is in this device's groups before it runs anything."""
        joins = " && ".join(f"echo $$ > {shlex.quote(str(p))}" for p in self.procs_files)
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "edge-agent-cgroup", *argv]

    def add(self, pid: int) -> None:
        """Move a running process (and not its existing threads' siblings) into the groups."""
        for p in self.procs_files:
            _write(p, str(pid))

    def pids(self) -> list[int]:
        out: set[int] = set()
        for p in self.procs_files:
            try:
                out.update(int(x) for x in p.read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(out)

    def set_cpu(self, cpu: float | None) -> None:
        """Change the CPU quota of the running device (``cpu`` cores, None: unlimited), e.g. to emulate a
        device that slows down, or to start an agent fast and then limit it. The weight stays the one set at
        creation."""
        if not self.dirs:
            raise CgroupUnavailable(f"{self.name}: the group was removed")
        quota = -1 if cpu is None else max(MIN_QUOTA_US, round(cpu * PERIOD_US))
        if self.layout.version == 1:
            _write(self.dirs[0] / "cpu.cfs_quota_us", str(quota))
        else:
            _write(self.dirs[0] / "cpu.max", f"{'max' if quota < 0 else quota} {PERIOD_US}")
        self.cpu = cpu

    def throttled(self) -> int:
        """Periods in which the group ran out of quota (``cpu.stat``: ``nr_throttled``)."""
        if not self.dirs:
            return 0
        try:
            for line in (self.dirs[0] / "cpu.stat").read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "nr_throttled":
                    return int(v)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self, timeout: float = 5.0) -> None:
        """Delete the groups; waits up to ``timeout`` s for processes to leave (exited ones do)."""
        end = time.monotonic() + timeout
        for d in reversed(self.dirs):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > end:
                        log.warning("cannot remove cgroup %s (%s); processes %s still in it", d, exc, self.pids())
                        break
                    time.sleep(0.05)
            for parent in (d.parent,):   # edge-agent-lab/ goes when the last run's groups are gone
                if parent.name == GROUP_PARENT:
                    try:
                        parent.rmdir()
                    except OSError:
                        pass
        with _lock:
            if self in _live:
                _live.remove(self)
        self.dirs = []

    def describe(self) -> str:
        parts = [f"cpu {self.cpu:g} core" if self.cpu is not None else "cpu unlimited"]
        if self.memory_mb is not None:
            parts.append(f"memory {self.memory_mb} MB" if self.layout.memory_dir else "memory: no controller")
        return f"cgroup v{self.layout.version} {', '.join(parts)}"


_lock = threading.Lock()
_live: list[DeviceCgroup] = []


def _make_group(base: Path, name: str, version: int = 1) -> Path:
    d = base / GROUP_PARENT / f"{os.getpid()}-{name}"
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        if version == 2:
            # v2 hands controllers down explicitly; a group that holds processes cannot (EBUSY), and then
            # this process has to run in a leaf of its own (as systemd-run --scope does)
            for g in (base, d.parent):
                _write(g / "cgroup.subtree_control", "+cpu")
                try:
                    (g / "cgroup.subtree_control").write_text("+memory")
                except OSError:
                    pass   # no memory limit then; create() says so
        d.mkdir(exist_ok=True)
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create cgroup {d}: {exc.strerror or exc}") from None
    return d


def _set_weights(group_dir: Path, version: int, cpu: float | None) -> None:
    """The parent's weight (see PARENT_WEIGHT_TASKS) and the device group's, proportional to its quota so
    that devices competing inside the parent split what it gets by their quotas. Best effort: a weight that
    cannot be written leaves the default (the quota still applies), and says so."""
    tasks = DEVICE_WEIGHT_TASKS_PER_CORE * (cpu or 1)    # no quota: weighs like a one-core device
    if version == 1:
        parent, own = ("cpu.shares", 1024 * PARENT_WEIGHT_TASKS), ("cpu.shares", max(2, round(1024 * tasks)))
    else:
        parent, own = ("cpu.weight", min(10_000, 100 * PARENT_WEIGHT_TASKS)), \
            ("cpu.weight", max(1, min(10_000, round(100 * tasks))))
    for d, (fname, value) in ((group_dir.parent, parent), (group_dir, own)):
        try:
            _write(d / fname, str(value))
        except CgroupUnavailable as exc:
            log.warning("cannot set the CPU weight of %s (%s); the default weight applies", d, exc)


def create(name: str, *, cpu: float | None, memory_mb: int | None = None,
           layout: CgroupLayout | None = None) -> DeviceCgroup:
    """Groups for device ``name`` with a CPU quota of ``cpu`` cores (None: unlimited) and a memory limit.
    Raises CgroupUnavailable (with the reason) when they cannot be made; nothing is left behind then."""
    layout = layout or detect()
    group = DeviceCgroup(name, layout, cpu, memory_mb)
    try:
        if layout.cpu_dir is None:
            raise CgroupUnavailable("no cpu controller")
        cpu_dir = _make_group(layout.cpu_dir, name, layout.version)
        group.dirs.append(cpu_dir)
        if layout.version == 1:
            _write(cpu_dir / "cpu.cfs_period_us", str(PERIOD_US))
        group.set_cpu(cpu)
        _set_weights(cpu_dir, layout.version, cpu)
        if memory_mb is not None:
            if layout.memory_dir is None:
                log.warning("%s: no memory controller here; memory limit %d MB not applied", name, memory_mb)
            elif layout.version == 1:
                mem_dir = _make_group(layout.memory_dir, name)
                group.dirs.append(mem_dir)
                _write(mem_dir / "memory.limit_in_bytes", str(memory_mb << 20))
            else:
                _write(cpu_dir / "memory.max", str(memory_mb << 20))
    except CgroupUnavailable:
        group.remove(timeout=0)
        raise
    with _lock:
        _live.append(group)
    log.info("%s: %s (%s)", name, group.describe(), ", ".join(map(str, group.dirs)))
    return group


@atexit.register
def _remove_left_over() -> None:
    with _lock:
        groups = list(_live)
    for g in groups:
        g.remove(timeout=1.0)
