"""The YAML config groups hold only what differs from the typed schema's defaults (one copy of
each default: runner/config.py), and variants inherit with ``defaults: [default]``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from runner import config
from tests.conftest import CONF_DIR, compose_job

#: config groups whose files sit directly on a schema dataclass
GROUPS = {"benchmark": config.BenchmarkConfig, "tracking": config.TrackingConfig,
          "dataset": config.DatasetConfig}


def _defaults(schema: type) -> dict[str, object]:
    """Each field's default; fields without one (dataclasses' or OmegaConf's ``???``) left out."""
    return {f.name: f.default for f in dataclasses.fields(schema)
            if f.default is not dataclasses.MISSING and f.default != "???"}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_files_repeat_no_schema_default(group: str) -> None:
    defaults = _defaults(GROUPS[group])
    files = sorted((CONF_DIR / group).glob("*.yaml"))
    assert files, f"no files in conf/{group}"
    for path in files:
        values = yaml.safe_load(path.read_text()) or {}
        repeated = {k: v for k, v in values.items()
                    if k != "defaults" and k in defaults and defaults[k] == v}
        assert not repeated, (f"{path.relative_to(CONF_DIR.parent)} repeats the schema's "
                              f"defaults {repeated}: keep them in runner/config.py only")


def test_quick_inherits_default() -> None:
    quick = yaml.safe_load((CONF_DIR / "benchmark" / "quick.yaml").read_text())
    assert quick["defaults"][0] == "default"
    composed = compose_job(["benchmark=quick"]).benchmark
    base = compose_job().benchmark
    assert composed.warmup == quick["warmup"] != base.warmup
    changed = {k for k in base if base[k] != composed[k]}
    assert changed == set(quick) - {"defaults"}


def test_schema_defaults_reach_the_job() -> None:
    cfg = compose_job()
    for name, value in _defaults(config.BenchmarkConfig).items():
        assert cfg.benchmark[name] == value, name
    assert Path(CONF_DIR / "benchmark" / "default.yaml").is_file()
