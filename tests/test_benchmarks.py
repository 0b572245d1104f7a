"""The benchmark scripts (benchmarks/) in --quick mode: each runs as a subprocess, exits 0 and
prints its invariant checks as passed (about 2 minutes in all on 2 loaded cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: script -> the checks it must report as passed
CHECKS: dict[str, tuple[str, ...]] = {
    "harness_overhead": ("demo.latency_ratio", "demo.same_inputs", "demo.adapter_ran",
                         "tiny.latency_ratio", "tiny.deferred_latency_ratio",
                         "tiny.same_inputs"),
    "sampler_cost": ("demo.cost_50ms", "demo.cost_10ms", "demo.sampled_50ms",
                     "demo.sampled_10ms", "demo.off_took_no_samples"),
    "coco_eval": ("same_stats", "speedup", "case_size", "passes_same_stats",
                  "streamed_json_same_bytes"),
    "memory": ("jobs_finished", "peak_bounded", "timed_loop_bounded", "polling_agrees"),
    "fixed_cost": ("jobs_finished", "before_first_timed_call_adds_up",
                   "after_last_timed_call_adds_up", "before_ceiling", "after_ceiling"),
    "input_prep": ("prepare_faster_than_inference",),
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_benchmark_quick(name: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)
    output = done.stdout
    tail = f"\n--- stdout\n{output[-4000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{name} exited {done.returncode}{tail}"
    for check in CHECKS[name]:
        assert f"CHECK PASS {name}.{check}:" in output, f"no passed check {check}{tail}"
    assert f"RESULT {name}: PASS" in output, tail
    assert "FIGURE " in output, tail
