"""Latency persistence: what storing each latency into the job directory's memory-mapped log
(``runner.jobdir.create_latency_log``, MAP_SHARED over ``latencies.npy``) costs per timed call,
against storing it into a plain in-memory array (``np.empty``, what the timer did before).

The loop is ``runner.measure.time_calls`` around a call that does nothing (returns a constant
dict), so that the loop's own cost, the store included, is all that is measured: the figure is
the added time per call in nanoseconds (median over rounds of the per-call difference between the
two variants run back to back, rotating order, bootstrap 95% interval), and the ratio of whole-loop
time. ``log_first_touch`` maps a fresh log without touching its pages first (each 4 KiB page
faults on its first store, every 512 calls). Checks: the log holds exactly what time_calls
returned; a child that stores into the log and is SIGKILLed mid-loop leaves every latency it
stored before the kill in the file.

    python benchmarks/latency_store.py [--quick]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

OUTPUT = {"x": np.zeros(1)}
MAX_ADDED_NS = 50.0  # a store into a mapped page is a store into memory

_KILLED_CHILD = """
import os, signal, sys
from pathlib import Path
from runner import jobdir
from runner.measure import time_calls
log = jobdir.create_latency_log(Path(sys.argv[1]), 1, int(sys.argv[2]))
stop = int(sys.argv[3])
def predict(x):
    if x == stop:
        os.kill(os.getpid(), signal.SIGKILL)
    return {}
time_calls(predict, list(range(int(sys.argv[2]))), out=log[0])
"""


def _predict(_: object) -> dict[str, np.ndarray]:
    return OUTPUT


def main(argv: list[str] | None = None) -> int:
    from runner import jobdir
    from runner.measure import time_calls

    args = common.arguments(__doc__.splitlines()[0], argv)
    report = common.Report("latency_store", quick=args.quick)
    common.header(report, "per-call cost of persisting each latency in the memory-mapped log")
    calls, rounds = (20_000, 7) if args.quick else (200_000, 21)
    inputs = list(range(calls))
    with tempfile.TemporaryDirectory(prefix="detbench-store-") as tmp:
        root = Path(tmp)

        dirs: list[Path] = []

        def fresh_log(touch: bool) -> np.ndarray:
            directory = root / f"log{len(dirs)}"
            directory.mkdir()
            dirs.append(directory)
            log = jobdir.create_latency_log(directory, 1, calls)
            if touch:
                log[0, :] = np.nan  # fault every page in before the loop, as the worker's chunks
            return log[0]

        targets = {"memory": lambda: np.full(calls, np.nan), "log": lambda: fresh_log(True),
                   "log_first_touch": lambda: fresh_log(False)}
        per_call: dict[str, list[float]] = {name: [] for name in targets}
        written: list[tuple[Path, np.ndarray]] = []  # (log directory, what time_calls returned)
        for order in common.orders(list(targets), rounds):
            for name in order:
                out = targets[name]()
                start = time.perf_counter()
                result = time_calls(_predict, inputs, out=out)
                per_call[name].append((time.perf_counter() - start) / calls * 1e9)
                if name != "memory":
                    written.append((dirs[-1], np.array(result)))
        memory = np.array(per_call["memory"])
        for name in ("log", "log_first_touch"):
            added = np.array(per_call[name]) - memory
            low, high = np.percentile(
                [np.median(np.random.default_rng(i).choice(added, len(added)))
                 for i in range(2000)], [2.5, 97.5])
            report.figure(f"{name}.added_ns_per_call", float(np.median(added)),
                          f"(95% CI {low:.1f}..{high:.1f}; loop {np.median(memory):.0f} ns/call "
                          "into memory)")
            report.figure(f"{name}.loop_ratio",
                          float(np.median(np.array(per_call[name]) / memory)))
        report.target(
            "log.added_ns_per_call",
            report.figures["log.added_ns_per_call"] <= MAX_ADDED_NS,
            f"{report.figures['log.added_ns_per_call']:.1f} ns <= {MAX_ADDED_NS:g} ns per call")
        reread = [jobdir.read_latency_log(d) for d, _ in written]
        same = all(s is not None and np.array_equal(s[0], r)
                   for s, (_, r) in zip(reread, written, strict=True))
        report.check("log_holds_the_latencies", same,
                     f"each of the {len(written)} log files re-read holds every latency "
                     "time_calls returned")

        killed_dir, stop = root / "killed", calls // 3
        killed_dir.mkdir()
        env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
        child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(killed_dir), str(calls),
                                str(stop)], env=env, capture_output=True, timeout=120)
        kept = jobdir.read_latency_log(killed_dir)
        count = 0 if kept is None else int(np.count_nonzero(~np.isnan(kept)))
        report.check("sigkilled_child_keeps_its_latencies",
                     child.returncode == -signal.SIGKILL and count == stop,
                     f"child ended by signal {-child.returncode}; {count} of the {stop} latencies "
                     "stored before SIGKILL are in the file")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
