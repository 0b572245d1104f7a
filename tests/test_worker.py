from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runner import config, worker
from tests.conftest import compose_job


def _cfg(*overrides: str) -> config.JobConfig:
    return config.to_object(compose_job(list(overrides)))


def test_timing_metrics_pool_repeats_and_report_their_spread(tmp_path: Path) -> None:
    passes = np.array([[0.010, 0.012, 0.011], [0.011, 0.013, 0.012]])
    m = worker.timing_metrics(passes, _cfg("benchmark.repeats=2"), {}, tmp_path)
    assert m["count"] == 6 and m["latency_mean_ms"] == pytest.approx(11.5)
    assert m["repeats.latency_mean_ms.mean"] == pytest.approx(11.5)
    assert m["repeats.latency_mean_ms.std"] == pytest.approx(np.std([11.0, 12.0], ddof=1))
    assert m["latency_mean_ci_low_ms"] <= 11.5 <= m["latency_mean_ci_high_ms"]
    assert m["stable"] == 1.0 and json.loads((tmp_path / "stability.json").read_text())["stable"]


def test_noisy_or_throttled_timings_are_flagged(tmp_path: Path) -> None:
    noisy = np.array([[0.010, 0.030, 0.011, 0.050]])
    assert worker.timing_metrics(noisy, _cfg(), {}, tmp_path)["stable"] == 0.0
    steady = np.array([[0.010, 0.010, 0.0101]])
    throttled = {"gpu_throttle_thermal_or_power": 1.0}
    assert worker.timing_metrics(steady, _cfg(), throttled, tmp_path)["stable"] == 0.0
    assert "throttling" in json.loads((tmp_path / "stability.json").read_text())["warning"]


def test_resize_target_follows_policy_and_fixed_inputs() -> None:
    from runner import data

    assert data.input_spec(_cfg(), [1, None, None, 3], "uint8").size is None
    assert data.input_spec(_cfg(), [1, 512, 512, 3], "uint8").size == (512, 512)
    seed = _cfg("benchmark.input_policy=seed")
    assert data.input_spec(seed, [1, None, None, 3], "uint8").size == (256, 256)
