"""The timer: warm-up calls, then one timed call per prepared image.

Only the model call and the materialization of its outputs happen between the two clock reads;
the outputs are handed to ``on_output`` after the second read, or, with ``defer_outputs``, after
the last timed call, so that no other work runs between two timed calls (work between calls
evicts the runtime's code and data from the CPU caches and slows the next call: about 13 us, 3%,
on a 0.4 ms model with the zoo adapter and results accumulation; benchmarks/harness_overhead.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Predict = Callable[[Any], Mapping[str, np.ndarray]]
OnOutput = Callable[[int, Mapping[str, np.ndarray]], None]


def warm_up(predict: Predict, inputs: Sequence[Any], calls: int) -> None:
    """``calls`` untimed calls, cycling over ``inputs``; outputs are discarded."""
    if calls and not inputs:
        raise ValueError("warm-up needs at least one prepared input")
    for i in range(calls):
        predict(inputs[i % len(inputs)])


def time_calls(predict: Predict, inputs: Sequence[Any], on_output: OnOutput | None = None,
               clock: Callable[[], float] = time.perf_counter,
               progress: Callable[[int], None] | None = None,
               defer_outputs: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Latency in seconds of one call per input, in input order.

    ``on_output(i, outputs)`` runs after each call, or with ``defer_outputs`` for every call in
    order once all calls are timed (the outputs of all ``inputs`` are then held meanwhile).
    ``out`` (NaN-filled by the caller) receives each latency as it is measured, so an
    interrupted loop keeps what it measured; the worker passes a view of the job directory's
    memory-mapped latency log (runner.jobdir), so that even a SIGKILLed or hung child's latencies
    are on disk. That store is the only persistence work per call and costs nothing measurable
    against a store into np.empty: -34 ns per call (95% CI -45..0) on a 371 ns loop
    (benchmarks/latency_store.py, 21 rounds of 200,000 calls)."""
    latencies = np.empty(len(inputs), dtype=np.float64) if out is None else out
    kept: list[Mapping[str, np.ndarray]] = []
    for i, image in enumerate(inputs):
        start = clock()
        outputs = predict(image)
        latencies[i] = clock() - start
        if on_output is not None:
            if defer_outputs:
                kept.append(outputs)
            else:
                on_output(i, outputs)
        if progress is not None:
            progress(1)
    if on_output is not None:
        for i, outputs in enumerate(kept):
            on_output(i, outputs)
    return latencies
