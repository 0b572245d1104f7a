"""Acquisition: the only module that touches the network. Downloads are resumable, atomic,
locked against concurrent fetches and verified by sha256 on every later use; archives are checked
and extracted safely (no member may escape its target) into a temp dir, then renamed into place.

Cache layout under ``cache_dir``::

    downloads/<file>                archives (+ .sha256, .lock; .part while fetching)
    models/<extracted dir>/         zoo models: saved_model/{saved_model.pb,variables/}, ...
    coco/val2017/*.jpg              COCO 2017 val images
    coco/annotations/*_val2017.json COCO 2017 val annotations

Without network, put a file at the ``downloads/`` path named in the error message and run again.

Trust: the COCO 2017 archives are pinned to their published sha256 (a mismatch is refused and
deleted). Zoo archives have no published checksums: the first download is trusted and its sha256
recorded beside it; a team pins what it recorded with ``python -m runner.acquire pin``, which
writes ``runner/zoo.sha256`` (commit it) and every later download is checked against it.

Extraction is bounded (``DETBENCH_MAX_EXTRACT_BYTES``, default 16 GiB, and
``DETBENCH_MAX_EXTRACT_MEMBERS``, default 200,000; COCO val2017, the largest archive used, holds
5,000 images in about 0.8 GB): beyond either, nothing is extracted.
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
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from filelock import FileLock

from runner import zoo

log = logging.getLogger(__name__)

ZOO_URL_ENV = "DETBENCH_ZOO_URL"
COCO_URL_ENV = "DETBENCH_COCO_URL"
COCO_BASE_URL = "https://s3.amazonaws.com/images.cocodataset.org"  # the same files over https
COCO_IMAGES = "zips/val2017.zip"
COCO_ANNOTATIONS = "annotations/annotations_trainval2017.zip"
#: published sha256 of the COCO 2017 archives (listed alike by public download scripts, e.g.
#: ParlAI's COCO task): file name -> (bytes, sha256)
COCO_PINNED: Mapping[str, tuple[int, str]] = {
    "val2017.zip": (815_585_330,
                    "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05"),
    "annotations_trainval2017.zip": (
        252_907_541, "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268"),
}
ZOO_CHECKSUMS = Path(__file__).with_name("zoo.sha256")  # written by `python -m runner.acquire pin`
ZOO_CHECKSUMS_ENV = "DETBENCH_ZOO_CHECKSUMS"  # another checksums file instead
MAX_BYTES_ENV = "DETBENCH_MAX_EXTRACT_BYTES"
MAX_MEMBERS_ENV = "DETBENCH_MAX_EXTRACT_MEMBERS"
DEFAULT_MAX_BYTES = 16 << 30
DEFAULT_MAX_MEMBERS = 200_000
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
             attempts: int = ATTEMPTS, expected: str | None = None,
             pinned_in: str = "") -> Path:
    """Fetch ``url`` to ``dest`` once; later calls verify it against ``<dest>.sha256`` instead.

    Resumable (``<dest>.part``, ``Range: bytes=N-``), atomic (the rename happens only once every
    byte announced by the server arrived), and locked (``<dest>.lock``): a second process fetching
    the same file waits, then finds it. A file the user put at ``dest`` is trusted on first use,
    unless ``expected`` pins its sha256 (``pinned_in`` says where the pin comes from): then a
    mismatch is refused and a downloaded file deleted."""
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{dest}.lock"):
        if dest.is_file():
            verify(dest, expected, pinned_in)
            return dest
        digest = _fetch(url, dest, progress=progress, timeout_s=timeout_s, attempts=attempts)
        if expected is not None and digest != expected:
            dest.unlink(missing_ok=True)
            raise AcquireError(
                f"{url} does not match its pinned sha256 ({pinned_in}): expected {expected}, "
                f"received {digest}; the download was deleted. The server or a proxy on the way "
                f"serves other bytes than the published file.")
        _sha_file(dest).write_text(f"{digest}  {dest.name}\n")
        log.info("downloaded %s -> %s (sha256 %s)", url, dest, digest)
    return dest


def verify(path: Path, expected: str | None = None, pinned_in: str = "") -> str:
    """Check ``path`` against its pinned sha256 (``expected``) and its recorded one (recording
    it when there is none yet)."""
    actual = sha256(path)
    if expected is not None and actual != expected:
        raise AcquireError(
            f"{path} does not match its pinned sha256 ({pinned_in}): expected {expected}, actual "
            f"{actual} (the file is corrupted or was replaced). Delete {path} and "
            f"{_sha_file(path)} to download it again.")
    record = _sha_file(path)
    if not record.is_file():
        record.write_text(f"{actual}  {path.name}\n")
        return actual
    recorded = (record.read_text().split() or [""])[0]
    if actual != recorded:
        raise AcquireError(
            f"{path} does not match the sha256 recorded when it was first obtained: expected "
            f"{recorded}, actual {actual} (the file is corrupted or was replaced). Delete {path} "
            f"and {record} to download it again.")
    return actual


def zoo_checksums_file() -> Path:
    return Path(os.environ.get(ZOO_CHECKSUMS_ENV) or ZOO_CHECKSUMS).expanduser()


def read_checksums(path: Path) -> dict[str, str]:
    """``sha256sum`` format (``<hex>  <file name>`` per line, ``#`` comments) -> {name: hex}."""
    if not path.is_file():
        return {}
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or len(fields[0]) != 64:
            raise AcquireError(f"{path}, line {number}: expected '<sha256>  <file name>', got "
                               f"{line!r}")
        pins[fields[1].lstrip("*")] = fields[0].lower()
    return pins


def pinned_sha256(file_name: str) -> tuple[str | None, str]:
    """(pinned sha256 or None, where it is pinned) for a downloaded archive's file name."""
    if file_name in COCO_PINNED:
        return COCO_PINNED[file_name][1], "the published COCO 2017 checksum"
    checksums = zoo_checksums_file()
    return read_checksums(checksums).get(file_name), str(checksums)


def known_sha256(path: Path) -> str | None:
    """The sha256 an archive must have: pinned, else recorded at its first download, else None."""
    pinned, _ = pinned_sha256(path.name)
    if pinned:
        return pinned
    record = _sha_file(path)
    fields = record.read_text().split() if record.is_file() else []
    return fields[0] if fields else None


def pin(cache_dir: Path, checksums: Path) -> dict[str, str]:
    """Add the sha256 recorded for every zoo archive in ``cache_dir/downloads`` to
    ``checksums`` (kept entries stay; a recorded hash that contradicts a pinned one is an
    error); returns the new entries."""
    names = {a.file_name for m in zoo.MODELS.values() for a in m.archives.values()}
    pins = read_checksums(checksums)
    added: dict[str, str] = {}
    for record in sorted((Path(cache_dir).expanduser() / "downloads").glob("*.sha256")):
        name = record.name[: -len(".sha256")]
        if name not in names:
            continue
        digest = (record.read_text().split() or [""])[0]
        if name in pins and pins[name] != digest:
            raise AcquireError(f"{record} records {digest} for {name}, but {checksums} pins "
                               f"{pins[name]}: one of them is not the published archive; delete "
                               f"the download or the line, then pin again")
        if name not in pins:
            added[name] = digest
    pins.update(added)
    lines = ["# sha256 of TF2 Detection Model Zoo archives as first downloaded by this team",
             "# (no published checksums exist). Written by `python -m runner.acquire pin`.",
             *(f"{digest}  {name}" for name, digest in sorted(pins.items()))]
    checksums.write_text("\n".join(lines) + "\n")
    return added


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


Select = Callable[[str], bool]


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what one archive may expand to (a 2 MB tar.gz of zeros expanded to 2 GiB in
    16.5 s before these existed). Counted from the members' headers, before any byte of the
    member over the bound is written."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS

    @classmethod
    def from_env(cls) -> ExtractLimits:
        def read(name: str, default: int) -> int:
            raw = os.environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value <= 0:
                raise AcquireError(f"{name}={raw!r} is not valid; it must be a positive integer")
            return value

        return cls(read(MAX_BYTES_ENV, DEFAULT_MAX_BYTES),
                   read(MAX_MEMBERS_ENV, DEFAULT_MAX_MEMBERS))


class _Budget:
    def __init__(self, archive: Path, limits: ExtractLimits | None) -> None:
        self.archive, self.limits = archive, limits or ExtractLimits.from_env()
        self.bytes = self.members = 0

    def member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise AcquireError(
                f"{self.archive}: refusing to extract more than {self.limits.max_members:,} "
                f"members (reached at {name!r}); nothing was extracted. If the archive is "
                f"trusted, raise {MAX_MEMBERS_ENV}; else delete it.")

    def size(self, name: str, size: int) -> None:
        self.bytes += max(size, 0)
        if self.bytes > self.limits.max_bytes:
            raise AcquireError(
                f"{self.archive}: refusing to extract more than {self.limits.max_bytes:,} bytes "
                f"(reached at {name!r}, which alone expands to {size:,} bytes); nothing was "
                f"extracted. If the archive is trusted, raise {MAX_BYTES_ENV}; else delete it.")


def extract_tar(archive: Path, dest_root: Path, *, top: str | None = None,
                select: Select | None = None, limits: ExtractLimits | None = None) -> Path:
    """Extract a .tar(.gz) into ``dest_root`` safely and atomically; returns ``dest_root/<top>``
    (``top``: the expected top-level directory; if given and present, it is reused unopened).
    ``select`` keeps only members whose name it accepts (all members are still checked and
    counted); ``limits`` (default: from the environment) bounds the size and member count."""
    budget = _Budget(archive, limits)

    def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        for member in tar:
            _check_tar_member(archive, member)
            budget.member(member.name)
            if select is None or select(member.name):
                budget.size(member.name, member.size)
                yield member

    def unpack(tmp: Path) -> None:
        gz = archive.name.endswith((".gz", ".tgz"))
        with tarfile.open(archive, "r:gz" if gz else "r:*") as tar:
            tar.extractall(tmp, members=members(tar), filter="data")

    return _extract(archive, dest_root, top, unpack)


def extract_zip(archive: Path, dest_root: Path, *, top: str | None = None,
                select: Select | None = None, limits: ExtractLimits | None = None) -> Path:
    """Like :func:`extract_tar`, for a .zip (CRCs are checked as members are written; a member
    never expands past the size its header declares, which is what is bounded)."""
    budget = _Budget(archive, limits)

    def unpack(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_zip_member(archive, info)
                budget.member(info.filename)
                if select is None or select(info.filename):
                    budget.size(info.filename, info.file_size)
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
    expected, pinned_in = pinned_sha256(archive.name)
    download(url, archive, expected=expected, pinned_in=pinned_in)
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


def main(argv: list[str] | None = None) -> int:
    """``python -m runner.acquire pin``: pin the zoo archives this cache downloaded."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m runner.acquire",
        description="Pin what was downloaded: write the sha256 recorded for each zoo archive in "
                    "the cache to a checksums file that every later download is checked against.")
    sub = parser.add_subparsers(dest="command", required=True)
    pin_parser = sub.add_parser("pin", help="add the cache's zoo archive hashes to the "
                                            "checksums file (commit it to share the pins)")
    pin_parser.add_argument("--cache-dir", default=os.environ.get("DETBENCH_CACHE")
                            or "~/.cache/detbench", help="the cache (default: $DETBENCH_CACHE "
                            "or ~/.cache/detbench)")
    pin_parser.add_argument("--file", type=Path, default=None,
                            help=f"the checksums file (default: ${ZOO_CHECKSUMS_ENV} or "
                                 f"{ZOO_CHECKSUMS})")
    args = parser.parse_args(argv)
    checksums = Path(args.file or zoo_checksums_file()).expanduser()
    try:
        added = pin(Path(args.cache_dir), checksums)
    except (AcquireError, OSError) as exc:
        print(f"detbench: {exc}", file=sys.stderr)
        return 2
    for name, digest in added.items():
        print(f"pinned {name} {digest}")
    print(f"{len(added)} new pin(s) in {checksums}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
