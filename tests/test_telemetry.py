from __future__ import annotations

import itertools
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pynvml
import pytest

from runner import gpu_lock, telemetry
from runner.telemetry import Sampler, integrate, lifecycle, parse_visible, summary
from runner.telemetry.counters import Reading
from runner.telemetry.probe import GpuRow, HostRow
from tests import fake_nvml
from tests.fake_nvml import FakeGpu, FakeNvml, FakeNVMLError

INTERVAL = 0.01
#: the default priority: SCHED_FIFO 1 where this process may set it, else the normal class
PROCESS_MODES = ("process (SCHED_FIFO 1)", "process (normal (SCHED_FIFO not permitted))")


def run_phases(sampler: Sampler, timed_s: float = 0.12) -> Sampler:
    with sampler:
        sampler.mark_phase("load")
        time.sleep(0.03)
        sampler.mark_phase("timed")
        time.sleep(timed_s)
        sampler.mark_phase("done")
    return sampler


def assert_consistent_phases(sampler: Sampler, names: list[str]) -> None:
    times = sampler.phase_times()
    assert list(times) == names
    assert times[names[0]][0] == 0.0
    for before, after in itertools.pairwise(names):
        assert times[before][1] == times[after][0]
        assert times[after][0] <= times[after][1]
    for row in sampler.samples():
        start, end = times[str(row["phase"])]
        assert start <= float(row["t_s"]) <= end  # type: ignore[arg-type]


# -- API agreement ----------------------------------------------------------------------------


def test_names_used_exist_in_real_pynvml() -> None:
    missing = [name for name in telemetry.NVML_NAMES if not hasattr(pynvml, name)]
    assert missing == []


def test_stand_in_only_has_real_pynvml_names() -> None:
    public = [n for n in dir(FakeNvml) if not n.startswith("_")]
    assert [n for n in public if not hasattr(pynvml, n)] == []


# -- no GPU / off / validation ----------------------------------------------------------------


def test_psutil_backend_on_this_machine() -> None:
    sampler = Sampler(interval_s=INTERVAL)
    if sampler.gpu_found:
        sampler.stop()
        pytest.skip("this machine has a GPU")
    assert sampler.source == "psutil"
    assert sampler.reason
    assert sampler.gpus == []
    run_phases(sampler)
    rows = sampler.samples()
    assert len(rows) >= 4
    assert set(rows[0]) == {"t_s", "phase", "device", *telemetry.CPU_FIELDS}
    assert {row["device"] for row in rows} == {"cpu"}
    assert_consistent_phases(sampler, ["start", "load", "timed", "done"])
    got = sampler.summary("timed")
    expected = {"samples_count", "telemetry_coverage", "host_cpu_util_mean", "host_cpu_util_max",
                "process_cpu_util_mean", "process_cpu_cores_mean", "process_rss_peak_mb",
                "host_mem_used_peak_mb", "process_rss_hwm_mb"}
    assert expected <= set(got) <= expected | {"process_cpu_util_max"}
    assert got["samples_count"] >= 2 and 0 < got["telemetry_coverage"] <= 1
    assert 0 <= got["host_cpu_util_mean"] <= 100 and 0 <= got["host_cpu_util_max"] <= 100
    assert 0 <= got["process_cpu_util_mean"] <= 100
    assert got["process_rss_hwm_mb"] >= got["process_rss_peak_mb"] > 10
    assert sampler.summary("never-marked") == {}
    assert sampler.errors == []


def test_samples_in_a_separate_process_by_default() -> None:
    sampler = Sampler(interval_s=INTERVAL)
    if sampler.gpu_found:
        sampler.stop()
        pytest.skip("this machine has a GPU")
    threads_before = threading.active_count()
    run_phases(sampler)
    assert threading.active_count() == threads_before  # no sampling thread in this process
    assert sampler.mode in PROCESS_MODES
    assert sampler.cpu_share is not None and 0 <= sampler.cpu_share < 0.5
    assert sampler.summary("timed")["samples_count"] >= 5  # 0.12 s at 10 ms


def test_thread_when_not_a_separate_process() -> None:
    sampler = run_phases(Sampler(interval_s=INTERVAL, separate_process=False))
    assert sampler.mode == "thread" and sampler.cpu_share is None
    assert sampler.summary("timed")["samples_count"] >= 5
    assert_consistent_phases(sampler, ["start", "load", "timed", "done"])


@pytest.mark.parametrize("executable", ["/nonexistent/python", "/bin/false"])
def test_falls_back_to_a_thread_when_the_process_cannot_start(
    monkeypatch: pytest.MonkeyPatch, executable: str
) -> None:
    monkeypatch.setattr(lifecycle.sys, "executable", executable)
    sampler = run_phases(Sampler(interval_s=INTERVAL, separate_process=True))
    assert sampler.mode == "thread"
    assert len(sampler.errors) == 1 and "sampling in a thread" in sampler.errors[0]
    assert sampler.summary("timed")["samples_count"] >= 5


def test_a_killed_sampling_process_keeps_the_rows_it_streamed(tmp_path: Path) -> None:
    rows_file = tmp_path / "telemetry_rows.csv"
    sampler = Sampler(interval_s=INTERVAL, separate_process=True, rows_path=rows_file)
    sampler.start()
    sampler.mark_phase("timed")
    time.sleep(0.1)
    sampler.mark_phase("record")  # this mark's sample reaches the file at once
    time.sleep(0.05)
    assert sampler._child is not None
    os.kill(sampler._child.pid, signal.SIGKILL)
    sampler._child.wait()
    sampler.mark_phase("done")  # the pipe is broken: recorded, not raised
    time.sleep(0.05)  # clock ticks for the host's counters
    sampler.stop()
    phases = {row["phase"] for row in sampler.samples()}
    assert {"start", "timed", "record"} <= phases  # rows taken before the kill are kept
    assert "signal 9" in sampler.incomplete and "kept" in sampler.incomplete
    assert rows_file.read_text().startswith("t,device,host_cpu_util_pct")
    assert list(sampler.phase_times()) == ["start", "timed", "record", "done"]
    got = sampler.summary("done")
    assert got["samples_count"] == 0 and "host_cpu_util_mean" in got  # counters are exact
    assert sampler.summary("timed")["samples_count"] >= 2


def test_nvml_init_error_falls_back_to_psutil() -> None:
    fake = FakeNvml([FakeGpu()], init_error=FakeNVMLError("NVML Shared Library Not Found"))
    sampler = Sampler(interval_s=INTERVAL, nvml=fake)
    assert (sampler.source, sampler.gpu_found) == ("psutil", False)
    assert sampler.reason == "NVML Shared Library Not Found"
    run_phases(sampler, timed_s=0.02)
    assert sampler.summary()["samples_count"] >= 1
    assert fake._calls["shutdown"] == 0


def test_no_devices_falls_back_to_psutil() -> None:
    fake = FakeNvml([])
    sampler = Sampler(interval_s=INTERVAL, nvml=fake)
    assert sampler.source == "psutil"
    assert "no GPU" in sampler.reason
    assert fake._calls["shutdown"] == 1


def test_disabled() -> None:
    fake = FakeNvml([FakeGpu()])
    sampler = Sampler(interval_s=INTERVAL, nvml=fake, enabled=False)
    threads_before = threading.active_count()
    with sampler:
        assert threading.active_count() == threads_before
        sampler.mark_phase("timed")
    assert sampler.source == "off"
    assert not sampler.gpu_found
    assert sampler.samples() == []
    assert sampler.summary() == {}
    assert fake._calls["init"] == 0


@pytest.mark.parametrize("interval", [0, -0.5, math.nan, math.inf])
def test_interval_validation(interval: float) -> None:
    with pytest.raises(ValueError, match=rf"interval_s.*{interval!r}"):
        Sampler(interval_s=interval)


def test_lifecycle() -> None:
    sampler = Sampler(interval_s=INTERVAL, nvml=FakeNvml([FakeGpu()]))
    sampler.mark_phase("warmup")  # before start: names the first phase
    sampler.start()
    with pytest.raises(RuntimeError):
        sampler.start()
    sampler.stop()
    sampler.stop()
    assert list(sampler.phase_times()) == ["warmup"]
    rows = sampler.samples()
    assert len(rows) >= 2  # one at start, one at stop
    rows.clear()
    assert sampler.samples()  # a copy was returned


# -- NVML path with the stand-in --------------------------------------------------------------


def test_nvml_two_gpus_energy_and_static_info() -> None:
    fake = FakeNvml([FakeGpu(name=b"NVIDIA H200"), FakeGpu(power_mw=50_000)])
    sampler = Sampler(interval_s=INTERVAL, nvml=fake)
    assert (sampler.source, sampler.gpu_found, sampler.reason) == ("nvml", True, "")
    assert [g["index"] for g in sampler.gpus] == [0, 1]
    info = sampler.gpus[0]
    assert info["name"] == "NVIDIA H200"
    assert info["driver_version"] == "570.86.15"
    assert info["memory_total_mb"] == 143_771
    assert info["power_limit_w"] == 700
    assert (info["app_sm_clock_mhz"], info["app_mem_clock_mhz"]) == (1980, 2619)
    assert info["clocks_locked"] is False
    run_phases(sampler)
    assert fake._calls["shutdown"] == 1
    assert sampler.errors == []
    assert_consistent_phases(sampler, ["start", "load", "timed", "done"])
    rows = sampler.samples()
    assert {row["device"] for row in rows} == {"gpu0", "gpu1"}
    row = rows[0]
    assert (row["gpu_util_pct"], row["mem_util_pct"], row["mem_used_mb"]) == (80, 40, 2048)
    assert (row["power_w"], row["sm_clock_mhz"], row["temperature_c"]) == (100, 1755, 55)
    assert row["throttle_reasons"] == 0

    start, end = sampler.phase_times()["timed"]
    got = sampler.summary("timed", num_images=10)
    assert got["gpu_energy_integrated_j"] == pytest.approx(150.0 * (end - start), rel=1e-9)
    # the energy counter read at the phase's boundaries: 150 W over the phase
    assert got["gpu_energy_counter_j"] == pytest.approx(150.0 * (end - start), rel=0.05)
    assert got["gpu_energy_j"] == got["gpu_energy_counter_j"]
    assert got["gpu_energy_per_image_j"] == pytest.approx(got["gpu_energy_j"] / 10)
    assert got["gpu_power_mean_w"] == pytest.approx(150.0, rel=0.05)
    assert got["gpu_util_mean"] == got["gpu_util_max"] == 80
    assert got["gpu_util_driver_mean"] == 80 and got["gpu_util_driver_samples"] >= 2
    assert got["gpu_mem_peak_mb"] == 2048
    assert got["gpu_temp_max_c"] == 55
    assert got["gpu_sm_clock_mean_mhz"] == 1755
    assert got["gpu_throttle_thermal_or_power"] == 0.0
    assert got["samples_count"] >= 2
    assert "gpu_energy_per_image_j" not in sampler.summary("timed")


def test_nvml_sampled_in_the_separate_process(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole GPU path as a job runs it: pynvml imported by name here and in the sampling
    process (both get the stand-in module first on their path)."""
    (tmp_path / "pynvml.py").write_text(fake_nvml.module_source())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sampler = Sampler(interval_s=INTERVAL)
    assert (sampler.source, [g["name"] for g in sampler.gpus]) == (
        "nvml", ["NVIDIA H200", "NVIDIA H200"])
    run_phases(sampler)
    assert sampler.mode in PROCESS_MODES and sampler.errors == []
    rows = sampler.samples()
    assert {r["device"] for r in rows} == {"gpu0", "gpu1"}
    assert set(rows[0]) == {"t_s", "phase", "device", *telemetry.GPU_FIELDS}
    got = sampler.summary("timed", num_images=10)
    assert got["samples_count"] >= 5 and got["gpu_util_mean"] == 80
    start, end = sampler.phase_times()["timed"]
    assert got["gpu_energy_integrated_j"] == pytest.approx(150.0 * (end - start), rel=1e-6)
    assert got["gpu_energy_j"] == pytest.approx(150.0 * (end - start), rel=0.05)


def test_energy_of_a_short_phase_without_samples_of_its_own() -> None:
    sampler = Sampler(interval_s=10.0, nvml=FakeNvml([FakeGpu()]))
    with sampler:
        sampler.mark_phase("timed")
        time.sleep(0.02)
        sampler.mark_phase("done")
    start, end = sampler.phase_times()["timed"]
    got = sampler.summary("timed")
    assert got["gpu_energy_integrated_j"] == pytest.approx(100.0 * (end - start), rel=1e-9)
    assert got["gpu_energy_j"] == pytest.approx(100.0 * (end - start), rel=0.05)
    assert got["telemetry_coverage"] == 1.0  # too short to expect a sample at 10 s


@pytest.mark.parametrize(
    ("reasons", "flag"),
    [(0x40, 1.0), (0x04, 1.0), (0x20 | 0x01, 1.0), (0x01 | 0x02, 0.0), (0, 0.0)],
)
def test_throttle_flag(reasons: int, flag: float) -> None:
    sampler = run_phases(Sampler(INTERVAL, nvml=FakeNvml([FakeGpu(throttle=reasons)])), 0.02)
    assert sampler.summary()["gpu_throttle_thermal_or_power"] == flag


def test_unsupported_field_is_none_and_not_retried() -> None:
    fake = FakeNvml([FakeGpu(power_mw=None, app_clocks_supported=False)])
    sampler = run_phases(Sampler(INTERVAL, nvml=fake))
    rows = sampler.samples()
    assert len(rows) >= 4
    assert all(row["power_w"] is None and row["energy_counter_j"] is None for row in rows)
    assert all(row["gpu_util_pct"] == 80 for row in rows)
    assert fake._calls["power"] == 1
    assert sampler.gpus[0]["clocks_locked"] is None
    got = sampler.summary()
    assert "gpu_energy_j" not in got and "gpu_power_mean_w" not in got
    assert got["gpu_util_mean"] == 80
    assert sampler.errors == []


def test_thread_survives_an_exception() -> None:
    fake = FakeNvml([FakeGpu(fail_util_on_call=2)])
    sampler = run_phases(Sampler(INTERVAL, nvml=fake))
    assert len(sampler.errors) == 1
    assert "RuntimeError: boom" in sampler.errors[0]
    assert fake._calls["util"] >= 4  # sampling went on after the failure


@pytest.mark.parametrize(
    ("visible", "devices"),
    [("2,0", ["gpu2", "gpu0"]), ("1", ["gpu1"]), ("GPU-0", ["gpu0"]),
     ("GPU-2-fake,1", ["gpu2", "gpu1"]), ("MIG-b1", ["gpu1"]), ("MIG-GPU-2-fake/1/0", ["gpu2"]),
     ("MIG-b1,MIG-b2", ["gpu1"])],
)
def test_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, visible: str, devices: list[str]):
    """UUID and MIG forms select the GPU they name, not all of them, and agree with the lock."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    fake = FakeNvml([FakeGpu(), FakeGpu(migs=("MIG-b1", "MIG-b2")), FakeGpu()])
    sampler = run_phases(Sampler(INTERVAL, nvml=fake), 0.02)
    assert [g["device"] for g in sampler.gpus] == devices
    assert sorted({str(r["device"]) for r in sampler.samples()}) == sorted(devices)
    uuids = [f"GPU-{i}-fake" for i in range(3)]
    locked = gpu_lock.visible_gpus(uuids, visible)  # what the GPU lock reads
    assert [entry for entry, _ in locked] == [e.strip() for e in visible.split(",")]
    assert all(u in uuids or u.startswith("MIG-") for _, u in locked)
    if "MIG" in visible:
        assert any("MIG instance" in n for n in sampler.notes)


def test_cuda_visible_devices_selecting_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    fake = FakeNvml([FakeGpu()])
    sampler = Sampler(INTERVAL, nvml=fake)
    assert sampler.source == "psutil"
    assert "CUDA_VISIBLE_DEVICES" in sampler.reason
    assert fake._calls["shutdown"] == 1


UUIDS = ["GPU-aaaa-1", "GPU-bbbb-2", "GPU-cccc-3"]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, [0, 1, 2]),
        ("2, 0", [2, 0]),
        ("0,5,1", [0]),
        ("-1", []),
        ("", []),
        ("1,1", [1]),
        ("GPU-bbbb", [1]),
        ("gpu-cccc-3,0", [2, 0]),
        ("GPU-zzzz", [None]),  # named but unknown here: kept under its own name, not sampled
        ("MIG-GPU-aaaa-1/0/0", [0]),
        ("MIG-7f", [1]),  # resolved through NVML's MIG parent
        ("MIG-00", [None]),
        ("x,0", []),
    ],
)
def test_parse_visible(visible: str | None, expected: list[int | None]) -> None:
    parents = {"MIG-7f": "GPU-bbbb-2"}
    got = parse_visible(UUIDS, visible, parents.get)
    assert [g.index for g in got] == expected
    assert [(g.entry, g.uuid) for g in got] == gpu_lock.visible_gpus(UUIDS, visible)[:len(got)]


def test_integrate_by_hand() -> None:
    ts, watts = [0.0, 1.0, 2.0], [0.0, 10.0, 20.0]
    assert integrate(ts, watts, 0.5, 1.5) == pytest.approx(10.0)  # 5 * (1.5^2 - 0.5^2)
    assert integrate(ts, watts, 0.0, 2.0) == pytest.approx(20.0)
    assert integrate(ts, watts, 2.0, 3.0) == pytest.approx(20.0)  # held after the last point
    assert integrate([1.0], [100.0], 0.0, 0.25) == pytest.approx(25.0)
    assert integrate([], [], 0.0, 1.0) == 0.0


def test_stand_in_covers_every_function_used() -> None:
    assert [n for n in telemetry.NVML_FUNCTIONS if not hasattr(FakeNvml, n)] == []


# -- pure summaries -----------------------------------------------------------------------------


def _reading(t: float, cpu: float, busy: float, total: float, energy: float | None) -> Reading:
    return Reading(t, 1000.0 + t, cpu, busy, total, 100.0, {"gpu0": energy})


def test_counter_summary_is_exact_over_the_windows_by_hand() -> None:
    intervals = [("load", 0.0, 1.0), ("timed", 1.0, 3.0), ("record", 3.0, 3.5),
                 ("timed", 3.5, 5.5)]
    readings = [_reading(0, 0, 0, 0, 0), _reading(1, 0.5, 1, 2, 10),
                _reading(3, 2.5, 4, 6, 410), _reading(3.5, 2.6, 4.5, 7, 420),
                _reading(5.5, 4.6, 7.5, 11, 820)]
    pairs = summary.boundary_pairs(readings, intervals, "timed")
    assert len(pairs) == 2
    got = summary.counter_summary(pairs, cpus=2)
    # the tree used 2 + 2 CPU s in 4 s of 2 CPUs: 50%; the host 3 + 3 busy of 4 + 4
    assert got == pytest.approx({"process_cpu_util_mean": 50.0, "process_cpu_cores_mean": 1.0,
                                 "host_cpu_util_mean": 75.0, "gpu_energy_counter_j": 800.0})
    util = {"gpu0": [(int(1000.5e6), 10.0), (int(1002e6), 90.0), (int(1004.6e6), 70.0)]}
    assert summary.driver_util_summary(util, pairs) == {"gpu_util_driver_mean": 80.0,
                                                        "gpu_util_driver_samples": 2.0}
    no_energy = (_reading(0, 0, 0, 1, None), _reading(1, 1, 1, 2, None))
    assert "gpu_energy_counter_j" not in summary.counter_summary([no_energy], 1)


def test_coverage_counts_distinct_samples_in_the_windows() -> None:
    spans = [(0.0, 1.0), (2.0, 3.0)]  # 2 s at 0.1 s: 20 expected
    times = [0.05 * i for i in range(21)] + [2.5, 2.5]  # 21 in the first window, one (twice)
    assert summary.coverage(times, spans, 0.1) == 1.0  # at most 1
    assert summary.coverage([0.5, 2.5, 2.5, 1.5], spans, 0.1) == pytest.approx(2 / 20)
    assert summary.coverage([], [(0.0, 0.05)], 0.1) == 1.0  # nothing expected


def test_gpu_summary_names_fields_not_positions() -> None:
    rows = [GpuRow(t, "gpu0", 50.0 + t, 10.0, 1000.0, 100.0, 1500.0, 60.0, 0x40 if t else 0,
                   None) for t in (0.0, 1.0, 2.0)]
    got = summary.gpu_summary(rows, rows[1:], [(1.0, 2.0)], throttle_mask=0x40)
    assert got["gpu_util_mean"] == 51.5 and got["gpu_util_max"] == 52.0
    assert got["gpu_throttle_thermal_or_power"] == 1.0
    assert got["gpu_energy_integrated_j"] == pytest.approx(100.0)
    host = [HostRow(0.0, "cpu", 90.0, 5000.0, 12.5, 300.0),
            HostRow(1.0, "cpu", None, 5100, 25.0, 310)]
    assert summary.host_summary(host) == {"host_cpu_util_max": 90.0, "process_cpu_util_max": 25.0,
                                          "process_rss_peak_mb": 310.0,
                                          "host_mem_used_peak_mb": 5100.0}
