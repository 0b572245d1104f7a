"""Which GPUs a process may use: the one reading of ``CUDA_VISIBLE_DEVICES`` that the GPU lock
(``runner.gpu_lock``) and the sampler (``runner.telemetry``) share, so that the GPU a job holds
is the GPU it measures.

Read like CUDA reads it: unset = every GPU; entries are NVML indices (PCI bus order, with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``), ``GPU-<uuid>`` (a unique prefix is enough), ``MIG-<uuid>``
(a MIG instance, which has its own UUID) or the older ``MIG-GPU-<uuid>/<gi>/<ci>``; the list stops
at the first entry that is negative or names no GPU, so ``""`` and ``-1`` hide all; repeats count
once. A MIG instance is sampled through its physical GPU (NVML reports power, energy and clocks
per GPU, not per instance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class VisibleGpu:
    """One entry of the list: what names it, its UUID, and the NVML index of its physical GPU."""

    entry: str  # the CUDA_VISIBLE_DEVICES entry ("0", "GPU-8e6a...", "MIG-..."), or the index
    uuid: str  # the GPU's UUID; a MIG instance's own UUID (the entry itself when unresolved)
    index: int | None  # NVML index of the physical GPU; None when it could not be resolved
    mig: bool = False


def parse_visible(uuids: Sequence[str], cuda_visible: str | None,
                  mig_parent: Callable[[str], str | None] | None = None) -> list[VisibleGpu]:
    """The GPUs ``cuda_visible`` selects among ``uuids`` (NVML's, in index order); [] without
    GPUs. ``mig_parent(mig_uuid)`` gives a MIG instance's physical GPU UUID (from NVML), or None."""
    if not uuids:
        return []
    if cuda_visible is None:
        return [VisibleGpu(str(i), u, i) for i, u in enumerate(uuids)]
    found: list[VisibleGpu] = []
    for token in (t.strip() for t in cuda_visible.split(",")):
        gpu = _entry(token, uuids, mig_parent)
        if gpu is None:
            break
        if gpu.uuid not in (g.uuid for g in found):
            found.append(gpu)
    return found


def _unique_prefix(prefix: str, uuids: Sequence[str]) -> int | None:
    matches = [i for i, u in enumerate(uuids) if u.lower().startswith(prefix.lower())]
    return matches[0] if len(matches) == 1 else None


def _entry(token: str, uuids: Sequence[str],
           mig_parent: Callable[[str], str | None] | None) -> VisibleGpu | None:
    if token.isdigit():
        number = int(token)
        return VisibleGpu(token, uuids[number], number) if number < len(uuids) else None
    upper = token.upper()
    index: int | None
    if upper.startswith("MIG-GPU-"):  # MIG-GPU-<gpu uuid>/<gi>/<ci>: the parent is in the name
        index = _unique_prefix(token[4:].split("/", 1)[0], uuids)
        return VisibleGpu(token, token, index, mig=True)
    if upper.startswith("MIG-"):
        parent = mig_parent(token) if mig_parent is not None else None
        index = uuids.index(parent) if parent is not None and parent in uuids else None
        return VisibleGpu(token, token, index, mig=True)
    if upper.startswith("GPU-"):
        index = _unique_prefix(token, uuids)
        # not resolved: kept under its own name (a GPU this NVML does not list, e.g. another
        # container's), as CUDA would fail on it rather than pick another GPU
        return VisibleGpu(token, token if index is None else uuids[index], index)
    return None
