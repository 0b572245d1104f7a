"""runner.acquire against a local HTTP server (Range support, request counting, cut transfers)
serving archives built here in the zoo's and COCO's real layouts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner import acquire, zoo
from runner.acquire import AcquireError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- the server


@dataclass
class Served:
    """What the test server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    cut_once: set[str] = field(default_factory=set)  # paths whose next body stops half way
    ignore_range: bool = False
    hold: threading.Event | None = None  # when set: bodies wait for it before being sent
    url: str = ""

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        served = self.server.served  # type: ignore[attr-defined]
        range_header = self.headers.get("Range")
        served.requests.append((self.path, range_header))
        body = served.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if range_header and not served.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if served.hold is not None:
            served.hold.wait(10)
        payload = body[start:]
        if self.path in served.cut_once:  # announce everything, send half, hang up
            served.cut_once.discard(self.path)
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    served = Served(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.served = served  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv(acquire.ZOO_URL_ENV, served.url + "/zoo")
    monkeypatch.setenv(acquire.COCO_URL_ENV, served.url + "/coco")
    monkeypatch.setattr(acquire, "RETRY_DELAY_S", 0.0)
    yield served
    if served.hold is not None:
        served.hold.set()
    httpd.shutdown()
    httpd.server_close()


# ----------------------------------------------------------------------------- the archives


def _blob(size: int, seed: int = 0) -> bytes:
    """Incompressible bytes, so that a .tar.gz is about as large as its contents."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return out[:size]


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def zoo_tar(top: str, *, variables: bool = True, size: int = 200_000) -> bytes:
    """An archive in the zoo's layout: <top>/{saved_model/{saved_model.pb,variables/},
    checkpoint/, pipeline.config}."""
    entries = [_dir(top), _dir(f"{top}/saved_model"),
               _file(f"{top}/saved_model/saved_model.pb", b"graph" + _blob(size))]
    if variables:
        entries += [_dir(f"{top}/saved_model/variables"),
                    _file(f"{top}/saved_model/variables/variables.index", b"index"),
                    _file(f"{top}/saved_model/variables/variables.data-00000-of-00001",
                          _blob(size, 1))]
    entries += [_dir(f"{top}/checkpoint"),
                _file(f"{top}/checkpoint/checkpoint", b'model_checkpoint_path: "ckpt-0"\n'),
                _file(f"{top}/checkpoint/ckpt-0.index", b"index"),
                _file(f"{top}/checkpoint/ckpt-0.data-00000-of-00001", b"data"),
                _file(f"{top}/pipeline.config", b"model { }\n")]
    return _tar(entries)


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _serve_zoo(served: Served, key: str, resolution: str | None = None,
               body: bytes | None = None) -> tuple[zoo.ZooArchive, str]:
    archive = zoo.get(key).archive(resolution)
    path = f"/zoo/{archive.date}/{archive.file_name}"
    served.files[path] = body if body is not None else zoo_tar(archive.extracted_dir)
    return archive, path


# ------------------------------------------------------------------------------- download


def test_download_shows_progress_records_sha256_and_leaves_no_part(
        server: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.files["/f.bin"] = data = _blob(300_000)
    dest = tmp_path / "downloads" / "f.bin"
    assert acquire.download(f"{server.url}/f.bin", dest) == dest
    assert dest.read_bytes() == data
    digest = hashlib.sha256(data).hexdigest()
    assert (tmp_path / "downloads" / "f.bin.sha256").read_text().split()[0] == digest
    assert not (tmp_path / "downloads" / "f.bin.part").exists()
    err = capsys.readouterr().err
    assert "f.bin" in err and "100%" in err and "293k" in err  # 300,000 B in KiB units


def test_cache_hit_makes_no_second_request(server: Served, tmp_path: Path) -> None:
    server.files["/f.bin"] = _blob(1000)
    dest = tmp_path / "f.bin"
    for _ in range(3):
        acquire.download(f"{server.url}/f.bin", dest, progress=False)
    assert server.count("/f.bin") == 1


def test_resume_after_a_cut_transfer_appends_the_rest(server: Served, tmp_path: Path) -> None:
    server.files["/big.bin"] = data = _blob(400_001)
    server.cut_once.add("/big.bin")
    dest = tmp_path / "big.bin"
    acquire.download(f"{server.url}/big.bin", dest, progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/big.bin", None), ("/big.bin", "bytes=200000-")]
    assert acquire.verify(dest) == hashlib.sha256(data).hexdigest()


def test_a_cut_part_is_kept_and_the_next_call_resumes_it(server: Served, tmp_path: Path) -> None:
    server.files["/big.bin"] = data = _blob(100_000)
    server.cut_once.add("/big.bin")
    dest = tmp_path / "big.bin"
    with pytest.raises(AcquireError) as err:
        acquire.download(f"{server.url}/big.bin", dest, progress=False, attempts=1)
    part = tmp_path / "big.bin.part"
    assert str(part) in str(err.value) and part.stat().st_size == 50_000
    assert not dest.exists()
    acquire.download(f"{server.url}/big.bin", dest, progress=False)
    assert dest.read_bytes() == data and not part.exists()
    assert server.requests[-1] == ("/big.bin", "bytes=50000-")


def test_a_server_ignoring_range_restarts_the_file(server: Served, tmp_path: Path) -> None:
    server.files["/f.bin"] = data = _blob(10_000)
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from elsewhere")
    acquire.download(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.requests[0][1] == "bytes=26-"


def test_a_part_longer_than_the_file_restarts_it(server: Served, tmp_path: Path) -> None:
    server.files["/f.bin"] = data = _blob(100)
    (tmp_path / "f.bin.part").write_bytes(_blob(500, 3))
    acquire.download(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert [r for _, r in server.requests] == ["bytes=500-", None]


def test_sha256_mismatch_on_a_later_use_names_file_and_both_hashes(
        server: Served, tmp_path: Path) -> None:
    server.files["/f.bin"] = data = _blob(5000)
    dest = tmp_path / "f.bin"
    acquire.download(f"{server.url}/f.bin", dest, progress=False)
    dest.write_bytes(data[:-1] + b"!")
    with pytest.raises(AcquireError) as err:
        acquire.download(f"{server.url}/f.bin", dest, progress=False)
    message = str(err.value)
    assert str(dest) in message and "Delete" in message
    assert hashlib.sha256(data).hexdigest() in message
    assert hashlib.sha256(dest.read_bytes()).hexdigest() in message
    assert server.count("/f.bin") == 1


def test_a_file_dropped_by_hand_is_used_and_its_hash_recorded(
        server: Served, tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"brought on a USB stick")
    acquire.download(f"{server.url}/f.bin", dest, progress=False)
    assert server.requests == []
    assert (tmp_path / "f.bin.sha256").read_text().split()[0] == hashlib.sha256(
        b"brought on a USB stick").hexdigest()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_offline_error_names_the_url_and_where_to_drop_the_file(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/models/f.tar.gz"
    dest = tmp_path / "downloads" / "f.tar.gz"
    with pytest.raises(AcquireError) as err:
        acquire.download(url, dest, progress=False)
    assert url in str(err.value) and f"put the file at {dest} " in str(err.value)
    assert not dest.exists()


def test_http_error_and_timeout_are_acquire_errors(server: Served, tmp_path: Path) -> None:
    with pytest.raises(AcquireError, match="HTTP 404") as err:
        acquire.download(f"{server.url}/missing.bin", tmp_path / "m.bin", progress=False)
    assert str(tmp_path / "m.bin") in str(err.value)
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/slow.bin"
        start = time.monotonic()
        with pytest.raises(AcquireError) as err:
            acquire.download(url, tmp_path / "slow.bin", progress=False, timeout_s=0.3)
        assert time.monotonic() - start < 5 and url in str(err.value)


_CHILD = """
import sys
from pathlib import Path
from runner import acquire
print(acquire.download(sys.argv[1], Path(sys.argv[2]), progress=False))
"""


def test_two_processes_fetching_one_file_transfer_it_once(server: Served, tmp_path: Path) -> None:
    server.files["/shared.bin"] = data = _blob(300_000)
    server.hold = threading.Event()
    url, dest = f"{server.url}/shared.bin", tmp_path / "shared.bin"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", _CHILD, url, str(dest)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start()
    deadline = time.monotonic() + 30
    while server.count("/shared.bin") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # the first process holds the lock and waits for the body
    second = start()
    time.sleep(1.0)  # the second one starts and queues on the lock meanwhile
    assert first.poll() is None and second.poll() is None  # both wait: the body is held back
    server.hold.set()
    outputs = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [str(dest)] * 2
    assert server.count("/shared.bin") == 1 and dest.read_bytes() == data


def test_two_threads_fetching_one_file_transfer_it_once(server: Served, tmp_path: Path) -> None:
    server.files["/t.bin"] = data = _blob(50_000)
    server.hold = threading.Event()
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(acquire.download(
        f"{server.url}/t.bin", tmp_path / "t.bin", progress=False))) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    server.hold.set()
    for thread in threads:
        thread.join(30)
    assert results == [tmp_path / "t.bin"] * 2
    assert server.count("/t.bin") == 1 and (tmp_path / "t.bin").read_bytes() == data


# -------------------------------------------------------------------------------- extract


def _unsafe_tar_entries() -> list[tuple[str, tuple[tarfile.TarInfo, bytes | None]]]:
    symlink = tarfile.TarInfo("top/link")
    symlink.type, symlink.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hardlink = tarfile.TarInfo("top/hard")
    hardlink.type, hardlink.linkname = tarfile.LNKTYPE, "top/ok.txt"
    device = tarfile.TarInfo("top/null")
    device.type = tarfile.CHRTYPE
    return [("../evil", _file("../evil", b"x")),
            ("top/../../evil", _file("top/../../evil", b"x")),
            ("/tmp/detbench-evil", _file("/tmp/detbench-evil", b"x")),
            ("top/link", (symlink, None)),
            ("top/hard", (hardlink, None)),
            ("top/null", (device, None))]


@pytest.mark.parametrize(("member", "entry"), _unsafe_tar_entries(),
                         ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink",
                              "device"])
def test_tar_members_that_could_escape_are_refused(
        tmp_path: Path, member: str, entry: tuple[tarfile.TarInfo, bytes | None]) -> None:
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar([_dir("top"), _file("top/ok.txt", b"fine"), entry]))
    root = tmp_path / "root" / "models"
    with pytest.raises(AcquireError) as err:
        acquire.extract_tar(archive, root, top="top")
    assert repr(member) in str(err.value) and str(archive) in str(err.value)
    assert list(root.iterdir()) == []  # nothing moved into place, no temp dir left
    assert not (tmp_path / "evil").exists() and not (tmp_path / "root" / "evil").exists()
    assert not Path("/tmp/detbench-evil").exists()


@pytest.mark.parametrize("member", ["../evil", "/tmp/detbench-evil", "top/link"])
def test_zip_members_that_could_escape_are_refused(tmp_path: Path, member: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("top/ok.txt", b"fine")
        info = zipfile.ZipInfo(member)
        if member == "top/link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, b"/etc/passwd")
    archive = tmp_path / "bad.zip"
    archive.write_bytes(buffer.getvalue())
    root = tmp_path / "root"
    with pytest.raises(AcquireError) as err:
        acquire.extract_zip(archive, root, top="top")
    assert repr(member) in str(err.value)
    assert list(root.iterdir()) == [] and not (tmp_path / "evil").exists()


def test_extract_reuses_an_extracted_target_without_opening_the_archive(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(zoo_tar("a"))
    first = acquire.extract_tar(archive, tmp_path / "out", top="a")
    assert (first / "saved_model" / "saved_model.pb").is_file()
    archive.write_bytes(b"not even an archive now")
    assert acquire.extract_tar(archive, tmp_path / "out", top="a") == first
    assert acquire.extract_tar(tmp_path / "b.tar.gz", tmp_path / "out", top="a") == first


def test_extract_without_top_returns_the_single_top_dir(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"d/x.txt": b"1", "d/y/z.txt": b"2"}))
    assert acquire.extract_zip(archive, tmp_path / "out") == tmp_path / "out" / "d"
    assert (tmp_path / "out" / "d" / "y" / "z.txt").read_bytes() == b"2"


def _truncated_gzip() -> bytes:
    body = zoo_tar("x")
    return body[: len(body) // 2]


def _bad_crc_zip() -> bytes:
    body = bytearray(_zip({"d/x.txt": b"A" * 1000}, zipfile.ZIP_STORED))
    offset = body.index(b"A" * 1000)
    body[offset] = ord("B")
    return bytes(body)


@pytest.mark.parametrize(("name", "body"), [
    ("garbage.tar.gz", b"<html>proxy says no</html>"),
    ("truncated.tar.gz", _truncated_gzip()),
    ("garbage.zip", b"PK but not really"),
    ("bad-crc.zip", _bad_crc_zip()),
])
def test_a_damaged_archive_is_named_and_removed(tmp_path: Path, name: str, body: bytes) -> None:
    archive = tmp_path / name
    archive.write_bytes(body)
    (tmp_path / f"{name}.sha256").write_text("whatever\n")
    extract = acquire.extract_zip if name.endswith(".zip") else acquire.extract_tar
    with pytest.raises(AcquireError) as err:
        extract(archive, tmp_path / "out")
    assert str(archive) in str(err.value) and "damaged" in str(err.value)
    assert not archive.exists() and not (tmp_path / f"{name}.sha256").exists()
    assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------------------------ zoo


def test_ensure_zoo_model_downloads_extracts_and_then_hits_the_cache(
        server: Served, tmp_path: Path) -> None:
    archive, path = _serve_zoo(server, "efficientdet_d0")
    saved_model = acquire.ensure_zoo_model("efficientdet_d0", "512x512", tmp_path)
    target = tmp_path / "models" / "efficientdet_d0_coco17_tpu-32"
    assert saved_model == target / "saved_model"
    assert (saved_model / "variables" / "variables.index").is_file()
    assert (target / "pipeline.config").is_file() and (target / "checkpoint").is_dir()
    assert (tmp_path / "downloads" / "efficientdet_d0_coco17_tpu-32.tar.gz.sha256").is_file()
    assert path == "/zoo/20200711/efficientdet_d0_coco17_tpu-32.tar.gz"
    assert acquire.ensure_zoo_model("efficientdet_d0", "default", tmp_path) == saved_model
    assert acquire.ensure_zoo_model("efficientdet_d0", None, tmp_path) == saved_model
    assert server.count(path) == 1
    assert [p.name for p in (tmp_path / "models").iterdir()] == [archive.extracted_dir]


def test_centernet_mobilenetv2_archive_extracts_to_its_own_dir_name(
        server: Served, tmp_path: Path) -> None:
    _, path = _serve_zoo(server, "centernet_mobilenetv2_fpn")
    saved_model = acquire.ensure_zoo_model("centernet_mobilenetv2_fpn", "512x512", tmp_path)
    assert saved_model == tmp_path / "models" / "centernet_mobilenetv2_fpn_od" / "saved_model"
    assert path == "/zoo/20210210/centernet_mobilenetv2fpn_512x512_coco17_od.tar.gz"
    assert (tmp_path / "downloads" / "centernet_mobilenetv2fpn_512x512_coco17_od.tar.gz").exists()


def test_a_corrupted_zoo_archive_is_downloaded_again_on_the_next_run(
        server: Served, tmp_path: Path) -> None:
    _, path = _serve_zoo(server, "ssd_mobilenet_v2", body=_truncated_gzip())
    with pytest.raises(AcquireError, match="damaged") as err:
        acquire.ensure_zoo_model("ssd_mobilenet_v2", "320x320", tmp_path)
    archive = tmp_path / "downloads" / "ssd_mobilenet_v2_320x320_coco17_tpu-8.tar.gz"
    assert str(archive) in str(err.value) and not archive.exists()
    _serve_zoo(server, "ssd_mobilenet_v2")
    assert acquire.ensure_zoo_model("ssd_mobilenet_v2", "320x320", tmp_path).is_dir()
    assert server.count(path) == 2


def test_a_zoo_archive_changed_after_download_is_refused(server: Served, tmp_path: Path) -> None:
    _serve_zoo(server, "efficientdet_d1")
    acquire.ensure_zoo_model("efficientdet_d1", None, tmp_path)
    archive = tmp_path / "downloads" / "efficientdet_d1_coco17_tpu-32.tar.gz"
    archive.write_bytes(archive.read_bytes() + b"\0")
    with pytest.raises(AcquireError, match="does not match the sha256") as err:
        acquire.ensure_zoo_model("efficientdet_d1", None, tmp_path)
    assert str(archive) in str(err.value)


def test_an_extracted_model_whose_archive_was_deleted_is_reused(
        server: Served, tmp_path: Path) -> None:
    _, path = _serve_zoo(server, "efficientdet_d2")
    saved_model = acquire.ensure_zoo_model("efficientdet_d2", None, tmp_path)
    (tmp_path / "downloads" / "efficientdet_d2_coco17_tpu-32.tar.gz").unlink()
    assert acquire.ensure_zoo_model("efficientdet_d2", None, tmp_path) == saved_model
    assert server.count(path) == 1


def test_a_zoo_archive_in_another_layout_is_described(server: Served, tmp_path: Path) -> None:
    archive = zoo.get("efficientdet_d3").archive()
    _serve_zoo(server, "efficientdet_d3", body=zoo_tar(archive.extracted_dir, variables=False))
    with pytest.raises(AcquireError) as err:
        acquire.ensure_zoo_model("efficientdet_d3", None, tmp_path)
    assert "saved_model.pb" in str(err.value) and "variables/" in str(err.value)
    _serve_zoo(server, "efficientdet_d4", body=zoo_tar("something_else"))
    with pytest.raises(AcquireError, match="expected the directory 'efficientdet_d4"):
        acquire.ensure_zoo_model("efficientdet_d4", None, tmp_path)
    assert not (tmp_path / "models" / "something_else").exists()


def test_zoo_offline_message_gives_the_drop_path_and_dropping_works(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}/tf2"
    monkeypatch.setenv(acquire.ZOO_URL_ENV, base)
    drop = tmp_path / "downloads" / "efficientdet_d5_coco17_tpu-32.tar.gz"
    with pytest.raises(AcquireError) as err:
        acquire.ensure_zoo_model("efficientdet_d5", None, tmp_path)
    assert f"{base}/20200711/efficientdet_d5_coco17_tpu-32.tar.gz" in str(err.value)
    assert str(drop) in str(err.value)
    drop.write_bytes(zoo_tar("efficientdet_d5_coco17_tpu-32"))  # as a user would, by hand
    assert acquire.ensure_zoo_model("efficientdet_d5", None, tmp_path).is_dir()


def test_unknown_zoo_key_or_resolution(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="efficientdet_d0"):
        acquire.ensure_zoo_model("yolo", None, tmp_path)
    with pytest.raises(KeyError, match="512x512"):
        acquire.ensure_zoo_model("efficientdet_d0", "640x640", tmp_path)


# ----------------------------------------------------------------------------------- COCO


def _serve_coco(served: Served, monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Stand-in COCO archives, pinned (with ``monkeypatch``) as the real ones are."""
    instances = {"images": [{"id": 139, "file_name": "000000000139.jpg"}], "annotations": []}
    served.files["/coco/zips/val2017.zip"] = _zip({
        "val2017/000000000139.jpg": b"\xff\xd8\xff\xe0 a jpeg",
        "val2017/000000000285.jpg": b"\xff\xd8\xff\xe0 another",
    })
    served.files["/coco/annotations/annotations_trainval2017.zip"] = _zip({
        "annotations/instances_val2017.json": json.dumps(instances).encode(),
        "annotations/person_keypoints_val2017.json": b'{"images": []}',
        "annotations/captions_val2017.json": b"{}",
        "annotations/instances_train2017.json": b"{}",
        "annotations/person_keypoints_train2017.json": b"{}",
    })
    if monkeypatch is not None:
        _pin_coco(served, monkeypatch)


def _pin_coco(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    pins = {Path(path).name: (len(body), hashlib.sha256(body).hexdigest())
            for path, body in served.files.items() if path.startswith("/coco/")}
    monkeypatch.setattr(acquire, "COCO_PINNED", pins)


def test_ensure_coco_val2017_in_its_real_layout(server: Served, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _serve_coco(server, monkeypatch)
    images, instances, keypoints = acquire.ensure_coco_val2017(tmp_path)
    assert images == tmp_path / "coco" / "val2017"
    assert sorted(p.name for p in images.glob("*.jpg")) == ["000000000139.jpg",
                                                           "000000000285.jpg"]
    assert instances == tmp_path / "coco" / "annotations" / "instances_val2017.json"
    assert keypoints == tmp_path / "coco" / "annotations" / "person_keypoints_val2017.json"
    assert json.loads(instances.read_text())["images"][0]["id"] == 139
    assert not (tmp_path / "coco" / "annotations" / "instances_train2017.json").exists()
    assert (tmp_path / "downloads" / "val2017.zip.sha256").is_file()
    assert acquire.ensure_coco_val2017(tmp_path) == (images, instances, keypoints)
    assert [p for p, _ in server.requests] == ["/coco/zips/val2017.zip",
                                               "/coco/annotations/annotations_trainval2017.zip"]


def test_coco_offline_message_names_url_and_drop_path(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(acquire.COCO_URL_ENV, f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(AcquireError) as err:
        acquire.ensure_coco_val2017(tmp_path)
    assert "/zips/val2017.zip" in str(err.value)
    assert str(tmp_path / "downloads" / "val2017.zip") in str(err.value)


def test_a_coco_zip_without_the_annotations_is_reported(
        server: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve_coco(server)
    server.files["/coco/annotations/annotations_trainval2017.zip"] = _zip(
        {"annotations/instances_val2017.json": b"{}"})
    _pin_coco(server, monkeypatch)
    with pytest.raises(AcquireError, match="person_keypoints_val2017.json"):
        acquire.ensure_coco_val2017(tmp_path)


def test_coco_archives_are_pinned_to_the_published_checksums_over_https(
        server: Served, tmp_path: Path) -> None:
    """The real pins (from the published manifests) refuse any other bytes, and delete them."""
    assert acquire.COCO_BASE_URL.startswith("https://")
    assert zoo.ZOO_BASE_URL.startswith("https://")
    assert acquire.COCO_PINNED["val2017.zip"][1].startswith("4f7e2ccb")
    _serve_coco(server)  # not the published bytes
    with pytest.raises(AcquireError) as err:
        acquire.ensure_coco_val2017(tmp_path)
    message = str(err.value)
    assert "does not match its pinned sha256 (the published COCO 2017 checksum)" in message
    assert acquire.COCO_PINNED["val2017.zip"][1] in message
    downloads = tmp_path / "downloads"
    assert sorted(p.name for p in downloads.iterdir()) == ["val2017.zip.lock"]
    assert not (tmp_path / "coco").exists()


def test_a_dropped_coco_file_with_other_bytes_is_refused(tmp_path: Path) -> None:
    dropped = tmp_path / "downloads" / "val2017.zip"
    dropped.parent.mkdir()
    dropped.write_bytes(_zip({"val2017/1.jpg": b"x"}))
    with pytest.raises(AcquireError, match="pinned sha256 .the published COCO 2017 checksum."):
        acquire.ensure_coco_val2017(tmp_path)
    assert not (tmp_path / "downloads" / "val2017.zip.sha256").exists()


def test_zoo_pins_written_by_the_pin_command_are_enforced(
        server: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checksums = tmp_path / "zoo.sha256"
    monkeypatch.setenv(acquire.ZOO_CHECKSUMS_ENV, str(checksums))
    archive, path = _serve_zoo(server, "ssd_mobilenet_v2")
    cache = tmp_path / "cache"
    acquire.ensure_zoo_model("ssd_mobilenet_v2", None, cache)  # trust on first use
    env = {**os.environ, "DETBENCH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "runner.acquire", "pin", "--file",
                           str(checksums)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    digest = hashlib.sha256(server.files[path]).hexdigest()
    assert f"{digest}  {archive.file_name}" in checksums.read_text().splitlines()
    assert archive.file_name in proc.stdout and str(checksums) in proc.stdout
    assert acquire.known_sha256(cache / "downloads" / archive.file_name) == digest
    # another cache, and the server now serves other bytes: the pin refuses them
    server.files[path] = zoo_tar(archive.extracted_dir, size=1000)
    other = tmp_path / "other"
    with pytest.raises(AcquireError, match=f"pinned sha256 .{checksums}.: expected {digest}"):
        acquire.ensure_zoo_model("ssd_mobilenet_v2", None, other)
    assert not (other / "downloads" / archive.file_name).exists()
    assert not (other / "models" / archive.extracted_dir).exists()
    # pinning again is idempotent; a contradicting record is an error naming both
    assert acquire.pin(cache, checksums) == {}
    (cache / "downloads" / f"{archive.file_name}.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(AcquireError, match="pins"):
        acquire.pin(cache, checksums)


def _bomb_tar(members: int, size: int) -> bytes:
    """A real tar.gz bomb: zeros compress about 1000:1."""
    return _tar([_dir("top")] + [_file(f"top/zero{i}", bytes(size)) for i in range(members)])


@pytest.mark.parametrize(("limits", "expected"), [
    (acquire.ExtractLimits(max_bytes=1_000_000), "more than 1,000,000 bytes"),
    (acquire.ExtractLimits(max_members=5), "more than 5 members"),
])
def test_an_archive_bomb_is_refused_and_nothing_is_left(
        tmp_path: Path, limits: acquire.ExtractLimits, expected: str) -> None:
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(_bomb_tar(members=8, size=400_000))
    assert archive.stat().st_size < 20_000  # expands to 3.2 MB
    dest = tmp_path / "models"
    with pytest.raises(AcquireError, match=expected) as err:
        acquire.extract_tar(archive, dest, top="top", limits=limits)
    assert "nothing was extracted" in str(err.value) and str(archive) in str(err.value)
    assert [p.name for p in dest.iterdir()] == []  # no temp dir, no partial member
    assert acquire.extract_tar(archive, tmp_path / "ok", top="top",
                               limits=acquire.ExtractLimits()) == tmp_path / "ok" / "top"


def test_zip_bomb_limits_come_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(_zip({f"top/z{i}": bytes(300_000) for i in range(4)}))
    monkeypatch.setenv(acquire.MAX_BYTES_ENV, "1000000")
    with pytest.raises(AcquireError, match=f"raise {acquire.MAX_BYTES_ENV}"):
        acquire.extract_zip(archive, tmp_path / "d", top="top")
    assert list((tmp_path / "d").iterdir()) == []
    monkeypatch.setenv(acquire.MAX_BYTES_ENV, "lots")
    with pytest.raises(AcquireError, match="DETBENCH_MAX_EXTRACT_BYTES='lots' is not valid"):
        acquire.extract_zip(archive, tmp_path / "d", top="top")


def test_a_zoo_models_fingerprint_is_its_archive_sha256(server: Served, tmp_path: Path) -> None:
    """The resume identity of a zoo model: its archive's sha256, downloaded once (before the
    job's run exists) and then read from the record without a request."""
    from runner import config, fingerprint
    from tests.conftest import compose_job

    archive, path = _serve_zoo(server, "ssd_mobilenet_v2")
    cfg = config.to_object(compose_job(["model=ssd_mobilenet_v2", f"cache_dir={tmp_path}"]))
    digest, what = fingerprint.model_fingerprint(cfg)
    assert digest == "sha256:" + hashlib.sha256(server.files[path]).hexdigest()
    assert what == f"zoo archive {archive.file_name}"
    assert fingerprint.model_fingerprint(cfg) == (digest, what)
    assert server.count(path) == 1
    del server.files[path]  # not obtainable: a digest that matches nothing, the job fails later
    other = config.to_object(compose_job(["model=ssd_mobilenet_v2",
                                          f"cache_dir={tmp_path / 'other'}"]))
    first, _ = fingerprint.model_fingerprint(other)
    assert first.startswith("unknown:") and first != fingerprint.model_fingerprint(other)[0]
