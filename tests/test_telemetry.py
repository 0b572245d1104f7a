from __future__ import annotations

import itertools
import math
import sys
import threading
import time
from pathlib import Path

import pynvml
import pytest

from runner import telemetry
from runner.telemetry import Sampler, integrate, visible_gpu_indices
from tests import fake_nvml
from tests.fake_nvml import FakeGpu, FakeNvml, FakeNVMLError

INTERVAL = 0.01


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
    assert sampler.backend == "psutil"
    assert sampler.reason
    assert sampler.gpus == []
    run_phases(sampler)
    rows = sampler.samples()
    assert len(rows) >= 4
    assert set(rows[0]) == {"t_s", "phase", "device", *telemetry.CPU_FIELDS}
    assert {row["device"] for row in rows} == {"cpu"}
    assert_consistent_phases(sampler, ["start", "load", "timed", "done"])
    summary = sampler.summary("timed")
    expected = {"samples_count", "cpu_util_mean", "cpu_util_max", "process_rss_peak_mb"}
    assert set(summary) == expected
    assert summary["samples_count"] >= 2
    assert 0 <= summary["cpu_util_mean"] <= summary["cpu_util_max"] <= 100
    assert summary["process_rss_peak_mb"] > 10
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
    assert sampler.mode.startswith("process")
    assert sampler.cpu_share is not None and 0 <= sampler.cpu_share < 0.5
    assert sampler.summary("timed")["samples_count"] >= 5  # 0.12 s at 10 ms


def test_thread_when_not_isolated() -> None:
    sampler = run_phases(Sampler(interval_s=INTERVAL, isolate=False))
    assert sampler.mode == "thread" and sampler.cpu_share is None
    assert sampler.summary("timed")["samples_count"] >= 5
    assert_consistent_phases(sampler, ["start", "load", "timed", "done"])


@pytest.mark.parametrize("executable", ["/nonexistent/python", "/bin/false"])
def test_falls_back_to_a_thread_when_the_process_cannot_start(
    monkeypatch: pytest.MonkeyPatch, executable: str
) -> None:
    monkeypatch.setattr(telemetry.sys, "executable", executable)
    sampler = run_phases(Sampler(interval_s=INTERVAL, isolate=True))
    assert sampler.mode == "thread"
    assert len(sampler.errors) == 1 and "sampling in a thread" in sampler.errors[0]
    assert sampler.summary("timed")["samples_count"] >= 5


def test_a_sampling_process_that_dies_costs_its_samples_only() -> None:
    sampler = Sampler(interval_s=INTERVAL, isolate=True)
    sampler.start()
    assert sampler._child is not None
    sampler._child.kill()
    sampler._child.wait()
    sampler.mark_phase("timed")  # the pipe is broken: recorded, not raised
    sampler.stop()
    assert sampler.samples() == []
    assert any("without its samples" in e for e in sampler.errors), sampler.errors
    assert list(sampler.phase_times()) == ["start", "timed"]


def test_nvml_init_error_falls_back_to_psutil() -> None:
    fake = FakeNvml([FakeGpu()], init_error=FakeNVMLError("NVML Shared Library Not Found"))
    sampler = Sampler(interval_s=INTERVAL, nvml=fake)
    assert (sampler.backend, sampler.gpu_found) == ("psutil", False)
    assert sampler.reason == "NVML Shared Library Not Found"
    run_phases(sampler, timed_s=0.02)
    assert sampler.summary()["samples_count"] >= 1
    assert fake._calls["shutdown"] == 0


def test_no_devices_falls_back_to_psutil() -> None:
    fake = FakeNvml([])
    sampler = Sampler(interval_s=INTERVAL, nvml=fake)
    assert sampler.backend == "psutil"
    assert "no GPU" in sampler.reason
    assert fake._calls["shutdown"] == 1


def test_disabled() -> None:
    fake = FakeNvml([FakeGpu()])
    sampler = Sampler(interval_s=INTERVAL, nvml=fake, enabled=False)
    threads_before = threading.active_count()
    with sampler:
        assert threading.active_count() == threads_before
        sampler.mark_phase("timed")
    assert sampler.backend == "off"
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
    assert (sampler.backend, sampler.gpu_found, sampler.reason) == ("nvml", True, "")
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
    summary = sampler.summary("timed", num_images=10)
    assert summary["gpu_energy_j"] == pytest.approx(150.0 * (end - start), rel=1e-9)
    assert summary["gpu_energy_per_image_j"] == pytest.approx(summary["gpu_energy_j"] / 10)
    assert summary["gpu_power_mean_w"] == pytest.approx(150.0)
    assert summary["gpu_energy_counter_j"] == pytest.approx(150.0 * (end - start), rel=0.1)
    assert summary["gpu_util_mean"] == summary["gpu_util_max"] == 80
    assert summary["gpu_mem_peak_mb"] == 2048
    assert summary["gpu_temp_max_c"] == 55
    assert summary["gpu_sm_clock_mean_mhz"] == 1755
    assert summary["gpu_throttle_thermal_or_power"] == 0.0
    assert summary["samples_count"] >= 2
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
    assert (sampler.backend, [g["name"] for g in sampler.gpus]) == (
        "nvml", ["NVIDIA H200", "NVIDIA H200"])
    run_phases(sampler)
    assert sampler.mode.startswith("process") and sampler.errors == []
    rows = sampler.samples()
    assert {r["device"] for r in rows} == {"gpu0", "gpu1"}
    assert set(rows[0]) == {"t_s", "phase", "device", *telemetry.GPU_FIELDS}
    summary = sampler.summary("timed", num_images=10)
    assert summary["samples_count"] >= 5 and summary["gpu_util_mean"] == 80
    start, end = sampler.phase_times()["timed"]
    assert summary["gpu_energy_j"] == pytest.approx(150.0 * (end - start), rel=1e-6)
    assert summary["gpu_energy_counter_j"] == pytest.approx(150.0 * (end - start), rel=0.05)


def test_energy_of_a_short_phase_without_samples_of_its_own() -> None:
    sampler = Sampler(interval_s=10.0, nvml=FakeNvml([FakeGpu()]))
    with sampler:
        sampler.mark_phase("timed")
        time.sleep(0.02)
        sampler.mark_phase("done")
    start, end = sampler.phase_times()["timed"]
    summary = sampler.summary("timed")
    assert summary["gpu_energy_j"] == pytest.approx(100.0 * (end - start), rel=1e-9)


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
    summary = sampler.summary()
    assert "gpu_energy_j" not in summary and "gpu_power_mean_w" not in summary
    assert summary["gpu_util_mean"] == 80
    assert sampler.errors == []


def test_thread_survives_an_exception() -> None:
    fake = FakeNvml([FakeGpu(fail_util_on_call=2)])
    sampler = run_phases(Sampler(INTERVAL, nvml=fake))
    assert len(sampler.errors) == 1
    assert "RuntimeError: boom" in sampler.errors[0]
    assert fake._calls["util"] >= 4  # sampling went on after the failure


@pytest.mark.parametrize(
    ("visible", "devices"),
    [("2,0", ["gpu2", "gpu0"]), ("1", ["gpu1"]), ("GPU-0", ["gpu0", "gpu1", "gpu2"])],
)
def test_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, visible: str, devices: list[str]):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    sampler = run_phases(Sampler(INTERVAL, nvml=FakeNvml([FakeGpu(), FakeGpu(), FakeGpu()])), 0.02)
    assert [g["device"] for g in sampler.gpus] == devices
    assert sorted({str(r["device"]) for r in sampler.samples()}) == sorted(devices)


def test_cuda_visible_devices_selecting_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    fake = FakeNvml([FakeGpu()])
    sampler = Sampler(INTERVAL, nvml=fake)
    assert sampler.backend == "psutil"
    assert "CUDA_VISIBLE_DEVICES" in sampler.reason
    assert fake._calls["shutdown"] == 1


@pytest.mark.parametrize(
    ("count", "visible", "expected"),
    [
        (2, None, [0, 1]),
        (4, "3, 1", [3, 1]),
        (2, "0,5,1", [0]),
        (2, "-1", []),
        (2, "", []),
        (2, "1,1", [1]),
        (2, "GPU-8e6a,MIG-1", [0, 1]),
    ],
)
def test_visible_gpu_indices(count: int, visible: str | None, expected: list[int]) -> None:
    assert visible_gpu_indices(count, visible) == expected


def test_integrate_by_hand() -> None:
    ts, watts = [0.0, 1.0, 2.0], [0.0, 10.0, 20.0]
    assert integrate(ts, watts, 0.5, 1.5) == pytest.approx(10.0)  # 5 * (1.5^2 - 0.5^2)
    assert integrate(ts, watts, 0.0, 2.0) == pytest.approx(20.0)
    assert integrate(ts, watts, 2.0, 3.0) == pytest.approx(20.0)  # held after the last point
    assert integrate([1.0], [100.0], 0.0, 0.25) == pytest.approx(25.0)
    assert integrate([], [], 0.0, 1.0) == 0.0


def test_stand_in_covers_every_function_used() -> None:
    assert [n for n in telemetry.NVML_FUNCTIONS if not hasattr(FakeNvml, n)] == []
