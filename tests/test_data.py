from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner import data
from runner.config import ConfigError, DatasetConfig
from tests.conftest import ROOT


def _coco_dir(tmp_path: Path, images: dict[str, Image.Image]) -> DatasetConfig:
    (tmp_path / "img").mkdir()
    infos = []
    for i, (name, img) in enumerate(sorted(images.items()), start=1):
        img.save(tmp_path / "img" / name)
        infos.append({"id": 10 - i, "file_name": name, "width": img.width, "height": img.height})
    doc = {"images": infos, "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    return DatasetConfig(name="t", display_name="t", kind="coco", images_dir=str(tmp_path / "img"),
                         annotations=str(tmp_path / "ann.json"))


def test_synthetic_subset_is_sorted_and_deterministic(cache_dir: Path) -> None:
    cfg = DatasetConfig(name="s", display_name="s", kind="synthetic", num_images=7)
    ds = data.load_dataset(cfg, str(cache_dir))
    ids = [r.image_id for r in ds.images]
    assert ids == sorted(ids) and len(ids) == 7
    assert ids == [r.image_id for r in data.load_dataset(cfg, str(cache_dir)).images]
    cfg.num_images = 10**6
    with pytest.raises(ConfigError, match="exceeds"):
        data.load_dataset(cfg, str(cache_dir))


def test_any_image_mode_becomes_rgb_uint8(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    images = {
        "a.jpg": Image.fromarray(rgb),
        "b.png": Image.fromarray(rgb),
        "c.jpg": Image.fromarray(rgb[..., 0]),  # grayscale
        "d.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),  # RGBA
    }
    ds = data.load_dataset(_coco_dir(tmp_path, images), "unused")
    assert [r.image_id for r in ds.images] == sorted(r.image_id for r in ds.images)
    prepared = data.prepare(ds.images, progress=False)
    for p in prepared:
        assert tuple(p.tensor.shape) == (1, 20, 30, 3) and p.tensor.dtype.name == "uint8"
    png = next(p for p in prepared if p.record.path.name == "b.png")
    np.testing.assert_array_equal(png.tensor.numpy()[0], rgb)


def test_bad_files_get_clear_errors(tmp_path: Path) -> None:
    cfg = _coco_dir(tmp_path, {"a.jpg": Image.new("RGB", (8, 6))})
    (tmp_path / "img" / "a.jpg").write_bytes(b"not an image")
    ds = data.load_dataset(cfg, "unused")
    with pytest.raises(ValueError, match="a.jpg"):
        data.prepare(ds.images, progress=False)
    (tmp_path / "img" / "a.jpg").unlink()
    with pytest.raises(ConfigError, match="missing"):
        data.load_dataset(cfg, "unused")
    (tmp_path / "ann.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        data.load_dataset(cfg, "unused")
    (tmp_path / "ann.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ConfigError, match="annotations"):
        data.load_dataset(cfg, "unused")


def test_size_mismatch_is_reported(tmp_path: Path) -> None:
    cfg = _coco_dir(tmp_path, {"a.png": Image.new("RGB", (8, 6))})
    doc = json.loads(Path(cfg.annotations or "").read_text())
    doc["images"][0]["width"] = 9
    Path(cfg.annotations or "").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="8x6"):
        data.prepare(data.load_dataset(cfg, "unused").images, progress=False)


def test_chunked_covers_all_in_order() -> None:
    records = list(range(10))
    chunks = list(data.chunked(records, 4))  # type: ignore[arg-type]
    assert chunks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def _doc(**changes: object) -> dict[str, object]:
    images = [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 6} for i in (1, 2, 3)]
    anns = [{"id": 10 + i, "image_id": i, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4,
             "iscrowd": 0} for i in (1, 2, 3)]
    doc: dict[str, object] = {"images": images, "annotations": anns,
                              "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]}
    doc.update(changes)
    return doc


def _images(*entries: tuple[object, ...]) -> list[dict[str, object]]:
    return [{"id": i, "file_name": "a.png", "width": w, "height": h} for i, w, h in entries]


def _anns(*entries: tuple[object, ...]) -> list[dict[str, object]]:
    return [{"id": a, "image_id": i, "category_id": c, "bbox": [1, 1, 2, 2]}
            for a, i, c in entries]


BAD_DOCS = {
    "empty images": (_doc(images=[], annotations=[]), r"empty 'images' list"),
    "duplicate image ids": (_doc(images=_images((1, 8, 6), (2, 8, 6), (2, 8, 6), (3, 8, 6))),
                            r"duplicate image ids 2\b"),
    "string image id": (_doc(images=_images((1, 8, 6), ("two", 8, 6), (3, 8, 6))),
                        r"image ids must be integers; found 'two'"),
    "float image id": (_doc(images=_images((1, 8, 6), (2.5, 8, 6))), r"found 2.5"),
    "missing width": (_doc(images=[{"id": 1, "file_name": "a", "height": 6}]),
                      r"'width': ids 1\b"),
    "zero height": (_doc(images=_images((1, 8, 6), (7, 8, 0))), r"'height': ids 7\b"),
    "duplicate annotation ids": (_doc(annotations=_anns((5, 1, 1), (5, 2, 1), (6, 3, 1))),
                                 r"duplicate annotation ids 5\b"),
    "unknown image": (_doc(annotations=_anns((5, 1, 1), (6, 99, 1))),
                      r"image id that is not in 'images': annotation ids 6\b"),
    "unknown category": (_doc(annotations=_anns((5, 1, 1), (6, 2, 77))),
                         r"category id that is not in 'categories': annotation ids 6\b"),
    "bad bbox": (_doc(annotations=[{"id": 4, "image_id": 1, "category_id": 1,
                                    "bbox": [0, 0, -1, 2]}]), r"'bbox'.*annotation ids 4\b"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_bad_annotations_are_refused_naming_file_and_ids(tmp_path: Path, case: str) -> None:
    doc, pattern = BAD_DOCS[case]
    cfg = _coco_dir(tmp_path, {"a.png": Image.new("RGB", (8, 6))})
    Path(cfg.annotations or "").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=pattern) as caught:
        data.load_dataset(cfg, "unused")
    assert str(tmp_path / "ann.json") in str(caught.value)


def test_valid_document_passes_and_many_ids_are_summarised() -> None:
    data.validate_annotations(_doc(), Path("ok.json"))
    many = _images(*((7, 8, 6),) * 30)
    with pytest.raises(ConfigError, match=r"duplicate image ids 7 \("):
        data.validate_annotations(_doc(images=many), Path("x.json"))
    bad = [{"id": i, "file_name": "a", "width": 8} for i in range(25)]
    with pytest.raises(ConfigError, match=r"ids 0, 1, .*, 9, \.\.\. \(25 in all\)"):
        data.validate_annotations(_doc(images=bad, annotations=[]), Path("x.json"))


def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runner", f"hydra.run.dir={tmp_path / 'r'}",
                           *overrides], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def _no_run(tmp_path: Path) -> bool:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("detbench")
    return exp is None or not client.search_runs([exp.experiment_id])


def test_bad_datasets_are_configuration_errors_before_any_run(tmp_path: Path) -> None:
    """Through ``python -m runner``: exit 2, the message, no MLflow run, no worker started."""
    proc = _cli(tmp_path, "dataset.num_images=1000000")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "dataset.num_images=1000000 exceeds the" in proc.stderr
    assert "Traceback" not in proc.stderr and _no_run(tmp_path)
    (tmp_path / "ds").mkdir()
    cfg = _coco_dir(tmp_path / "ds", {"a.png": Image.new("RGB", (8, 6))})
    Path(cfg.annotations or "").write_text(json.dumps(
        _doc(images=_images((1, 8, 6), (4, 8, 6), (4, 8, 6)))))
    proc = _cli(tmp_path, "dataset=coco_files", f"dataset.images_dir={cfg.images_dir}",
                f"dataset.annotations={cfg.annotations}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"annotations file {cfg.annotations!r}: duplicate image ids 4 (" in proc.stderr
    assert "Traceback" not in proc.stderr and _no_run(tmp_path)
    assert not (tmp_path / "r" / "environment.json").exists()  # the worker never started


def test_image_record_json_round_trip_and_legacy_rows() -> None:
    record = data.ImageRecord(139, Path("/d/000000000139.jpg"), 640, 426)
    as_json = json.loads(json.dumps(record.to_json()))  # as job.json holds it
    assert as_json == {"image_id": 139, "path": "/d/000000000139.jpg", "width": 640,
                       "height": 426}
    assert data.ImageRecord.from_json(as_json) == record
    # a job directory written before records had names (runner.sync may publish it late)
    assert data.ImageRecord.from_json([139, "/d/000000000139.jpg", 640, 426]) == record
