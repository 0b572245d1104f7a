"""The accuracy a conversion costs: each run's AP difference to Native FP32 of the same job.

"The same job" is everything but the precision (model, input, dataset and its images, benchmark
settings): its hash is the tag ``detbench.comparable``; the reference run also carries
``detbench.reference=true`` (the default precision, ``backends.is_reference``). After a run
FINISHES, the newest FINISHED reference run with the same hash in the experiment gives
``reference.<metric>_diff`` metrics (this run minus the reference, in AP points x 100 like the
table) and the tag ``detbench.reference_run``; without one the tag says it is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from runner import backends, config

if TYPE_CHECKING:  # runner.tracking imports MLflow lazily; the annotation needs none of it
    from runner.tracking import Tracker

log = logging.getLogger(__name__)

#: config keys that do not change what is compared: those that change no measurement
#: (config.NOT_MEASURED) and the precision, which is what a comparison varies
NOT_COMPARED = (*config.NOT_MEASURED, "precision")
METRICS = ("bbox.AP", "bbox.AP50", "bbox.AP75")
TAG_KEY, TAG_REFERENCE, TAG_RUN = "detbench.comparable", "detbench.reference", \
    "detbench.reference_run"


def comparable_key(cfg: DictConfig) -> str:
    from runner.tracking import flatten

    kept = {k: v for k, v in flatten(cfg).items()
            if not any(k == n or k.startswith(n + ".") for n in NOT_COMPARED)}
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def tags(job_cfg: config.JobConfig, cfg: DictConfig) -> dict[str, str]:
    """Tags set when the run starts."""
    reference = backends.is_reference(job_cfg.precision, config.PrecisionConfig)
    return {TAG_KEY: comparable_key(cfg), TAG_REFERENCE: str(reference).lower()}


def log_difference(tracker: Tracker, job_cfg: config.JobConfig, cfg: DictConfig,
                   metrics: Mapping[str, float]) -> dict[str, float]:
    """Log this run's metric differences to the reference run, or say it is missing; never
    raises (a lookup failure is logged as the tag's reason)."""
    if backends.is_reference(job_cfg.precision, config.PrecisionConfig):
        return {}
    try:
        found = tracker.latest_finished_metrics({TAG_KEY: comparable_key(cfg),
                                                 TAG_REFERENCE: "true"})
    except Exception as exc:  # noqa: BLE001 - an optional comparison must not fail the job
        tracker.set_tags({TAG_RUN: f"missing: lookup failed ({type(exc).__name__}: {exc})"})
        return {}
    if found is None:
        tracker.set_tags({TAG_RUN: "missing: no FINISHED Native FP32 run of the same model, "
                                   "input, dataset and benchmark settings in this experiment "
                                   "(run precision=fp32 with the same overrides first)"})
        log.info("AP difference to Native FP32: missing (no reference run of the same job)")
        return {}
    run_id, ref = found
    diff = {f"reference.{m}_diff": 100.0 * (metrics[m] - ref[m])
            for m in METRICS if m in metrics and m in ref}
    tracker.set_tags({TAG_RUN: run_id})
    tracker.log_metrics(diff)
    if "reference.bbox.AP_diff" in diff:
        log.info("AP difference to Native FP32 (run %s): %+.2f", run_id,
                 diff["reference.bbox.AP_diff"])
    return diff
