"""Old home of :class:`SweepSummary`, now in runner/callbacks.py (one module for the Hydra
callbacks). Kept so configs and stored job dirs (``.hydra/config.yaml``) that name
``runner.sweep.SweepSummary`` still start."""

from runner.callbacks import OK, SweepSummary, outcome, summary_text

__all__ = ["OK", "SweepSummary", "outcome", "summary_text"]
