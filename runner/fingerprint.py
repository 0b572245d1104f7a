"""What a measurement depends on beyond its config: the model's bytes, the dataset and the
environment. A rerun skips a job only when all of them match a FINISHED run (``resume``), and
says which one changed when it measures again.

Hashing a SavedModel is the expensive part: 0.30 s for 200 MB already in the page cache
(sha256 at ~670 MB/s on this project's loaded 2-core VM; a model read from disk costs the disk's
read time on top), measured by ``benchmarks/fingerprint_cost.py``. So each file's sha256 is
cached under ``<cache_dir>/fingerprints.json`` keyed by (path, size, mtime_ns): a rerun over an
unchanged model only stats its files (0.3 ms for the same model). A file rewritten in place with
the same size within one mtime tick would be missed; copies, downloads and exports change the
mtime."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

if TYPE_CHECKING:
    from runner.tracking import Tracker

log = logging.getLogger(__name__)

CACHE_FILE = "fingerprints.json"
#: tags a job's run carries (one per part) so that a later rerun can say what changed
TAGS = {"config": "detbench.config_identity", "model": "detbench.model_digest",
        "dataset": "detbench.dataset_digest", "env": "detbench.env_key"}


@dataclass(frozen=True)
class Fingerprint:
    """The non-config inputs of a measurement, each a digest plus what it was taken of."""

    model: str
    model_source: str  # "the SavedModel at /x", "zoo archive y.tar.gz"
    dataset: str
    dataset_source: str  # the annotations file
    env: str  # env.key (runner.environment), as the worker will compute it

    def identity(self, config_key: str) -> str:
        """The key a rerun skips on: the config's hash and every digest."""
        payload = json.dumps([config_key, self.model, self.dataset, self.env])
        return hashlib.sha1(payload.encode()).hexdigest()[:16]

    def tags(self, config_key: str) -> dict[str, str]:
        return {TAGS["config"]: config_key, TAGS["model"]: self.model,
                TAGS["dataset"]: self.dataset, TAGS["env"]: self.env}

    def changes(self, tags: Mapping[str, str]) -> list[str]:
        """What differs from a run with ``tags`` (empty when nothing does)."""
        changed = []
        if tags.get(TAGS["model"]) != self.model:
            changed.append(f"{self.model_source} changed")
        if tags.get(TAGS["dataset"]) != self.dataset:
            changed.append(f"the dataset ({self.dataset_source}) changed")
        if tags.get(TAGS["env"]) != self.env:
            changed.append(f"the environment changed (env.key {tags.get(TAGS['env'], 'unknown')} "
                           f"-> {self.env})")
        return changed


# ------------------------------------------------------------------------------------ hashing


class _Cache:
    """sha256 per file keyed by (path, size, mtime_ns), stored as JSON under the cache dir."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.path = Path(cache_dir).expanduser() / CACHE_FILE if cache_dir else None
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        if self.path is not None and self.path.is_file():
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(self.path.read_text())
                if isinstance(loaded, dict):
                    self.entries = loaded

    def digest(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        hit = self.entries.get(key)
        if isinstance(hit, list) and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return str(hit[2])
        from runner.acquire import sha256  # the one file hasher (downloads use it too)

        digest = sha256(path)
        self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        """Merge into the file on disk (another job may have added entries) and replace it."""
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{self.path}.lock"):
                on_disk: dict[str, Any] = {}
                with contextlib.suppress(OSError, ValueError):
                    on_disk = json.loads(self.path.read_text())
                merged = {**(on_disk if isinstance(on_disk, dict) else {}), **self.entries}
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(merged))
                os.replace(tmp, self.path)
        except OSError as exc:  # a read-only or full cache only costs the next run a re-hash
            log.warning("could not save the fingerprint cache %s: %s", self.path, exc)


def _files(root: Path) -> Iterator[Path]:
    for directory, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            yield Path(directory) / name


def tree_digest(root: Path, cache_dir: Path | None = None) -> str:
    """sha256 over every file's relative path and sha256 under ``root`` (a SavedModel)."""
    cache = _Cache(cache_dir)
    outer = hashlib.sha256()
    for path in _files(root):
        rel = path.relative_to(root).as_posix()
        outer.update(f"{rel}\0{cache.digest(path)}\n".encode())
    cache.save()
    return "sha256:" + outer.hexdigest()


def file_digest(path: Path, cache_dir: Path | None = None) -> str:
    cache = _Cache(cache_dir)
    digest = cache.digest(path)
    cache.save()
    return "sha256:" + digest


# --------------------------------------------------------------------------------- one job


def _unknown(why: str) -> str:
    """A digest that matches no earlier run: what could not be read is measured again."""
    return f"unknown:{why}:{uuid.uuid4().hex[:8]}"


def model_fingerprint(cfg: Any, backend_ready: bool = True) -> tuple[str, str]:
    """(digest, what it was taken of) for the job's model; a zoo model is identified by its
    archive's sha256 (pinned, or recorded when first downloaded: downloading it first if
    neither exists)."""
    cache_dir = Path(cfg.cache_dir).expanduser()
    if cfg.model.source == "zoo":
        return _zoo_fingerprint(cfg, cache_dir, backend_ready)
    from runner.job import model_dir

    directory = model_dir(cfg)
    what = f"the SavedModel at {directory}"
    if not directory.is_dir():
        return _unknown("missing"), what
    try:
        return tree_digest(directory, cache_dir), what
    except OSError as exc:  # unreadable: the job fails on it inside its run, as it would have
        log.debug("SavedModel not hashed: %s", exc)
        return _unknown("unreadable"), what


def _zoo_fingerprint(cfg: Any, cache_dir: Path, backend_ready: bool = True) -> tuple[str, str]:
    from runner import acquire, config, zoo

    archive = zoo.get(cfg.model.name).archive(config.nominal_resolution(cfg))
    what = f"zoo archive {archive.file_name}"
    known = acquire.known_sha256(cache_dir / "downloads" / archive.file_name)
    if known is None and not backend_ready:  # the job fails on its backend: no download
        return _unknown(f"backend {cfg.precision.backend} unavailable"), what
    if known is None:
        try:
            acquire.ensure_zoo_model(cfg.model.name, config.nominal_resolution(cfg), cache_dir)
        except acquire.AcquireError as exc:  # the job itself fails on it with the same message
            log.debug("zoo model not acquired for its fingerprint: %s", exc)
            return _unknown("not downloaded"), what
        known = acquire.known_sha256(cache_dir / "downloads" / archive.file_name)
    return (f"sha256:{known}" if known else _unknown("archive removed")), what


def dataset_fingerprint(dataset: Any, cache_dir: Path | None) -> str:
    """The annotations' (and keypoint annotations') bytes and the scored image list: ids, file
    names and sizes. The image files' bytes are not read (COCO val2017 is 0.8 GB)."""
    digest = hashlib.sha256()
    for path in (dataset.annotations, dataset.keypoint_annotations):
        digest.update(f"{file_digest(path, cache_dir) if path else None}\n".encode())
    rows = [[r.image_id, r.path.name, r.width, r.height] for r in dataset.images]
    digest.update(json.dumps(rows).encode())
    return "sha256:" + digest.hexdigest()


def of_job(cfg: Any, backend_env: Mapping[str, str] | None = None,
           backend_ready: bool = True) -> Fingerprint:
    """Everything but the config that a job's numbers depend on. Loads and validates the
    dataset (a ConfigError here comes before any MLflow run exists) and, for a zoo model never
    downloaded, downloads it. ``backend_env``: the backend's environment fields (part of
    env.key, see ``runner.backends``); ``backend_ready``: False when the job's backend failed its
    availability check (the job fails on it: nothing is downloaded for it)."""
    from runner import data, environment
    from runner.acquire import AcquireError

    model, model_source = model_fingerprint(cfg, backend_ready)
    cache_dir = Path(cfg.cache_dir).expanduser()
    try:
        dataset = data.load_dataset(cfg.dataset, cfg.cache_dir)
    except (AcquireError, OSError) as exc:  # COCO not obtainable, a full disk generating the
        # synthetic split: the job fails on it inside its run, as it did before this check
        log.debug("dataset not acquired for its fingerprint: %s", exc)
        dataset_digest, dataset_source = _unknown("not acquired"), cfg.dataset.display_name
    else:
        dataset_digest = dataset_fingerprint(dataset, cache_dir)
        dataset_source = str(dataset.annotations)
    env = environment.prerun_key(cfg.benchmark.telemetry, backend_env)
    return Fingerprint(model, model_source, dataset_digest, dataset_source, env)


def resume_decision(tracker: Tracker, config_key: str, fp: Fingerprint) -> tuple[str | None, str]:
    """(skip reason or None, what to tell the user): skip when a FINISHED run has this config,
    model bytes, dataset and environment; else say what changed since the last FINISHED run of
    the same config, if any."""
    key = fp.identity(config_key)
    same = tracker.latest_finished("detbench.identity", key)
    if same is not None:
        return (f"already measured: run {same[0]} has the same config, model bytes, dataset and "
                "environment (benchmark.rerun=true measures it again)"), ""
    earlier = (tracker.latest_finished(TAGS["config"], config_key)
               or tracker.latest_finished("detbench.identity", config_key))
    if earlier is None:
        return None, ""
    run_id, tags = earlier
    changed = fp.changes(tags) if TAGS["model"] in tags else [
        "it was measured before model bytes, dataset and environment were part of the identity"]
    return None, f"re-measuring: {'; '.join(changed)} since run {run_id}"
