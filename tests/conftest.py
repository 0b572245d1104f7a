"""Shared fixtures: an isolated cache and MLflow store per session, Hydra compose helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.entities import Run
from omegaconf import DictConfig

from runner import config

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
DEMO_MODEL = ROOT / "runner" / "demo" / "assets" / "demo_centernet"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
config.register()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session, so the synthetic val split is generated once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, cache_dir: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("DETBENCH_CACHE", str(cache_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def compose_job(overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides or [])


def check_png(path: Path, size: tuple[int, int]) -> None:
    """A real PNG of ``size`` pixels with more than 16 colours (not blank)."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size == size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 16, f"{path.name} looks blank"


def runs_by_precision(uri: str) -> dict[str, Run]:
    """The job runs of a store's ``detbench`` experiment, by ``precision`` choice (sweep parent
    runs carry no such tag)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("detbench")
    assert exp is not None
    return {r.data.tags["detbench.precision"]: r for r in client.search_runs([exp.experiment_id])
            if "detbench.precision" in r.data.tags}
