"""``python -m runner.sync [DIR ...]``: upload job directories that could not be logged (the
tracking server was down) once it is back. Each job directory is published once: a run created
before the server went down is completed, not duplicated (tag ``detbench.job_dir``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from runner.job import OUTCOME, PUBLISHED, publish


def pending(roots: Sequence[Path]) -> Iterator[Path]:
    """Job directories with an outcome and a tracking record but not yet published."""
    for root in roots:
        for outcome in sorted(root.rglob(OUTCOME)):
            job_dir = outcome.parent
            if (job_dir / "tracking.json").is_file() and not (job_dir / PUBLISHED).is_file():
                yield job_dir


def sync_one(job_dir: Path, uri: str | None = None) -> str:
    from runner.tracking import Tracker

    record = json.loads((job_dir / "tracking.json").read_text())
    tracker = Tracker(uri or record["uri"], record["experiment"])
    run_id = record.get("run_id") or tracker.find_by_tag("detbench.job_dir",
                                                         str(job_dir.resolve()))
    if run_id:
        tracker.attach(run_id)
    else:
        tracker.start(record["name"], record["params"], record["tags"])
    publish(job_dir, tracker)
    assert tracker.run_id is not None
    return tracker.run_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, default=[Path("outputs"), Path("multirun")])
    parser.add_argument("--uri", help="tracking URI (default: the one each job used)")
    args = parser.parse_args(argv)
    jobs = list(pending([d for d in args.dirs if d.exists()]))
    for job_dir in jobs:
        print(f"{job_dir} -> run {sync_one(job_dir, args.uri)}")
    print(f"{len(jobs)} job director{'y' if len(jobs) == 1 else 'ies'} uploaded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
