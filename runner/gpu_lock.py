"""One timed job per GPU at a time: ``with exclusive_gpu(cache_dir, timeout_s) as slot: ...``.

A job holds one *slot* for its measured work: one of the GPUs it can see (``CUDA_VISIBLE_DEVICES``
entries, else every GPU NVML reports), or the single ``cpu`` slot where NVML reports no GPU. A
slot is a ``filelock.FileLock`` under ``<cache_dir>/locks/``, so every process that shares the
cache waits for it: jobs of a sweep through ``hydra/launcher=submitit_local`` or ``local``,
sweeps started by hand, containers with the same ``/cache`` volume.

While the slot is held and the job could see several GPUs, ``CUDA_VISIBLE_DEVICES`` names the
slot's GPU alone (and ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` unless set, so CUDA numbers GPUs as NVML and
nvidia-smi do); both are restored on exit. CUDA reads the variable once, when it initializes in a
process: the work must run in a child process started inside the block (``runner.worker``), or in
this process before anything has touched a GPU. ``slot.env()`` gives the same for an explicit env.
Work in this process (``in_process=True``) pins the process to the first GPU it was given: later
blocks wait for that GPU rather than take another that CUDA here could not switch to.

A lock is named after the GPU's UUID (``GPU-<uuid>.lock``, ``MIG-<uuid>.lock``), not its index:
processes number GPUs differently (``CUDA_VISIBLE_DEVICES=2,3`` makes GPU 3 their ``1``, a SLURM or
container job sees its own GPU as ``0``) and a cache can be shared by hosts (a cluster's home
directory). The CPU slot is per host: ``cpu@<host>.lock``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from runner.telemetry.visible import parse_visible

log = logging.getLogger(__name__)

LOCK_SUBDIR = "locks"
CPU = "cpu"
POLL_S = 0.1
ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")
_in_process_gpu: str | None = None  # UUID of the GPU this process's own CUDA work was given


class GpuLockTimeout(TimeoutError):
    """No slot became free within the timeout."""


@dataclass(frozen=True)
class Slot:
    """A GPU (``device`` = its CUDA_VISIBLE_DEVICES entry, ``uuid``) or the CPU (both None)."""

    name: str  # "gpu<device>" or "cpu", for messages
    device: str | None
    uuid: str | None
    lock_file: Path
    visible: tuple[str, ...] = ()  # every GPU the job could see
    waited_s: float = 0.0

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) with CUDA_VISIBLE_DEVICES naming only this slot's GPU."""
        env = dict(os.environ if base is None else base)
        if self.device is not None and len(self.visible) > 1:
            env["CUDA_VISIBLE_DEVICES"] = self.device
            env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        return env


def gpu_uuids() -> list[str]:
    """UUIDs of the GPUs NVML reports, in NVML (PCI bus) order; [] without a driver or GPU."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: a CPU-only machine
        return []
    try:
        uuids = []
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            uuid: Any = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
            uuids.append(uuid.decode() if isinstance(uuid, bytes) else str(uuid))
        return uuids
    except Exception:  # noqa: BLE001
        return []
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def visible_gpus(uuids: list[str], cuda_visible: str | None) -> list[tuple[str, str]]:
    """(CUDA_VISIBLE_DEVICES entry, UUID) of each GPU a process may use, as
    ``runner.telemetry.visible.parse_visible`` reads the variable (the sampler reads it with the
    same function, so the GPU locked is the GPU measured): a MIG instance is its own slot, under
    its own UUID."""
    return [(gpu.entry, gpu.uuid) for gpu in parse_visible(uuids, cuda_visible)]


@contextmanager
def exclusive_gpu(cache_dir: str | os.PathLike[str], timeout_s: float | None = None, *,
                  environ: MutableMapping[str, str] | None = None, in_process: bool = False,
                  poll_s: float = POLL_S) -> Iterator[Slot]:
    """Hold one free slot for the block, waiting up to ``timeout_s`` seconds for one (None or < 0:
    as long as it takes), else raise GpuLockTimeout. ``environ`` (default os.environ) is where
    CUDA_VISIBLE_DEVICES is read and, while the slot is held, narrowed to the slot's GPU.
    ``in_process``: the GPU work runs in this process, not in a child started in the block."""
    global _in_process_gpu
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    gpus = visible_gpus(gpu_uuids(), env.get("CUDA_VISIBLE_DEVICES"))
    pinned = [g for g in gpus if in_process and g[1] == _in_process_gpu]
    lock_dir = Path(cache_dir).expanduser() / LOCK_SUBDIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    candidates: list[tuple[str | None, str | None, str]] = (
        [(device, uuid, uuid) for device, uuid in pinned or gpus] if gpus
        else [(None, None, f"{CPU}@{host}")]
    )
    locks = [FileLock(lock_dir / f"{_UNSAFE.sub('_', key)}.lock") for _, _, key in candidates]
    start = time.monotonic()
    deadline = None if timeout_s is None or timeout_s < 0 else start + timeout_s
    first = random.randrange(len(locks))  # jobs that arrive together spread over the GPUs
    order = list(range(first, len(locks))) + list(range(first))
    announced = False
    while (index := _acquire_any(locks, order)) is None:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise GpuLockTimeout(
                f"no free GPU slot within {timeout_s:g} s: all {len(locks)} held by other jobs "
                f"(locks in {lock_dir})")
        if not announced:
            log.info("waiting for a free slot (all %d held by other jobs)", len(locks))
            announced = True
        time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - now)))
    device, uuid, _ = candidates[index]
    slot = Slot(name=CPU if device is None else f"gpu{device}", device=device, uuid=uuid,
                lock_file=Path(locks[index].lock_file), visible=tuple(d for d, _ in gpus),
                waited_s=time.monotonic() - start)
    if in_process and uuid is not None:
        _in_process_gpu = uuid
    saved = {key: env.get(key) for key in ENV_KEYS}
    try:
        narrowed = slot.env({k: v for k, v in saved.items() if v is not None})
        env.update({k: v for k, v in narrowed.items() if k in ENV_KEYS})
        log.info("holding %s%s", slot.name, f" after {slot.waited_s:.1f} s" if announced else "")
        yield slot
    finally:
        for key, value in saved.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        locks[index].release()


def _acquire_any(locks: list[FileLock], order: list[int]) -> int | None:
    for index in order:
        try:
            locks[index].acquire(timeout=0)
        except Timeout:
            continue
        return index
    return None
