"""What a device can do: ISA, cores, RAM and measured GFLOP/s (with the native core when it is built)."""

from __future__ import annotations

import os
import platform
import time

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
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20))
    except (ValueError, OSError, AttributeError):
        return 0


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def measure_gflops(seconds: float = 0.3, threads: int = 1) -> tuple[float, str]:
    """Measured FP32 GEMM throughput and what measured it (``ops_native`` or ``numpy``)."""
    try:
        from ops_native import _core
        return float(_core.gemm_gflops_probe(seconds, threads)), "ops_native"
    except (ImportError, AttributeError):
        pass
    n = 384
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b  # warm up
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            break
    return 2.0 * n ** 3 * reps / dt / 1e9, "numpy"
