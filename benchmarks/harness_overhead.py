"""Harness overhead: mean latency through the runner's timed loop against a bare loop.

The runner's loop is ``runner.measure.time_calls`` over ``NativeBackend.predict`` with the worker's
``on_output`` (zoo adapter -> ``Results.add``) and its progress bar, handing outputs over as the
worker does; the bare loop calls the same SavedModel's serving signature and materializes the
outputs (``{k: v.numpy()}``) between two ``perf_counter`` reads, nothing else. A third loop is
``time_calls(..., defer_outputs=True)``: outputs handed over after the block (proposed for the
worker). Same process, same inputs, blocks in rotating order (each loop in each position equally
often), for the demo detector (640x480 inputs) and for a tiny one-conv SavedModel whose call is
short enough for any overhead to show.

Figures: per loop, the median over rounds of (block mean latency / bare block mean latency of the
same round), with a bootstrap 95% interval (robust to rounds in which other processes took the
CPUs; the ratio of the overall means is printed too), the added time per call in microseconds,
and the whole loop's wall time per call (the adapter work after the clock stops included). Checks:
ratio <= 1.02 (full mode: the estimate; --quick: reported, not judged), the loops saw
the same inputs (the same outputs, call by call, in every block), the adapter ran.

    python benchmarks/harness_overhead.py [--quick]
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

MAX_RATIO = 1.02


def measure_model(report: common.Report, label: str, model_dir: Path, inputs: Sequence[object],
                  rounds: int) -> None:
    import tensorflow as tf

    from runner.backends.native import NativeBackend

    backend = NativeBackend(model_dir)
    bare_fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    loops = {"runner": common.WorkerLoop(backend.predict, inputs),
             "deferred": common.WorkerLoop(backend.predict, inputs, deferred=True)}
    for _ in range(2):  # warm every path (tracing, allocator) before anything is kept
        for loop in loops.values():
            loop()
        common.bare_loop(bare_fn, inputs)
    walls: dict[str, list[float]] = {"runner": [], "deferred": [], "bare": []}

    def timed(name: str) -> tuple[np.ndarray, list[float]]:
        start = time.perf_counter()
        out = loops[name]() if name in loops else common.bare_loop(bare_fn, inputs)
        walls[name].append(time.perf_counter() - start)
        return out

    def variant(name: str) -> Callable[[int], tuple[np.ndarray, list[float]]]:
        return lambda _: timed(name)

    got = common.interleave({name: variant(name) for name in walls}, rounds)
    for loop in loops.values():
        loop.close()
    lat = {k: [b[0] for b in v] for k, v in got.items()}
    mean = {k: float(np.concatenate(v).mean()) for k, v in lat.items()}
    median = {k: float(np.median(np.concatenate(v))) for k, v in lat.items()}
    shape = tuple(int(d) for d in inputs[0].shape)  # type: ignore[attr-defined]
    report.info(f"{label}: {rounds} rounds x {len(inputs)} calls per loop, input {shape}; "
                f"mean latency runner {mean['runner'] * 1e3:.4f} ms, deferred "
                f"{mean['deferred'] * 1e3:.4f} ms, bare {mean['bare'] * 1e3:.4f} ms (medians "
                f"{median['runner'] * 1e3:.4f} / {median['deferred'] * 1e3:.4f} / "
                f"{median['bare'] * 1e3:.4f} ms)")
    now = "outputs handed over after the chunk" if loops["runner"].deferred else (
        "outputs handed over after each call")
    for name, what in (("runner", f"the worker's loop as it is ({now})"),
                       ("deferred", "time_calls(defer_outputs=True)")):
        prefix = "" if name == "runner" else "deferred_"
        ratio, lo, hi = common.paired_ratio(lat[name], lat["bare"])
        overall = float(sum(b.sum() for b in lat[name]) / sum(b.sum() for b in lat["bare"]))
        added = float(np.median([a.mean() - b.mean() for a, b in zip(lat[name], lat["bare"],
                                                                      strict=True)]))
        report.figure(f"{label}.{prefix}latency_ratio", ratio,
                      f"({what}: median over rounds of runner / bare block mean latency, 95% CI "
                      f"{lo:.4f}..{hi:.4f}; ratio of the overall means {overall:.4f})")
        report.figure(f"{label}.{prefix}added_us_per_call", added * 1e6,
                      f"(median over rounds; bare call {mean['bare'] * 1e6:.1f} us)")
        report.target_within(f"{label}.{prefix}latency_ratio", (ratio, lo, hi), -math.inf,
                            MAX_RATIO, f"{what}: runner/bare mean latency")
    calls = len(inputs) * rounds
    wall = {k: sum(v) / calls for k, v in walls.items()}
    report.figure(f"{label}.loop_wall_added_us_per_call", (wall["runner"] - wall["bare"]) * 1e6,
                  "(whole loop per call incl. adapter + results work after the clock stops: "
                  f"runner {wall['runner'] * 1e6:.1f} us, bare {wall['bare'] * 1e6:.1f} us)")
    prints = {k: [b[1] for b in v] for k, v in got.items()}
    report.check(f"{label}.same_inputs",
                 common.same_fingerprints(prints["runner"], prints["bare"] + prints["deferred"]),
                 f"the loops produced the same outputs call by call in all {3 * rounds} blocks "
                 f"({len(inputs)} distinct inputs)")
    report.check(f"{label}.adapter_ran", loops["runner"].detections == len(inputs) * 100,
                 f"the runner's on_output turned outputs into {loops['runner'].detections} COCO "
                 "results per block (100 per call)")


def main(argv: Sequence[str] | None = None) -> int:
    args = common.arguments(__doc__.splitlines()[0], argv)
    report = common.Report("harness_overhead", args.quick)
    common.header(report, "runner timed loop vs bare signature loop, interleaved")
    demo_inputs = common.input_tensors(5, 480, 640, seed=1)
    measure_model(report, "demo", common.DEMO_MODEL, demo_inputs, 8 if args.quick else 90)
    with common.tiny_model() as tiny:
        tiny_inputs = common.input_tensors(50, 32, 32, seed=2)
        measure_model(report, "tiny", tiny, tiny_inputs, 20 if args.quick else 240)
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
