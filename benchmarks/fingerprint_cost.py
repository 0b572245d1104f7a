"""Cost of the resume identity's model fingerprint (runner.fingerprint): hashing a SavedModel-
sized directory the first time (every byte read) versus again with the (path, size, mtime_ns)
cache (only stats), plus the dataset fingerprint of a COCO-val-sized annotations file.

Full mode: a 200 MB "SavedModel" (saved_model.pb + two variable shards of random bytes), 3 cold
and 3 cached rounds. ``--quick``: 20 MB, 2 rounds each. Checks: the cached digest equals the cold
one, a changed byte changes the digest, and the cached pass is under 1% of the cold one (it reads
no file bytes; a regression to re-hashing would be ~100%).

    python benchmarks/fingerprint_cost.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def _model(root: Path, total_mb: int) -> Path:
    model = root / "model"
    (model / "variables").mkdir(parents=True)
    shard = total_mb * (1 << 20) // 2
    with (model / "saved_model.pb").open("wb") as fh:
        fh.write(os.urandom(1 << 20))
    for i in range(2):
        with (model / "variables" / f"variables.data-0000{i}-of-00002").open("wb") as fh:
            for _ in range(shard >> 20):
                fh.write(os.urandom(1 << 20))
    (model / "variables" / "variables.index").write_bytes(os.urandom(4096))
    return model


def main(argv: list[str] | None = None) -> int:
    from runner import fingerprint

    args = common.arguments(__doc__.splitlines()[0], argv)
    report = common.Report("fingerprint_cost", quick=args.quick)
    size_mb, rounds = (20, 2) if args.quick else (200, 3)
    common.header(report, f"hashing a {size_mb} MB SavedModel, cold and cached")
    with tempfile.TemporaryDirectory(prefix="detbench-fp-") as tmp:
        model = _model(Path(tmp), size_mb)
        cold, cached, digests = [], [], set()
        for r in range(rounds):
            cache = Path(tmp) / f"cache{r}"
            start = time.perf_counter()
            digests.add(fingerprint.tree_digest(model, cache))
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            digests.add(fingerprint.tree_digest(model, cache))
            cached.append(time.perf_counter() - start)
        report.figure("cold_s", statistics.median(cold), f"median of {rounds}, {size_mb} MB")
        report.figure("cold_mb_per_s", size_mb / statistics.median(cold))
        report.figure("cached_s", statistics.median(cached), "stats only")
        report.check("same_digest", len(digests) == 1, f"{len(digests)} distinct digest(s)")
        shard = model / "variables" / "variables.index"
        data = bytearray(shard.read_bytes())
        data[0] ^= 1
        shard.write_bytes(bytes(data))
        changed = fingerprint.tree_digest(model, Path(tmp) / "cache0")
        report.check("change_detected", changed not in digests, "one flipped bit")
        hot, first = statistics.median(cached), statistics.median(cold)
        report.target("cached_under_1pct", hot < 0.01 * first,
                      f"cached {hot:.4f} s vs cold {first:.3f} s")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
