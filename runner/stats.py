"""Latency and throughput statistics of one benchmark run.

Latencies come in seconds (one per timed model call); the summary reports milliseconds.
Two throughput figures are kept apart on purpose: ``images_per_sec`` is ``count / total_time_s``
(what this project reports), ``images_per_sec_mean_of_rates`` is the mean of per-call rates
``1 / latency`` (what the public benchmark table calls images/sec). The public table's
99th percentile uses the ``'lower'`` method; ours defaults to ``'linear'`` (numpy's default).

Intervals: consecutive calls are not independent (lag-1 autocorrelation 0.25 measured on the demo
detector), so the interval of a run's mean is a **batch-means** t-interval (``mean_interval``),
whose batch size grows with the series' estimated autocorrelation time. In a seeded simulation
(AR(1), phi 0.5, log-normal noise, 400 replications; ``tests/test_stats.py``) its nominal 95%
covers the true mean in 95.5% (n = 200) and 94.25% (n = 5,000) of them, where the independent
bootstrap (``bootstrap_ci``, kept for independent values only) covers it in 73.5% and 70.75%.
Across repeated runs of one config, ``summarize_repeats`` gives the between-run spread and a
t-interval over the runs' values: a different quantity (run-to-run variation), named
``repeats.<metric>.*``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np
from scipy.special import stdtrit

PERCENTILE_METHODS: tuple[str, ...] = (
    "inverted_cdf",
    "averaged_inverted_cdf",
    "closest_observation",
    "interpolated_inverted_cdf",
    "hazen",
    "weibull",
    "linear",
    "median_unbiased",
    "normal_unbiased",
    "lower",
    "higher",
    "midpoint",
    "nearest",
)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-image latencies (times in ms unless the name says otherwise)."""

    count: int
    total_time_s: float
    images_per_sec: float
    images_per_sec_mean_of_rates: float
    latency_mean_ms: float
    latency_median_ms: float
    latency_min_ms: float
    latency_max_ms: float
    latency_std_ms: float
    latency_cv: float
    latency_p90_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    percentile_method: str

    def as_metrics(self) -> dict[str, float]:
        """Every numeric field keyed by its name (``count`` as a float)."""
        return {
            f.name: float(getattr(self, f.name))
            for f in fields(self)
            if f.name != "percentile_method"
        }


def _validated(latencies_s: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(latencies_s, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("latencies_s is empty: need at least one positive, finite latency (s)")
    bad = ~np.isfinite(arr) | (arr <= 0.0)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"latencies_s[{index}] = {arr[index]!r} is invalid: every latency must be a positive, "
            f"finite number of seconds ({int(bad.sum())} invalid of {arr.size})"
        )
    return arr


def _check_method(percentile_method: str) -> None:
    if percentile_method not in PERCENTILE_METHODS:
        raise ValueError(
            f"unknown percentile_method {percentile_method!r}; "
            f"valid choices: {', '.join(PERCENTILE_METHODS)}"
        )


def summarize(
    latencies_s: Sequence[float] | np.ndarray, percentile_method: str = "linear"
) -> LatencyStats:
    """Summarize per-image latencies given in seconds.

    Raises ``ValueError`` for an empty input, a non-positive or non-finite latency, or a
    ``percentile_method`` not in ``PERCENTILE_METHODS``.
    """
    _check_method(percentile_method)
    lat_s = _validated(latencies_s)
    lat_ms = lat_s * 1000.0
    count = int(lat_s.size)
    total_s = float(lat_s.sum())
    mean_ms = float(lat_ms.mean())
    std_ms = float(lat_ms.std(ddof=1)) if count > 1 else 0.0
    method = cast(Any, percentile_method)  # numpy types it as a Literal; validated above
    p90, p95, p99 = (float(v) for v in np.percentile(lat_ms, [90.0, 95.0, 99.0], method=method))
    return LatencyStats(
        count=count,
        total_time_s=total_s,
        images_per_sec=count / total_s,
        images_per_sec_mean_of_rates=float(np.mean(1.0 / lat_s)),
        latency_mean_ms=mean_ms,
        latency_median_ms=float(np.median(lat_ms)),
        latency_min_ms=float(lat_ms.min()),
        latency_max_ms=float(lat_ms.max()),
        latency_std_ms=std_ms,
        latency_cv=std_ms / mean_ms,
        latency_p90_ms=p90,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        percentile_method=percentile_method,
    )


# -- uncertainty, stability and repeats -------------------------------------------------------

BOOTSTRAP_STATISTICS: tuple[str, ...] = ("mean", "throughput")
_BOOTSTRAP_BLOCK = 1_000_000  # resampled values held in memory at once


def bootstrap_ci(
    latencies_s: Sequence[float] | np.ndarray,
    statistic: str = "mean",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean latency (s) or of the throughput,
    **for independent latencies only**: it resamples calls one by one, so for a series with
    positive autocorrelation (per-call latencies) it is too narrow: nominal 95% covered the true
    mean in 71-74% of simulated AR(1) phi 0.5 runs. Runs use ``mean_interval``.

    ``statistic="mean"`` gives the interval of ``mean(latencies_s)`` in seconds,
    ``"throughput"`` that of ``count / sum(latencies_s)`` in images/s. Each resample draws
    ``len(latencies_s)`` latencies with replacement; the bounds are the ``(1 - confidence) / 2``
    and ``(1 + confidence) / 2`` quantiles of the resampled statistic. Same input and seed, same
    interval; a lower confidence on the same seed gives a nested (never wider) interval.
    """
    if statistic not in BOOTSTRAP_STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; valid choices: "
                         f"{', '.join(BOOTSTRAP_STATISTICS)}")
    if not (isinstance(n_resamples, int) and n_resamples >= 1):
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if not (isinstance(confidence, int | float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    lat = _validated(latencies_s)
    n = lat.size
    rng = np.random.default_rng(seed)
    block = max(1, _BOOTSTRAP_BLOCK // n)
    sums = np.concatenate([
        lat[rng.integers(0, n, size=(min(block, n_resamples - start), n))].sum(axis=1)
        for start in range(0, n_resamples, block)
    ])
    values = sums / n if statistic == "mean" else n / sums
    alpha = 1.0 - float(confidence)
    low, high = np.percentile(values, [100.0 * alpha / 2, 100.0 * (1.0 - alpha / 2)])
    return float(low), float(high)

# Batch means: below MIN_BATCHES batches the t quantile (and the spread of the batches) is too
# unsteady; BATCH_TAU_FACTOR autocorrelation times per batch keep the batch means' variance bias
# (about -2 sum(k rho_k) / (tau m), -4% for AR(1) phi 0.5 at m = 10 tau) small.
MIN_BATCHES = 10
BATCH_TAU_FACTOR = 10.0
SOKAL_WINDOW = 5.0  # Sokal's automatic window: the first lag M with M >= 5 tau(M)


@dataclass(frozen=True)
class Interval:
    """A confidence interval of a run's mean and how it was computed."""

    low: float
    high: float
    confidence: float
    method: str  # "batch means" (dependent series), "t" (independent values, e.g. across runs)
    batch_size: int  # values per batch (1: each value its own batch)
    batches: int
    autocorrelation_time: float  # estimated integrated autocorrelation time (1: independent)


def autocorrelation_time(values: Sequence[float] | np.ndarray) -> float:
    """Integrated autocorrelation time ``1 + 2 sum_k rho_k`` of a series (1 for independent
    values, 3 for AR(1) with phi 0.5), summed up to Sokal's automatic window; at least 1."""
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    if n < 3:
        return 1.0
    x = x - x.mean()
    size = 1 << int(2 * n - 1).bit_length()
    spectrum = np.fft.rfft(x, size)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), size)[:n]
    if acov[0] <= 0:
        return 1.0  # constant series
    rho = acov / acov[0]
    taus = 2.0 * np.cumsum(rho) - 1.0  # tau(M) = 1 + 2 sum_{k=1..M} rho_k
    window = np.flatnonzero(np.arange(n) >= SOKAL_WINDOW * taus)
    tau = float(taus[window[0]] if window.size else taus[-1])
    return max(tau, 1.0)


def batch_size(n: int, tau: float) -> int:
    """Values per batch for ``n`` values with autocorrelation time ``tau``: at least sqrt(n) (the
    consistent choice for batch means) and ``BATCH_TAU_FACTOR * tau``, but leaving at least
    ``MIN_BATCHES`` batches (one value per batch below ``2 * MIN_BATCHES`` values)."""
    if n < 2 * MIN_BATCHES:
        return 1
    wanted = max(math.ceil(math.sqrt(n)), math.ceil(BATCH_TAU_FACTOR * tau))
    return max(1, min(wanted, n // MIN_BATCHES))


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Batch-means t-interval of the mean of a (possibly autocorrelated) series.

    The series is cut into ``b`` consecutive batches of ``m`` values (``batch_size``; the first
    ``n mod m`` values join no batch), the batch means are treated as independent, and the
    interval is ``mean +- t_{b-1} * sd(batch means) / sqrt(b)`` around the mean of all values.
    One value gives a zero-width interval.
    """
    if not (isinstance(confidence, int | float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("values is empty: need at least one value")
    if not np.isfinite(x).all():
        raise ValueError("values hold a non-finite number")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, mean, float(confidence), "batch means", 1, 1, 1.0)
    tau = autocorrelation_time(x)
    m = batch_size(x.size, tau)
    b = x.size // m
    batches = x[x.size - b * m:].reshape(b, m).mean(axis=1)
    half = float(stdtrit(b - 1, 0.5 + confidence / 2) * batches.std(ddof=1) / math.sqrt(b))
    return Interval(mean - half, mean + half, float(confidence), "batch means", m, b, tau)


def throughput_interval(latencies_s: Sequence[float] | np.ndarray,
                        confidence: float = 0.95) -> tuple[float, float]:
    """Interval of ``count / sum(latencies)`` (images/s) = 1 / the mean latency's interval."""
    iv = mean_interval(_validated(latencies_s), confidence)
    return 1.0 / iv.high if iv.high > 0 else math.inf, 1.0 / iv.low if iv.low > 0 else math.inf


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of independent values (e.g. one number per repeated run);
    (nan, nan) for fewer than two values."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        return math.nan, math.nan
    half = float(stdtrit(x.size - 1, 0.5 + confidence / 2) * x.std(ddof=1) / math.sqrt(x.size))
    return float(x.mean()) - half, float(x.mean()) + half


#: below this share of the expected telemetry samples in the timed phase a run is unstable: its
#: time series (and any statistic only they give, such as peaks) miss too much of the phase
MIN_TELEMETRY_COVERAGE = 0.9


def stability(
    latencies_s: Sequence[float] | np.ndarray, cv_threshold: float = 0.10, throttled: bool = False,
    telemetry_coverage: float | None = None,
) -> tuple[bool, str]:
    """``(stable, warning)``: unstable when the latency CV (std / mean, as ``summarize``) is above
    ``cv_threshold``, the device reported throttling, or the sampler took fewer than
    ``MIN_TELEMETRY_COVERAGE`` of its expected samples in the timed phase (``telemetry_coverage``,
    None when sampling was off); the warning is ``""`` when stable."""
    if not (isinstance(cv_threshold, int | float) and math.isfinite(cv_threshold)
            and cv_threshold >= 0):
        raise ValueError(f"cv_threshold must be a finite number >= 0, got {cv_threshold!r}")
    s = summarize(latencies_s)
    problems = []
    if s.latency_cv > cv_threshold:
        problems.append(
            f"latency CV {s.latency_cv:.3f} is above {cv_threshold:.3f} (std {s.latency_std_ms:.2f}"
            f" ms, mean {s.latency_mean_ms:.2f} ms over {s.count} calls): the timings are noisy"
        )
    if throttled:
        problems.append("the GPU reported thermal or power throttling while timed: clocks dropped")
    if telemetry_coverage is not None and telemetry_coverage < MIN_TELEMETRY_COVERAGE:
        problems.append(
            f"telemetry coverage {telemetry_coverage:.2f} is below {MIN_TELEMETRY_COVERAGE:.2f}: "
            "the sampler missed part of the timed phase (a starved or killed sampling process)")
    if not problems:
        return True, ""
    return False, "unstable measurement: " + "; ".join(problems)


def summarize_repeats(repeats: Sequence[Mapping[str, float]],
                      confidence: float = 0.95) -> dict[str, float]:
    """Between-run statistics of each metric across repeated runs of one config:
    ``<name>.mean``, ``<name>.std`` (sample standard deviation, ddof=1; 0 for one value) and, for
    two runs or more, ``<name>.ci_low``/``<name>.ci_high``: the t-interval of the mean over the
    runs (each run one independent value; the interval of the config's mean across runs, which
    includes run-to-run variation that no within-run interval sees). A metric missing or NaN in
    some repeats is summarized over the others; one that is never a number is left out."""
    values: dict[str, list[float]] = {}
    for metrics in repeats:
        for name, value in metrics.items():
            number = float(value)
            if not math.isnan(number):
                values.setdefault(name, []).append(number)
            else:
                values.setdefault(name, [])
    out: dict[str, float] = {}
    for name, numbers in values.items():
        if not numbers:
            continue
        arr = np.asarray(numbers, dtype=np.float64)
        out[f"{name}.mean"] = float(arr.mean())
        out[f"{name}.std"] = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        if arr.size > 1:
            out[f"{name}.ci_low"], out[f"{name}.ci_high"] = t_interval(numbers, confidence)
    return out
