"""What a device can do: ISA, cores, RAM and measured GFLOP/s (with the native core when it is built)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np


def cpu_isa() -> str:
    """The SIMD path the native core uses here, or a description of the CPU."""
    try:
        from ops_native import _core
        return _core.isa()
    except (ImportError, AttributeError):
        pass
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        try:
            flags = open("/proc/cpuinfo").read()
            if " avx2 " in flags and " fma " in flags:
                return "avx2-fma"
        except OSError:
            pass
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "neon"
    return machine


def ram_mb() -> int:
    """Physical memory, or this process's cgroup memory limit when that is lower (a container, an emulated
    device)."""
    try:
        phys = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20))
    except (ValueError, OSError, AttributeError):
        phys = 0
    limit = cgroup_memory_limit_mb()
    return min(phys, limit) if limit and phys else (phys or limit or 0)


def cgroup_memory_limit_mb() -> int | None:
    """The memory limit of this process's cgroup (v1 ``memory.limit_in_bytes`` or v2 ``memory.max``), None
    when unlimited or unknown."""
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, path = (line.split(":", 2) + ["", ""])[:3]
        rel = path.lstrip("/")
        if "memory" in ctrls.split(","):
            candidates = [f"/sys/fs/cgroup/memory/{rel}/memory.limit_in_bytes"]
        elif ctrls == "":
            candidates = [f"/sys/fs/cgroup/{rel}/memory.max", f"/sys/fs/cgroup/unified/{rel}/memory.max"]
        else:
            continue
        for c in candidates:
            try:
                text = open(c).read().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < (1 << 60):
                return int(text) >> 20
    return None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


SCHED_PERIOD_S = 0.1   # the CFS period a CPU quota is enforced over (cgroup v1 and v2 default)


def _gemm_step(threads: int) -> tuple[Callable[[], object], float, str]:
    """One fixed-size FP32 GEMM (a callable), its FLOPs, and what runs it (``ops_native`` or ``numpy``)."""
    n = 384
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    try:
        from ops_native import _core
        pb, c = _core.PackedB(b), np.empty((n, n), dtype=np.float32)
        return (lambda: _core.gemm(a, pb, out=c, threads=threads)), 2.0 * n ** 3, "ops_native"
    except (ImportError, AttributeError):
        return (lambda: a @ b), 2.0 * n ** 3, "numpy"


def windowed_rate(times: Sequence[float], window_s: float) -> float:
    """Median completions per second over windows of ``window_s`` that start at each completion time in
    ``times`` (the window ends at the last completion within it).

    A window of a whole number of scheduler periods sees exactly that many CPU quotas, whatever its phase,
    so a throttled process measures its quota, not the burst it runs at inside a period."""
    rates = []
    j = 0
    for i, t0 in enumerate(times):
        if times[-1] - t0 < window_s * 0.999:
            break
        j = max(j, i)
        while j + 1 < len(times) and times[j + 1] - t0 <= window_s:
            j += 1
        if j > i:
            rates.append((j - i) / (times[j] - t0))
    if not rates:   # fewer than one window: the whole span
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    return float(np.median(rates))


def measure_gflops(seconds: float = 1.0, threads: int = 1, window_s: float = 3 * SCHED_PERIOD_S,
                   clock: Callable[[], float] = time.perf_counter) -> tuple[float, str]:
    """Measured FP32 GEMM throughput and what measured it (``ops_native`` or ``numpy``).

    Runs ``seconds`` (several scheduler periods, so a CPU quota shows: a device limited to 25 % of a core
    bursts at full speed for 25 ms, then waits 75 ms) and reports the median rate of windows of
    ``window_s`` (3 periods) started at every GEMM completion: robust to a burst of other load."""
    sustained, _, source = measure_gflops_burst(seconds, threads, window_s, clock)
    return sustained, source


def measure_gflops_burst(seconds: float = 1.0, threads: int = 1, window_s: float = 3 * SCHED_PERIOD_S,
                         clock: Callable[[], float] = time.perf_counter) -> tuple[float, float, str]:
    """(sustained GFLOP/s as :func:`measure_gflops`, burst GFLOP/s, source). The burst rate is the median
    single GEMM's: under a CPU quota most GEMMs run inside a period at full speed and only the one that
    meets the period's end waits, so it is the speed a request meets on an idle device (the planner's
    latency); without a quota the two agree."""
    step, flops, source = _gemm_step(max(1, threads))
    step()  # warm up (creates the thread pool's workers)
    times = [clock()]
    end = times[0] + seconds
    while times[-1] < end:
        step()
        times.append(clock())
    sustained = windowed_rate(times, min(window_s, seconds)) * flops / 1e9
    steps = np.diff(times)
    burst = flops / float(np.median(steps)) / 1e9 if len(steps) and np.median(steps) > 0 else sustained
    return sustained, max(burst, sustained), source


def rechecks_due(now: float, *, last_link: float | None, last_gflops: float, idle_for: float,
                 every_s: float, idle_after_s: float, gflops_fixed: bool) -> tuple[bool, bool]:
    """Which capabilities to measure again now: (link, gflops). The link is measured once at start
    (``last_link`` None) and then, like the GFLOP/s, every ``every_s`` but only on an idle device (no
    request for ``idle_after_s``): a measurement must neither delay requests nor be skewed by them.
    A configured GFLOP/s (``--gflops``) is never measured. ``every_s`` <= 0 turns the rechecks off."""
    if last_link is None:
        return True, False
    if every_s <= 0 or idle_for < idle_after_s:
        return False, False
    return now - last_link >= every_s, not gflops_fixed and now - last_gflops >= every_s
