"""What one telemetry sample reads, and the sampling process (``python -m runner.telemetry.probe``).

``GpuReader`` reads one ``GpuRow`` per GPU through NVML; ``HostReader`` one ``HostRow``: host CPU
utilization, system memory, and the measured process's CPU utilization and RSS (from ``/proc``
where it exists, else psutil). ``t`` is ``time.monotonic()``, a clock shared by all processes of
the machine, so rows read in another process line up with the phases the job marks.

The sampling process takes a first sample, writes ``ready`` to stdout, then samples every
``--interval`` seconds (and at once on each byte it reads on stdin) and **streams each row to
``--rows``** (CSV, buffered, flushed every ``FLUSH_S``): a sampling process that is killed loses
at most its last second of rows. On ``q`` or end of stdin it takes one last sample, flushes, and
writes ``{"count", "errors", "priority", "cpu_s", "wall_s"}`` as JSON to stdout.

Priority (``--priority``), decided by measurement (2 cores, a CPU hog per core besides the
other load, load average 14-17; 8 s at each setting, ``benchmarks/sampler_cost.py`` for the
figures with the benchmark running):

- ``realtime`` (default): SCHED_FIFO at the lowest real-time priority, where the process may
  (CAP_SYS_NICE; root here), else ``normal``. 10 ms: 800 of 800 expected samples, twice; 50 ms:
  160 of 160. It sleeps between samples and takes 1.4% of one core at 10 ms, 0.5% at 50 ms (the
  kernel's real-time throttle caps it at 95% of a core in any case).
- ``normal``: the default scheduling class. 10 ms: 727 and 448 of 800; 50 ms: 159 of 160.
- ``idle``: SCHED_IDLE (detbench's sampler before): runs only on idle cycles. 10 ms: 25 of 800;
  under load it starved (18 of ~40 expected at 50 ms with load average 8.8) exactly in the runs
  that need it, and under a hog its start could time out altogether.

Interval (``DEFAULT_INTERVAL_S`` = ``benchmark.sample_interval_s``'s default), decided by
measurement (``benchmarks/sampler_cost.py``, demo model, 2 cores, 300-round runs pooled): mean
latency sampling / off **0.999** at 100 ms (95% CI 0.984..1.013), 1.015 at 50 ms (0.999..1.029),
1.020 at 10 ms (1.001..1.033), with an A/A control (off / off) of 0.999 (0.984..1.013): only
100 ms meets <= 1.01. What a sample costs is its wake-up, not its reading: 14-16 us of /proc reads
and 2.4 us of CSV, but 210-490 us of CPU per sample in all (cold caches, scheduler, leaving the
idle state); the sampling process takes 0.4-0.5% of one core at 100 ms, 0.6-0.8% at 50 ms,
1.8-2.3% at 10 ms. Coverage under one CPU hog per core stays >= 0.99 at every interval
(SCHED_FIFO). The phase means come from counters read at the phase boundaries, not from the
samples, so a longer interval coarsens only the time series and peaks.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

Value = float | int | str | None

_MB = 1024.0 * 1024.0


class GpuRow(NamedTuple):
    """One GPU's sample (None: the quantity could not be read)."""

    t: float
    device: str
    gpu_util_pct: float | None
    mem_util_pct: float | None
    mem_used_mb: float | None
    power_w: float | None
    sm_clock_mhz: float | None
    temperature_c: float | None
    throttle_reasons: int | None
    energy_counter_j: float | None


class HostRow(NamedTuple):
    """The host's sample: host-wide CPU and memory, and the measured process's CPU and RSS."""

    t: float
    device: str  # "cpu"
    host_cpu_util_pct: float | None  # all CPUs of the host, since the previous sample
    host_mem_used_mb: float | None
    process_cpu_util_pct: float | None  # the measured process, as a share of all host CPUs
    process_rss_mb: float | None


Row = GpuRow | HostRow
GPU_FIELDS: tuple[str, ...] = GpuRow._fields[2:]
CPU_FIELDS: tuple[str, ...] = HostRow._fields[2:]
ROW_TYPES: dict[str, type[GpuRow] | type[HostRow]] = {"nvml": GpuRow, "psutil": HostRow}

CONSTANTS = {
    "NVML_CLOCK_SM": 1,
    "NVML_CLOCK_MEM": 2,
    "NVML_TEMPERATURE_GPU": 0,
    "NVML_CLOCK_ID_APP_CLOCK_TARGET": 1,
    "NVML_CLOCK_ID_APP_CLOCK_DEFAULT": 2,
    "NVML_GPU_UTILIZATION_SAMPLES": 1,
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
#: streamed rows reach the file at least this often (a killed process loses at most this much)
FLUSH_S = 1.0
PRIORITIES = ("normal", "idle", "realtime")
#: seconds between samples unless the job says otherwise (see the module docstring for the
#: measurement; ``runner.config.BenchmarkConfig.sample_interval_s`` takes its default from here)
DEFAULT_INTERVAL_S = 0.1


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

    def rows(self) -> list[GpuRow]:
        t = time.monotonic()
        return [self._row(gpu, t) for gpu in self.devices]

    def read(self, gpu: Gpu, name: str, *args: Any) -> Any:
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

    def _row(self, gpu: Gpu, t: float) -> GpuRow:
        util = self.read(gpu, "nvmlDeviceGetUtilizationRates")
        memory = self.read(gpu, "nvmlDeviceGetMemoryInfo")
        return GpuRow(
            t=t,
            device=gpu.label,
            gpu_util_pct=None if util is None else util.gpu,
            mem_util_pct=None if util is None else util.memory,
            mem_used_mb=None if memory is None else memory.used / _MB,
            power_w=scaled(self.read(gpu, "nvmlDeviceGetPowerUsage"), 1e-3),
            sm_clock_mhz=self.read(gpu, "nvmlDeviceGetClockInfo", self._const["NVML_CLOCK_SM"]),
            temperature_c=self.read(gpu, "nvmlDeviceGetTemperature",
                                    self._const["NVML_TEMPERATURE_GPU"]),
            throttle_reasons=self.read(gpu, "nvmlDeviceGetCurrentClocksThrottleReasons"),
            energy_counter_j=scaled(self.read(gpu, "nvmlDeviceGetTotalEnergyConsumption"), 1e-3),
        )

    def close(self) -> None:
        """Nothing to release: NVML is shut down by whoever initialised it."""


class HostReader:
    """Host CPU utilization (all CPUs, since the previous sample), system memory used, and the
    CPU utilization and RSS of process ``pid``: kept-open ``/proc/stat``, ``/proc/<pid>/stat``
    and ``/proc/<pid>/statm`` read with one ``pread`` each, psutil where there is no /proc."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process(pid)
        self._count = 0
        self._cpus = os.cpu_count() or 1
        self._tick_s = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        self._memory_mb = psutil.virtual_memory().used / _MB
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / _MB if hasattr(os, "sysconf") else 0.0
        self._stat: int | None = None
        self._pstat: int | None = None
        self._statm: int | None = None
        try:
            self._stat = os.open("/proc/stat", os.O_RDONLY)
            self._pstat = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
            self._statm = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
        except OSError:
            self.close()
        if self._stat is not None:
            self._ticks = self._cpu_ticks()
        else:  # psutil's own baseline for cpu_percent(interval=None)
            self._ticks = (0, 0)
            psutil.cpu_percent(interval=None)
        self._process_cpu = (time.monotonic(), self._process_cpu_s())

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

    def _process_cpu_s(self) -> float:
        """User + system CPU seconds of the process (all its threads)."""
        if self._pstat is None:
            times = self._process.cpu_times()
            return float(times.user + times.system)
        text = os.pread(self._pstat, 1024, 0)
        fields = text[text.rindex(b")") + 2:].split()  # after "pid (comm) ": state is field 0
        return (int(fields[11]) + int(fields[12])) * self._tick_s  # utime, stime

    def _process_percent(self, now: float) -> float | None:
        """The process's CPU time since the previous sample / (wall time * CPUs), in %; None
        when no clock tick passed (the kernel counts process CPU time in ticks)."""
        cpu = self._process_cpu_s()
        t0, cpu0 = self._process_cpu
        if now - t0 < self._tick_s:
            return None
        self._process_cpu = (now, cpu)
        return 100.0 * (cpu - cpu0) / ((now - t0) * self._cpus)

    def _rss_mb(self) -> float:
        if self._statm is None:
            return float(self._process.memory_info().rss) / _MB
        return int(os.pread(self._statm, 128, 0).split()[1]) * self._page_mb

    def rows(self) -> list[HostRow]:
        t = time.monotonic()
        cpu, process, rss = self._cpu_percent(), self._process_percent(t), self._rss_mb()
        self._count += 1
        if self._count % MEMORY_EVERY == 0:
            self._memory_mb = self._psutil.virtual_memory().used / _MB
        return [HostRow(t, "cpu", cpu, self._memory_mb, process, rss)]

    def close(self) -> None:
        for fd in (self._stat, self._pstat, self._statm):
            if fd is not None:
                os.close(fd)
        self._stat = self._pstat = self._statm = None


class RowWriter:
    """Streams rows to a CSV file (``t, device, <fields>``; empty for None) as they are taken:
    buffered, flushed at least every ``FLUSH_S`` seconds and on ``close``."""

    def __init__(self, path: str | os.PathLike[str], fields: Sequence[str]) -> None:
        self._fh = open(path, "w", newline="", buffering=1 << 16)  # noqa: SIM115 - kept open
        self._writer = csv.writer(self._fh)
        self._writer.writerow(("t", "device", *fields))
        self._fh.flush()
        self._flushed = time.monotonic()
        self.count = 0

    def write(self, rows: Iterable[Row], flush: bool = False) -> None:
        """Append ``rows``; to the file now when ``flush`` or ``FLUSH_S`` has passed."""
        for row in rows:
            self._writer.writerow(["" if v is None else v for v in row])
            self.count += 1
        now = time.monotonic()
        if flush or now - self._flushed >= FLUSH_S:
            self._fh.flush()
            self._flushed = now

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


RowT = TypeVar("RowT", GpuRow, HostRow)


def read_rows(path: str | os.PathLike[str], row_type: type[RowT]) -> list[RowT]:
    """The rows a ``RowWriter`` streamed, back as ``row_type`` (a row cut off by a kill, at
    the end of the file, is left out). Raises ValueError when the header is not ``row_type``'s."""
    with open(path, newline="") as fh:
        text = fh.read()
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        return []
    header = tuple(lines[0])
    if header != row_type._fields:
        raise ValueError(f"{str(path)!r} holds columns {header}, not {row_type._fields}")
    complete = lines[1:] if text.endswith("\n") else lines[1:-1]
    rows: list[RowT] = []
    for line in complete:
        if len(line) != len(header):
            continue
        t, device, *values = line
        rows.append(row_type(float(t), device, *(_number(v) for v in values)))  # type: ignore[arg-type]
    return rows


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


def set_priority(priority: str) -> str:
    """``idle``: SCHED_IDLE for this process (Linux), else the lowest nice value; ``realtime``:
    SCHED_FIFO at the lowest real-time priority where permitted (CAP_SYS_NICE), else
    unchanged; ``normal``: unchanged. Says what it got."""
    if priority == "normal":
        return "normal"
    if priority == "realtime":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            return "SCHED_FIFO 1"
        except (AttributeError, OSError):
            return "normal (SCHED_FIFO not permitted)"
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
    if args.source == "psutil":
        return HostReader(args.pid), lambda: None
    nvml = importlib.import_module("pynvml")
    nvml.nvmlInit()
    devices = [Gpu(f"gpu{i}", nvml.nvmlDeviceGetHandleByIndex(i)) for i in args.gpus]
    return GpuReader(nvml, devices), nvml.nvmlShutdown


def _stdin_waiter(fd: int, woken: list[bool]) -> Callable[[float], bool]:
    """Waits ``delay`` or until a byte arrives (``woken[0]`` set: a phase mark); False on ``q``
    or end of input."""
    def wait(delay: float) -> bool:
        ready, _, _ = select.select([fd], [], [], delay)
        if not ready:
            return True
        data = os.read(fd, 4096)
        woken[0] = True
        return bool(data) and b"q" not in data

    return wait


def _flush_on_signals(writer: RowWriter) -> None:
    """SIGTERM/SIGHUP (``docker stop``, SLURM, ``timeout`` to the job's process group): the rows
    taken reach the file, then the process exits 128 + signal without its report (the parent
    tags the telemetry incomplete)."""

    def end(signum: int, _frame: object) -> None:
        writer.close()
        os._exit(128 + signum)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), end)


def _cpu_s() -> float:
    return time.process_time()  # user + system, at the clock's resolution (not 10 ms ticks)


def _say_ready() -> None:
    sys.stdout.write(READY)
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="detbench's telemetry sampling process")
    parser.add_argument("--interval", type=float, required=True, help="seconds between samples")
    parser.add_argument("--source", choices=tuple(ROW_TYPES), required=True)
    parser.add_argument("--rows", type=Path, required=True, help="CSV file the rows stream to")
    parser.add_argument("--priority", choices=PRIORITIES, default="realtime")
    parser.add_argument("--pid", type=int, default=os.getppid(), help="the measured process")
    parser.add_argument("--gpus", type=lambda s: [int(i) for i in s.split(",") if i], default=[],
                        help="NVML indices, comma-separated")
    args = parser.parse_args(argv)
    errors: list[str] = []
    usage: dict[str, float] = {}
    priority = set_priority(args.priority)
    writer = RowWriter(args.rows, ROW_TYPES[args.source]._fields[2:])
    try:
        reader, shutdown = _open_reader(args)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which keeps going
        errors.append(f"sampling process could not start: {type(e).__name__}: {error_text(e)}")
        _say_ready()
    else:

        woken = [True]  # the first sample, and each a phase mark asks for, reach the file at once

        def take() -> None:
            try:
                writer.write(reader.rows(), flush=woken[0])
            except Exception as e:  # noqa: BLE001
                if len(errors) < MAX_ERRORS:
                    errors.append(f"sample: {type(e).__name__}: {e}")
            woken[0] = False

        take()
        _say_ready()
        start_cpu, start_wall = _cpu_s(), time.monotonic()
        _flush_on_signals(writer)
        sample_loop(take, args.interval, _stdin_waiter(sys.stdin.fileno(), woken))
        woken[0] = True
        take()
        usage = {"cpu_s": _cpu_s() - start_cpu, "wall_s": time.monotonic() - start_wall}
        reader.close()
        shutdown()
    writer.close()
    json.dump({"count": writer.count, "errors": errors, "priority": priority, **usage},
              sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
