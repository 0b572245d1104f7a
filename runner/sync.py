"""``python -m runner.sync [DIR ...]``: upload job directories that could not be logged (the
tracking server was down) once it is back. Each job directory is published once: a run created
before the server went down is completed, not duplicated (tag ``detbench.job_dir``), and no
metric is logged twice. A directory that cannot be read (a corrupt or truncated file, e.g. after
a full disk) is reported with the reason and the others are uploaded all the same (exit 1)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from runner import jobdir
from runner.job import OUTCOME, PUBLISHED, Outcome, publish


def pending(roots: Sequence[Path]) -> Iterator[Path]:
    """Job directories with an outcome and a tracking record but not yet published."""
    for root in roots:
        for outcome in sorted(root.rglob(OUTCOME)):
            job_dir = outcome.parent
            if (job_dir / jobdir.TRACKING).is_file() and not (job_dir / PUBLISHED).is_file():
                yield job_dir


def sync_one(job_dir: Path, uri: str | None = None) -> str:
    from runner.tracking import Tracker

    record = jobdir.read_json(job_dir / jobdir.TRACKING)
    outcome = Outcome.read(job_dir)  # a corrupt directory is refused before any run is touched
    tracker = Tracker(uri or record["uri"], record["experiment"])
    run_id = record.get("run_id") or tracker.find_by_tag("detbench.job_dir",
                                                         str(job_dir.resolve()))
    if run_id:
        tracker.attach(run_id)
    else:
        tracker.start(record["name"], record["params"], record["tags"])
    publish(job_dir, tracker, outcome)
    assert tracker.run_id is not None
    return tracker.run_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path,
                        help="job directories or folders above them (default: outputs multirun)")
    parser.add_argument("--uri", help="tracking URI (default: the one each job used)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.exists()]
    if missing:
        print(f"runner.sync: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    roots = args.dirs or [d for d in (Path("outputs"), Path("multirun")) if d.exists()]
    jobs = list(pending(roots))
    failed = 0
    for job_dir in jobs:
        try:
            print(f"{job_dir} -> run {sync_one(job_dir, args.uri)}")
        except Exception as exc:  # noqa: BLE001 - reported; the other directories go on
            failed += 1
            print(f"{job_dir}: not uploaded: {type(exc).__name__}: {exc}", file=sys.stderr)
    uploaded = len(jobs) - failed
    print(f"{uploaded} job director{'y' if uploaded == 1 else 'ies'} uploaded"
          + (f", {failed} not (see above)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
