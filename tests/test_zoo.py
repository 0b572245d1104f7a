"""The zoo catalogue (runner.zoo) against the reference tables, and the Hydra configs generated
from it (runner.zoo_conf): files up to date, every row composes, the preset sweeps in order."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from runner import config, zoo, zoo_conf
from tests.conftest import CONF_DIR, compose_job

#: the shared reference facts beside the checkout, or where $DETBENCH_SHARED_REFERENCE points
#: (a worktree's parent has none)
REFERENCE = Path(os.environ.get("DETBENCH_SHARED_REFERENCE",
                                Path(__file__).resolve().parents[2] / "shared" / "reference"))
SEED_TABLE = REFERENCE / "seed_table.md"
ZOO_MD = REFERENCE / "zoo.md"

BRIEF_KEYS = [
    "centernet_hg104", "centernet_hg104_kpts", "centernet_resnet50_v1_fpn",
    *(f"efficientdet_d{i}" for i in range(8)), "ssd_mobilenet_v2", "ssd_mobilenet_v1_fpn",
    "ssd_mobilenet_v2_fpnlite", "ssd_resnet50_v1_fpn", "faster_rcnn_resnet50_v1",
    "faster_rcnn_inception_resnet_v2", "mask_rcnn_inception_resnet_v2",
    "centernet_mobilenetv2_fpn", "centernet_mobilenetv2_fpn_kpts",
]


def _markdown_rows(text: str, after: str) -> list[list[str]]:
    """The body rows of the first markdown table after the heading ``after``."""
    section = text.split(after, 1)[1]
    rows: list[list[str]] = []
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set(":- "):
            continue  # the separator
        rows.append(cells)
    return rows[1:]  # without the header


# ----------------------------------------------------------------------------- the catalogue


def test_public_table_has_41_distinct_resolvable_rows() -> None:
    rows = zoo.public_table_rows()
    assert len(rows) == 41 and len(set(rows)) == 41
    for key, resolution in rows:
        archive = zoo.get(key).archive(resolution)
        assert archive.archive and archive.date and archive.published_ms > 0
    assert {key for key, _ in rows} == set(zoo.keys())
    assert sum(len(m.resolutions) for m in zoo.MODELS.values()) == 41


def test_keys_named_in_the_brief_exist() -> None:
    assert set(BRIEF_KEYS) <= set(zoo.keys())
    assert zoo.get("centernet_hg104").resolutions == ("512x512", "1024x1024")
    assert zoo.get("faster_rcnn_resnet50_v1").resolutions == ("640x640", "1024x1024", "800x1333")
    assert zoo.get("efficientdet_d6").default_resolution == "1280x1280"


def test_display_names_and_inputs_match_the_seed_table_row_by_row() -> None:
    if not SEED_TABLE.is_file():
        pytest.skip(f"{SEED_TABLE} is not beside the repository")
    table = [(cells[0], cells[1])
             for cells in _markdown_rows(SEED_TABLE.read_text(), "## The table")]
    ours = [(zoo.get(key).display_name, res) for key, res in zoo.public_table_rows()]
    assert len(table) == 41
    for index, (want, got) in enumerate(zip(table, ours, strict=True)):
        assert got == want, f"row {index + 1}"


def test_every_catalogue_row_of_zoo_md_is_expressible() -> None:
    if not ZOO_MD.is_file():
        pytest.skip(f"{ZOO_MD} is not beside the repository")
    archives = {a.archive: (key, res, a) for key, m in zoo.MODELS.items()
                for res, a in m.archives.items()}
    kinds = {"boxes": "boxes", "boxes, keypoints": "keypoints", "boxes, masks": "masks"}
    rows = _markdown_rows(ZOO_MD.read_text(), "## Catalogue")
    assert len(rows) == 41
    for _model, name_date, resolution, ms, mean_ap, outputs in rows:
        match = re.fullmatch(r"(\S+)(?: \((\d{8})\))?", name_date)
        assert match, name_date
        key, res, archive = archives[match[1]]
        assert (res, archive.date) == (resolution, match[2] or "20200711"), match[1]
        assert (archive.published_ms, archive.published_map) == (int(ms), mean_ap), match[1]
        assert zoo.get(key).outputs == kinds[outputs], match[1]
    assert len(archives) == 41


def test_centernet_mobilenetv2_pair_uses_the_tflite_graph_signature_and_other_dirs() -> None:
    for key, directory in [("centernet_mobilenetv2_fpn", "centernet_mobilenetv2_fpn_od"),
                           ("centernet_mobilenetv2_fpn_kpts", "centernet_mobilenetv2_fpn_kpts")]:
        model = zoo.get(key)
        assert model.signature_style == "tflite_graph" and model.adapter == "numbered_outputs"
        assert (model.input_name, model.input_dtype) == ("input", "float32")
        archive = model.archive()
        assert archive.extracted_dir == directory != archive.archive
        assert archive.date == "20210210"
    others = [m for m in zoo.MODELS.values() if m.signature_style == "zoo"]
    assert all(a.extracted_dir == a.archive for m in others for a in m.archives.values())
    assert zoo.get("mask_rcnn_inception_resnet_v2").adapter == "zoo_masks"
    assert zoo.get("centernet_hg104_kpts").adapter == "zoo_keypoints"
    assert zoo.get("efficientdet_d0").adapter == "zoo"


def test_archive_url() -> None:
    archive = zoo.get("centernet_hg104").archive("1024x1024")
    assert zoo.archive_url(archive) == ("https://download.tensorflow.org/models/object_detection/"
                                        "tf2/20200713/centernet_hg104_1024x1024_coco17_tpu-32.tar.gz")
    assert zoo.archive_url(zoo.get("ssd_mobilenet_v2").archive(), "http://127.0.0.1:9/z/") == (
        "http://127.0.0.1:9/z/20200711/ssd_mobilenet_v2_320x320_coco17_tpu-8.tar.gz")


def test_unknown_key_and_resolution_list_the_valid_ones() -> None:
    with pytest.raises(KeyError) as err:
        zoo.get("yolo")
    assert "'yolo'" in str(err.value) and "efficientdet_d0" in str(err.value)
    with pytest.raises(KeyError) as err:
        zoo.get("efficientdet_d0").archive("640x640")
    assert "640x640" in str(err.value) and "512x512" in str(err.value)
    assert zoo.get("efficientdet_d0").archive("default").archive == "efficientdet_d0_coco17_tpu-32"


# --------------------------------------------------------------------- the generated configs


def test_conf_files_on_disk_equal_what_zoo_conf_writes() -> None:
    assert zoo_conf.differences(CONF_DIR) == [], "run: python -m runner.zoo_conf"


def test_zoo_conf_writes_removes_stale_and_is_idempotent(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "row").mkdir()
    (tmp_path / "model" / "demo.yaml").write_text("name: demo\n")
    (tmp_path / "model" / "gone.yaml").write_text(zoo_conf.GENERATED + "\nname: gone\n")
    (tmp_path / "row" / "gone_1x1.yaml").write_text("# @package _global_\n")
    written = zoo_conf.write(tmp_path)
    assert len(written) == len(zoo.MODELS) + 41 + 1
    assert not (tmp_path / "model" / "gone.yaml").exists()
    assert not (tmp_path / "row" / "gone_1x1.yaml").exists()
    assert (tmp_path / "model" / "demo.yaml").exists()
    assert zoo_conf.write(tmp_path) == [] and zoo_conf.differences(tmp_path) == []
    assert zoo_conf.main(["--check", "--conf-dir", str(tmp_path)]) == 0


def test_row_file_is_only_the_two_overrides() -> None:
    text = (CONF_DIR / "row" / "faster_rcnn_resnet50_v1_800x1333.yaml").read_text()
    assert text == ("# @package _global_\ndefaults:\n"
                    "  - override /model: faster_rcnn_resnet50_v1\n"
                    "  - override /resolution: 800x1333\n")


def test_every_zoo_model_composes_into_the_typed_schema() -> None:
    for key, model in zoo.MODELS.items():
        cfg = config.to_object(compose_job([f"model={key}"]))
        assert cfg.model.name == key and cfg.model.display_name == model.display_name
        assert cfg.model.source == "zoo" and cfg.model.outputs == model.adapter
        assert cfg.model.resolutions == list(model.resolutions)
        assert (cfg.model.input_name, cfg.model.input_dtype) == (model.input_name,
                                                                  model.input_dtype)
        assert config.nominal_resolution(cfg) == model.default_resolution


def test_every_row_composes_to_its_model_and_resolution() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for key, res in zoo.public_table_rows():
            row = zoo.row_name(key, res)
            cfg = compose(config_name="config",
                          overrides=["+experiment=public_table", f"+row={row}"])
            assert (cfg.model.name, cfg.resolution.name) == (key, res), row


def test_public_table_preset_sweeps_the_41_rows_in_order() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=public_table"],
                      return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    assert list(params) == ["+row"]
    # What Hydra 1.3's basic sweeper does with them: one job per row, the given order kept.
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    [batch] = BasicSweeper.split_arguments(overrides, None)
    expected = [[f"+row={zoo.row_name(k, r)}"] for k, r in zoo.public_table_rows()]
    assert batch == expected
