"""``python -m runner``: one benchmark job (or a sweep with ``-m``), configured by Hydra.

Exit codes: 0 all logged; 1 a job failed; 2 bad configuration or an unusable tracking store
(nothing run); 3 results measured but not logged (kept for ``python -m runner.sync``);
128 + signal when SIGTERM (143), SIGHUP (129) or SIGINT (130) stopped it, after its runs ended
KILLED."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from runner import config  # noqa: E402

if TYPE_CHECKING:
    from runner.job import JobResult

config.register()
# resolution=<any HxW> (a custom model's size) is expressed as resolution.name=HxW for Hydra
sys.argv[1:] = config.rewrite_resolution_args(
    sys.argv[1:], os.path.join(os.path.dirname(os.path.dirname(__file__)), "conf"))
log = logging.getLogger("runner")
#: set once Hydra has composed a config and called ``main``: an exit 1 before that is Hydra
#: refusing the command line (an unknown key without ``+``, a group choice that does not exist)
_COMPOSED = False


def config_path() -> str:
    """The configs: the checkout's top-level ``conf/`` when there is one (the source), else the
    copy an installed wheel carries as the package ``runner.conf`` (setup.py)."""
    from pathlib import Path

    checkout = Path(__file__).resolve().parent.parent / "conf" / "config.yaml"
    return "../conf" if checkout.is_file() else "pkg://runner.conf"


def version_text() -> str:
    """``detbench 0.1.0, commit abc123 (python 3.11.7)``: the package and the checkout."""
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


@hydra.main(version_base="1.3", config_path=config_path(), config_name="config")
def main(cfg: DictConfig) -> dict[str, str | None]:
    from pathlib import Path

    global _COMPOSED
    _COMPOSED = True

    from runner import job
    from runner.backends import UnsupportedPrecision
    from runner.results import report
    from runner.tracking import refuse_unusable_store

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.RUN:
        refuse_unusable_store(cfg.tracking.uri, "detbench: ")
    try:
        result = job.run(cfg, dict(hydra_cfg.runtime.choices), Path(hydra_cfg.runtime.output_dir))
    except config.ConfigError as exc:
        print(f"detbench: configuration error: {exc}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.RUN:
            sys.exit(2)
        return {"status": "FAILED", "name": "", "error": f"configuration error: {exc}",
                "run_id": None}
    except UnsupportedPrecision as exc:  # the backend's own reason; no download, no run
        if hydra_cfg.mode == RunMode.RUN:  # asked for explicitly: an error, like a bad value
            print(f"detbench: {exc}", file=sys.stderr)
            sys.exit(2)
        name = job.run_name(config.to_object(cfg))  # in a sweep: skipped, the rest runs
        print(f"\njob {name} SKIPPED: {exc}")
        return {"status": "SKIPPED", "name": name, "error": str(exc), "run_id": None}
    report.print_result(result)
    code = exit_code(result)
    if code and hydra_cfg.mode == RunMode.RUN:
        sys.exit(code)
    return {"status": result.status, "name": result.name, "error": result.error,
            "run_id": result.run_id, "pending": result.pending_reason}


def exit_code(result: JobResult) -> int:
    """1 when the job did not finish, 3 when its results are not in the store, else 0."""
    if result.status not in ("FINISHED", "SKIPPED"):
        return 1
    return 3 if result.pending_dir is not None else 0


def cli() -> None:
    """The entry point: ``main`` with SIGTERM/SIGHUP handled (runner.signals) and the exit code
    128 + signal after the runs in flight ended KILLED."""
    from runner import signals

    if sys.argv[1:2] in (["--version"], ["-V"]):  # everything else: Hydra's (--help, -sc, -m)
        print(version_text())
        return
    signals.install()
    try:
        main()
    except SystemExit as exc:
        if exc.code == 1 and not _COMPOSED:  # Hydra's own config error: nothing ran, no run
            sys.exit(2)
        raise
    except (signals.Terminated, KeyboardInterrupt) as exc:
        print(f"detbench: stopped: {signals.describe(signals.received() or signal.SIGINT)}",
              file=sys.stderr)
        sys.exit(signals.exit_code(exc))


if __name__ == "__main__":
    cli()
