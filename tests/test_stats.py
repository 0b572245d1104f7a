from __future__ import annotations

import math

import numpy as np
import pytest

from runner import stats
from runner.stats import (
    PERCENTILE_METHODS,
    LatencyStats,
    autocorrelation_time,
    batch_size,
    bootstrap_ci,
    mean_interval,
    stability,
    summarize,
    summarize_repeats,
    t_interval,
    throughput_interval,
)

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


# -- bootstrap_ci ---------------------------------------------------------------------------


@pytest.mark.parametrize("statistic, expected", [("mean", 0.02), ("throughput", 50.0)])
def test_bootstrap_constant_latencies_give_zero_width(statistic: str, expected: float) -> None:
    low, high = bootstrap_ci([0.02] * 50, statistic)
    assert low == pytest.approx(expected) and high == pytest.approx(expected)
    assert high - low == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_two_values_hand_computed() -> None:
    # Resamples of [a, b] have mean a (p 1/4), (a+b)/2 (p 1/2) or b (p 1/4): the 2.5 % and 97.5 %
    # quantiles are a and b, the 30 % and 70 % quantiles both (a+b)/2.
    a, b = 0.010, 0.030
    assert bootstrap_ci([a, b], "mean", confidence=0.95) == pytest.approx((a, b))
    assert bootstrap_ci([a, b], "mean", confidence=0.40) == pytest.approx((0.02, 0.02))
    assert bootstrap_ci([a, b], "throughput", confidence=0.95) == pytest.approx((1 / b, 1 / a))
    assert bootstrap_ci([a, b], "throughput", confidence=0.40) == pytest.approx((50.0, 50.0))


def test_bootstrap_contains_estimate_and_narrows_with_confidence() -> None:
    lat = np.array([12, 15, 11, 14, 30, 13, 12, 16, 11, 14], dtype=np.float64) * MS
    mean, throughput = lat.mean(), lat.size / lat.sum()
    wide = bootstrap_ci(lat, "mean", confidence=0.95)
    narrow = bootstrap_ci(lat, "mean", confidence=0.80)
    assert wide[0] < mean < wide[1]
    assert wide[0] <= narrow[0] < mean < narrow[1] <= wide[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert lat.min() <= wide[0] and wide[1] <= lat.max()
    t_low, t_high = bootstrap_ci(lat, "throughput")
    assert t_low < throughput < t_high
    # throughput = count / sum = 1 / mean, so its interval mirrors the mean's
    assert (t_low, t_high) == pytest.approx((1 / wide[1], 1 / wide[0]))


def test_bootstrap_deterministic_with_seed() -> None:
    lat = np.linspace(1, 5, 17) * MS
    assert bootstrap_ci(lat, seed=3) == bootstrap_ci(lat, seed=3)
    assert bootstrap_ci(lat, seed=3) != bootstrap_ci(lat, seed=4)
    assert bootstrap_ci(lat, n_resamples=1) == bootstrap_ci(lat, n_resamples=1)


def test_bootstrap_chunked_resampling_is_the_same_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    lat = np.linspace(1, 5, 17) * MS
    whole = bootstrap_ci(lat, n_resamples=300)
    monkeypatch.setattr(stats, "_BOOTSTRAP_BLOCK", 17 * 7)  # 7 resamples per block
    assert bootstrap_ci(lat, n_resamples=300) == whole


@pytest.mark.parametrize("kwargs, match", [
    ({"statistic": "median"}, "unknown statistic 'median'"),
    ({"n_resamples": 0}, "n_resamples"),
    ({"confidence": 1.0}, "confidence"),
    ({"confidence": 0.0}, "confidence"),
])
def test_bootstrap_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bootstrap_ci([MS, 2 * MS], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])


# -- stability ------------------------------------------------------------------------------


def test_stability_constant_is_stable_without_warning() -> None:
    assert stability([10 * MS] * 5) == (True, "")


def test_stability_noisy_latencies_warn_with_cv() -> None:
    # [10, 20] ms: mean 15, sample std sqrt(50) = 7.07, CV 0.471
    ok, text = stability([10 * MS, 20 * MS])
    assert not ok
    assert "CV 0.471 is above 0.100" in text and "mean 15.00 ms" in text
    assert stability([10 * MS, 20 * MS], cv_threshold=0.5) == (True, "")


def test_stability_throttling_is_reported_even_when_steady() -> None:
    ok, text = stability([10 * MS] * 5, throttled=True)
    assert not ok and "throttling" in text and "CV" not in text
    ok, text = stability([10 * MS, 20 * MS], throttled=True)
    assert not ok and "CV" in text and "throttling" in text


def test_stability_rejects_bad_threshold() -> None:
    with pytest.raises(ValueError, match="cv_threshold"):
        stability([MS], cv_threshold=-0.1)


# -- summarize_repeats ----------------------------------------------------------------------


def test_summarize_repeats_mean_and_sample_std() -> None:
    out = summarize_repeats([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.0}, {"a": 5.0, "b": 2.0}])
    # t interval over the 3 runs: 3 +- t(0.975, 2) * 2 / sqrt(3), t(0.975, 2) = 4.302653
    half = 4.302652729911275 * 2.0 / math.sqrt(3)
    assert out == pytest.approx({"a.mean": 3.0, "a.std": 2.0, "a.ci_low": 3 - half,
                                 "a.ci_high": 3 + half, "b.mean": 2.0, "b.std": 0.0,
                                 "b.ci_low": 2.0, "b.ci_high": 2.0})
    assert list(out)[:3] == ["a.mean", "a.std", "a.ci_low"]


def test_summarize_repeats_single_missing_and_nan() -> None:
    assert summarize_repeats([{"x": 4.0}]) == {"x.mean": 4.0, "x.std": 0.0}
    out = summarize_repeats([{"x": 1.0, "y": float("nan")}, {"x": 2.0}, {"z": 7.0}])
    assert {k: v for k, v in out.items() if ".ci_" not in k} == pytest.approx(
        {"x.mean": 1.5, "x.std": math.sqrt(0.5), "z.mean": 7.0, "z.std": 0.0})
    assert out["x.ci_low"] < 1.5 < out["x.ci_high"] and "z.ci_low" not in out
    assert summarize_repeats([]) == {}


def test_stability_low_telemetry_coverage_is_unstable() -> None:
    assert stability([10 * MS] * 5, telemetry_coverage=0.95) == (True, "")
    ok, text = stability([10 * MS] * 5, telemetry_coverage=0.42)
    assert not ok and "telemetry coverage 0.42 is below 0.90" in text
    assert stability([10 * MS] * 5, telemetry_coverage=None) == (True, "")


# -- intervals for dependent series -----------------------------------------------------------

TRUE_MEAN = 0.010  # s


def ar1_lognormal(rng: np.random.Generator, reps: int, n: int, phi: float = 0.5,
                  burn: int = 50) -> np.ndarray:
    """``reps`` series of AR(1) latencies around TRUE_MEAN: x_t = phi x_(t-1) + e_t with centred
    log-normal e_t (sigma 0.5, scale 1 ms), started ``burn`` steps early; all values positive."""
    scale, sigma = 0.001, 0.5
    noise = scale * (np.exp(sigma * rng.standard_normal((reps, n + burn)))
                     - math.exp(sigma**2 / 2))
    x = np.empty_like(noise)
    x[:, 0] = noise[:, 0]
    for t in range(1, n + burn):  # vectorized over replications
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return TRUE_MEAN + x[:, burn:]


REPLICATIONS = 400


@pytest.mark.parametrize("n", [200, 5000])
def test_batch_means_interval_covers_true_mean_of_autocorrelated_series(n: int) -> None:
    """Nominal 95% must cover the true mean in 92-98% of 400 seeded AR(1) phi 0.5 series (measured
    0.955 at n = 200, 0.9425 at n = 5000; 0.04 s and 0.4 s)."""
    series = ar1_lognormal(np.random.default_rng(20261201 + n), REPLICATIONS, n)
    assert (series > 0).all()
    intervals = [mean_interval(x) for x in series]
    covered = np.mean([iv.low <= TRUE_MEAN <= iv.high for iv in intervals])
    assert 0.92 <= covered <= 0.98, f"coverage {covered:.4f} at n={n}"
    taus = [iv.autocorrelation_time for iv in intervals]
    assert 2.0 < float(np.median(taus)) < 4.5  # (1 + phi) / (1 - phi) = 3
    assert all(iv.method == "batch means" and iv.batches >= 10 for iv in intervals)


def test_independent_bootstrap_under_covers_autocorrelated_series() -> None:
    """What the runs reported before: the i.i.d. bootstrap on the same kind of series covers the
    true mean far below its nominal 95% (measured 0.735 at
    n = 200 with 1,000 resamples, 0.7075 at n = 5000), the failure the batch means fix."""
    series = ar1_lognormal(np.random.default_rng(7), REPLICATIONS, 200)
    covered = np.mean([lo <= TRUE_MEAN <= hi for lo, hi in
                       (bootstrap_ci(x, n_resamples=400, seed=i) for i, x in enumerate(series))])
    assert covered < 0.85, covered


def test_autocorrelation_time_of_independent_and_constant_series() -> None:
    rng = np.random.default_rng(3)
    assert autocorrelation_time(rng.standard_normal(5000)) == pytest.approx(1.0, abs=0.2)
    assert autocorrelation_time([2.0] * 100) == 1.0
    assert autocorrelation_time([1.0, 2.0]) == 1.0


def test_batch_size_rules() -> None:
    assert batch_size(10, 5.0) == 1  # too few values for batches: each value its own
    assert batch_size(200, 1.0) == 15  # ceil(sqrt(200))
    assert batch_size(200, 3.0) == 20  # 10 tau = 30, capped to keep 10 batches
    assert batch_size(5000, 3.0) == 71  # sqrt(5000) = 70.7 > 10 tau
    assert batch_size(5000, 20.0) == 200


def test_mean_interval_hand_computed_for_independent_values() -> None:
    # 20 values, tau 1 -> batches of ceil(sqrt(20)) = 5, capped at 20 // 10 = 2: 10 batches
    x = np.arange(1.0, 21.0)
    iv = mean_interval(x)
    assert (iv.batch_size, iv.batches) == (2, 10)
    means = x.reshape(10, 2).mean(axis=1)
    half = 2.2621571627409915 * means.std(ddof=1) / math.sqrt(10)  # t(0.975, 9)
    assert (iv.low, iv.high) == pytest.approx((10.5 - half, 10.5 + half))
    one = mean_interval([3.0])
    assert (one.low, one.high) == (3.0, 3.0)
    with pytest.raises(ValueError, match="empty"):
        mean_interval([])
    with pytest.raises(ValueError, match="confidence"):
        mean_interval([1.0, 2.0], confidence=1.5)


def test_throughput_interval_mirrors_mean_latency_interval() -> None:
    lat = ar1_lognormal(np.random.default_rng(1), 1, 500)[0]
    iv = mean_interval(lat)
    low, high = throughput_interval(lat)
    assert (low, high) == pytest.approx((1 / iv.high, 1 / iv.low))
    assert low < lat.size / lat.sum() < high


def test_t_interval_needs_two_values() -> None:
    assert all(math.isnan(v) for v in t_interval([1.0]))
    low, high = t_interval([1.0, 3.0])
    assert (low, high) == pytest.approx((2 - 12.706204736174707, 2 + 12.706204736174707))
