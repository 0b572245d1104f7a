"""Sampler cost and coverage, measured apart: what the telemetry sampler costs the timed loop on a
quiet machine, and which share of its samples it still takes when every core is busy.

**Cost** (no CPU hog: run it on a quiet machine, e.g. under the shared ``flock``): only the
settings detbench ships, sampling off (``benchmark.telemetry=false``), the default interval
(``runner.config.BenchmarkConfig.sample_interval_s``, the one place it is set) and 10 ms, plus
the other candidates for the default (``COST_INTERVALS``) and an A/A control (off against off:
the method's own noise). A job's sampler runs through the whole job, so each interval has one
resident sampling process (``Resident``), started once and stopped (SIGSTOP) except during its
own blocks: no process start or stop near a timed call. A block: the process resumed,
``RESUME_CALLS`` untimed calls, the worker's timed loop (``time_calls`` + its ``on_output``) over
``COST_CALLS`` calls, the process paused. The settings run once per round in rotating orders;
the figure is the median over rounds of the paired ratio (mean latency of the setting's block /
the off block of the same round) with a bootstrap 95% interval of that median. Blocks are short
on purpose: on this shared machine the latency jumps between levels tens of percent apart within
seconds (others' work), and two blocks of a pair agree best when they are close in time (a first
version with a fresh Sampler per 1.5 s block and 40 rounds read 50 ms 0.957, CI 0.904..1.005, and
100 ms 1.090, CI 0.952..1.187: noise). Beside it, the **analytic bound**: 1 + CPU seconds of the
sampling process / the wall seconds it ran / CPUs (the sampler can take at most its own CPU time
from the benchmark, spread over the CPUs the benchmark uses).

**Coverage under load**: one busy process per CPU beside the benchmark (the load under which a
SCHED_IDLE sampler starved), every setting incl. the comparison ones: the sampling process at
normal priority and at SCHED_IDLE (the sampler before), and in a thread of the measured process
(the fallback). Coverage = samples taken in the timed blocks / expected (duration / interval);
targets >= 95% at 50 ms and >= 90% at 10 ms. The cost under that load is reported too, as
information (the hogs move blocks by tens of percent).

**One sample**: the work one host sample does (``HostReader.rows`` by part, psutil's equivalents,
``RowWriter.write``), warm, in this process; the sampling process's CPU per sample (cold caches
and the wake-up included) comes from the cost blocks.

Checked in every mode (invariants): the shipped settings took samples in the timed blocks, none
when off. Quick mode (the test suite's) runs few, short blocks and reports the targets without
judging them; the figures come from the full run (``make perf``).

    python benchmarks/sampler_cost.py [--quick] [--rounds N] [--load-rounds N] [--block-s S]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

MAX_DIFFERENCE = 0.01
#: coverage targets under load: setting -> the least share of the expected samples
COVERAGE_TARGETS = {"50ms": 0.95, "10ms": 0.90}
#: intervals whose cost is measured (the default is one of them): the candidates for the default
COST_INTERVALS = (0.1, 0.05, 0.01)
#: cost part (full mode): rounds, and timed calls per block (short blocks, so that the two
#: blocks of a pair see the same outside load: on this shared machine the latency switches
#: between levels tens of percent apart within seconds)
COST_ROUNDS = 300
COST_CALLS = 10
#: seconds of timed calls per block under load (full mode; quick: a few calls)
BLOCK_S = 1.5
#: seconds of untimed calls between start() and the timed block, in every setting
WARM_S = 0.2
#: a busy loop that ends after ``seconds`` or when its parent (this script) is gone
HOG = ("import os, time\nparent, end = os.getppid(), time.time() + {seconds}\n"
       "while time.time() < end and os.getppid() == parent:\n    pass\n")


@dataclass(frozen=True)
class Setting:
    """How a block samples: ``interval`` None = off; ``separate_process`` False = in a thread of
    the measured process; ``priority`` of the sampling process (``probe.PRIORITIES``)."""

    interval: float | None
    separate_process: bool = True
    priority: str = "realtime"
    what: str = ""  # how the figure's text names it

    @property
    def shipped(self) -> bool:
        return self.interval is None or (self.separate_process and self.priority == "realtime")


def name_of(interval: float) -> str:
    return f"{interval * 1e3:g}ms"


def default_interval() -> float:
    from runner.config import BenchmarkConfig

    return float(BenchmarkConfig().sample_interval_s)


def cost_settings(quick: bool) -> dict[str, Setting]:
    """off, the default and 10 ms (quick), and every interval of ``COST_INTERVALS`` (full)."""
    intervals = {default_interval(), 0.01} if quick else {default_interval(), *COST_INTERVALS}
    return {"off": Setting(None), **{name_of(i): Setting(i) for i in sorted(intervals,
                                                                            reverse=True)}}


def load_settings(quick: bool) -> dict[str, Setting]:
    """off, the shipped intervals (50 ms and 10 ms have coverage targets), and in full mode the
    comparison settings."""
    intervals = sorted({default_interval(), 0.05, 0.01}, reverse=True)
    out = {"off": Setting(None), **{name_of(i): Setting(i) for i in intervals}}
    if not quick:
        out |= {"10ms_normal": Setting(0.01, True, "normal", "normal-priority process, "),
                "10ms_idle": Setting(0.01, True, "idle", "SCHED_IDLE process, "),
                "10ms_thread": Setting(0.01, False, "normal",
                                       "in a thread of the measured process, ")}
    return out


@contextmanager
def cpu_hog(enabled: bool, seconds: float = 3600.0) -> Iterator[int]:
    """One busy-looping process per CPU while the block runs (each also ends by itself after
    ``seconds``); yields how many."""
    if not enabled:
        yield 0
        return
    hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(seconds=seconds)])
            for _ in range(os.cpu_count() or 1)]
    try:
        yield len(hogs)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@dataclass
class Outcome:
    """What one setting's blocks gave."""

    latencies: list[np.ndarray] = field(default_factory=list)  # one array per block
    samples: list[tuple[int, float]] = field(default_factory=list)  # (taken, timed seconds)
    shares: list[float] = field(default_factory=list)  # sampling process CPU s / wall s
    per_sample_s: list[float] = field(default_factory=list)  # its CPU s per sample
    modes: set[str] = field(default_factory=set)

    @property
    def coverage(self) -> tuple[int, float]:
        """(samples taken, samples expected) over the blocks; 0 expected when off."""
        return sum(c for c, _ in self.samples), sum(d for _, d in self.samples)


class Bench:
    """The demo model, its inputs and one block of the worker's loop per call."""

    def __init__(self, model_dir: Path, inputs: Sequence[Any]) -> None:
        from runner.backends.native import NativeBackend

        self.backend = NativeBackend(model_dir)
        self.inputs = list(inputs)
        self.loops: dict[int, common.WorkerLoop] = {}
        self.loop(len(self.inputs))()  # warm up

    def loop(self, calls: int) -> common.WorkerLoop:
        """The worker's timed loop over ``calls`` inputs (the distinct ones, cycled)."""
        if calls not in self.loops:
            cycled = [self.inputs[i % len(self.inputs)] for i in range(calls)]
            self.loops[calls] = common.WorkerLoop(self.backend.predict, cycled)
        return self.loops[calls]

    def block(self, setting: Setting, calls: int, out: Outcome) -> None:
        from runner.telemetry import Sampler

        sampler = Sampler(interval_s=setting.interval or 0.05,
                          enabled=setting.interval is not None,
                          separate_process=setting.separate_process, priority=setting.priority)
        loop = self.loop(calls)
        sampler.start()
        sampler.mark_phase("warmup")
        warm_until, i = time.perf_counter() + WARM_S, 0
        while time.perf_counter() < warm_until:
            self.backend.predict(self.inputs[i % len(self.inputs)])
            i += 1
        sampler.mark_phase("timed")
        latencies, _ = loop()
        sampler.mark_phase("done")
        sampler.stop()
        start, end = sampler.phase_times().get("timed", (0.0, 0.0))
        taken = int(sampler.summary("timed").get("samples_count", 0))
        out.latencies.append(latencies)
        out.samples.append((taken, (end - start) / (setting.interval or 1.0)))
        out.modes.add(sampler.mode or "off")
        if sampler.cpu_share is not None:
            out.shares.append(sampler.cpu_share)
            rows = sampler.rows()
            if len(rows) > 1:
                wall = rows[-1].t - rows[0].t
                out.per_sample_s.append(sampler.cpu_share * wall / (len(rows) - 1))

    def run(self, settings: dict[str, Setting], calls: int, rounds: int) -> dict[str, Outcome]:
        got = {name: Outcome() for name in settings}

        def variant(name: str) -> Callable[[int], None]:
            return lambda _: self.block(settings[name], calls, got[name])

        common.interleave({name: variant(name) for name in settings}, rounds)
        return got

    def close(self) -> None:
        for loop in self.loops.values():
            loop.close()


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def report_invariants(report: common.Report, label: str, settings: dict[str, Setting],
                      got: dict[str, Outcome]) -> None:
    """The shipped settings sampled in the timed blocks; off took no samples. The comparison
    settings (normal priority, SCHED_IDLE, a thread) may starve under the hogs: that is what they
    show, so their coverage is a figure, not a check (SCHED_IDLE took 0 samples in a quick run
    beside the test suite)."""
    for name, setting in settings.items():
        taken, _ = got[name].coverage
        if setting.interval is None:
            report.check(f"{label}off_took_no_samples", taken == 0,
                         f"sampling off took {taken} samples")
        elif setting.shipped:
            report.check(f"{label}sampled_{name}", taken > 0,
                         f"{taken} samples taken in the timed blocks")


class Resident:
    """A sampling process at ``interval`` started once for the whole cost part and stopped
    (SIGSTOP) except during its own blocks: what a job's sampler does in its timed phase (it runs
    through the whole job), without a process start per block. A stopped process takes no CPU
    and no samples; on SIGCONT it takes one sample at once (its interval passed) and then keeps
    its grid, so each block first makes ``RESUME_CALLS`` untimed calls."""

    def __init__(self, interval: float) -> None:
        import psutil

        from runner.telemetry import Sampler

        self.sampler = Sampler(interval_s=interval)
        self.sampler.start()
        # the sampling process itself (benchmark-only access: the job never pauses it)
        child = self.sampler._child
        if child is None:
            raise RuntimeError(f"no sampling process to pause ({self.sampler.mode}: "
                               f"{'; '.join(self.sampler.errors)})")
        self.pid = child.pid
        os.kill(self.pid, signal.SIGSTOP)
        self._process = psutil.Process(self.pid)
        self._cpu0 = self._cpu_s()
        self._started = time.monotonic()
        self.resumed_s = 0.0
        self._since = 0.0

    def _cpu_s(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self._since = time.monotonic()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.resumed_s += time.monotonic() - self._since

    def stop(self) -> tuple[float, int, str]:
        """(CPU seconds while resumed, samples taken, mode), the process stopped for good. The
        CPU seconds come from the process's own report (``time.process_time``, ns resolution:
        it takes none while stopped); /proc's 10 ms ticks where it sent none."""
        ticks = self._cpu_s() - self._cpu0
        os.kill(self.pid, signal.SIGCONT)
        wall = time.monotonic() - self._started
        self.sampler.stop()
        share = self.sampler.cpu_share
        cpu = share * wall if share is not None else ticks
        return cpu, len(self.sampler.rows()), self.sampler.mode


#: untimed calls after a sampling process is resumed (its first sample lands in them)
RESUME_CALLS = 2


def measure_cost(report: common.Report, label: str, bench: Bench, calls: int, rounds: int,
                 quick: bool, dump: str | None = None) -> None:
    """The cost part: no hogs, the shipped settings plus an A/A control (``off_again``: off
    against off, the method's own noise), short interleaved blocks with resident samplers."""
    settings = cost_settings(quick)
    default = name_of(default_interval())
    report.info(f"{label} cost: {rounds} rounds x {calls} timed calls per setting and block "
                f"(+{RESUME_CALLS} untimed), no CPU hog, load average {load_average()} before")
    residents = {name: Resident(s.interval) for name, s in settings.items()
                 if s.interval is not None}
    loop = bench.loop(calls)
    latencies: dict[str, list[np.ndarray]] = {name: [] for name in [*settings, "off_again"]}

    def variant(name: str) -> Callable[[int], None]:
        resident = residents.get(name)

        def block(_: int) -> None:
            if resident is not None:
                resident.resume()
            for i in range(RESUME_CALLS):
                bench.backend.predict(bench.inputs[i])
            timed, _fingerprints = loop()
            if resident is not None:
                resident.pause()
            latencies[name].append(timed)

        return block

    common.interleave({name: variant(name) for name in latencies}, rounds)
    stopped = {name: r.stop() for name, r in residents.items()}
    if dump is not None:  # every block's latencies, for pooling runs or another estimator
        arrays: dict[str, Any] = {n: np.stack(b) for n, b in latencies.items()}
        np.savez(dump, **arrays)
    off = latencies["off"]
    report.info(f"{label} cost: sampling off: mean latency "
                f"{float(np.concatenate(off).mean()) * 1e3:.4f} ms, "
                f"{float(np.mean([b.sum() for b in off])):.3f} s per block; sampled in "
                f"{'; '.join(sorted({m for _, _, m in stopped.values()}))}; load average "
                f"{load_average()} after")
    ratio, lo, hi = common.paired_ratio(latencies["off_again"], off)
    report.figure(f"{label}.cost_off_again", ratio,
                  f"(A/A control: off / off, the method's own noise: 95% CI {lo:.4f}..{hi:.4f})")
    cpus = os.cpu_count() or 1
    for name, setting in settings.items():
        if setting.interval is None:
            continue
        ratio, lo, hi = common.paired_ratio(latencies[name], off)
        overall = float(sum(b.sum() for b in latencies[name]) / sum(b.sum() for b in off))
        shown = f"{name} (the default)" if name == default else name
        report.figure(f"{label}.cost_{name}", ratio,
                      f"(mean latency sampling every {shown} / off, no hog: median over "
                      f"{rounds} rounds of the paired block ratios, 95% CI {lo:.4f}..{hi:.4f}; "
                      f"ratio of the overall means {overall:.4f})")
        report.figure(f"{label}.cost_ci_{name}", [round(lo, 5), round(hi, 5)])
        cpu_s, taken, _ = stopped[name]
        resumed_s = residents[name].resumed_s
        share = cpu_s / resumed_s if resumed_s else 0.0
        report.figure(f"{label}.cpu_share_{name}", share,
                      f"(CPU s of the sampling process / the wall s it ran: {cpu_s:.3f} / "
                      f"{resumed_s:.1f}: the share of one core it takes)")
        report.figure(f"{label}.bound_{name}", 1.0 + share / cpus,
                      f"(analytic bound on the cost: 1 + cpu_share / {cpus} CPUs, if the "
                      "benchmark's threads lose only the CPU time the sampler takes)")
        report.figure(f"{label}.bound_serial_{name}", 1.0 + share,
                      "(1 + cpu_share: if each preemption stalls every thread of the "
                      "benchmark, which waits for its slowest)")
        report.figure(f"{label}.cpu_per_sample_us_{name}", cpu_s / max(taken, 1) * 1e6,
                      f"(CPU of the sampling process per sample over {taken} samples, its "
                      "wake-up and cold caches included)")
        report.check(f"{label}.cost.sampled_{name}", taken > 0, f"{taken} samples taken")
        if name == default:
            report.target_within(f"{label}.cost_default", (ratio, lo, hi), 1 - MAX_DIFFERENCE,
                                 1 + MAX_DIFFERENCE, f"sampling every {name} (the default) / off")


def measure_load(report: common.Report, label: str, bench: Bench, calls: int, rounds: int,
                 quick: bool) -> None:
    """The coverage part: a CPU hog per core, every setting."""
    settings = load_settings(quick)
    with cpu_hog(True) as hogs:
        report.info(f"{label} under load: {rounds} rounds x {calls} timed calls per setting, "
                    f"{hogs} CPU hog process(es) besides, load average {load_average()} at "
                    "their start")
        got = bench.run(settings, calls, rounds)
        report.info(f"{label} under load: load average {load_average()} at the end")
    off = got["off"]
    for name, setting in settings.items():
        if setting.interval is None:
            continue
        o = got[name]
        taken, expected = o.coverage
        coverage = taken / expected if expected else 0.0
        report.figure(f"{label}.coverage_{name}", coverage,
                      f"({setting.what}{taken} samples taken in the timed blocks / "
                      f"~{expected:.0f} expected, under load; a phase mark's own sample can "
                      "take it past 1)")
        if name in COVERAGE_TARGETS:
            target = COVERAGE_TARGETS[name]
            report.target(f"{label}.coverage_target_{name}", coverage >= target,
                          f"coverage {coverage:.3f} >= {target:.2f} under load")
        ratio, lo, hi = common.paired_ratio(o.latencies, off.latencies)
        report.figure(f"{label}.load_cost_{name}", ratio,
                      f"({setting.what}mean latency sampling / off under the hogs, "
                      f"information: 95% CI {lo:.4f}..{hi:.4f})")
        if o.shares:
            report.figure(f"{label}.load_cpu_share_{name}", float(np.median(o.shares)),
                          f"({setting.what}CPU s of the sampling process / its wall s)")
    report_invariants(report, f"{label}.", settings, got)


def profile_sample(report: common.Report, repeats: int) -> None:
    """The work of one host sample, warm, in this process (microseconds of CPU)."""
    import psutil

    from runner.telemetry.probe import HostReader, HostRow, RowWriter

    reader = HostReader(os.getpid())
    process = psutil.Process(os.getpid())

    def cpu_us(fn: Callable[[], object]) -> float:
        fn()
        start = time.process_time()
        for _ in range(repeats):
            fn()
        return (time.process_time() - start) / repeats * 1e6

    with tempfile.TemporaryDirectory(prefix="detbench-sampler-") as tmp:
        writer = RowWriter(Path(tmp) / "rows.csv", HostRow._fields[2:])
        rows = reader.rows()
        parts = {"rows": reader.rows, "proc_stat": reader._cpu_ticks,
                 "proc_pid_stat": reader._process_cpu_s, "proc_pid_statm": reader._rss_mb,
                 "write": lambda: writer.write(rows),
                 "psutil_virtual_memory": psutil.virtual_memory,
                 "psutil_cpu_times": psutil.cpu_times,
                 "psutil_process_cpu_times": process.cpu_times,
                 "psutil_process_memory_info": process.memory_info}
        got = {name: cpu_us(fn) for name, fn in parts.items()}
        writer.close()
    reader.close()
    report.figure("sample_rows_us", got["rows"],
                  f"(HostReader.rows, warm: /proc/stat {got['proc_stat']:.1f} + "
                  f"/proc/<pid>/stat {got['proc_pid_stat']:.1f} + statm "
                  f"{got['proc_pid_statm']:.1f} us + the row; system memory by psutil every "
                  f"10th sample: {got['psutil_virtual_memory']:.1f} us)")
    report.figure("sample_write_us", got["write"], "(RowWriter.write of one row, buffered)")
    report.figure("sample_psutil_us", got["psutil_cpu_times"] + got["psutil_process_cpu_times"]
                  + got["psutil_process_memory_info"],
                  "(the same three reads through psutil: cpu_times + Process.cpu_times + "
                  "Process.memory_info)")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"cost rounds (default 3 quick, {COST_ROUNDS} full)")
    parser.add_argument("--cost-calls", type=int, default=None,
                        help=f"timed calls per cost block (default 3 quick, {COST_CALLS} full)")
    parser.add_argument("--load-rounds", type=int, default=None,
                        help="rounds under load (default 2 quick, 6 full)")
    parser.add_argument("--block-s", type=float, default=None,
                        help=f"seconds of timed calls per block under load (default {BLOCK_S}; "
                             "quick: 5 calls)")
    parser.add_argument("--no-load", action="store_true",
                        help="skip the coverage-under-load part")
    parser.add_argument("--no-cost", action="store_true", help="skip the cost part")
    parser.add_argument("--dump", metavar="FILE.npz",
                        help="write the cost blocks' latencies (setting -> rounds x calls)")


def main(argv: Sequence[str] | None = None) -> int:
    args = common.arguments(__doc__.splitlines()[0], argv, _options)
    report = common.Report("sampler_cost", args.quick)
    rounds = args.rounds or (3 if args.quick else COST_ROUNDS)
    cost_calls = args.cost_calls or (3 if args.quick else COST_CALLS)
    load_rounds = args.load_rounds or (2 if args.quick else 6)
    common.header(report, f"Sampler: cost without load (off / default "
                          f"{name_of(default_interval())} / others, interleaved), coverage "
                          "under one CPU hog per core")
    profile_sample(report, 200 if args.quick else 3000)
    bench = Bench(common.DEMO_MODEL, common.input_tensors(10, 480, 640, seed=1))
    if not args.no_cost:
        measure_cost(report, "demo", bench, cost_calls, rounds, args.quick, args.dump)
    if not args.no_load:
        if args.quick and args.block_s is None:
            calls = 5
        else:
            start = time.perf_counter()
            bench.loop(len(bench.inputs))()
            per_call = (time.perf_counter() - start) / len(bench.inputs)
            calls = max(1, round((args.block_s or BLOCK_S) / per_call))
        measure_load(report, "demo", bench, calls, load_rounds, args.quick)
    bench.close()
    report.info(f"load average at the end: {load_average()}")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
