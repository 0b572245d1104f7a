"""What one telemetry sample reads, and the sampling loop, in or out of the measured process.

``GpuReader`` reads one row per GPU through NVML; ``HostReader`` reads host CPU utilization,
system memory and one process's RSS (from ``/proc`` where it exists, else psutil). Rows are
``(t, device, *fields)`` with ``t`` from ``time.monotonic()``, a clock shared by all processes
of the machine, so rows read in another process line up with the phases the job marks.

``python -m runner.probe`` is the sampling process ``runner.telemetry.Sampler`` starts: it lowers
its own scheduling priority to SCHED_IDLE (so it runs on cycles the benchmark leaves idle and
never preempts it), takes a first sample and writes ``ready`` to stdout, then samples every
``--interval`` seconds and right away on each byte it reads on stdin, and on ``q`` or end of
stdin takes one last sample, writes ``{"rows", "errors", "priority", "cpu_s", "wall_s"}`` (the
CPU time it spent from its first sample to its last, and the wall time) as JSON to stdout and
exits. This keeps the sampler off the benchmark's interpreter (no GIL
contention with the timed loop) and off its CPU time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import select
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Value = float | int | str | None
Row = tuple[Value, ...]  # (t, device, *fields)

_MB = 1024.0 * 1024.0
GPU_FIELDS = (
    "gpu_util_pct",
    "mem_util_pct",
    "mem_used_mb",
    "power_w",
    "sm_clock_mhz",
    "temperature_c",
    "throttle_reasons",
    "energy_counter_j",
)
CPU_FIELDS = ("cpu_util_pct", "mem_used_mb", "process_rss_mb")
CONSTANTS = {
    "NVML_CLOCK_SM": 1,
    "NVML_CLOCK_MEM": 2,
    "NVML_TEMPERATURE_GPU": 0,
    "NVML_CLOCK_ID_APP_CLOCK_TARGET": 1,
    "NVML_CLOCK_ID_APP_CLOCK_DEFAULT": 2,
}
# Error classes after which a field is not read again for that device.
UNSUPPORTED_ERRORS = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound")
# NVML functions read on every sample.
ROW_FUNCTIONS = (
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetTotalEnergyConsumption",
)
MAX_ERRORS = 50  # error messages kept; one more line says that others were dropped
#: the line the sampling process writes once it has taken its first sample
READY = "ready\n"
#: system memory is read on every ``MEMORY_EVERY``-th host sample (the dearest read, and the
#: least telling: other processes' memory)
MEMORY_EVERY = 10


def error_text(error: BaseException) -> str:
    return str(error) or type(error).__name__


def nvml_constants(nvml: Any) -> dict[str, Any]:
    """The NVML constants this project uses, from ``nvml`` where it has them."""
    return {name: getattr(nvml, name, value) for name, value in CONSTANTS.items()}


def scaled(value: Any, factor: float) -> float | None:
    """``value * factor``, None staying None (NVML's mW and mJ to W and J)."""
    return None if value is None else float(value) * factor


@dataclass
class Gpu:
    label: str
    handle: Any
    unsupported: set[str] = field(default_factory=set)


class GpuReader:
    """One row per GPU; a field that fails is None, and one NVML calls unsupported is never
    read again on that GPU."""

    def __init__(self, nvml: Any, devices: Sequence[Gpu]) -> None:
        self.devices = list(devices)
        self._errors: tuple[type[BaseException], ...] = (getattr(nvml, "NVMLError", Exception),)
        self._unsupported: tuple[type[BaseException], ...] = tuple(
            c for c in (getattr(nvml, n, None) for n in UNSUPPORTED_ERRORS) if isinstance(c, type)
        )
        self._const = nvml_constants(nvml)
        self._functions: dict[str, Callable[..., Any] | None] = {
            name: getattr(nvml, name, None) for name in ROW_FUNCTIONS
        }

    def rows(self) -> list[Row]:
        t = time.monotonic()
        return [self._row(gpu, t) for gpu in self.devices]

    def _read(self, gpu: Gpu, name: str, *args: Any) -> Any:
        if name in gpu.unsupported:
            return None
        fn = self._functions.get(name)
        if fn is None:
            gpu.unsupported.add(name)
            return None
        try:
            return fn(gpu.handle, *args)
        except self._errors as e:
            if isinstance(e, self._unsupported):
                gpu.unsupported.add(name)
            return None

    def _row(self, gpu: Gpu, t: float) -> Row:
        util = self._read(gpu, "nvmlDeviceGetUtilizationRates")
        memory = self._read(gpu, "nvmlDeviceGetMemoryInfo")
        return (
            t,
            gpu.label,
            None if util is None else util.gpu,
            None if util is None else util.memory,
            None if memory is None else memory.used / _MB,
            scaled(self._read(gpu, "nvmlDeviceGetPowerUsage"), 1e-3),
            self._read(gpu, "nvmlDeviceGetClockInfo", self._const["NVML_CLOCK_SM"]),
            self._read(gpu, "nvmlDeviceGetTemperature", self._const["NVML_TEMPERATURE_GPU"]),
            self._read(gpu, "nvmlDeviceGetCurrentClocksThrottleReasons"),
            scaled(self._read(gpu, "nvmlDeviceGetTotalEnergyConsumption"), 1e-3),
        )

    def close(self) -> None:
        """Nothing to release: NVML is shut down by whoever initialised it."""


class HostReader:
    """Host CPU utilization (all CPUs, since the previous sample), system memory used and the
    RSS of process ``pid``: kept-open ``/proc/stat`` and ``/proc/<pid>/statm`` read with one
    ``pread`` each (about 13 us a sample, against 78 us through psutil), psutil elsewhere."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process(pid)
        self._count = 0
        self._memory_mb = psutil.virtual_memory().used / _MB
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / _MB if hasattr(os, "sysconf") else 0.0
        self._stat: int | None = None
        self._statm: int | None = None
        try:
            self._stat = os.open("/proc/stat", os.O_RDONLY)
            self._statm = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
        except OSError:
            self.close()
        if self._stat is not None:
            self._ticks = self._cpu_ticks()
        else:  # psutil's own baseline for cpu_percent(interval=None)
            self._ticks = (0, 0)
            psutil.cpu_percent(interval=None)

    def _cpu_ticks(self) -> tuple[int, int]:
        """(all, idle + iowait) jiffies from the first line of /proc/stat."""
        assert self._stat is not None
        values = [int(v) for v in os.pread(self._stat, 512, 0).split(b"\n", 1)[0].split()[1:]]
        return sum(values[:8]), values[3] + values[4]  # user..steal; guest is inside user

    def _cpu_percent(self) -> float | None:
        """Since the previous sample; None when no clock tick (10 ms) passed in between."""
        if self._stat is None:
            return float(self._psutil.cpu_percent(interval=None))
        total, idle = self._cpu_ticks()
        d_total, d_idle = total - self._ticks[0], idle - self._ticks[1]
        if d_total <= 0:
            return None
        self._ticks = (total, idle)
        return 100.0 * (1.0 - d_idle / d_total)

    def _rss_mb(self) -> float:
        if self._statm is None:
            return float(self._process.memory_info().rss) / _MB
        return int(os.pread(self._statm, 128, 0).split()[1]) * self._page_mb

    def rows(self) -> list[Row]:
        t = time.monotonic()
        cpu, rss = self._cpu_percent(), self._rss_mb()
        self._count += 1
        if self._count % MEMORY_EVERY == 0:
            self._memory_mb = self._psutil.virtual_memory().used / _MB
        return [(t, "cpu", cpu, self._memory_mb, rss)]

    def close(self) -> None:
        for fd in (self._stat, self._statm):
            if fd is not None:
                os.close(fd)
        self._stat = self._statm = None


def sample_loop(take: Callable[[], None], interval_s: float,
                wait: Callable[[float], bool]) -> None:
    """``take()`` every ``interval_s`` on a fixed grid (ticks missed while busy are skipped)
    until ``wait(delay)`` returns False; ``wait`` may return True early to sample at once."""
    next_t = time.monotonic()
    while True:
        next_t += interval_s
        delay = next_t - time.monotonic()
        if delay <= 0:
            next_t, delay = time.monotonic() + interval_s, interval_s
        if not wait(delay):
            return
        take()


def lower_priority() -> str:
    """SCHED_IDLE for this process (Linux), else the lowest nice value; says which it got."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        pass
    try:
        os.nice(19)
        return "nice 19"
    except (AttributeError, OSError):
        return "default"


def _open_reader(args: argparse.Namespace) -> tuple[GpuReader | HostReader, Callable[[], None]]:
    if args.backend == "psutil":
        return HostReader(args.pid), lambda: None
    nvml = importlib.import_module("pynvml")
    nvml.nvmlInit()
    devices = [Gpu(f"gpu{i}", nvml.nvmlDeviceGetHandleByIndex(i)) for i in args.gpus]
    return GpuReader(nvml, devices), nvml.nvmlShutdown


def _stdin_waiter(fd: int) -> Callable[[float], bool]:
    def wait(delay: float) -> bool:
        ready, _, _ = select.select([fd], [], [], delay)
        if not ready:
            return True
        data = os.read(fd, 4096)
        return bool(data) and b"q" not in data

    return wait


def _cpu_s() -> float:
    return time.process_time()  # user + system, at the clock's resolution (not 10 ms ticks)


def _say_ready() -> None:
    sys.stdout.write(READY)
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="detbench's telemetry sampling process")
    parser.add_argument("--interval", type=float, required=True, help="seconds between samples")
    parser.add_argument("--backend", choices=("nvml", "psutil"), required=True)
    parser.add_argument("--pid", type=int, default=os.getppid(), help="process whose RSS to read")
    parser.add_argument("--gpus", type=lambda s: [int(i) for i in s.split(",") if i], default=[],
                        help="NVML indices, comma-separated")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    errors: list[str] = []
    usage: dict[str, float] = {}
    priority = lower_priority()
    try:
        reader, shutdown = _open_reader(args)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which keeps going
        errors.append(f"sampling process could not start: {type(e).__name__}: {error_text(e)}")
        _say_ready()
    else:

        def take() -> None:
            try:
                rows.extend(reader.rows())
            except Exception as e:  # noqa: BLE001
                if len(errors) < MAX_ERRORS:
                    errors.append(f"sample: {type(e).__name__}: {e}")

        take()
        _say_ready()
        start_cpu, start_wall = _cpu_s(), time.monotonic()
        sample_loop(take, args.interval, _stdin_waiter(sys.stdin.fileno()))
        take()
        usage = {"cpu_s": _cpu_s() - start_cpu, "wall_s": time.monotonic() - start_wall}
        reader.close()
        shutdown()
    json.dump({"rows": rows, "errors": errors, "priority": priority, **usage}, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
