"""Cumulative counters read in the measured process at each phase boundary, so that a phase's
means are exact whatever the sampling did in between: the process tree's CPU time and the
host's (``/proc`` through psutil), each GPU's energy counter (NVML). One ``read()`` cost 3.2 ms
on this machine at load average 26 (a process with 100 threads and one child) and runs only at
``mark_phase``: never between two timed calls."""

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
        pids = _descendants(self._root.pid)
        if pids is None:  # no /proc/<pid>/task/<tid>/children: psutil scans every process
            try:
                pids = [c.pid for c in self._root.children(recursive=True)]
            except self._psutil.Error:
                pids = []
        children = []
        for pid in pids:
            if pid in excluded:
                continue
            try:
                children.append(self._psutil.Process(pid))
            except self._psutil.Error:
                continue  # ended since
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


def _descendants(pid: int) -> list[int] | None:
    """The descendants of ``pid`` that its main thread (and theirs) started, from
    ``/proc/<pid>/task/<pid>/children``; None where the kernel has no such file. Python's
    ``subprocess`` and ``multiprocessing`` start children from the calling thread, which in the
    worker is the main one; TensorFlow starts none. Reading every thread's file instead took
    5 ms for a process with 100 threads at load average 26 on this machine, psutil's
    ``children(recursive=True)`` (which reads every process's stat) 78 ms."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as fh:
                kids = [int(k) for k in fh.read().split()]
        except FileNotFoundError:
            if parent == pid:
                return None  # the process is gone, or the kernel lacks CONFIG_PROC_CHILDREN
            continue
        except OSError:
            continue
        found += kids
        stack += kids
    return found


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
