"""Latency and throughput statistics of one benchmark run.

Latencies come in seconds (one per timed model call); the summary reports milliseconds.
Two throughput figures are kept apart on purpose: ``images_per_sec`` is ``count / total_time_s``
(what this project reports), ``images_per_sec_mean_of_rates`` is the mean of per-call rates
``1 / latency`` (what the public benchmark table calls images/sec). The public table's
99th percentile uses the ``'lower'`` method; ours defaults to ``'linear'`` (numpy's default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np

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
    """Percentile-bootstrap confidence interval of the mean latency (s) or of the throughput.

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


def stability(
    latencies_s: Sequence[float] | np.ndarray, cv_threshold: float = 0.10, throttled: bool = False
) -> tuple[bool, str]:
    """``(stable, warning)``: unstable when the latency CV (std / mean, as ``summarize``) is above
    ``cv_threshold`` or the device reported throttling; the warning is ``""`` when stable."""
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
    if not problems:
        return True, ""
    return False, "unstable measurement: " + "; ".join(problems)


def summarize_repeats(repeats: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of each metric across
    repeated runs: ``{"<name>.mean": ..., "<name>.std": ...}``. A metric missing or NaN in some
    repeats is summarized over the others; one that is never a number is left out."""
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
    return out
