from __future__ import annotations

import math

import numpy as np
import pytest

from runner.stats import PERCENTILE_METHODS, LatencyStats, summarize

MS = 1e-3


def test_hand_computed_four_values() -> None:
    s = summarize([1 * MS, 2 * MS, 3 * MS, 4 * MS])
    assert s.count == 4
    assert s.total_time_s == pytest.approx(0.010)
    assert s.images_per_sec == pytest.approx(400.0)
    assert s.images_per_sec_mean_of_rates == pytest.approx((1000 + 500 + 1000 / 3 + 250) / 4)
    assert s.latency_mean_ms == pytest.approx(2.5)
    assert s.latency_median_ms == pytest.approx(2.5)
    assert s.latency_min_ms == pytest.approx(1.0)
    assert s.latency_max_ms == pytest.approx(4.0)
    # sample std (ddof=1): sqrt(((1.5^2 + 0.5^2) * 2) / 3) = sqrt(5/3)
    assert s.latency_std_ms == pytest.approx(math.sqrt(5 / 3))
    assert s.latency_cv == pytest.approx(math.sqrt(5 / 3) / 2.5)
    # linear: position q * (n - 1) = 0.99 * 3 = 2.97 -> 3 + 0.97 * (4 - 3)
    assert s.latency_p99_ms == pytest.approx(3.97)
    assert s.latency_p95_ms == pytest.approx(3.85)
    assert s.latency_p90_ms == pytest.approx(3.7)
    assert s.percentile_method == "linear"


def test_lower_percentile_method_matches_public_table_convention() -> None:
    s = summarize([1 * MS, 2 * MS, 3 * MS, 4 * MS], percentile_method="lower")
    assert s.latency_p99_ms == pytest.approx(3.0)
    assert s.latency_p90_ms == pytest.approx(3.0)
    assert s.percentile_method == "lower"
    assert summarize([1 * MS, 2 * MS, 3 * MS, 4 * MS], "higher").latency_p99_ms == pytest.approx(4)


def test_mean_of_rates_differs_from_count_over_total() -> None:
    s = summarize([0.1, 0.3])
    assert s.images_per_sec == pytest.approx(2 / 0.4)  # 5.0
    assert s.images_per_sec_mean_of_rates == pytest.approx((10 + 10 / 3) / 2)  # 6.67


def test_single_value_has_zero_spread() -> None:
    s = summarize(np.array([0.05]))
    assert s.count == 1
    assert s.latency_std_ms == 0.0
    assert s.latency_cv == 0.0
    assert s.latency_p99_ms == pytest.approx(50.0)
    assert s.images_per_sec == pytest.approx(20.0)


def test_odd_count_median_and_numpy_input() -> None:
    s = summarize(np.array([5, 1, 3], dtype=np.float32) * MS)
    assert s.latency_median_ms == pytest.approx(3.0, rel=1e-6)
    assert s.latency_min_ms == pytest.approx(1.0, rel=1e-6)
    assert s.latency_max_ms == pytest.approx(5.0, rel=1e-6)


def test_as_metrics_has_every_numeric_field() -> None:
    s = summarize([1 * MS, 2 * MS])
    m = s.as_metrics()
    expected = {
        "count", "total_time_s", "images_per_sec", "images_per_sec_mean_of_rates",
        "latency_mean_ms", "latency_median_ms", "latency_min_ms", "latency_max_ms",
        "latency_std_ms", "latency_cv", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms",
    }  # fmt: skip
    assert set(m) == expected
    assert all(type(v) is float for v in m.values())
    assert m["count"] == 2.0
    assert m["latency_mean_ms"] == pytest.approx(1.5)


def test_frozen() -> None:
    s = summarize([MS])
    assert isinstance(s, LatencyStats)
    with pytest.raises(AttributeError):
        s.count = 3  # type: ignore[misc]


def test_every_listed_method_is_accepted() -> None:
    for method in PERCENTILE_METHODS:
        assert summarize([MS, 2 * MS, 3 * MS], method).percentile_method == method


def test_empty_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        summarize([])


@pytest.mark.parametrize("bad", [0.0, -0.001, float("nan"), float("inf")])
def test_invalid_latency_raises_naming_value(bad: float) -> None:
    with pytest.raises(ValueError, match=r"latencies_s\[1\] = ") as info:
        summarize([0.01, bad, 0.02])
    assert repr(bad) in str(info.value)
    assert "positive, finite" in str(info.value)


def test_unknown_method_raises_with_choices() -> None:
    with pytest.raises(ValueError, match="'interpolate'") as info:
        summarize([0.01], percentile_method="interpolate")
    assert "linear" in str(info.value) and "lower" in str(info.value)
