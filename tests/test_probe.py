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

from runner import probe

ROOT = Path(__file__).resolve().parents[1]


def test_host_reader_agrees_with_psutil() -> None:
    reader = probe.HostReader(os.getpid())
    try:
        end = time.monotonic() + 0.05
        while time.monotonic() < end:  # burn CPU so that clock ticks pass
            pass
        [(t, device, cpu, memory_mb, rss_mb)] = reader.rows()
    finally:
        reader.close()
    assert device == "cpu" and abs(float(t) - time.monotonic()) < 1.0  # type: ignore[arg-type]
    assert cpu is not None and 0.0 < float(cpu) <= 100.0
    rss = psutil.Process().memory_info().rss / 2**20
    assert abs(float(rss_mb) - rss) <= 0.1 * rss  # type: ignore[arg-type]
    used = psutil.virtual_memory().used / 2**20
    assert abs(float(memory_mb) - used) <= 0.2 * used  # type: ignore[arg-type]


def test_host_reader_without_proc_reads_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_proc(path: str, *args: object) -> int:
        raise FileNotFoundError(path)

    monkeypatch.setattr(probe.os, "open", no_proc)  # as on a system without /proc
    reader = probe.HostReader(os.getpid())
    monkeypatch.undo()
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        pass
    [(_, device, cpu, memory_mb, rss_mb)] = reader.rows()
    reader.close()
    assert device == "cpu" and cpu is not None and 0.0 <= float(cpu) <= 100.0
    rss = psutil.Process().memory_info().rss / 2**20
    assert abs(float(rss_mb) - rss) <= 0.1 * rss  # type: ignore[arg-type]
    assert float(memory_mb) > 0  # type: ignore[arg-type]


def test_host_reader_cpu_is_none_without_a_clock_tick() -> None:
    reader = probe.HostReader(os.getpid())
    try:
        rows = [reader.rows()[0][2] for _ in range(50)]  # 50 reads well inside one tick or two
    finally:
        reader.close()
    assert None in rows  # not a made-up 0%
    assert all(v is None or 0.0 <= float(v) <= 100.0 for v in rows)


def test_sample_loop_keeps_the_grid_and_stops() -> None:
    taken: list[float] = []
    waits: list[float] = []

    def wait(delay: float) -> bool:
        waits.append(delay)
        time.sleep(delay)
        return len(waits) < 6

    probe.sample_loop(lambda: taken.append(time.monotonic()), 0.02, wait)
    assert len(taken) == 5  # the sixth wait said stop
    gaps = [b - a for a, b in zip(taken, taken[1:], strict=False)]
    assert all(0.015 <= g <= 0.06 for g in gaps), gaps


def _start(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "runner.probe", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env)


def _ready(child: subprocess.Popen[bytes]) -> bytes:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 30)
    return child.stdout.readline() if ready else b""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_sampling_process_protocol() -> None:
    child = _start("--interval", "0.01", "--backend", "psutil", "--pid", str(os.getpid()))
    assert _ready(child) == probe.READY.encode()
    assert child.stdin is not None
    time.sleep(0.1)
    mark = time.monotonic()
    child.stdin.write(b"s")  # sample now
    time.sleep(0.1)
    out, err = child.communicate(b"q", timeout=30)
    got = json.loads(out)
    assert child.returncode == 0, err
    assert got["errors"] == [] and got["priority"] == "SCHED_IDLE"
    times = [row[0] for row in got["rows"]]
    assert times == sorted(times) and 12 <= len(times) <= 40  # ~0.2 s at 10 ms, +first/last
    assert any(0 <= t - mark < 0.005 for t in times)  # the wake byte's sample came at once
    assert {row[1] for row in got["rows"]} == {"cpu"} and len(got["rows"][0]) == 5
    assert 0 <= got["cpu_s"] < got["wall_s"] and got["wall_s"] >= 0.2
    rss = [row[4] for row in got["rows"]]
    assert min(rss) > 10  # MB: this test process's RSS, read from the other process


def test_sampling_process_reports_a_failed_start() -> None:
    child = _start("--interval", "0.01", "--backend", "nvml", "--gpus", "0")
    assert _ready(child) == probe.READY.encode()  # says ready anyway, so the parent goes on
    out, _ = child.communicate(b"q", timeout=30)
    got = json.loads(out)
    if not got["errors"]:
        pytest.skip("this machine has an NVIDIA driver and GPU 0")
    assert got["rows"] == [] and "could not start" in got["errors"][0]


def test_sampling_process_ends_with_its_parent_pipe() -> None:
    child = _start("--interval", "0.01", "--backend", "psutil")
    assert _ready(child) == probe.READY.encode()
    assert child.stdin is not None
    child.stdin.close()  # what the parent's death does to the pipe
    assert child.wait(timeout=30) == 0


def test_row_functions_are_real_pynvml_names() -> None:
    import pynvml

    assert [n for n in (*probe.ROW_FUNCTIONS, *probe.CONSTANTS, *probe.UNSUPPORTED_ERRORS)
            if not hasattr(pynvml, n)] == []
