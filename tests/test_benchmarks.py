"""The benchmark scripts (benchmarks/) in --quick mode: each runs as a subprocess, exits 0,
prints its invariant checks as passed and reports its timing targets (about 2 minutes in all on
2 loaded cores)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: each script measures for real (jobs, conversions, hogs): the slow lane (make test-slow)
pytestmark = pytest.mark.slow

#: script -> the invariant checks it must report as passed
CHECKS: dict[str, tuple[str, ...]] = {
    "harness_overhead": ("demo.same_inputs", "demo.adapter_ran", "tiny.same_inputs"),
    "sampler_cost": ("demo.sampled_50ms", "demo.sampled_10ms",
                     "demo.off_took_no_samples"),
    "coco_eval": ("same_stats", "case_size", "passes_same_stats", "streamed_json_same_bytes"),
    "memory": ("jobs_finished", "peak_bounded", "timed_loop_bounded", "polling_agrees"),
    "fixed_cost": ("jobs_finished", "before_first_timed_call_adds_up",
                   "after_last_timed_call_adds_up"),
    "input_prep": ("prepared_shapes",),
    "latency_store": ("log_holds_the_latencies", "sigkilled_child_keeps_its_latencies"),
    "fingerprint_cost": ("same_digest", "change_detected"),
    "runtimes": ("all_converted", "fp32_keeps_ap", "smaller_files"),
}
#: script -> the timing targets it must report (met or missed: quick runs are too short to judge)
TARGETS: dict[str, tuple[str, ...]] = {
    "harness_overhead": ("demo.latency_ratio", "tiny.latency_ratio",
                         "tiny.deferred_latency_ratio"),
    "sampler_cost": ("demo.cost_default", "demo.coverage_target_50ms", "demo.coverage_target_10ms"),
    "coco_eval": ("speedup",),
    "memory": (),
    "fixed_cost": ("before_ceiling", "after_ceiling"),
    "input_prep": ("prepare_faster_than_inference",),
    "latency_store": ("log.added_ns_per_call",),
    "fingerprint_cost": ("cached_under_1pct",),
    "runtimes": ("int8_faster",),
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
    for target in TARGETS[name]:
        assert re.search(rf"^TARGET (MET|MISSED) {name}\.{re.escape(target)}: ", output, re.M), (
            f"target {target} not reported{tail}")
    assert "CHECK FAIL" not in output, tail
    assert f"RESULT {name}: PASS" in output, tail
    assert "FIGURE " in output, tail
