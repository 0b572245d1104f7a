"""Sampler cost: the runner's timed-loop latency with ``runner.telemetry.Sampler`` sampling at its
default interval (0.05 s) and at 10 ms, against sampling off.

Each block runs the worker's timed loop (``time_calls`` + the worker's ``on_output``) over the same
inputs with a fresh Sampler started and marked ``timed`` as the worker does (``enabled=False`` for
"off", as ``benchmark.telemetry=false`` runs), in rotating orders so each setting runs in each
position equally often. Blocks hold 10 demo calls (about 0.15 s): a 50 ms sampler takes 3 or 4
samples per block, one of them right at ``mark_phase``, so the cost is if anything overstated
against a 256-image chunk. On this machine (no NVIDIA driver) the Sampler reads psutil (CPU
percent, memory, process RSS) each tick; with NVML it reads the GPU instead. Figures: mean
latency with sampling / without, for the demo detector (checked: within 1%) and, for information,
for a tiny one-conv model, and for a prototype of a leaner psutil row (``lean_sampler_class``).
Also checked: the Sampler took samples during the blocks at about its rate, and none when off.

    python benchmarks/sampler_cost.py [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

MAX_DIFFERENCE = 0.01
INTERVALS = {"off": None, "50ms": 0.05, "10ms": 0.01, "10ms_lean": 0.01}


def lean_sampler_class() -> type:
    """A prototype of a cheaper psutil row for ``runner.telemetry.Sampler`` (proposed, not in the
    runner): process RSS from a kept-open ``/proc/self/statm``, CPU utilization from the first line
    of a kept-open ``/proc/stat``, system memory (``psutil.virtual_memory``, the dearest read)
    every 20th tick only. Same fields, same units."""
    import psutil

    from runner.telemetry import Sampler

    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

    class LeanSampler(Sampler):
        def start(self) -> None:
            self._statm = os.open(f"/proc/{os.getpid()}/statm", os.O_RDONLY)
            self._stat = os.open("/proc/stat", os.O_RDONLY)
            self._cpu_last = self._cpu_ticks()
            self._mem_mb, self._tick = psutil.virtual_memory().used / 2**20, 0
            super().start()

        def stop(self) -> None:
            super().stop()
            for fd in (self._statm, self._stat):
                os.close(fd)

        def _cpu_ticks(self) -> tuple[int, int]:
            fields = [int(v) for v in os.pread(self._stat, 256, 0).split(b"\n", 1)[0].split()[1:]]
            return sum(fields), fields[3] + fields[4]  # total, idle + iowait

        def _cpu_row(self, t: float, phase: str) -> tuple[Any, ...]:
            total, idle = self._cpu_ticks()
            d_total, d_idle = total - self._cpu_last[0], idle - self._cpu_last[1]
            self._cpu_last = (total, idle)
            util = 100.0 * (1 - d_idle / d_total) if d_total > 0 else 0.0
            self._tick += 1
            if self._tick % 20 == 0:
                self._mem_mb = psutil.virtual_memory().used / 2**20
            rss = int(os.pread(self._statm, 64, 0).split()[1]) * page_mb
            return (t, phase, "cpu", util, self._mem_mb, rss)

    return LeanSampler


def measure_model(report: common.Report, label: str, model_dir: Path, inputs: Sequence[object],
                  rounds: int, checked: bool) -> None:
    from runner.backends.native import NativeBackend
    from runner.telemetry import Sampler

    backend = NativeBackend(model_dir)
    loop = common.WorkerLoop(backend.predict, inputs)
    loop()  # warm up
    samples: dict[str, list[tuple[int, float]]] = {k: [] for k in INTERVALS}
    lean = lean_sampler_class()

    def block(name: str) -> np.ndarray:
        interval = INTERVALS[name]
        kind = lean if name.endswith("_lean") else Sampler
        sampler = kind(interval_s=interval or 0.05, enabled=interval is not None)
        sampler.start()
        sampler.mark_phase("timed")
        latencies, _ = loop()
        sampler.mark_phase("done")
        sampler.stop()
        start, end = sampler.phase_times().get("timed", (0.0, 0.0))
        count = int(sampler.summary("timed").get("samples_count", 0))
        samples[name].append((count, end - start))
        return latencies

    def variant(name: str) -> Callable[[int], np.ndarray]:
        return lambda _: block(name)

    got = common.interleave({name: variant(name) for name in INTERVALS}, rounds)
    loop.close()
    off = [b.sum() for b in got["off"]]
    mean_off = float(np.concatenate(got["off"]).mean())
    report.info(f"{label}: {rounds} rounds x {len(inputs)} calls per setting, sampling off: "
                f"mean latency {mean_off * 1e3:.4f} ms")
    for name in ("50ms", "10ms", "10ms_lean"):
        interval = INTERVALS[name]
        assert interval is not None
        lean_run = name.endswith("_lean")
        ratio, lo, hi = common.paired_ratio(got[name], got["off"])
        overall = float(sum(b.sum() for b in got[name]) / sum(off))
        report.figure(f"{label}.ratio_{name}", ratio,
                      f"({'proposed lean psutil row, ' if lean_run else ''}"
                      f"mean latency sampling every {name[:4]} / off: median over rounds of the "
                      f"block ratios, 95% CI {lo:.4f}..{hi:.4f}; ratio of the overall means "
                      f"{overall:.4f})")
        taken = sum(c for c, _ in samples[name])
        expected = sum(d for _, d in samples[name]) / interval
        report.info(f"{label}: sampler at {name} took {taken} samples in the timed blocks "
                    f"(~{expected:.0f} expected)")
        if checked and not lean_run:
            report.check_within(f"{label}.cost_{name}", (ratio, lo, hi), 1 - MAX_DIFFERENCE,
                                1 + MAX_DIFFERENCE, f"sampling every {name} / off")
            report.check(f"{label}.sampled_{name}", taken >= 0.5 * expected and taken > 0,
                         f"{taken} samples >= half of the ~{expected:.0f} the interval gives")
    if checked:
        report.check(f"{label}.off_took_no_samples", sum(c for c, _ in samples["off"]) == 0,
                     "sampling off took no samples")


def main(argv: Sequence[str] | None = None) -> int:
    args = common.arguments(__doc__.splitlines()[0], argv)
    report = common.Report("sampler_cost", args.quick)
    common.header(report, "timed loop with Sampler at 50 ms / 10 ms vs off, interleaved")
    demo_inputs = common.input_tensors(10, 480, 640, seed=1)
    measure_model(report, "demo", common.DEMO_MODEL, demo_inputs, 20 if args.quick else 150,
                  checked=True)
    if not args.quick:
        with tempfile.TemporaryDirectory(prefix="detbench-tiny-") as tmp:
            tiny = common.build_tiny_model(Path(tmp) / "tiny")
            measure_model(report, "tiny", tiny, common.input_tensors(200, 32, 32, seed=2), 150,
                          checked=False)
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
