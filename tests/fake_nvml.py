"""A stand-in for pynvml (nvidia-ml-py) with its real names: ``FakeNvml`` is handed to
``runner.telemetry.Sampler`` in-process; ``module_source()`` is the text of a ``pynvml.py`` that
a test puts first on the path, so that the sampling process imports it as pynvml."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace


class FakeNVMLError(Exception):
    pass


class FakeNotSupported(FakeNVMLError):
    pass


class FakeNotFound(FakeNVMLError):
    pass


#: the driver's utilization sampling period the stand-in imitates (us), and its buffer length
DRIVER_PERIOD_US = 20_000
DRIVER_BUFFER = 100


@dataclass(eq=False)  # each GPU is itself (its index and UUID), even with equal settings
class FakeGpu:
    name: str | bytes = "NVIDIA H200"
    power_mw: int | None = 100_000  # None: NVMLError_NotSupported
    throttle: int = 0
    util: int = 80
    app_clocks_supported: bool = True
    fail_util_on_call: int = 0  # the nth utilisation call raises RuntimeError (0: never)
    migs: tuple[str, ...] = ()  # UUIDs of MIG instances on this GPU


class FakeNvml:
    """Stand-in following the pynvml API; state lives in underscore attributes."""

    NVMLError = FakeNVMLError
    NVMLError_NotSupported = FakeNotSupported
    NVMLError_NotFound = FakeNotFound
    NVML_GPU_UTILIZATION_SAMPLES = 1
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_ID_APP_CLOCK_TARGET = 1
    NVML_CLOCK_ID_APP_CLOCK_DEFAULT = 2
    nvmlClocksThrottleReasonGpuIdle = 0x01
    nvmlClocksThrottleReasonApplicationsClocksSetting = 0x02
    nvmlClocksThrottleReasonSwPowerCap = 0x04
    nvmlClocksThrottleReasonHwSlowdown = 0x08
    nvmlClocksThrottleReasonSwThermalSlowdown = 0x20
    nvmlClocksThrottleReasonHwThermalSlowdown = 0x40
    nvmlClocksThrottleReasonHwPowerBrakeSlowdown = 0x80

    def __init__(self, gpus: list[FakeGpu], init_error: Exception | None = None) -> None:
        self._gpus = gpus
        self._init_error = init_error
        self._calls: Counter[str] = Counter()

    def nvmlInit(self) -> None:
        self._calls["init"] += 1
        if self._init_error is not None:
            raise self._init_error

    def nvmlShutdown(self) -> None:
        self._calls["shutdown"] += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self._gpus[index]

    def nvmlDeviceGetName(self, h: FakeGpu) -> str | bytes:
        return h.name

    def nvmlDeviceGetUUID(self, h: FakeGpu | tuple[FakeGpu, str]) -> str:
        if isinstance(h, tuple):  # a MIG device handle
            return h[1]
        return f"GPU-{self._gpus.index(h)}-fake"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu | tuple[FakeGpu, str]:
        for gpu in self._gpus:
            if uuid in gpu.migs:
                return (gpu, uuid)
        for index, gpu in enumerate(self._gpus):
            if uuid == f"GPU-{index}-fake":
                return gpu
        raise FakeNotFound(uuid)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, h: tuple[FakeGpu, str]) -> FakeGpu:
        if not isinstance(h, tuple):
            raise FakeNVMLError("not a MIG device handle")
        return h[0]

    def nvmlDeviceGetSamples(self, h: FakeGpu, sampling_type: int,
                             since_us: int) -> tuple[int, list[SimpleNamespace]]:
        """The driver's utilization ring buffer: a sample of ``h.util`` every DRIVER_PERIOD_US
        of wall clock, the last DRIVER_BUFFER of them; NotFound when none is newer."""
        self._calls["samples"] += 1
        now = int(time.time() * 1e6)
        first = max(since_us // DRIVER_PERIOD_US + 1, now // DRIVER_PERIOD_US - DRIVER_BUFFER + 1)
        stamps = range(first * DRIVER_PERIOD_US, now + 1, DRIVER_PERIOD_US)
        if not stamps:
            raise FakeNotFound()
        return 1, [SimpleNamespace(timeStamp=t, sampleValue=SimpleNamespace(uiVal=h.util))
                   for t in stamps]

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"570.86.15"

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> SimpleNamespace:
        return SimpleNamespace(used=2048 * 2**20, total=143_771 * 2**20)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGpu) -> int:
        return 700_000

    def nvmlDeviceGetApplicationsClock(self, h: FakeGpu, clock: int) -> int:
        return 1980 if clock == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetMaxClockInfo(self, h: FakeGpu, clock: int) -> int:
        return 1980

    def nvmlDeviceGetClock(self, h: FakeGpu, clock: int, clock_id: int) -> int:
        if not h.app_clocks_supported:
            raise FakeNotSupported()
        return 1980 if clock == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> SimpleNamespace:
        self._calls["util"] += 1
        if self._calls["util"] == h.fail_util_on_call:
            raise RuntimeError("boom")
        return SimpleNamespace(gpu=h.util, memory=h.util // 2)

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        self._calls["power"] += 1
        if h.power_mw is None:
            raise FakeNotSupported()
        return h.power_mw

    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock: int) -> int:
        return 1755

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        return 55

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: FakeGpu) -> int:
        return h.throttle

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        if h.power_mw is None:
            raise FakeNotSupported()
        return int(h.power_mw * time.monotonic())  # mJ of a constant power since boot


def module_source(gpus: str = "[FakeGpu(), FakeGpu(power_mw=50_000)]") -> str:
    """A pynvml.py whose attributes are those of ``FakeNvml(<gpus>)`` (one per process)."""
    return ("from tests.fake_nvml import FakeGpu, FakeNvml\n"
            f"_FAKE = FakeNvml({gpus})\n\n\n"
            "def __getattr__(name):\n    return getattr(_FAKE, name)\n")
