"""What a worker process uses, measured where it runs: the input of the right-sizing advice
(swell.brain.rightsize). No psutil (not a dependency): `resource.getrusage` for CPU time, which
every POSIX system has, `/proc/self/statm` for the resident set (Linux; elsewhere the peak RSS,
which over-states it), and torch's own count of the GPU memory it reserved, read only when the
engine imported torch and CUDA is already initialised (a measurement never initialises CUDA).

The CPU figure is cores used over the interval since the previous reading (the worker publishes
every second, so it is a one-second average); child processes of the worker (an HTTP engine's
server) are not counted.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time

from swell.worker.contract import Usage

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class UsageMeter:
    """Readings of this process's usage; CPU as the rate since the previous reading."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = (time.monotonic(), cpu_seconds())

    def read(self) -> Usage:
        now, cpu = time.monotonic(), cpu_seconds()
        with self._lock:
            then, before = self._last
            self._last = (now, cpu)
        cores = (cpu - before) / (now - then) if now > then else 0.0
        gpu, total = gpu_bytes()
        return Usage(
            cpu=round(max(0.0, cores), 4), rss_bytes=rss_bytes(), gpu_bytes=gpu, gpu_total_bytes=total
        )


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> int:
    """The resident set now (/proc), else the peak (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def gpu_bytes() -> tuple[int | None, int | None]:
    """GPU memory torch reserved on this process's device and that device's total, or (None, None)."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return None, None
        device = torch.cuda.current_device()
        total = int(torch.cuda.get_device_properties(device).total_memory)
        return int(torch.cuda.memory_reserved(device)), total
    except Exception:  # a broken CUDA install reads as none
        return None, None


METER = UsageMeter()  # one per process: the worker's publishes read it
