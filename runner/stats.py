"""Latency and throughput statistics of one benchmark run.

Latencies come in seconds (one per timed model call); the summary reports milliseconds.
Two throughput figures are kept apart on purpose: ``images_per_sec`` is ``count / total_time_s``
(what this project reports), ``images_per_sec_mean_of_rates`` is the mean of per-call rates
``1 / latency`` (what the public benchmark table calls images/sec). The public table's
99th percentile uses the ``'lower'`` method; ours defaults to ``'linear'`` (numpy's default).
"""

from __future__ import annotations

from collections.abc import Sequence
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
