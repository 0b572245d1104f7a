"""Input preparation rate: decoding COCO-sized JPEGs with ``runner.data.prepare`` against the demo
detector's inference rate.

640x480 JPEGs (quality 90, photo-like content) are read and decoded exactly as the worker prepares
a chunk (``data.prepare(records, "uint8", resize)``), alternating with blocks of timed calls of the
demo detector on the prepared tensors (AB BA ...). Figure: images/sec of preparation over
images/sec of inference, for the native input policy (no resize: what the worker does for the
demo and the zoo's dynamic-shape models) and, for information, for the seed policy (squash-resize
to 512x512). Preparation never overlaps timing (it runs per chunk, before the chunk is timed), so
this ratio is the share of a job's wall time it costs: ratio R adds 1/R of the timed time. The
check: preparation is faster than inference (R > 1), so it cannot be what limits a job.

    python benchmarks/input_prep.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

MIN_RATIO = 1.0


def main(argv: Sequence[str] | None = None) -> int:
    args = common.arguments(__doc__.splitlines()[0], argv)
    report = common.Report("input_prep", args.quick)
    common.header(report, "data.prepare images/sec vs demo inference images/sec, interleaved")
    from runner import data
    from runner.backends.native import NativeBackend

    count, rounds = (24, 4) if args.quick else (64, 10)
    with tempfile.TemporaryDirectory(prefix="detbench-prep-") as tmp:
        images_dir, _ = common.write_jpeg_dataset(Path(tmp), count, distinct=count, seed=3)
        records = [data.ImageRecord(i + 1, images_dir / f"{i + 1:012d}.jpg", 640, 480)
                   for i in range(count)]
        size = sum(r.path.stat().st_size for r in records) / count / 1024
        report.info(f"{count} distinct 640x480 JPEGs, {size:.0f} kB each on average")
        backend = NativeBackend(common.DEMO_MODEL)
        tensors = [p.tensor for p in data.prepare(records, "uint8", None, progress=False)]
        loop = common.WorkerLoop(backend.predict, tensors)
        loop()  # warm up
        data.prepare(records[:4], "uint8", (512, 512), progress=False)

        shapes_ok: list[bool] = []

        def prepare(resize: tuple[int, int] | None) -> float:
            start = time.perf_counter()
            prepared = data.prepare(records, "uint8", resize, progress=False)
            elapsed = time.perf_counter() - start
            want = (1, 480, 640, 3) if resize is None else (1, *resize, 3)
            shapes_ok.append(len(prepared) == count and all(
                tuple(p.tensor.shape) == want and p.tensor.dtype.name == "uint8"
                for p in prepared))
            return elapsed

        def infer() -> float:
            return float(loop()[0].sum())

        got = common.interleave({"prepare": lambda _: prepare(None), "infer": lambda _: infer(),
                                 "prepare_seed": lambda _: prepare((512, 512))}, rounds)
        loop.close()
    rate = {k: count * len(v) / sum(v) for k, v in got.items()}
    report.info(f"prepare (native, no resize): {rate['prepare']:.1f} images/sec "
                f"({1e3 / rate['prepare']:.2f} ms per image)")
    report.info(f"prepare (seed policy, resize to 512x512): {rate['prepare_seed']:.1f} images/sec")
    report.info(f"demo inference (timed calls): {rate['infer']:.1f} images/sec "
                f"({1e3 / rate['infer']:.2f} ms per image)")
    ratio = rate["prepare"] / rate["infer"]
    report.figure("prepare_over_inference", ratio,
                  f"(prepare {rate['prepare']:.1f} img/s / demo inference "
                  f"{rate['infer']:.1f} img/s: preparation adds {100 / ratio:.0f}% of the timed "
                  "time to a job's wall time)")
    report.figure("prepare_seed_over_inference", rate["prepare_seed"] / rate["infer"],
                  "(seed policy: decode + resize to 512x512)")
    report.check("prepared_shapes", bool(shapes_ok) and all(shapes_ok),
                 f"every prepared batch held {count} uint8 tensors of the requested shape "
                 f"({len(shapes_ok)} batches)")
    report.target("prepare_faster_than_inference", ratio > MIN_RATIO,
                f"prepare/inference rate {ratio:.2f} > {MIN_RATIO:g}")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
