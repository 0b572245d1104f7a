"""Acquisition: the only module that touches the network. Downloads are resumable, atomic,
locked against concurrent fetches and verified by sha256 on every later use; archives are checked
and extracted safely (no member may escape its target) into a temp dir, then renamed into place.

Cache layout under ``cache_dir``::

    downloads/<file>                archives (+ .sha256, .lock; .part while fetching)
    models/<extracted dir>/         zoo models: saved_model/{saved_model.pb,variables/}, ...
    coco/val2017/*.jpg              COCO 2017 val images
    coco/annotations/*_val2017.json COCO 2017 val annotations

Without network, put a file at the ``downloads/`` path named in the error message and run again.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import logging
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from filelock import FileLock

from runner import zoo

log = logging.getLogger(__name__)

ZOO_URL_ENV = "DETBENCH_ZOO_URL"
COCO_URL_ENV = "DETBENCH_COCO_URL"
COCO_BASE_URL = "http://images.cocodataset.org"
COCO_IMAGES = "zips/val2017.zip"
COCO_ANNOTATIONS = "annotations/annotations_trainval2017.zip"
CHUNK_BYTES = 1 << 20
ATTEMPTS = 3  # tries per download() call when a transfer is cut; each resumes the last
RETRY_DELAY_S = 1.0  # base of the exponential back-off between tries

# What a truncated or garbled archive raises while it is read.
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile)
# A transfer cut half way (the .part file is kept and the next try resumes it).
_CUT = (http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


class AcquireError(RuntimeError):
    """A file could not be obtained, verified or extracted; the message says what to do."""


class _Cut(Exception):
    """A transfer ended before all bytes arrived (resumable)."""


# ----------------------------------------------------------------------------------- download


def download(url: str, dest: Path, *, progress: bool = True, timeout_s: float = 60,
             attempts: int = ATTEMPTS) -> Path:
    """Fetch ``url`` to ``dest`` once; later calls verify it against ``<dest>.sha256`` instead.

    Resumable (``<dest>.part``, ``Range: bytes=N-``), atomic (the rename happens only once every
    byte announced by the server arrived), and locked (``<dest>.lock``): a second process fetching
    the same file waits, then finds it. A file the user put at ``dest`` is trusted on first use."""
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{dest}.lock"):
        if dest.is_file():
            verify(dest)
            return dest
        digest = _fetch(url, dest, progress=progress, timeout_s=timeout_s, attempts=attempts)
        _sha_file(dest).write_text(f"{digest}  {dest.name}\n")
        log.info("downloaded %s -> %s (sha256 %s)", url, dest, digest)
    return dest


def verify(path: Path) -> str:
    """Check ``path`` against its recorded sha256 (recording it when there is none yet)."""
    actual = sha256(path)
    record = _sha_file(path)
    if not record.is_file():
        record.write_text(f"{actual}  {path.name}\n")
        return actual
    expected = (record.read_text().split() or [""])[0]
    if actual != expected:
        raise AcquireError(
            f"{path} does not match the sha256 recorded when it was first obtained: expected "
            f"{expected}, actual {actual} (the file is corrupted or was replaced). Delete {path} "
            f"and {record} to download it again.")
    return actual


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _sha_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _part_file(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _offline_error(url: str, dest: Path, reason: object) -> AcquireError:
    return AcquireError(
        f"cannot download {url}: {reason}. If this machine has no access to it, download it "
        f"elsewhere and put the file at {dest} (exactly this path), then run again.")


def _fetch(url: str, dest: Path, *, progress: bool, timeout_s: float, attempts: int) -> str:
    """Download into ``<dest>.part`` (resuming it), rename to ``dest``; returns the sha256."""
    for attempt in range(1, attempts + 1):
        try:
            digest = _fetch_once(url, dest, progress=progress, timeout_s=timeout_s)
        except (_Cut, *_CUT) as exc:
            done = _part_file(dest).stat().st_size if _part_file(dest).exists() else 0
            if attempt == attempts:
                raise AcquireError(
                    f"the download of {url} was cut {attempts} time(s), last: {exc}; "
                    f"{done} bytes are kept in {_part_file(dest)} and the next run resumes "
                    f"them. Or download it elsewhere and put the file at {dest}.") from exc
            log.warning("download of %s cut at %d bytes (%s); resuming", url, done, exc)
            time.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
        else:
            os.replace(_part_file(dest), dest)
            return digest
    raise AssertionError("unreachable")


def _open(url: str, dest: Path, offset: int, timeout_s: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "detbench"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is already as long as the file (or longer)
            exc.close()
            _part_file(dest).unlink()
            return _open(url, dest, 0, timeout_s)
        raise _offline_error(url, dest, f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _offline_error(url, dest, reason) from exc
    return response


def _content_range(header: str | None) -> tuple[int, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None)."""
    try:
        unit, spec = (header or "").split(" ", 1)
        span, total = spec.split("/", 1)
        start = int(span.split("-", 1)[0])
        return start, None if total.strip() == "*" else int(total)
    except ValueError:
        return -1, None


def _fetch_once(url: str, dest: Path, *, progress: bool, timeout_s: float) -> str:
    part = _part_file(dest)
    offset = part.stat().st_size if part.exists() else 0
    digest = hashlib.sha256()
    with _open(url, dest, offset, timeout_s) as response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:  # start over on the next try
                part.unlink()
                raise _Cut(f"server resumed at byte {start}, not {offset}")
            with part.open("rb") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    digest.update(chunk)
            mode = "ab"
        else:  # 200: the whole file (the server ignored the Range header or there was none)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        received = _stream(response, part, mode, digest, offset, total, progress, dest.name)
    if total is not None and received != total:
        raise _Cut(f"received {received} of {total} bytes")
    return digest.hexdigest()


DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _disk_full(exc: OSError, what: str, where: Path, needed: int | None) -> AcquireError:
    size = f" (it needs about {needed / 2**20:.0f} MiB)" if needed else ""
    return AcquireError(f"no space left while {what} into {where}: {exc.strerror or exc}; free "
                        f"space{size} and run again: nothing half-written is kept as good")


def _stream(response: IO[bytes], part: Path, mode: str, digest: hashlib._Hash, offset: int,
            total: int | None, progress: bool, name: str) -> int:
    """Append the body to ``part`` chunk by chunk; returns the file's size afterwards. A full
    disk keeps the ``.part`` (the next attempt resumes it) and says so."""
    from tqdm import tqdm

    size = offset
    try:
        with part.open(mode) as out, tqdm(total=total, initial=offset, unit="B",
                                          unit_scale=True, unit_divisor=1024, desc=name,
                                          disable=None if progress else True) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise _disk_full(exc, f"downloading {name}", part.parent, total) from exc
        raise
    return size


# ------------------------------------------------------------------------------------ extract


def _unsafe(name: str) -> str | None:
    """Why a member name would escape the target directory (None if it would not)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' component"
    return None


def _refuse(archive: Path, member: str, why: str) -> AcquireError:
    return AcquireError(f"{archive}: refusing member {member!r}: {why} (it could write outside "
                        f"the extraction directory); the archive was not extracted")


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    why = _unsafe(member.name)
    if why is None and (member.issym() or member.islnk()):
        why = f"a {'symbolic' if member.issym() else 'hard'} link to {member.linkname!r}"
    if why is None and not (member.isfile() or member.isdir()):
        why = "a device, fifo or other special file"
    if why:
        raise _refuse(archive, member.name, why)


def _check_zip_member(archive: Path, info: zipfile.ZipInfo) -> None:
    why = _unsafe(info.filename)
    mode = info.external_attr >> 16
    if why is None and stat.S_ISLNK(mode):
        why = "a symbolic link"
    if why is None and mode and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or
                                                            stat.S_ISDIR(mode)):
        why = "a device, fifo or other special file"
    if why:
        raise _refuse(archive, info.filename, why)


def _corrupt(archive: Path, exc: BaseException) -> AcquireError:
    """Remove a damaged archive (and its hash) so that the next attempt downloads it again."""
    archive.unlink(missing_ok=True)
    _sha_file(archive).unlink(missing_ok=True)
    return AcquireError(f"{archive} is damaged ({type(exc).__name__}: {exc}); it was deleted, so "
                        f"the next run downloads it again")


def _top(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).parts[0]


Select = Callable[[str], bool]


def extract_tar(archive: Path, dest_root: Path, *, top: str | None = None,
                select: Select | None = None) -> Path:
    """Extract a .tar(.gz) into ``dest_root`` safely and atomically; returns ``dest_root/<top>``
    (``top``: the expected top-level directory; if given and present, it is reused unopened).
    ``select`` keeps only members whose name it accepts (all members are still checked)."""

    def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        for member in tar:
            _check_tar_member(archive, member)
            if select is None or select(member.name):
                yield member

    def unpack(tmp: Path) -> None:
        gz = archive.name.endswith((".gz", ".tgz"))
        with tarfile.open(archive, "r:gz" if gz else "r:*") as tar:
            tar.extractall(tmp, members=members(tar), filter="data")

    return _extract(archive, dest_root, top, unpack)


def extract_zip(archive: Path, dest_root: Path, *, top: str | None = None,
                select: Select | None = None) -> Path:
    """Like :func:`extract_tar`, for a .zip (CRCs are checked as members are written)."""

    def unpack(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_zip_member(archive, info)
            for info in infos:
                if select is None or select(info.filename):
                    zf.extract(info, tmp)

    return _extract(archive, dest_root, top, unpack)


def _extract(archive: Path, dest_root: Path, top: str | None,
             unpack: Callable[[Path], None]) -> Path:
    dest_root.mkdir(parents=True, exist_ok=True)
    if top is not None and (dest_root / top).exists():
        return dest_root / top
    with FileLock(f"{archive}.extract.lock"):
        if top is not None and (dest_root / top).exists():  # another process just did it
            return dest_root / top
        if not archive.is_file():
            raise AcquireError(f"{archive} does not exist; nothing to extract")
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_root))
        try:
            try:
                unpack(tmp)
            except _CORRUPT as exc:
                raise _corrupt(archive, exc) from exc
            except OSError as exc:
                if exc.errno in DISK_FULL:
                    raise _disk_full(exc, f"extracting {archive.name}", dest_root,
                                     archive.stat().st_size * 2) from exc
                raise
            return _move_into_place(archive, tmp, dest_root, top)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(archive: Path, tmp: Path, dest_root: Path, top: str | None) -> Path:
    """Rename each extracted top-level entry into ``dest_root`` (existing ones are kept)."""
    entries = sorted(p.name for p in tmp.iterdir())
    if top is not None and top not in entries:
        raise AcquireError(f"{archive} does not have the expected layout: its top-level entries "
                           f"are {entries or 'none'}, expected the directory {top!r}")
    for name in entries:
        if not (dest_root / name).exists():
            os.replace(tmp / name, dest_root / name)
    if top is None:
        return dest_root / entries[0] if len(entries) == 1 else dest_root
    return dest_root / top


# -------------------------------------------------------------------------------- zoo, COCO


def _ensure_extracted(url: str, archive: Path, dest_root: Path, top: str,
                      extract: Callable[..., Path], select: Select | None = None) -> Path:
    """Download + verify + extract, unless the archive was deleted after a complete extraction
    (then the extracted copy is used as it is)."""
    target = dest_root / top
    if target.exists() and not archive.exists():
        log.info("using %s (its archive %s was removed, so it is not re-verified)", target, archive)
        return target
    download(url, archive)
    return extract(archive, dest_root, top=top, select=select)


def ensure_zoo_model(key: str, resolution: str | None, cache_dir: Path) -> Path:
    """The ``saved_model/`` directory of zoo model ``key`` at ``resolution`` (None or "default":
    its first), downloaded, verified and extracted under ``cache_dir`` as needed."""
    archive = zoo.get(key).archive(resolution)
    cache = Path(cache_dir).expanduser()
    base = os.environ.get(ZOO_URL_ENV) or zoo.ZOO_BASE_URL
    path = cache / "downloads" / archive.file_name
    target = _ensure_extracted(zoo.archive_url(archive, base), path, cache / "models",
                               archive.extracted_dir, extract_tar)
    saved_model = target / "saved_model"
    if not ((saved_model / "saved_model.pb").is_file() and (saved_model / "variables").is_dir()):
        raise AcquireError(
            f"{target} does not have the zoo layout: expected {saved_model}/saved_model.pb and "
            f"{saved_model}/variables/ (plus checkpoint/ and pipeline.config beside saved_model/). "
            f"Delete {target} and {path} to download it again.")
    return saved_model


def ensure_coco_val2017(cache_dir: Path) -> tuple[Path, Path, Path]:
    """COCO 2017 val: (images dir ``val2017/``, ``instances_val2017.json``,
    ``person_keypoints_val2017.json``), downloaded, verified and extracted under
    ``cache_dir/coco`` as needed (only the ``*_val2017.json`` annotation files are extracted)."""
    cache = Path(cache_dir).expanduser()
    base = (os.environ.get(COCO_URL_ENV) or COCO_BASE_URL).rstrip("/")
    root = cache / "coco"
    images = _ensure_extracted(f"{base}/{COCO_IMAGES}", cache / "downloads" / "val2017.zip",
                               root, "val2017", extract_zip)
    annotations_zip = cache / "downloads" / PurePosixPath(COCO_ANNOTATIONS).name
    annotations = _ensure_extracted(f"{base}/{COCO_ANNOTATIONS}", annotations_zip, root,
                                    "annotations", extract_zip,
                                    select=lambda name: name.endswith("_val2017.json"))
    instances = annotations / "instances_val2017.json"
    keypoints = annotations / "person_keypoints_val2017.json"
    missing = [str(p) for p in (instances, keypoints) if not p.is_file()]
    if not any(images.glob("*.jpg")):
        missing.append(f"{images}/*.jpg")
    if missing:
        raise AcquireError(f"COCO val2017 under {root} is incomplete: missing {', '.join(missing)}."
                           f" Delete {root} (and the zips in {cache / 'downloads'}) to fetch it "
                           f"again.")
    return images, instances, keypoints
