"""End of a sweep: a summary of every job (finished, failed and why, skipped and why), and an exit
code that says whether all went well (non-zero only after every job has run)."""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

OK = ("FINISHED", "SKIPPED")


def outcome(job_return: JobReturn) -> dict[str, str]:
    """Status, name and reason of one job from what the task function returned or raised."""
    overrides = " ".join(job_return.overrides or [])
    if job_return.status == JobStatus.FAILED:
        exc = job_return._return_value  # the exception the task raised
        return {"status": "FAILED", "name": overrides, "reason": f"{type(exc).__name__}: {exc}"}
    value: Any = job_return._return_value
    if isinstance(value, dict):
        name = f"{value.get('name')} [{overrides}]" if overrides else str(value.get("name"))
        if value.get("pending"):  # measured, but not in the store: runner.sync uploads it
            return {"status": "UNLOGGED", "name": name,
                    "reason": f"{value.get('status')} but not logged: {value['pending']}"}
        return {"status": str(value.get("status")), "name": name,
                "reason": str(value.get("error") or "")}
    return {"status": "UNKNOWN", "name": overrides, "reason": repr(value)}


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.jobs: list[dict[str, str]] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse to start a sweep whose tracking server is down, before any model loads."""
        from runner.tracking import (
            TrackingUnavailable,
            check_reachable,
            check_writable,
            resolve_uri,
        )

        try:
            check_reachable(resolve_uri(config.tracking.uri))
            check_writable(resolve_uri(config.tracking.uri))
        except TrackingUnavailable as exc:
            print(f"detbench: sweep not started: {exc}", file=sys.stderr)
            sys.exit(2)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        self.jobs.append(outcome(job_return))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.jobs:
            return
        from runner.tracking import redact

        print(redact(summary_text(self.jobs)))  # overrides may hold a tracking.uri password
        if any(job["status"] not in OK for job in self.jobs):
            sys.exit(1)


def summary_text(jobs: list[dict[str, str]]) -> str:
    counts = {s: sum(j["status"] == s for j in jobs) for s in sorted({j["status"] for j in jobs})}
    lines = ["", "Sweep summary: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items())]
    width = max(len(j["name"]) for j in jobs)
    for job in jobs:
        reason = f"  {job['reason']}" if job["reason"] else ""
        lines.append(f"  {job['status']:<8} {job['name']:<{width}}{reason}")
    return "\n".join(lines)
