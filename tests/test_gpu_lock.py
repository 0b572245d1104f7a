"""runner.gpu_lock: one holder per slot (threads and processes), slots in parallel, narrowing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runner import gpu_lock
from runner.gpu_lock import GpuLockTimeout, exclusive_gpu, visible_gpus

UUIDS = ["GPU-aaaa-1111", "GPU-bbbb-2222", "GPU-cccc-3333"]


@pytest.mark.parametrize(("cuda_visible", "expected"), [
    (None, [("0", UUIDS[0]), ("1", UUIDS[1]), ("2", UUIDS[2])]),
    ("2,0", [("2", UUIDS[2]), ("0", UUIDS[0])]),
    ("1,1", [("1", UUIDS[1])]),
    ("0,7,1", [("0", UUIDS[0])]),  # CUDA stops at the first index that names no GPU
    ("", []),
    ("-1", []),
    ("1,-1,2", [("1", UUIDS[1])]),
    ("GPU-bbbb", [("GPU-bbbb", UUIDS[1])]),
    ("MIG-abcd", [("MIG-abcd", "MIG-abcd")]),
])
def test_visible_gpus_reads_cuda_visible_devices_like_cuda(
        cuda_visible: str | None, expected: list[tuple[str, str]]) -> None:
    assert visible_gpus(UUIDS, cuda_visible) == expected


def test_no_gpu_means_the_cpu_slot() -> None:
    assert visible_gpus([], "0,1") == []


def test_cpu_only_machine_holds_a_per_host_cpu_slot(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_lock, "gpu_uuids", list)
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    with exclusive_gpu(tmp_path, timeout_s=1, environ=env) as slot:
        assert (slot.name, slot.device, slot.uuid) == ("cpu", None, None)
        assert slot.lock_file.parent == tmp_path / "locks"
        assert slot.lock_file.name.startswith("cpu@")
        assert env == {"CUDA_VISIBLE_DEVICES": "0"}
    assert env == {"CUDA_VISIBLE_DEVICES": "0"}


def test_several_gpus_narrow_cuda_visible_devices_while_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_lock, "gpu_uuids", lambda: UUIDS[:2])
    env: dict[str, str] = {"OTHER": "x"}
    with exclusive_gpu(tmp_path / "~cache", timeout_s=1, environ=env) as slot:
        assert slot.device in ("0", "1")
        assert slot.visible == ("0", "1")
        assert slot.lock_file == tmp_path / "~cache" / "locks" / f"{slot.uuid}.lock"
        assert env == {"OTHER": "x", "CUDA_VISIBLE_DEVICES": slot.device,
                       "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        assert slot.env({})["CUDA_VISIBLE_DEVICES"] == slot.device
    assert env == {"OTHER": "x"}


def test_one_visible_gpu_is_left_as_it_is(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_lock, "gpu_uuids", lambda: UUIDS)
    env = {"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    with exclusive_gpu(tmp_path, environ=env) as slot:
        assert (slot.name, slot.uuid) == ("gpu2", UUIDS[2])
        assert env == {"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"}


def test_threads_never_overlap_on_one_slot(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_lock, "gpu_uuids", lambda: UUIDS[:1])
    intervals: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with exclusive_gpu(tmp_path, timeout_s=30, environ={}, poll_s=0.01):
                start = time.monotonic()
                time.sleep(0.1)
                intervals.append((start, time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    intervals.sort()
    assert len(intervals) == 4
    assert all(a[1] <= b[0] for a, b in zip(intervals, intervals[1:], strict=False))


def test_a_held_slot_times_out_and_is_released_after_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_lock, "gpu_uuids", lambda: UUIDS[:1])
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with exclusive_gpu(tmp_path, environ={}):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    start = time.monotonic()
    with (pytest.raises(GpuLockTimeout, match="no free GPU slot within 0.2 s"),
          exclusive_gpu(tmp_path, timeout_s=0.2, environ={}, poll_s=0.02)):
        pass
    assert 0.15 < time.monotonic() - start < 2
    release.set()
    thread.join()
    with pytest.raises(RuntimeError), exclusive_gpu(tmp_path, timeout_s=1, environ={}):
        raise RuntimeError("job failed")
    with exclusive_gpu(tmp_path, timeout_s=0, environ={}) as slot:  # released despite the error
        assert slot.uuid == UUIDS[0]


HOLDER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from runner import gpu_lock
    gpu_lock.gpu_uuids = lambda: {uuids!r}
    cache, out, go = (Path(a) for a in sys.argv[1:4])
    hold = float(sys.argv[4])
    while not go.exists():
        time.sleep(0.01)
    with gpu_lock.exclusive_gpu(cache, timeout_s=60, poll_s=0.02) as slot:
        start = time.time()
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        time.sleep(hold)
        end = time.time()
    out.write_text(json.dumps({{"uuid": slot.uuid, "device": slot.device, "seen": seen,
                               "start": start, "end": end}}))
""")


def _run_holders(tmp_path: Path, uuids: list[str], count: int, hold_s: float,
                 cuda_visible: str) -> list[dict[str, Any]]:
    script = HOLDER.format(uuids=uuids)
    go = tmp_path / "go"
    env = {**_clean_env(), "CUDA_VISIBLE_DEVICES": cuda_visible}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "cache"),
                               str(tmp_path / f"out{i}.json"), str(go), str(hold_s)], env=env)
             for i in range(count)]
    time.sleep(0.5)  # let every process start and wait for "go"
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    return [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(count)]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["start"] < b["end"] and b["start"] < a["end"])


def test_processes_on_two_gpus_run_in_parallel_but_never_share_one(tmp_path: Path) -> None:
    results = _run_holders(tmp_path, UUIDS[:2], count=4, hold_s=0.6, cuda_visible="0,1")
    for i, a in enumerate(results):
        assert a["seen"] == a["device"]  # the child work saw only its own GPU
        for b in results[i + 1:]:
            if a["uuid"] == b["uuid"]:
                assert not _overlap(a, b), (a, b)
    assert {r["uuid"] for r in results} == set(UUIDS[:2])
    assert any(_overlap(a, b) for i, a in enumerate(results) for b in results[i + 1:])
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    assert span < 4 * 0.6  # two at a time, not one


def test_processes_on_one_gpu_take_turns(tmp_path: Path) -> None:
    results = _run_holders(tmp_path, UUIDS[:1], count=3, hold_s=0.3, cuda_visible="0")
    assert all(r["seen"] == "0" for r in results)
    assert not any(_overlap(a, b) for i, a in enumerate(results) for b in results[i + 1:])


def test_work_in_this_process_stays_on_its_first_gpu(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_lock, "gpu_uuids", lambda: UUIDS)
    monkeypatch.setattr(gpu_lock, "_in_process_gpu", None)
    with exclusive_gpu(tmp_path, environ={}, in_process=True) as first:
        pass
    for _ in range(10):  # any of the 3 without in_process; always the first one with it
        with exclusive_gpu(tmp_path, environ={}, in_process=True) as slot:
            assert slot.uuid == first.uuid
            assert slot.visible == ("0", "1", "2")
    held, release = threading.Event(), threading.Event()

    def holder() -> None:  # another job on the same GPU
        with exclusive_gpu(tmp_path, environ={"CUDA_VISIBLE_DEVICES": first.device or ""}):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    with (pytest.raises(GpuLockTimeout),
          exclusive_gpu(tmp_path, timeout_s=0.2, environ={}, in_process=True, poll_s=0.02)):
        pass
    with exclusive_gpu(tmp_path, timeout_s=0, environ={}) as other:  # a child's work may move
        assert other.uuid != first.uuid
    release.set()
    thread.join()


@pytest.mark.parametrize(("cuda_visible", "count"), [
    (None, 3), ("-1", 0), ("", 0), ("GPU-cccc", 1), ("MIG-abcd", 1), ("7", 0), ("2,0", 2)])
def test_preflight_gpu_count_reads_cuda_visible_devices_like_the_lock(
        cuda_visible: str | None, count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AMP FP16 check's GPU count uses the same reading as the lock (before: any value but
    "" and "-1" counted every GPU NVML sees, so "7" on a 3-GPU machine counted 3)."""
    from runner import preflight

    monkeypatch.setattr(gpu_lock, "gpu_uuids", lambda: UUIDS)
    if cuda_visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible)
    found, why = preflight.gpu_count()
    assert found == count == len(visible_gpus(UUIDS, cuda_visible)), why
    monkeypatch.setattr(gpu_lock, "gpu_uuids", list)
    assert preflight.gpu_count()[0] == 0
