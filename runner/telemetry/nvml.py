"""NVML discovery: which GPUs to sample (``CUDA_VISIBLE_DEVICES`` read by ``visible``), their
static facts, and the counters read at phase boundaries (energy counter, the driver's own
utilization sample buffer). Everything here takes the NVML module as an argument: pynvml in a
job, ``tests/fake_nvml.FakeNvml`` in tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.telemetry.probe import (
    CONSTANTS,
    ROW_FUNCTIONS,
    UNSUPPORTED_ERRORS,
    Gpu,
    error_text,
    nvml_constants,
    scaled,
)
from runner.telemetry.visible import parse_visible

_MB = 1024.0 * 1024.0

# Clock throttle reasons that mean "slowed down by heat or power": pynvml name -> fallback bit.
THROTTLE_REASONS = {
    "nvmlClocksThrottleReasonSwPowerCap": 0x04,
    "nvmlClocksThrottleReasonHwSlowdown": 0x08,
    "nvmlClocksThrottleReasonSwThermalSlowdown": 0x20,
    "nvmlClocksThrottleReasonHwThermalSlowdown": 0x40,
    "nvmlClocksThrottleReasonHwPowerBrakeSlowdown": 0x80,
}
# Every pynvml function used here and in the sampling process (tests check them against the
# real module and the stand-in).
NVML_FUNCTIONS = tuple(dict.fromkeys((
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetApplicationsClock",
    "nvmlDeviceGetMaxClockInfo",
    "nvmlDeviceGetClock",
    "nvmlDeviceGetSamples",
    *ROW_FUNCTIONS,
)))
NVML_NAMES = (*NVML_FUNCTIONS, *CONSTANTS, *THROTTLE_REASONS, "NVMLError", *UNSUPPORTED_ERRORS)


def text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def throttle_mask(nvml: Any) -> int:
    mask = 0
    for name, bit in THROTTLE_REASONS.items():
        mask |= int(getattr(nvml, name, bit))
    return mask


@dataclass
class Discovery:
    """The GPUs to sample: ``devices`` (label + handle), ``gpus`` (static facts per GPU),
    ``reason`` why there are none, ``notes`` (e.g. a MIG instance sampled through its GPU)."""

    devices: list[Gpu] = field(default_factory=list)
    gpus: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def _mig_parent(nvml: Any) -> Callable[[str], str | None]:
    def parent(mig_uuid: str) -> str | None:
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(mig_uuid)
            return text(nvml.nvmlDeviceGetUUID(
                nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)))
        except Exception:  # noqa: BLE001 - not a MIG instance this NVML knows
            return None

    return parent


def discover(nvml: Any, cuda_visible: str | None) -> Discovery:
    """The GPUs ``cuda_visible`` selects (one parser with ``runner.gpu_lock``), each once; a MIG
    instance is sampled through its physical GPU. Raises what NVML raises."""
    found = Discovery()
    count = int(nvml.nvmlDeviceGetCount())
    handles: list[Any] = []
    uuids: list[str] = []
    for index in range(count):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        handles.append(handle)
        uuids.append(text(nvml.nvmlDeviceGetUUID(handle)) or f"#{index}")
    visible = parse_visible(uuids, cuda_visible, _mig_parent(nvml))
    indices: list[int] = []
    for gpu in visible:
        if gpu.index is None:
            found.notes.append(f"CUDA_VISIBLE_DEVICES entry {gpu.entry!r} names no GPU NVML "
                               f"reports: not sampled")
            continue
        if gpu.mig:
            found.notes.append(f"{gpu.entry} is a MIG instance: sampled through its GPU "
                               f"gpu{gpu.index} (power, energy and clocks are the whole GPU's)")
        if gpu.index not in indices:
            indices.append(gpu.index)
    for index in indices:
        found.devices.append(Gpu(f"gpu{index}", handles[index]))
        found.gpus.append(static_info(nvml, index, handles[index]))
    if not found.devices:
        if count == 0:
            found.reason = "NVML found no GPU"
        else:
            found.reason = (f"CUDA_VISIBLE_DEVICES={cuda_visible!r} selects none of the {count} "
                            "GPUs NVML reports")
    return found


def static_info(nvml: Any, index: int, handle: Any) -> dict[str, Any]:
    """Per-GPU facts read once; a field is None when its NVML call fails."""

    def call(name: str, *args: Any) -> Any:
        fn = getattr(nvml, name, None)
        try:
            return None if fn is None else fn(*args)
        except Exception:  # noqa: BLE001
            return None

    const = nvml_constants(nvml)
    sm, mem = const["NVML_CLOCK_SM"], const["NVML_CLOCK_MEM"]
    memory = call("nvmlDeviceGetMemoryInfo", handle)
    app_clocks = [
        call("nvmlDeviceGetClock", handle, clock, const[clock_id])
        for clock_id in ("NVML_CLOCK_ID_APP_CLOCK_TARGET", "NVML_CLOCK_ID_APP_CLOCK_DEFAULT")
        for clock in (sm, mem)
    ]
    return {
        "index": index,
        "device": f"gpu{index}",
        "name": text(call("nvmlDeviceGetName", handle)),
        "uuid": text(call("nvmlDeviceGetUUID", handle)),
        "driver_version": text(call("nvmlSystemGetDriverVersion")),
        "memory_total_mb": None if memory is None else memory.total / _MB,
        "power_limit_w": scaled(call("nvmlDeviceGetEnforcedPowerLimit", handle), 1e-3),
        "app_sm_clock_mhz": call("nvmlDeviceGetApplicationsClock", handle, sm),
        "app_mem_clock_mhz": call("nvmlDeviceGetApplicationsClock", handle, mem),
        "max_sm_clock_mhz": call("nvmlDeviceGetMaxClockInfo", handle, sm),
        # Application clocks moved off their defaults (nvidia-smi -ac). NVML has no getter for
        # clocks locked with nvidia-smi -lgc; None when the clocks cannot be read.
        "clocks_locked": None if None in app_clocks else app_clocks[:2] != app_clocks[2:],
    }


def energy_j(nvml: Any, devices: Sequence[Gpu]) -> dict[str, float | None]:
    """Each GPU's cumulative energy counter (J since the driver loaded; Volta and newer), None
    where it cannot be read."""
    out: dict[str, float | None] = {}
    for gpu in devices:
        try:
            out[gpu.label] = scaled(nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle), 1e-3)
        except Exception:  # noqa: BLE001 - NotSupported before Volta
            out[gpu.label] = None
    return out


def utilization_samples(nvml: Any, gpu: Gpu, since_us: int) -> tuple[list[tuple[int, float]], str]:
    """The driver's own GPU-utilization samples newer than ``since_us`` (CPU wall clock, us):
    ``([(timestamp_us, percent)], error)``. The driver keeps a short ring buffer of them (its
    own sampling period, ~1/6 s to 1 s): read it after each phase, not once per run."""
    const = nvml_constants(nvml)
    try:
        _, samples = nvml.nvmlDeviceGetSamples(gpu.handle, const["NVML_GPU_UTILIZATION_SAMPLES"],
                                               since_us)
    except Exception as e:  # noqa: BLE001 - NotFound: no sample since; NotSupported
        name = type(e).__name__
        return [], "" if "NotFound" in name else f"nvmlDeviceGetSamples: {error_text(e)}"
    out = []
    for s in samples:
        value = s.sampleValue
        number = getattr(value, "uiVal", value)
        out.append((int(s.timeStamp), float(number)))
    return out, ""
