"""Sampler cost: the runner's timed-loop latency with ``runner.telemetry.Sampler`` sampling at its
default interval (0.05 s) and at 10 ms, against sampling off.

Each block does what the worker does: start a fresh Sampler (``enabled=False`` for "off", as
``benchmark.telemetry=false`` runs; ``start()`` returns once the sampling process took its first
sample), make untimed calls for ``WARM_S`` (the worker's warm-up: after start() waited for the
sampling process, the model's thread pool is back in its steady state), mark ``timed`` and run
the worker's timed loop (``time_calls`` + the worker's
``on_output``) over the same inputs, in rotating orders so each setting runs in each position
equally often. The Sampler samples in its own SCHED_IDLE process
(``runner.probe``); ``10ms_thread`` samples in a thread of the measured process instead (what
the Sampler falls back to, and how it sampled before), for comparison. On this machine (no
NVIDIA driver) each sample reads host CPU utilization, memory and the process's RSS; with NVML
it reads the GPU instead. Figures: mean latency with sampling / without, for the demo detector
(target: within 1%) and, for information, for a tiny one-conv model. Checked: the Sampler took
samples during the timed blocks at about its rate, and none when off.

    python benchmarks/sampler_cost.py [--quick]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

MAX_DIFFERENCE = 0.01
#: setting -> (interval, isolate): isolate=False samples in a thread of the measured process
SETTINGS: dict[str, tuple[float | None, bool]] = {
    "off": (None, True), "50ms": (0.05, True), "10ms": (0.01, True), "10ms_thread": (0.01, False)}

#: seconds of untimed calls between start() and the timed block, in every setting
WARM_S = 0.05


def measure_model(report: common.Report, label: str, model_dir: Path, inputs: Sequence[object],
                  rounds: int, checked: bool) -> None:
    from runner.backends.native import NativeBackend
    from runner.telemetry import Sampler

    backend = NativeBackend(model_dir)
    loop = common.WorkerLoop(backend.predict, inputs)
    loop()  # warm up
    samples: dict[str, list[tuple[int, float]]] = {k: [] for k in SETTINGS}
    modes: set[str] = set()
    shares: dict[str, list[float]] = {k: [] for k in SETTINGS}

    def block(name: str) -> np.ndarray:
        interval, isolate = SETTINGS[name]
        sampler = Sampler(interval_s=interval or 0.05, enabled=interval is not None,
                          isolate=isolate)
        sampler.start()
        sampler.mark_phase("warmup")
        warm_until, i = time.perf_counter() + WARM_S, 0
        while time.perf_counter() < warm_until:
            backend.predict(inputs[i % len(inputs)])
            i += 1
        sampler.mark_phase("timed")
        latencies, _ = loop()
        sampler.mark_phase("done")
        sampler.stop()
        start, end = sampler.phase_times().get("timed", (0.0, 0.0))
        count = int(sampler.summary("timed").get("samples_count", 0))
        samples[name].append((count, end - start))
        modes.add(f"{name}: {sampler.mode or 'off'}")
        if sampler.cpu_share is not None:
            shares[name].append(sampler.cpu_share)
        return latencies

    def variant(name: str) -> Callable[[int], np.ndarray]:
        return lambda _: block(name)

    got = common.interleave({name: variant(name) for name in SETTINGS}, rounds)
    loop.close()
    off = [b.sum() for b in got["off"]]
    mean_off = float(np.concatenate(got["off"]).mean())
    report.info(f"{label}: {rounds} rounds x {len(inputs)} timed calls per setting "
                f"(after {WARM_S * 1e3:.0f} ms of untimed calls), sampling off: mean latency "
                f"{mean_off * 1e3:.4f} ms")
    report.info(f"{label}: sampled in {'; '.join(sorted(modes))}")
    for name in ("50ms", "10ms", "10ms_thread"):
        interval = SETTINGS[name][0]
        assert interval is not None
        ratio, lo, hi = common.paired_ratio(got[name], got["off"])
        overall = float(sum(b.sum() for b in got[name]) / sum(off))
        where = "in a thread of the measured process, " if name.endswith("_thread") else ""
        report.figure(f"{label}.ratio_{name}", ratio,
                      f"({where}mean latency sampling every {name[:4]} / off: median over rounds "
                      f"of the block ratios, 95% CI {lo:.4f}..{hi:.4f}; ratio of the overall "
                      f"means {overall:.4f})")
        if shares[name]:
            share = float(np.median(shares[name]))
            report.figure(f"{label}.cpu_share_{name}", share,
                          "(CPU time of the SCHED_IDLE sampling process / its wall time, median "
                          "over blocks: the most it can take from the benchmark, on idle cycles)")
        taken = sum(c for c, _ in samples[name])
        expected = sum(d for _, d in samples[name]) / interval
        report.info(f"{label}: sampler at {name} took {taken} samples in the timed blocks "
                    f"(~{expected:.0f} expected)")
        if checked and name != "10ms_thread":
            report.target_within(f"{label}.cost_{name}", (ratio, lo, hi), 1 - MAX_DIFFERENCE,
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
    measure_model(report, "demo", common.DEMO_MODEL, demo_inputs, 8 if args.quick else 150,
                  checked=True)
    if not args.quick:
        with common.tiny_model() as tiny:
            measure_model(report, "tiny", tiny, common.input_tensors(200, 32, 32, seed=2), 150,
                          checked=False)
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
