"""Pure summaries of telemetry: functions of rows (``probe.GpuRow``/``HostRow`` with ``t`` in
seconds since the sampler started), phase intervals, boundary ``Reading``s and the driver's
utilization samples. Nothing here samples; tests call these with hand-made rows."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

import numpy as np

from runner.telemetry.counters import Reading
from runner.telemetry.probe import Row

Interval = tuple[str, float, float]  # (phase, start, end), seconds since the sampler started
Window = tuple[float, float]


def integrate(ts: Sequence[float], values: Sequence[float], start: float, end: float) -> float:
    """Integral over [start, end] of the piecewise-linear curve through (ts, values).

    The curve is held constant before the first and after the last point.
    """
    if not ts or end <= start:
        return 0.0
    grid = [start, *(t for t in ts if start < t < end), end]
    return float(np.trapezoid(np.interp(grid, ts, values), grid))


def phase_of(t: float, intervals: Sequence[Interval]) -> str:
    """The phase whose interval holds ``t`` (the later one when ``t`` falls on a mark; the first
    phase before it starts)."""
    starts = [start for _, start, _ in intervals]
    return intervals[max(bisect.bisect_right(starts, t) - 1, 0)][0]


def windows(intervals: Sequence[Interval], phase: str) -> list[Window]:
    return [(s, e) for name, s, e in intervals if name == phase]


def in_windows(t: float, spans: Sequence[Window]) -> bool:
    return any(s <= t <= e for s, e in spans)


def coverage(sample_times: Sequence[float], spans: Sequence[Window], interval_s: float) -> float:
    """Samples taken in the windows / the samples the interval gives there (duration /
    interval), at most 1: the share of the phase the time series saw. 1.0 for windows too short
    to expect a sample."""
    duration = sum(e - s for s, e in spans)
    expected = duration / interval_s
    if expected < 1.0:
        return 1.0
    taken = len({t for t in sample_times if in_windows(t, spans)})
    return min(taken / expected, 1.0)


def column(rows: Sequence[Row], name: str) -> list[float]:
    """The numeric values of field ``name`` (missing ones left out)."""
    return [float(v) for row in rows if (v := getattr(row, name)) is not None]


def series(rows: Sequence[Row], name: str) -> dict[str, tuple[list[float], list[float]]]:
    """Device -> (times, values) of one field, skipping missing values."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        value = getattr(row, name)
        if value is not None:
            ts, vs = out.setdefault(row.device, ([], []))
            ts.append(float(row.t))
            vs.append(float(value))
    return out


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def host_summary(in_phase: Sequence[Row]) -> dict[str, float]:
    """Peaks and sampled maxima of the host rows of one phase (the exact means come from the
    boundary counters, ``counter_summary``)."""
    out: dict[str, float] = {}
    if cpu := column(in_phase, "host_cpu_util_pct"):
        out["host_cpu_util_max"] = max(cpu)
    if cpu := column(in_phase, "process_cpu_util_pct"):
        out["process_cpu_util_max"] = max(cpu)
    if rss := column(in_phase, "process_rss_mb"):
        out["process_rss_peak_mb"] = max(rss)
    if mem := column(in_phase, "host_mem_used_mb"):
        out["host_mem_used_peak_mb"] = max(mem)
    return out


def gpu_summary(rows: Sequence[Row], in_phase: Sequence[Row], spans: Sequence[Window],
                throttle_mask: int) -> dict[str, float]:
    """Sampled GPU statistics of one phase. For several GPUs, util/clock means are over all of
    them, memory and temperature peaks the highest of any; ``gpu_energy_integrated_j`` integrates
    the piecewise-linear power curve of each GPU over the exact windows (summed)."""
    out: dict[str, float] = {}
    if util := column(in_phase, "gpu_util_pct"):
        out["gpu_util_mean"], out["gpu_util_max"] = _mean(util), max(util)
    if mem := column(in_phase, "mem_used_mb"):
        out["gpu_mem_peak_mb"] = max(mem)
    if temp := column(in_phase, "temperature_c"):
        out["gpu_temp_max_c"] = max(temp)
    if sm := column(in_phase, "sm_clock_mhz"):
        out["gpu_sm_clock_mean_mhz"] = _mean(sm)
    if throttle := column(in_phase, "throttle_reasons"):
        out["gpu_throttle_thermal_or_power"] = float(any(int(v) & throttle_mask
                                                         for v in throttle))
    power = series(rows, "power_w")
    if power:
        out["gpu_energy_integrated_j"] = sum(integrate(ts, vs, s, e) for ts, vs in power.values()
                                             for s, e in spans)
    return out


def boundary_pairs(readings: Sequence[Reading | None], intervals: Sequence[Interval],
                   phase: str) -> list[tuple[Reading, Reading]]:
    """(start, end) readings of each window of ``phase``: reading ``i`` was taken at the start of
    interval ``i``, reading ``i + 1`` at its end."""
    out = []
    for i, (name, _, _) in enumerate(intervals):
        if name == phase and i + 1 < len(readings):
            start, end = readings[i], readings[i + 1]
            if start is not None and end is not None:
                out.append((start, end))
    return out


def counter_summary(pairs: Sequence[tuple[Reading, Reading]], cpus: int) -> dict[str, float]:
    """Exact means of a phase from the counters at its boundaries: the measured process tree's
    and the host's CPU utilization (% of all host CPUs), and each GPU's energy (summed)."""
    out: dict[str, float] = {}
    if not pairs:
        return out
    wall = sum(b.t - a.t for a, b in pairs)
    if wall <= 0:
        return out
    cpu_s = _delta_sum([(a.tree_cpu_s, b.tree_cpu_s) for a, b in pairs])
    if cpu_s is not None:
        out["process_cpu_util_mean"] = 100.0 * cpu_s / (wall * cpus)
        out["process_cpu_cores_mean"] = cpu_s / wall
    busy = _delta_sum([(a.host_busy_s, b.host_busy_s) for a, b in pairs])
    total = _delta_sum([(a.host_total_s, b.host_total_s) for a, b in pairs])
    if busy is not None and total:
        out["host_cpu_util_mean"] = 100.0 * busy / total
    labels = list(pairs[0][0].energy_j)
    energy = _delta_sum([(a.energy_j.get(g), b.energy_j.get(g)) for a, b in pairs for g in labels])
    if labels and energy is not None:
        out["gpu_energy_counter_j"] = energy
    return out


def _delta_sum(pairs: Sequence[tuple[float | None, float | None]]) -> float | None:
    """Sum of ``end - start`` over the pairs; None when any value is missing."""
    total = 0.0
    for start, end in pairs:
        if start is None or end is None:
            return None
        total += end - start
    return total


def driver_util_summary(samples: Mapping[str, Sequence[tuple[int, float]]],
                        pairs: Sequence[tuple[Reading, Reading]]) -> dict[str, float]:
    """Mean GPU utilization from the driver's own samples (``nvmlDeviceGetSamples``) whose
    timestamps fall in the phase's windows (wall clock), over all GPUs."""
    spans = [(a.wall * 1e6, b.wall * 1e6) for a, b in pairs]
    values = [v for per_gpu in samples.values() for ts, v in per_gpu if in_windows(ts, spans)]
    if not values:
        return {}
    return {"gpu_util_driver_mean": _mean(values), "gpu_util_driver_samples": float(len(values))}


def energy_metrics(summary: Mapping[str, float], duration: float,
                   num_images: int | None) -> dict[str, float]:
    """``gpu_energy_j`` (the energy counter where the GPUs have one, else the integrated power),
    the mean power over the phase and the energy per image."""
    energy = summary.get("gpu_energy_counter_j", summary.get("gpu_energy_integrated_j"))
    if energy is None:
        return {}
    out = {"gpu_energy_j": energy}
    if duration > 0:
        out["gpu_power_mean_w"] = energy / duration
    if num_images:
        out["gpu_energy_per_image_j"] = energy / num_images
    return out
