from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from runner import config
from tests.conftest import CONF_DIR, compose_job


def _validate(overrides: list[str]) -> None:
    config.validate(config.to_object(compose_job(overrides)))


def test_default_composes_to_typed_config() -> None:
    cfg = config.to_object(compose_job())
    assert isinstance(cfg, config.JobConfig)
    assert cfg.model.name == "demo" and cfg.precision.name == "fp32"
    assert cfg.benchmark.warmup == 50
    config.validate(cfg)
    assert config.nominal_resolution(cfg) == "256x256"


def test_every_option_of_every_group_composes() -> None:
    for group in ("model", "resolution", "precision", "dataset", "benchmark", "tracking"):
        for path in sorted((CONF_DIR / group).rglob("*.yaml")):
            option = path.relative_to(CONF_DIR / group).with_suffix("").as_posix()
            compose_job([f"{group}={option}"])


def test_schema_is_not_a_swept_option() -> None:
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    assert "schema" not in groups
    for group in groups:
        assert not (CONF_DIR / group / "detbench_schema.yaml").exists()


def test_unknown_option_names_valid_choices() -> None:
    with pytest.raises(MissingConfigException) as err:
        compose_job(["model=nope"])
    assert "nope" in str(err.value) and "efficientdet_d0" in str(err.value)


def test_wrong_type_is_rejected_by_schema() -> None:
    with pytest.raises((ValidationError, ConfigCompositionException)) as err:
        compose_job(["benchmark.warmup=many"])
    assert "many" in str(err.value)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("dataset.num_images=0", "dataset.num_images=0"),
        ("dataset.num_images=-3", "dataset.num_images=-3"),
        ("benchmark.warmup=-1", "benchmark.warmup=-1"),
        ("benchmark.chunk_size=0", "benchmark.chunk_size=0"),
        ("benchmark.sample_interval_s=0", "benchmark.sample_interval_s=0"),
        ("benchmark.percentile_method=p99", "choose one of"),
        ("dataset.split=test", "train, val"),
        ("benchmark.input_policy=squash", "native, seed"),
        ("model.input_dtype=int8", "uint8, float32"),
    ],
)
def test_bad_values_name_value_and_valid(override: str, fragment: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        _validate([override])
    assert fragment in str(err.value)


def test_missing_savedmodel_path(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="does not exist"):
        _validate(["model=custom", f"model.path={tmp_path / 'absent'}"])
    with pytest.raises(config.ConfigError, match="saved_model.pb"):
        _validate(["model=custom", f"model.path={tmp_path}"])


def test_coco_files_paths_checked(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="dataset.images_dir"):
        _validate(["dataset=coco_files", f"dataset.images_dir={tmp_path / 'x'}",
                   f"dataset.annotations={tmp_path / 'a.json'}"])


def test_unpublished_resolution_is_a_skip_not_an_error() -> None:
    cfg = config.to_object(compose_job(["resolution=640x640"]))
    config.validate(cfg)
    reason = config.skip_reason(cfg)
    assert reason and "640x640" in reason and "256x256" in reason
    assert config.skip_reason(config.to_object(compose_job(["resolution=256x256"]))) is None


def test_outputs_old_name_is_accepted_and_a_wrong_one_lists_the_choices() -> None:
    """``centernet_tflite`` (the numbered_outputs adapter's old name) still validates and reads
    through the renamed adapter; an unknown name is refused with every choice and the alias."""
    from runner import signatures

    _validate(["model.outputs=centernet_tflite"])
    cfg = config.to_object(compose_job(["model.outputs=centernet_tflite"]))
    assert signatures.from_config(cfg.model).name == "numbered_outputs"
    with pytest.raises(config.ConfigError) as err:
        _validate(["model.outputs=tflite"])
    message = str(err.value)
    assert "model.outputs='tflite'" in message
    assert all(name in message for name in signatures.ADAPTER_NAMES)
    assert "centernet_tflite (now numbered_outputs)" in message


def test_custom_outputs_need_keys() -> None:
    with pytest.raises(config.ConfigError, match="output_keys.boxes is not set"):
        _validate(["model.outputs=custom"])
    _validate(["model.outputs=custom", "model.output_keys.boxes=b", "model.output_keys.classes=c",
               "model.output_keys.scores=s"])
