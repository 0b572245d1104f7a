"""``python -m runner``: one benchmark job (or a sweep with ``-m``), configured by Hydra."""

from __future__ import annotations

import logging
import os
import sys

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from runner import config  # noqa: E402

config.register()
log = logging.getLogger("runner")


def config_path() -> str:
    """The configs: the checkout's top-level ``conf/`` when there is one (the source), else the
    copy an installed wheel carries as the package ``runner.conf`` (setup.py)."""
    from pathlib import Path

    checkout = Path(__file__).resolve().parent.parent / "conf" / "config.yaml"
    return "../conf" if checkout.is_file() else "pkg://runner.conf"


def version_text() -> str:
    """``detbench 0.1.0 (commit abc123, TensorFlow not imported)``: the package and checkout."""
    from importlib import metadata
    from pathlib import Path

    from runner.environment import git_commit

    try:
        version = metadata.version("detbench")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    commit = git_commit(Path(__file__).resolve().parent.parent)
    where = f", commit {commit}" if commit != "unknown" else ""
    return f"detbench {version}{where} (python {sys.version.split()[0]})"


def cli() -> None:
    """The ``detbench`` console script and ``python -m runner``: ``--version``/``-V`` here,
    everything else (overrides, ``--help``, ``-m``, ``-sc`` completion) Hydra's."""
    if sys.argv[1:2] in (["--version"], ["-V"]):
        print(version_text())
        return
    main()


@hydra.main(version_base="1.3", config_path=config_path(), config_name="config")
def main(cfg: DictConfig) -> dict[str, str | None]:
    from pathlib import Path

    from runner import job
    from runner.results import report
    from runner.tracking import TrackingUnavailable, check_reachable, resolve_uri

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.RUN:
        try:
            check_reachable(resolve_uri(cfg.tracking.uri))
        except TrackingUnavailable as exc:
            print(f"detbench: {exc}", file=sys.stderr)
            sys.exit(2)
    try:
        result = job.run(cfg, dict(hydra_cfg.runtime.choices), Path(hydra_cfg.runtime.output_dir))
    except config.ConfigError as exc:
        print(f"detbench: configuration error: {exc}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.RUN:
            sys.exit(2)
        return {"status": "FAILED", "name": "", "error": f"configuration error: {exc}",
                "run_id": None}
    report.print_result(result)
    if result.status not in ("FINISHED", "SKIPPED") and hydra_cfg.mode == RunMode.RUN:
        sys.exit(1)
    return {"status": result.status, "name": result.name, "error": result.error,
            "run_id": result.run_id}


if __name__ == "__main__":
    cli()
