"""The ``Sampler``: sampling lifecycle (start, phases, stop) of the sampling process or thread,
the boundary counters it reads at each phase mark, and the results it hands on.

Two kinds of figure, kept apart on purpose:
- **exact phase means** from cumulative counters read at the phase boundaries in this process
  (``counters.CounterReader``: the process tree's and the host's CPU time, each GPU's energy
  counter) and from the driver's own utilization samples read after each phase
  (``nvml.utilization_samples``): nothing runs during the timed calls to produce them, and a
  starved or killed sampler cannot bias them;
- **time series and peaks** from the rows the sampling process takes every ``interval_s``
  (``probe``), streamed to ``rows_path`` as they are taken. ``telemetry_coverage`` says which
  share of the timed phase they saw.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from runner.telemetry import counters, nvml, summary
from runner.telemetry import nvml as nvml_info
from runner.telemetry.counters import CounterReader, Reading
from runner.telemetry.probe import (
    DEFAULT_INTERVAL_S,
    MAX_ERRORS,
    PRIORITIES,
    READY,
    ROW_TYPES,
    Gpu,
    GpuReader,
    GpuRow,
    HostReader,
    HostRow,
    Row,
    RowWriter,
    Value,
    error_text,
    read_rows,
    sample_loop,
)

INITIAL_PHASE = "start"  # the phase samples carry before the first mark_phase()
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0


def _tail(stderr: bytes) -> str:
    """The last lines a failed sampling process wrote, on one line."""
    lines = stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
    return " | ".join(lines) or "no output"


class Sampler:
    """Samples device telemetry every ``interval_s``, tagged by phase.

    ``separate_process`` (default: unless ``nvml`` is handed in, which cannot cross into a process)
    samples in a ``python -m runner.telemetry.probe`` process at ``priority`` (``realtime`` =
    SCHED_FIFO 1 where permitted, else normal; ``normal``; ``idle`` = SCHED_IDLE; see
    ``probe``) instead of a thread of this one. Rows stream to ``rows_path`` (a
    temporary file when None) and reach ``samples()`` and ``summary()`` when the sampler stops.

    ``source`` says what the samples read: ``nvml`` (the GPUs), ``psutil`` (the host's CPU and
    memory and the measured process, from /proc or psutil) or ``off`` (tag
    ``telemetry.source``; named apart from ``precision.backend``, the inference runtime).
    """

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        nvml: Any | None = None,
        enabled: bool = True,
        separate_process: bool | None = None,
        rows_path: str | os.PathLike[str] | None = None,
        priority: str = "realtime",
    ) -> None:
        if not (isinstance(interval_s, int | float) and math.isfinite(interval_s)) or (
            interval_s <= 0
        ):
            raise ValueError(f"interval_s must be a finite number > 0, got {interval_s!r}")
        if priority not in PRIORITIES:
            raise ValueError(f"unknown priority {priority!r}; valid choices: "
                             f"{', '.join(PRIORITIES)}")
        self.interval_s = float(interval_s)
        self.priority = priority
        self.source = "off"
        self.gpu_found = False
        self.reason = "" if enabled else "disabled"
        self.gpus: list[dict[str, Any]] = []
        self.errors: list[str] = []
        #: facts about what is sampled (e.g. a MIG instance sampled through its GPU)
        self.notes: list[str] = []
        #: why the time series miss part of the run ("" when they do not): a killed sampler
        self.incomplete = ""
        #: where samples are taken: "process (SCHED_FIFO 1)", "process (normal)", "thread", ""
        self.mode = ""
        #: CPU time of the sampling process / its sampling wall time (process mode, after stop)
        self.cpu_share: float | None = None
        #: peak RSS of the measured process since it started (VmHWM), read at stop
        self.rss_hwm_mb: float | None = None
        self.wall_start = 0.0
        self._separate_process = nvml is None if separate_process is None else separate_process
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._reader: GpuReader | HostReader | None = None
        self._writer: RowWriter | None = None
        self._rows_path = Path(rows_path) if rows_path is not None else None
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        self._rows: list[Row] = []
        self._phase = INITIAL_PHASE
        self._intervals: list[list[Any]] = []  # [name, start, end or None]
        self._readings: list[Reading | None] = []  # one per boundary: start, each mark, stop
        self._driver_util: dict[str, list[tuple[int, float]]] = {}
        self._driver_seen_us: dict[str, int] = {}
        self._counters: CounterReader | None = None
        self._t0 = 0.0
        self._end_t: float | None = None
        self._started = False
        self._stopped = False
        self._nvml: Any = None
        self._nvml_initialised = False
        self._devices: list[Gpu] = []
        # the fallback bits; the NVML module's own once it is set up (``nvml`` the module is
        # shadowed by the argument in this method)
        self._throttle_mask = sum(nvml_info.THROTTLE_REASONS.values())
        if enabled:
            self._setup(nvml)

    # -- setup -------------------------------------------------------------------------------

    def _setup(self, nvml_module: Any | None) -> None:
        self.source = "psutil"
        if nvml_module is None:
            try:
                nvml_module = importlib.import_module("pynvml")
            except ImportError as e:
                self._use_psutil(f"pynvml not importable: {error_text(e)}")
                return
        try:
            nvml_module.nvmlInit()
        except Exception as e:  # noqa: BLE001 - LibraryNotFound, DriverNotLoaded, OSError, ...
            self._use_psutil(error_text(e))
            return
        self._nvml, self._nvml_initialised = nvml_module, True
        try:
            found = nvml.discover(nvml_module, os.environ.get("CUDA_VISIBLE_DEVICES"))
        except Exception as e:  # noqa: BLE001
            self._use_psutil(f"NVML device query failed: {error_text(e)}")
            return
        self.notes = found.notes
        if not found.devices:
            self._use_psutil(found.reason or "no GPU handle could be opened")
            return
        self._devices, self.gpus = found.devices, found.gpus
        self.source, self.gpu_found, self.reason = "nvml", True, ""
        self._throttle_mask = nvml.throttle_mask(nvml_module)

    def _use_psutil(self, reason: str) -> None:
        self._shutdown_nvml()
        self._devices, self.gpus = [], []
        self.source, self.gpu_found, self.reason = "psutil", False, reason

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

    @property
    def rows_path(self) -> Path | None:
        """Where the rows stream to (None while sampling is off)."""
        return self._rows_path

    def start(self) -> None:
        if self._started or self._stopped:
            raise RuntimeError("a Sampler can only be started once")
        if self.source != "off":
            energy = ((lambda: nvml.energy_j(self._nvml, self._devices)) if self._devices
                      else dict)
            self._counters = CounterReader(os.getpid(), exclude=self._child_pids, energy=energy)
            self._driver_seen_us = {g.label: int(time.time() * 1e6) for g in self._devices}
        first = self._boundary()
        #: time.time() at the sampler's t_s = 0 (samples' t_s are seconds after it)
        self.wall_start = first.wall if first is not None else time.time()
        with self._lock:
            self._t0 = first.t if first is not None else time.monotonic()
            self._started = True
            self._intervals = [[self._phase, 0.0, None]]
        if self.source == "off":
            return
        if self._rows_path is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="detbench-telemetry-")
            self._rows_path = Path(self._temporary.name) / "telemetry_rows.csv"
        if self._separate_process and self._start_process():
            return
        self.mode = "thread"
        if self.source == "nvml":
            self._reader = GpuReader(self._nvml, self._devices)
        else:
            self._reader = HostReader(os.getpid())
        try:
            self._writer = RowWriter(self._rows_path, ROW_TYPES[self.source]._fields[2:])
        except OSError as e:
            self._record_error(f"rows file: {error_text(e)}; samples kept in memory only")
        self._take()
        self._thread = threading.Thread(target=self._run, name="detbench-telemetry", daemon=True)
        self._thread.start()

    def _child_pids(self) -> tuple[int, ...]:
        return () if self._child is None else (self._child.pid,)

    def _start_process(self) -> bool:
        """Start the sampling process; False (and the reason recorded) if it cannot."""
        assert self._rows_path is not None
        command = [sys.executable, "-m", "runner.telemetry.probe",
                   "--interval", repr(self.interval_s), "--source", self.source,
                   "--rows", str(self._rows_path), "--priority", self.priority,
                   "--pid", str(os.getpid()),
                   "--gpus", ",".join(str(g["index"]) for g in self.gpus)]
        # the checkout this runner comes from, first: the same probe whether or not the
        # package is installed, and a test's stand-in modules beside it
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
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
        """Stop sampling (after one last sample), read the streamed rows back and release NVML;
        safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._stop_event.set()
            self._wake.set()
            self._thread.join()
            self._take()
        if self._writer is not None:
            self._writer.close()
        if self._child is not None:
            self._collect(self._child)
        if self._reader is not None:
            self._reader.close()
        if self._started:
            last = self._boundary()
            with self._lock:
                self._end_t = self._now() if last is None else last.t - self._t0
                self._intervals[-1][2] = self._end_t
            if self.source != "off":
                self.rss_hwm_mb = counters.rss_peak_mb(os.getpid())
                self._read_back()
        self._shutdown_nvml()
        if self._temporary is not None:
            self._temporary.cleanup()

    def _collect(self, child: subprocess.Popen[bytes]) -> None:
        """Ask the sampling process for its last sample and its report."""
        try:
            out, err = child.communicate(b"q", timeout=STOP_TIMEOUT_S)
        except (subprocess.TimeoutExpired, OSError):
            child.kill()
            out, err = child.communicate()
        try:
            got = json.loads(out)
        except ValueError:
            how = (f"signal {-child.returncode}" if child.returncode and child.returncode < 0
                   else f"exit {child.returncode}")
            self.incomplete = (f"the sampling process ended ({how}) before the run did; the rows "
                               "it streamed until then are kept")
            self._record_error(f"sampling process ended ({how}) without its report: "
                               f"{_tail(err)}")
            return
        self.mode = f"process ({got.get('priority', 'default')})"
        if got.get("wall_s"):
            self.cpu_share = float(got["cpu_s"]) / float(got["wall_s"])
        for message in got.get("errors", []):
            self._record_error(message)

    def _read_back(self) -> None:
        """The rows streamed to the file, which hold every sample (the thread's too)."""
        if self._rows_path is None or (self._writer is None and self._child is None):
            return
        try:
            rows: list[Row] = list(read_rows(self._rows_path, GpuRow) if self.source == "nvml"
                                   else read_rows(self._rows_path, HostRow))
        except (OSError, ValueError) as e:
            self.incomplete = self.incomplete or f"the streamed rows could not be read: {e}"
            self._record_error(f"rows file: {error_text(e)}")
            return
        with self._lock:
            if len(rows) >= len(self._rows):
                self._rows = rows

    def mark_phase(self, name: str) -> None:
        """Start phase ``name`` now; before start() it names the phase sampling starts in."""
        with self._lock:
            if self._stopped:
                return
            if not self._started:
                self._phase = name
                return
        reading = self._boundary()  # the mark's time is the counters' time
        with self._lock:
            t = self._now() if reading is None else reading.t - self._t0
            self._intervals[-1][2] = t
            self._intervals.append([name, t, None])
        if self.source != "off":
            self._sample_soon()  # so that short phases get a sample

    def _boundary(self) -> Reading | None:
        """Read the counters at a phase boundary, and the driver's utilization samples since the
        last boundary (its buffer is short); the reading, None when sampling is off or the
        counters could not be read."""
        reading: Reading | None = None
        if self.source == "off":
            return None
        if self._counters is not None:
            try:
                reading = self._counters.read()
            except Exception as e:  # noqa: BLE001 - a boundary without counters, not a failure
                self._record_error(f"counters: {type(e).__name__}: {e}")
        self._readings.append(reading)
        for gpu in self._devices:
            got, error = nvml.utilization_samples(self._nvml, gpu, self._driver_seen_us[gpu.label])
            if error:
                self._record_error(error)
            if got:
                self._driver_util.setdefault(gpu.label, []).extend(got)
                self._driver_seen_us[gpu.label] = max(ts for ts, _ in got)
        return reading

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
        if self._writer is not None:
            try:
                self._writer.write(rows)
            except (OSError, ValueError) as e:
                self._record_error(f"rows file: {error_text(e)}")

    def _record_error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)
        elif len(self.errors) == MAX_ERRORS:
            self.errors.append("further errors not recorded")

    # -- results -----------------------------------------------------------------------------

    @property
    def fields(self) -> tuple[str, ...]:
        return ROW_TYPES[self.source]._fields[2:] if self.source in ROW_TYPES else ()

    def rows(self) -> list[Row]:
        """The rows taken, ``t`` in seconds since start()."""
        with self._lock:
            rows = list(self._rows)
        return [row._replace(t=float(row.t) - self._t0) for row in rows]

    def samples(self) -> list[dict[str, Value]]:
        """Rows as dicts ``t_s, phase, device, <fields>``; the phase is the one whose interval
        holds t_s (the later one when a sample falls on a mark)."""
        intervals = self.intervals()
        out: list[dict[str, Value]] = []
        for row in self.rows():
            values = row._asdict()
            t = values.pop("t")
            out.append({"t_s": t, "phase": summary.phase_of(t, intervals), **values})
        return out

    def intervals(self) -> list[summary.Interval]:
        """Every marked phase in order as (name, start, end) in t_s (a phase marked again, e.g.
        ``timed`` once per chunk, appears again)."""
        with self._lock:
            if not self._started:
                return []
            now = self._end_t if self._end_t is not None else self._now()
            return [(n, s, now if e is None else e) for n, s, e in self._intervals]

    def phase_times(self) -> dict[str, tuple[float, float]]:
        """Phase -> (start, end) in t_s; a phase marked more than once spans first to last."""
        times: dict[str, tuple[float, float]] = {}
        for name, start, end in self.intervals():
            times[name] = (times[name][0], end) if name in times else (start, end)
        return times

    def summary(self, phase: str = "timed", num_images: int | None = None) -> dict[str, float]:
        """Statistics of one phase; {} when sampling is off or the phase was never marked.

        Exact means from the boundary counters (``process_cpu_util_mean``,
        ``host_cpu_util_mean``, ``gpu_energy_counter_j``, ``gpu_util_driver_mean``), peaks and
        sampled means from the rows, ``samples_count`` and ``telemetry_coverage``.
        """
        if self.source == "off":
            return {}
        intervals = self.intervals()
        spans = summary.windows(intervals, phase)
        if not spans:
            return {}
        rows = self.rows()
        in_phase = [r for r in rows if summary.phase_of(r.t, intervals) == phase]
        times = [r.t for r in in_phase]
        out = {"samples_count": float(len(set(times))),
               "telemetry_coverage": summary.coverage(times, spans, self.interval_s)}
        pairs = summary.boundary_pairs(self._readings, intervals, phase)
        out |= summary.counter_summary(pairs, counters.cpu_count())
        if self.source == "nvml":
            out |= summary.gpu_summary(rows, in_phase, spans, self._throttle_mask)
            out |= summary.driver_util_summary(self._driver_util, pairs)
            out |= summary.energy_metrics(out, sum(e - s for s, e in spans), num_images)
        else:
            out |= summary.host_summary(in_phase)
        if self.rss_hwm_mb is not None:
            out["process_rss_hwm_mb"] = self.rss_hwm_mb
        return out

