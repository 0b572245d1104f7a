"""Telemetry of a benchmark run, in four parts:

- ``lifecycle``: the ``Sampler`` (start, phases, stop; boundary counters; results),
- ``summary``: pure functions of rows, intervals and counter readings (no sampler needed),
- ``nvml`` and ``visible``: which GPUs to sample (the ``CUDA_VISIBLE_DEVICES`` parser shared with
  ``runner.gpu_lock``) and what NVML says about them; ``counters``: boundary counters,
- ``probe``: what one sample reads, and the sampling process (``python -m runner.telemetry.probe``).
"""

from runner.telemetry.lifecycle import INITIAL_PHASE, Sampler
from runner.telemetry.nvml import NVML_FUNCTIONS, NVML_NAMES, THROTTLE_REASONS
from runner.telemetry.probe import CPU_FIELDS, GPU_FIELDS
from runner.telemetry.summary import integrate
from runner.telemetry.visible import VisibleGpu, parse_visible

__all__ = ["CPU_FIELDS", "GPU_FIELDS", "INITIAL_PHASE", "NVML_FUNCTIONS", "NVML_NAMES",
           "THROTTLE_REASONS", "Sampler", "VisibleGpu", "integrate", "parse_visible"]
