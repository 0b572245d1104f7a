"""The job directory's layout: every file the parent (``runner.job``), the child
(``runner.worker``), the sampler and ``runner.sync`` exchange, by name, in one place.

Protocol files are written atomically (a temporary file in the same directory, fsync, then
``os.replace``): a reader sees the old file or the whole new one, never a 0-byte or truncated
one (with the job directory on a full 600 KiB tmpfs, a plain ``write_text`` left 0-byte
``error.json`` and ``outcome.json``). A failed write raises :class:`NoSpace` (ENOSPC, EFBIG,
EDQUOT: the message names the file and says "no space left on ...") or :class:`JobDirError`;
a failed read raises :class:`JobDirError` naming the file and what is wrong with it.

Latencies are stored as they are measured in ``latencies.npy``, a NaN-filled array
``repeats x images`` mapped into the child's memory (:func:`create_latency_log`): the timer's
store into it is the only persistence work per call, and the mapped pages belong to the page
cache, so every stored latency survives the child being killed (SIGKILL, timeout, a hung model).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# -- the files (parent -> child) ------------------------------------------------------------------
JOB = "job.json"  # JobSpec: resolved config, model directory, dataset (runner.worker)
CONFIG = "config.yaml"  # the job's resolved config (logged as an artifact)
TRACKING = "tracking.json"  # MLflow URI, experiment, run id, params, tags (runner.sync)
CALIBRATION = "calibration.json"  # INT8 calibration images
# -- the child's results (child -> parent), in the order they are written ------------------------
ENVIRONMENT = "environment.json"  # env.* / telemetry.* tags
BACKEND = "backend.json"  # what the backend ran (backend.* tags)
LATENCY_LOG = "latencies.npy"  # float64 [repeats, images], NaN until measured (memory-mapped)
LATENCIES = "latencies.csv"  # image_id, latency_ms of the first pass (written from the log)
SAMPLES = "samples.csv"  # telemetry rows
TELEMETRY_ROWS = "telemetry_rows.csv"  # sampler rows streamed as taken (kept when killed)
TELEMETRY = "telemetry.json"  # sampler metadata: wall_start, backend, phases, errors
DETECTIONS = "detections.json"
KEYPOINTS = "keypoints.json"
MASKS = "masks.json"
STABILITY = "stability.json"  # {"stable", "warning"}
METRICS = "metrics.json"  # every metric of a finished job
ERROR = "error.json"  # the child's exception: type, message, traceback[, signal]
# -- the parent's record ------------------------------------------------------------------------
TABLE_ROW = "table_row.md"
OUTCOME = "outcome.json"  # status, error_type, error, traceback: written before logging
PUBLISHED = "published.json"  # written once the directory is logged to MLflow (runner.sync skips)
OUTPUT_CHECKS = "output_checks.json"  # runner.checks: counted findings on the model's outputs

#: logged as the run's artifacts, when present
ARTIFACTS = (CONFIG, LATENCIES, SAMPLES, DETECTIONS, KEYPOINTS, MASKS, ENVIRONMENT, TELEMETRY,
             BACKEND, TABLE_ROW, CALIBRATION, OUTPUT_CHECKS)
_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class JobDirError(RuntimeError):
    """A job-directory file could not be written or read; the message names it and says why."""


class NoSpace(JobDirError):
    """A write failed for lack of space (ENOSPC, EDQUOT) or a file-size limit (EFBIG)."""


def _write_error(exc: OSError, path: Path) -> JobDirError:
    if exc.errno in _NO_SPACE:
        what = {errno.EFBIG: "file size limit reached (RLIMIT_FSIZE)",
                errno.EDQUOT: "disk quota exceeded"}.get(exc.errno, "device full")
        return NoSpace(f"no space left on {_mount_of(path)} writing {path} ({what}: "
                       f"{exc.strerror}); free space there or move the job directory "
                       "(hydra.run.dir / hydra.sweep.dir)")
    return JobDirError(f"could not write {path}: {exc.strerror or exc}")


def _mount_of(path: Path) -> str:
    """The mount point holding ``path`` (what to free), else its directory."""
    p = path.parent.resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return f"the filesystem mounted at {p}"


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (temporary file + fsync + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise _write_error(exc, path) from exc


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, value: Any, indent: int | None = 1) -> None:
    write_text(path, json.dumps(value, indent=indent, default=str))


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows with the union of their keys as columns (first seen first), atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_json(path: Path) -> Any:
    """The file's JSON; JobDirError naming the file when it is missing, unreadable or corrupt."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise JobDirError(f"{path} is missing") from None
    except OSError as exc:
        raise JobDirError(f"{path} is unreadable: {exc.strerror or exc}") from exc
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        state = "empty (0 bytes)" if not raw else f"not valid JSON ({len(raw)} bytes: {exc})"
        raise JobDirError(f"{path} is {state}: the job directory is corrupt (a full disk?)"
                          ) from exc


def read_json_if(path: Path) -> Any:
    """Like read_json, None when the file does not exist."""
    return read_json(path) if path.exists() else None


# -- latencies ----------------------------------------------------------------------------------


def create_latency_log(job_dir: Path, repeats: int, images: int) -> np.ndarray:
    """A NaN-filled float64 array ``[repeats, images]`` backed by ``latencies.npy`` (MAP_SHARED):
    what is stored into it is in the page cache at once and outlives the process. The file is
    written in full first (a plain write fails with NoSpace on a full disk; storing into a
    mapping of a sparse file would get SIGBUS instead). The caller stores into a plain ndarray
    view (``np.asarray``): the store costs what a store into np.empty costs
    (benchmarks/latency_store.py)."""
    path = job_dir / LATENCY_LOG
    buffer = io.BytesIO()
    np.save(buffer, np.full((repeats, images), np.nan, dtype=np.float64))
    write_bytes(path, buffer.getvalue())
    return np.asarray(np.load(path, mmap_mode="r+"))


def read_latency_log(job_dir: Path) -> np.ndarray | None:
    """The latency log ``[repeats, images]`` (NaN: not measured), None if there is none."""
    path = job_dir / LATENCY_LOG
    if not path.exists():
        return None
    try:
        return np.array(np.load(path, mmap_mode="r"))
    except (OSError, ValueError) as exc:
        raise JobDirError(f"{path} is unreadable or corrupt: {exc}") from exc


def write_latencies_csv(job_dir: Path, image_ids: Sequence[int], log: np.ndarray) -> int:
    """``latencies.csv`` (image_id, latency_ms) of the first pass's measured calls from the
    log; returns the number of rows."""
    first = log[0] if log.ndim == 2 else log
    rows = [(i, round(float(t) * 1000, 6)) for i, t in zip(image_ids, first, strict=False)
            if not np.isnan(t)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image_id", "latency_ms"])
    writer.writerows(rows)
    write_text(job_dir / LATENCIES, buffer.getvalue())
    return len(rows)


def measured(log: np.ndarray) -> np.ndarray:
    """The measured latencies (seconds) of a log, all passes pooled, NaNs dropped."""
    flat = np.asarray(log, dtype=np.float64).reshape(-1)
    return flat[~np.isnan(flat)]


def existing(job_dir: Path, names: Iterable[str]) -> list[Path]:
    return [job_dir / n for n in names if (job_dir / n).is_file()]
