"""The timer: warm-up calls, then one timed call per prepared image.

Only the model call and the materialization of its outputs happen between the two clock reads;
the outputs are handed to ``on_output`` after the second read.
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
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Latency in seconds of one call per input, in input order."""
    latencies = np.empty(len(inputs), dtype=np.float64)
    for i, image in enumerate(inputs):
        start = clock()
        outputs = predict(image)
        latencies[i] = clock() - start
        if on_output is not None:
            on_output(i, outputs)
        if progress is not None:
            progress(1)
    return latencies
