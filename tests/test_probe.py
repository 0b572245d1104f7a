"""runner.probe: the host reader against psutil, the sampling loop, and the sampling process's
protocol (ready line, wake bytes, JSON at the end) run for real."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from runner.telemetry import probe

ROOT = Path(__file__).resolve().parents[1]


def _burn_cpu(cpu_s: float = 0.05) -> None:
    """Spend ``cpu_s`` of this process's CPU time (however long a loaded machine takes), so that
    clock ticks pass for the host's and the process's counters."""
    start = time.process_time()
    while time.process_time() - start < cpu_s:
        pass


def test_host_reader_agrees_with_psutil() -> None:
    reader = probe.HostReader(os.getpid())
    try:
        _burn_cpu()
        [(t, device, cpu, memory_mb, process, rss_mb)] = reader.rows()
    finally:
        reader.close()
    assert device == "cpu" and abs(float(t) - time.monotonic()) < 1.0
    assert cpu is not None and 0.0 < float(cpu) <= 100.0
    # this process burned 50 ms of CPU: a share of the host's CPUs above 0, at most 100%
    assert process is not None and 0.0 < float(process) <= 100.0
    rss = psutil.Process().memory_info().rss / 2**20
    assert rss_mb is not None and abs(float(rss_mb) - rss) <= 0.1 * rss
    used = psutil.virtual_memory().used / 2**20
    assert memory_mb is not None and abs(float(memory_mb) - used) <= 0.2 * used


def test_host_reader_without_proc_reads_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_proc(path: str, *args: object) -> int:
        raise FileNotFoundError(path)

    monkeypatch.setattr(probe.os, "open", no_proc)  # as on a system without /proc
    reader = probe.HostReader(os.getpid())
    monkeypatch.undo()
    _burn_cpu()
    [(_, device, cpu, memory_mb, process, rss_mb)] = reader.rows()
    reader.close()
    assert device == "cpu" and cpu is not None and 0.0 <= float(cpu) <= 100.0
    assert process is not None and 0.0 < float(process) <= 100.0
    rss = psutil.Process().memory_info().rss / 2**20
    assert rss_mb is not None and abs(float(rss_mb) - rss) <= 0.1 * rss
    assert memory_mb is not None and float(memory_mb) > 0


def test_host_reader_cpu_is_none_without_a_clock_tick() -> None:
    reader = probe.HostReader(os.getpid())
    try:
        rows = [reader.rows()[0].host_cpu_util_pct for _ in range(50)]  # inside a tick or two
    finally:
        reader.close()
    assert None in rows  # not a made-up 0%
    assert all(v is None or 0.0 <= float(v) <= 100.0 for v in rows)


def test_sample_loop_keeps_the_grid_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a clock the test drives (no dependence on getting a CPU in time): samples on a fixed
    0.02 s grid; a sample that overruns a tick skips it instead of catching up in a burst."""
    clock = [100.0]
    monkeypatch.setattr(probe.time, "monotonic", lambda: clock[0])
    taken: list[float] = []
    waits: list[float] = []

    def take() -> None:
        taken.append(clock[0])
        clock[0] += 0.05 if len(taken) == 3 else 0.001  # the third sample overruns two ticks

    def wait(delay: float) -> bool:
        waits.append(delay)
        clock[0] += delay
        return len(waits) < 6

    probe.sample_loop(take, 0.02, wait)
    assert len(taken) == 5  # the sixth wait said stop
    assert taken[:3] == pytest.approx([100.02, 100.04, 100.06])
    assert waits[:3] == pytest.approx([0.02, 0.019, 0.019])
    assert waits[3] == pytest.approx(0.02)  # after the overrun: a fresh grid, no burst
    assert taken[3] == pytest.approx(100.06 + 0.05 + 0.02)


def _start(rows: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "runner.telemetry.probe", "--rows", str(rows),
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0, env=env)


def _ready(child: subprocess.Popen[bytes]) -> bytes:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 30)
    return child.stdout.readline() if ready else b""


# not "idle": a SCHED_IDLE process may get no CPU at all while the machine is busy (what
# benchmarks/sampler_cost.py measures), and a test must not wait for a CPU
@pytest.mark.parametrize("priority", ["realtime", "normal"])
def test_sampling_process_protocol(tmp_path: Path, priority: str) -> None:
    rows_file = tmp_path / "rows.csv"
    child = _start(rows_file, "--interval", "0.01", "--source", "psutil", "--pid",
                   str(os.getpid()), "--priority", priority)
    assert _ready(child) == probe.READY.encode()
    assert child.stdin is not None
    time.sleep(0.1)
    mark = time.monotonic()
    child.stdin.write(b"s")  # sample now
    time.sleep(0.1)
    out, err = child.communicate(b"q", timeout=30)
    got = json.loads(out)
    assert child.returncode == 0, err
    assert got["errors"] == []
    assert got["priority"] in {"realtime": ("SCHED_FIFO 1", "normal (SCHED_FIFO not permitted)"),
                               "normal": ("normal",)}[priority]
    rows = probe.read_rows(rows_file, probe.HostRow)
    assert len(rows) == got["count"]
    times = [row.t for row in rows]
    # ~0.2 s at 10 ms: at most ~20 + first, wake and last; at least the first and the last
    # (how many in between depends on the CPU this loaded machine gives: benchmarks measure it)
    assert times == sorted(times) and 2 <= len(times) <= 40
    assert times[0] < mark < times[-1]
    assert {row.device for row in rows} == {"cpu"}
    assert 0 <= got["cpu_s"] < got["wall_s"] and got["wall_s"] >= 0.1
    assert min(float(r.process_rss_mb or 0) for r in rows) > 10  # MB: this test process's RSS


def test_streamed_rows_survive_a_kill(tmp_path: Path) -> None:
    """Rows reach the file as they are taken: the first at once, then at least every FLUSH_S,
    and each a mark asks for at once; a SIGKILL loses only what was not flushed yet."""
    rows_file = tmp_path / "rows.csv"
    child = _start(rows_file, "--interval", "0.01", "--source", "psutil")
    assert _ready(child) == probe.READY.encode()
    assert len(probe.read_rows(rows_file, probe.HostRow)) >= 1  # the first sample, at once
    assert child.stdin is not None
    time.sleep(probe.FLUSH_S + 0.3)
    child.stdin.write(b"s")
    time.sleep(0.1)
    child.kill()
    child.communicate()
    rows = probe.read_rows(rows_file, probe.HostRow)
    assert len(rows) >= 0.5 * probe.FLUSH_S / 0.01  # the flushed second of 10 ms samples


def test_sigterm_flushes_the_rows_and_exits_143(tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.csv"
    child = _start(rows_file, "--interval", "0.01", "--source", "psutil")
    assert _ready(child) == probe.READY.encode()
    time.sleep(0.2)
    child.terminate()
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 128 + 15 and out == b""
    rows = probe.read_rows(rows_file, probe.HostRow)
    assert len(rows) >= 2  # the first, and those of the 0.2 s before SIGTERM, not only flushed ones


def test_read_rows_leaves_out_a_cut_off_row_and_checks_columns(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("t,device,host_cpu_util_pct,host_mem_used_mb,process_cpu_util_pct,"
                    "process_rss_mb\n1.5,cpu,,100.0,2.5,30\n2.5,cpu,50")
    assert probe.read_rows(path, probe.HostRow) == [
        probe.HostRow(1.5, "cpu", None, 100.0, 2.5, 30.0)]
    with pytest.raises(ValueError, match="holds columns"):
        probe.read_rows(path, probe.GpuRow)


def test_sampling_process_reports_a_failed_start(tmp_path: Path) -> None:
    child = _start(tmp_path / "rows.csv", "--interval", "0.01", "--source", "nvml", "--gpus", "0")
    assert _ready(child) == probe.READY.encode()  # says ready anyway, so the parent goes on
    out, _ = child.communicate(b"q", timeout=30)
    got = json.loads(out)
    if not got["errors"]:
        pytest.skip("this machine has an NVIDIA driver and GPU 0")
    assert got["count"] == 0 and "could not start" in got["errors"][0]


def test_sampling_process_ends_with_its_parent_pipe(tmp_path: Path) -> None:
    child = _start(tmp_path / "rows.csv", "--interval", "0.01", "--source", "psutil")
    assert _ready(child) == probe.READY.encode()
    assert child.stdin is not None
    child.stdin.close()  # what the parent's death does to the pipe
    assert child.wait(timeout=30) == 0


def test_row_functions_are_real_pynvml_names() -> None:
    import pynvml

    assert [n for n in (*probe.ROW_FUNCTIONS, *probe.CONSTANTS, *probe.UNSUPPORTED_ERRORS)
            if not hasattr(pynvml, n)] == []
