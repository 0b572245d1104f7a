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
# resolution=<any HxW> (a custom model's size) is expressed as resolution.name=HxW for Hydra
sys.argv[1:] = config.rewrite_resolution_args(
    sys.argv[1:], os.path.join(os.path.dirname(os.path.dirname(__file__)), "conf"))
log = logging.getLogger("runner")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, str | None]:
    from pathlib import Path

    from runner import job, report
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
    main()
