"""Cumulative counters read in the measured process at each phase boundary, so that a phase's
means are exact whatever the sampling did in between: the process tree's CPU time and the
host's (``/proc`` through psutil), each GPU's energy counter (NVML). One ``read()`` costs about
0.3 ms (psutil, this machine) and runs only at ``mark_phase``: never between two timed calls."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

_MB = 1024.0 * 1024.0


@dataclass(frozen=True)
class Reading:
    """Counters at one instant (None: could not be read)."""

    t: float  # time.monotonic()
    wall: float  # time.time(), for timestamps of other clocks (NVML's sample buffer)
    tree_cpu_s: float | None  # user + system CPU seconds of the measured process tree
    host_busy_s: float | None  # CPU seconds all host CPUs spent not idle
    host_total_s: float | None  # CPU seconds all host CPUs spent
    tree_rss_mb: float | None  # RSS of the process tree now
    energy_j: dict[str, float | None] = field(default_factory=dict)  # per GPU label


class CounterReader:
    """Reads ``Reading``s of process ``pid`` and its descendants, leaving out ``exclude`` (the
    sampling process: its cost is reported on its own), and of ``energy()``'s GPUs."""

    def __init__(self, pid: int, exclude: Callable[[], Collection[int]] = tuple,
                 energy: Callable[[], dict[str, float | None]] = dict) -> None:
        import psutil

        self._psutil = psutil
        self._root = psutil.Process(pid)
        self._exclude = exclude
        self._energy = energy

    def _tree(self) -> list[Any]:
        excluded = set(self._exclude())
        try:
            children = [c for c in self._root.children(recursive=True) if c.pid not in excluded]
        except self._psutil.Error:
            children = []
        return [self._root, *children]

    def read(self) -> Reading:
        """The counters now; ``t`` is taken right before the energy counters, the quantity
        that changes fastest."""
        t, wall = time.monotonic(), time.time()
        energy = self._energy()
        psutil = self._psutil
        cpu = rss = 0.0
        ok = True
        for proc in self._tree():
            try:
                if proc is self._root and self._root.pid == os.getpid():
                    # this process: the clock's resolution, not /proc's 10 ms ticks (on a
                    # 0.1 s phase, ticks alone would be off by up to 10%)
                    cpu += time.process_time()
                else:
                    times = proc.cpu_times()
                    cpu += times.user + times.system
                rss += proc.memory_info().rss / _MB
            except psutil.NoSuchProcess:
                continue  # a child that ended between listing and reading
            except psutil.Error:
                ok = False
        host = psutil.cpu_times()
        idle = host.idle + getattr(host, "iowait", 0.0)
        total = sum(getattr(host, f) for f in host._fields if f not in ("guest", "guest_nice"))
        return Reading(t, wall, cpu if ok else None, total - idle, total, rss if ok else None,
                       energy)


def rss_peak_mb(pid: int) -> float | None:
    """The process's peak RSS since it started (``VmHWM``), None where /proc has no such line."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_count() -> int:
    return os.cpu_count() or 1
