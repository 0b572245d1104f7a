from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from runner.demo import synth

SMALL = synth.SynthSpec(seed=3, num_train=6, num_val=5)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files(tmp_path: Path) -> None:
    a = synth.ensure_split(tmp_path / "a", "val", SMALL)
    b = synth.ensure_split(tmp_path / "b", "val", SMALL)
    assert _digest(a) == _digest(b)
    c = synth.ensure_split(tmp_path / "c", "val", synth.SynthSpec(seed=4, num_train=6, num_val=5))
    assert _digest(a) != _digest(c)


def test_coco_layout_and_fields(tmp_path: Path) -> None:
    root = synth.ensure_split(tmp_path, "train", SMALL)
    doc = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert {c["id"] for c in doc["categories"]} == {1, 2, 3, 4}
    assert len(doc["images"]) == 6
    sizes = {(i["width"], i["height"]) for i in doc["images"]}
    assert len(sizes) > 1, "image sizes should vary"
    for info in doc["images"]:
        assert (root / "train" / info["file_name"]).is_file()
    for ann in doc["annotations"]:
        keys = {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
        assert keys <= set(ann)
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and 0 < ann["area"] <= w * h + 1
    assert len({a["category_id"] for a in doc["annotations"]}) > 1


def test_splits_are_disjoint_and_sizes_checked(tmp_path: Path) -> None:
    root = synth.ensure_split(tmp_path, "train", SMALL)
    synth.ensure_split(tmp_path, "val", SMALL)
    ids = {
        split: {i["id"] for i in json.loads(
            (root / "annotations" / f"instances_{split}.json").read_text())["images"]}
        for split in ("train", "val")
    }
    assert not ids["train"] & ids["val"]
    with pytest.raises(ValueError, match="valid splits"):
        synth.ensure_split(tmp_path, "test", SMALL)


def test_no_partial_split_left_behind(tmp_path: Path) -> None:
    root = synth.ensure_split(tmp_path, "val", SMALL)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
