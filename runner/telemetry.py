"""Background sampler of the GPU (NVML via nvidia-ml-py) or, without a GPU, of CPU and memory,
with the phases of the job (load, warmup, timed, ...) and their statistics.

The sampling itself (``runner.probe``) runs in a separate low-priority process, so that it
neither holds the benchmark's GIL nor takes its CPU time; in a thread of this process only when
an NVML module is handed in (tests) or the process cannot start. Rows are kept as
``(t, device, *fields)`` tuples and take their phase from the marked intervals when read.
"""

from __future__ import annotations

import bisect
import importlib
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import numpy as np

from runner.probe import CONSTANTS as _CONSTANTS
from runner.probe import (
    CPU_FIELDS,
    GPU_FIELDS,
    MAX_ERRORS,
    READY,
    Gpu,
    GpuReader,
    HostReader,
    Row,
    Value,
    error_text,
    nvml_constants,
    sample_loop,
    scaled,
)
from runner.probe import ROW_FUNCTIONS as _ROW_FUNCTIONS
from runner.probe import UNSUPPORTED_ERRORS as _UNSUPPORTED_ERRORS

Tagged = tuple[Value, ...]  # (t_s, phase, device, *fields)

INITIAL_PHASE = "start"  # the phase samples carry before the first mark_phase()
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 60.0  # the rows of a long run at 10 ms are tens of MB of JSON
_MB = 1024.0 * 1024.0

# Clock throttle reasons that mean "slowed down by heat or power": pynvml name -> fallback bit.
THROTTLE_REASONS = {
    "nvmlClocksThrottleReasonSwPowerCap": 0x04,
    "nvmlClocksThrottleReasonHwSlowdown": 0x08,
    "nvmlClocksThrottleReasonSwThermalSlowdown": 0x20,
    "nvmlClocksThrottleReasonHwThermalSlowdown": 0x40,
    "nvmlClocksThrottleReasonHwPowerBrakeSlowdown": 0x80,
}
# Every pynvml function used here and in runner.probe (tests check them against the real module).
NVML_FUNCTIONS = tuple(dict.fromkeys((
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetApplicationsClock",
    "nvmlDeviceGetMaxClockInfo",
    "nvmlDeviceGetClock",
    *_ROW_FUNCTIONS,
)))
NVML_NAMES = (*NVML_FUNCTIONS, *_CONSTANTS, *THROTTLE_REASONS, "NVMLError", *_UNSUPPORTED_ERRORS)


def visible_gpu_indices(count: int, cuda_visible: str | None) -> list[int]:
    """NVML indices selected by CUDA_VISIBLE_DEVICES when it lists integers, else all of them.

    Like CUDA, an empty value selects nothing and the list stops at the first invalid index.
    """
    if cuda_visible is None:
        return list(range(count))
    tokens = [t.strip() for t in cuda_visible.split(",")]
    if tokens == [""]:
        return []
    if not all(re.fullmatch(r"[+-]?[0-9]+", t) for t in tokens):
        return list(range(count))  # UUIDs or MIG names: not resolved here
    indices: list[int] = []
    for token in tokens:
        index = int(token)
        if not 0 <= index < count:
            break
        if index not in indices:
            indices.append(index)
    return indices


def integrate(ts: Sequence[float], values: Sequence[float], start: float, end: float) -> float:
    """Integral over [start, end] of the piecewise-linear curve through (ts, values).

    The curve is held constant before the first and after the last point.
    """
    if not ts or end <= start:
        return 0.0
    grid = [start, *(t for t in ts if start < t < end), end]
    return float(np.trapezoid(np.interp(grid, ts, values), grid))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _tail(stderr: bytes) -> str:
    """The last lines a failed sampling process wrote, on one line."""
    lines = stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
    return " | ".join(lines) or "no output"


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


class Sampler:
    """Samples device telemetry every ``interval_s``, tagged by phase.

    ``isolate`` (default: unless ``nvml`` is handed in, which cannot cross into a process)
    samples in a ``python -m runner.probe`` process instead of a thread of this one. Rows
    reach ``samples()`` and ``summary()`` when the sampler stops.
    """

    def __init__(
        self,
        interval_s: float = 0.05,
        nvml: Any | None = None,
        enabled: bool = True,
        isolate: bool | None = None,
    ) -> None:
        if not (isinstance(interval_s, int | float) and math.isfinite(interval_s)) or (
            interval_s <= 0
        ):
            raise ValueError(f"interval_s must be a finite number > 0, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.backend = "off"
        self.gpu_found = False
        self.reason = "" if enabled else "disabled"
        self.gpus: list[dict[str, Any]] = []
        self.errors: list[str] = []
        #: where samples are taken: "process (SCHED_IDLE)", "thread", or "" when off
        self.mode = ""
        #: CPU time of the sampling process / its sampling wall time (process mode, after stop)
        self.cpu_share: float | None = None
        self._isolate = nvml is None if isolate is None else isolate
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._reader: GpuReader | HostReader | None = None
        self._rows: list[Row] = []
        self._phase = INITIAL_PHASE
        self._intervals: list[list[Any]] = []  # [name, start, end or None]
        self._t0 = 0.0
        self._end_t: float | None = None
        self._started = False
        self._stopped = False
        self._nvml: Any = None
        self._nvml_initialised = False
        self._devices: list[Gpu] = []
        self._throttle_mask = sum(THROTTLE_REASONS.values())
        if enabled:
            self._setup(nvml)

    # -- setup -------------------------------------------------------------------------------

    def _setup(self, nvml: Any | None) -> None:
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError as e:
                self._use_psutil(f"pynvml not importable: {error_text(e)}")
                return
        try:
            nvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - LibraryNotFound, DriverNotLoaded, OSError, ...
            self._use_psutil(error_text(e))
            return
        self._nvml, self._nvml_initialised = nvml, True
        try:
            self._open_devices()
        except Exception as e:  # noqa: BLE001
            self._use_psutil(f"NVML device query failed: {error_text(e)}")
            return
        if not self._devices:
            return  # _open_devices chose psutil
        self.backend, self.gpu_found, self.reason = "nvml", True, ""
        self._throttle_mask = 0
        for name, bit in THROTTLE_REASONS.items():
            self._throttle_mask |= int(getattr(nvml, name, bit))

    def _open_devices(self) -> None:
        nvml = self._nvml
        count = int(nvml.nvmlDeviceGetCount())
        cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        indices = visible_gpu_indices(count, cuda_visible)
        for index in indices:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as e:  # noqa: BLE001
                self._record_error(f"gpu{index}: no handle: {error_text(e)}")
                continue
            self._devices.append(Gpu(f"gpu{index}", handle))
            self.gpus.append(_static_info(nvml, index, handle))
        if not self._devices:
            if count == 0:
                reason = "NVML found no GPU"
            elif not indices:
                reason = f"CUDA_VISIBLE_DEVICES={cuda_visible!r} selects none of {count} GPUs"
            else:
                reason = "no GPU handle could be opened"
            self._use_psutil(reason)

    def _use_psutil(self, reason: str) -> None:
        self._shutdown_nvml()
        self._devices, self.gpus = [], []
        self.backend, self.gpu_found, self.reason = "psutil", False, reason

    def _shutdown_nvml(self) -> None:
        if not self._nvml_initialised:
            return
        self._nvml_initialised = False
        try:
            self._nvml.nvmlShutdown()
        except Exception as e:  # noqa: BLE001
            self._record_error(f"nvmlShutdown: {error_text(e)}")

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._started or self._stopped:
            raise RuntimeError("a Sampler can only be started once")
        with self._lock:
            self._t0 = time.monotonic()
            self._started = True
            self._intervals = [[self._phase, 0.0, None]]
        if self.backend == "off":
            return
        if self._isolate and self._start_process():
            return
        self.mode = "thread"
        if self.backend == "nvml":
            self._reader = GpuReader(self._nvml, self._devices)
        else:
            self._reader = HostReader(os.getpid())
        self._take()
        self._thread = threading.Thread(target=self._run, name="detbench-telemetry", daemon=True)
        self._thread.start()

    def _start_process(self) -> bool:
        """Start ``python -m runner.probe``; False (and the reason recorded) if it cannot."""
        command = [sys.executable, "-m", "runner.probe", "--interval", repr(self.interval_s),
                   "--backend", self.backend, "--pid", str(os.getpid()),
                   "--gpus", ",".join(str(g["index"]) for g in self.gpus)]
        # the checkout this runner comes from, first: the same runner.probe whether or not the
        # package is installed, and a test's stand-in modules beside it
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        try:
            self._child = subprocess.Popen(command, stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           bufsize=0, env=env)
        except OSError as e:
            self._record_error(f"sampling process did not start ({error_text(e)}); "
                               "sampling in a thread")
            return False
        if not self._await_ready(self._child):
            return False
        self.mode = "process"
        return True

    def _await_ready(self, child: subprocess.Popen[bytes]) -> bool:
        """Wait until the sampling process has taken its first sample, so that sampling runs
        when start() returns; False (process ended, reason recorded) if it does not say so."""
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], START_TIMEOUT_S)
        line = child.stdout.readline() if ready else b""
        if line == READY.encode():
            return True
        child.kill()
        _, err = child.communicate()
        self._record_error(f"sampling process did not start (exit {child.returncode}: "
                           f"{_tail(err)}); sampling in a thread")
        self._child = None
        return False

    def stop(self) -> None:
        """Stop sampling (after one last sample) and release NVML; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._stop_event.set()
            self._wake.set()
            self._thread.join()
            self._take()
        if self._child is not None:
            self._collect(self._child)
        if self._reader is not None:
            self._reader.close()
        if self._started:
            with self._lock:
                self._end_t = self._now()
                self._intervals[-1][2] = self._end_t
        self._shutdown_nvml()

    def _collect(self, child: subprocess.Popen[bytes]) -> None:
        """Ask the sampling process for its last sample and its rows."""
        try:
            out, err = child.communicate(b"q", timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        try:
            got = json.loads(out)
        except ValueError:
            self._record_error(f"sampling process exited {child.returncode} without its "
                               f"samples: {_tail(err)}")
            return
        self.mode = f"process ({got.get('priority', 'default')})"
        if got.get("wall_s"):
            self.cpu_share = float(got["cpu_s"]) / float(got["wall_s"])
        with self._lock:
            self._rows.extend(tuple(row) for row in got.get("rows", []))
        for message in got.get("errors", []):
            self._record_error(message)

    def mark_phase(self, name: str) -> None:
        """Start phase ``name`` now; before start() it names the phase sampling starts in."""
        with self._lock:
            if self._stopped:
                return
            if not self._started:
                self._phase = name
                return
            t = self._now()
            self._intervals[-1][2] = t
            self._intervals.append([name, t, None])
        self._sample_soon()  # so that short phases get a sample

    def _sample_soon(self) -> None:
        if self._child is not None and self._child.stdin is not None:
            try:
                self._child.stdin.write(b"s")
            except OSError as e:
                self._record_error(f"sampling process: {error_text(e)}")
        else:
            self._wake.set()

    def _now(self) -> float:
        return time.monotonic() - self._t0

    # -- sampling (thread mode) --------------------------------------------------------------

    def _run(self) -> None:
        sample_loop(self._take, self.interval_s, self._wait)

    def _wait(self, delay: float) -> bool:
        self._wake.wait(delay)
        self._wake.clear()
        return not self._stop_event.is_set()

    def _take(self) -> None:
        assert self._reader is not None
        try:
            rows = self._reader.rows()
        except Exception as e:  # noqa: BLE001
            self._record_error(f"sample: {type(e).__name__}: {e}")
            return
        with self._lock:
            self._rows.extend(rows)

    def _record_error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)
        elif len(self.errors) == MAX_ERRORS:
            self.errors.append("further errors not recorded")

    # -- results -----------------------------------------------------------------------------

    @property
    def _fields(self) -> tuple[str, ...]:
        return GPU_FIELDS if self.backend == "nvml" else CPU_FIELDS

    def samples(self) -> list[dict[str, Value]]:
        keys = ("t_s", "phase", "device", *self._fields)
        return [dict(zip(keys, row, strict=True)) for row in self._tagged()]

    def _tagged(self) -> list[Tagged]:
        """Rows as (t_s, phase, device, *fields): t_s from start(), the phase whose interval
        holds t_s (the later one when a sample falls on a mark)."""
        intervals = self._closed_intervals()
        with self._lock:
            rows = list(self._rows)
        starts = [start for _, start, _ in intervals]
        tagged: list[Tagged] = []
        for t_abs, *rest in rows:
            t = float(t_abs) - self._t0  # type: ignore[arg-type]
            index = max(bisect.bisect_right(starts, t) - 1, 0)
            tagged.append((t, intervals[index][0], *rest))
        return tagged

    def _closed_intervals(self) -> list[tuple[str, float, float]]:
        with self._lock:
            if not self._started:
                return []
            now = self._end_t if self._end_t is not None else self._now()
            return [(n, s, now if e is None else e) for n, s, e in self._intervals]

    def intervals(self) -> list[tuple[str, float, float]]:
        """Every marked phase in order as (name, start, end) in t_s (a phase marked again, e.g.
        ``timed`` once per chunk, appears again)."""
        return self._closed_intervals()

    def phase_times(self) -> dict[str, tuple[float, float]]:
        """Phase -> (start, end) in t_s; a phase marked more than once spans first to last."""
        times: dict[str, tuple[float, float]] = {}
        for name, start, end in self._closed_intervals():
            times[name] = (times[name][0], end) if name in times else (start, end)
        return times

    def summary(self, phase: str = "timed", num_images: int | None = None) -> dict[str, float]:
        """Statistics of one phase; {} when sampling is off or the phase was never marked.

        For several GPUs, util/clock means are over all of them, memory and temperature peaks
        are the highest of any, energy is summed, and gpu_power_mean_w is the time-weighted mean
        of the summed power (energy / phase duration). Energy integrates the piecewise-linear
        power curve over the exact phase windows.
        """
        if self.backend == "off":
            return {}
        windows = [(s, e) for name, s, e in self._closed_intervals() if name == phase]
        if not windows:
            return {}
        rows = self._tagged()
        in_phase = [row for row in rows if row[1] == phase]
        out = {"samples_count": float(len({row[0] for row in in_phase}))}
        if self.backend == "nvml":
            out.update(self._gpu_summary(rows, in_phase, windows, num_images))
        else:
            out.update(self._cpu_summary(in_phase))
        return out

    def _column(self, rows: list[Tagged], name: str) -> list[float]:
        index = 3 + self._fields.index(name)
        return [float(v) for row in rows if (v := row[index]) is not None]

    def _cpu_summary(self, rows: list[Tagged]) -> dict[str, float]:
        out: dict[str, float] = {}
        if cpu := self._column(rows, "cpu_util_pct"):
            out["cpu_util_mean"], out["cpu_util_max"] = _mean(cpu), max(cpu)
        if rss := self._column(rows, "process_rss_mb"):
            out["process_rss_peak_mb"] = max(rss)
        return out

    def _gpu_summary(
        self,
        rows: list[Tagged],
        in_phase: list[Tagged],
        windows: list[tuple[float, float]],
        num_images: int | None,
    ) -> dict[str, float]:
        out: dict[str, float] = {}
        if util := self._column(in_phase, "gpu_util_pct"):
            out["gpu_util_mean"], out["gpu_util_max"] = _mean(util), max(util)
        if mem := self._column(in_phase, "mem_used_mb"):
            out["gpu_mem_peak_mb"] = max(mem)
        if temp := self._column(in_phase, "temperature_c"):
            out["gpu_temp_max_c"] = max(temp)
        if sm := self._column(in_phase, "sm_clock_mhz"):
            out["gpu_sm_clock_mean_mhz"] = _mean(sm)
        if throttle := self._column(in_phase, "throttle_reasons"):
            hit = any(int(v) & self._throttle_mask for v in throttle)
            out["gpu_throttle_thermal_or_power"] = float(hit)
        energy = self._integral(rows, windows, "power_w")
        if energy is not None:
            out["gpu_energy_j"] = energy
            duration = sum(e - s for s, e in windows)
            if duration > 0:
                out["gpu_power_mean_w"] = energy / duration
            if num_images:
                out["gpu_energy_per_image_j"] = energy / num_images
        counter = self._counter_delta(rows, windows)
        if counter is not None:
            out["gpu_energy_counter_j"] = counter
        return out

    def _series(self, rows: list[Tagged], name: str) -> dict[str, tuple[list[float], list[float]]]:
        """Device -> (times, values) of one field, skipping missing values."""
        index = 3 + self._fields.index(name)
        series: dict[str, tuple[list[float], list[float]]] = {}
        for row in rows:
            if row[index] is not None:
                ts, vs = series.setdefault(str(row[2]), ([], []))
                ts.append(float(row[0]))  # type: ignore[arg-type]
                vs.append(float(row[index]))  # type: ignore[arg-type]
        return series

    def _integral(
        self, rows: list[Tagged], windows: list[tuple[float, float]], name: str
    ) -> float | None:
        series = self._series(rows, name)
        if not series:
            return None
        return sum(integrate(ts, vs, s, e) for ts, vs in series.values() for s, e in windows)

    def _counter_delta(
        self, rows: list[Tagged], windows: list[tuple[float, float]]
    ) -> float | None:
        """Energy from NVML's cumulative energy counter (Volta and newer), interpolated."""
        series = self._series(rows, "energy_counter_j")
        if not series:
            return None
        total = 0.0
        for ts, vs in series.values():
            for s, e in windows:
                total += float(np.interp(e, ts, vs) - np.interp(s, ts, vs))
        return total


def _static_info(nvml: Any, index: int, handle: Any) -> dict[str, Any]:
    """Per-GPU facts read once; a field is None when its NVML call fails."""

    def call(name: str, *args: Any) -> Any:
        fn = getattr(nvml, name, None)
        try:
            return None if fn is None else fn(*args)
        except Exception:  # noqa: BLE001
            return None

    const = nvml_constants(nvml)
    sm, mem = const["NVML_CLOCK_SM"], const["NVML_CLOCK_MEM"]
    memory = call("nvmlDeviceGetMemoryInfo", handle)
    app_clocks = [
        call("nvmlDeviceGetClock", handle, clock, const[clock_id])
        for clock_id in ("NVML_CLOCK_ID_APP_CLOCK_TARGET", "NVML_CLOCK_ID_APP_CLOCK_DEFAULT")
        for clock in (sm, mem)
    ]
    return {
        "index": index,
        "device": f"gpu{index}",
        "name": _text(call("nvmlDeviceGetName", handle)),
        "uuid": _text(call("nvmlDeviceGetUUID", handle)),
        "driver_version": _text(call("nvmlSystemGetDriverVersion")),
        "memory_total_mb": None if memory is None else memory.total / _MB,
        "power_limit_w": scaled(call("nvmlDeviceGetEnforcedPowerLimit", handle), 1e-3),
        "app_sm_clock_mhz": call("nvmlDeviceGetApplicationsClock", handle, sm),
        "app_mem_clock_mhz": call("nvmlDeviceGetApplicationsClock", handle, mem),
        "max_sm_clock_mhz": call("nvmlDeviceGetMaxClockInfo", handle, sm),
        # Application clocks moved off their defaults (nvidia-smi -ac). NVML has no getter for
        # clocks locked with nvidia-smi -lgc; None when the clocks cannot be read.
        "clocks_locked": None if None in app_clocks else app_clocks[:2] != app_clocks[2:],
    }
