from __future__ import annotations

from collections.abc import Mapping
from itertools import count

import numpy as np
import pytest

from runner import measure


def test_latency_is_the_time_between_clock_reads_around_each_call() -> None:
    ticks = iter([0.0, 0.010, 1.0, 1.025, 5.0, 5.005])
    calls: list[object] = []
    seen: list[tuple[int, object]] = []

    def predict(x: object) -> Mapping[str, np.ndarray]:
        calls.append(x)
        return {"x": np.array([x])}

    lat = measure.time_calls(predict, ["a", "b", "c"], lambda i, out: seen.append((i, out["x"][0])),
                             clock=lambda: next(ticks))
    np.testing.assert_allclose(lat, [0.010, 0.025, 0.005])
    assert calls == ["a", "b", "c"]
    assert seen == [(0, "a"), (1, "b"), (2, "c")]


def test_outputs_are_handled_after_the_second_clock_read() -> None:
    events: list[str] = []
    clock_ticks = count()

    def clock() -> float:
        events.append("clock")
        return float(next(clock_ticks))

    def predict(x: object) -> dict[str, np.ndarray]:
        events.append("call")
        return {}

    measure.time_calls(predict, [1, 2],
                       lambda i, out: events.append("output"), clock=clock)
    assert events == ["clock", "call", "clock", "output"] * 2


def test_warm_up_cycles_over_inputs() -> None:
    calls: list[int] = []

    def predict(x: int) -> dict[str, np.ndarray]:
        calls.append(x)
        return {}

    measure.warm_up(predict, [1, 2, 3], 7)
    assert calls == [1, 2, 3, 1, 2, 3, 1]
    measure.warm_up(predict, [], 0)
    with pytest.raises(ValueError):
        measure.warm_up(lambda x: {}, [], 1)


def test_an_interrupted_loop_keeps_the_latencies_measured_so_far() -> None:
    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0])

    def predict(x: int) -> dict[str, np.ndarray]:
        if x == 3:
            raise KeyboardInterrupt
        return {}

    out = np.full(4, np.nan)
    with pytest.raises(KeyboardInterrupt):
        measure.time_calls(predict, [1, 2, 3, 4], clock=lambda: next(ticks), out=out)
    np.testing.assert_allclose(out[:2], [0.5, 0.25])
    assert np.isnan(out[2:]).all()


def test_deferred_outputs_leave_nothing_between_timed_calls() -> None:
    events: list[str] = []
    ticks = count()

    def clock() -> float:
        events.append("clock")
        return float(next(ticks))

    def predict(x: object) -> dict[str, np.ndarray]:
        events.append("call")
        return {"x": np.array([x])}

    seen: list[int] = []
    measure.time_calls(predict, [1, 2], lambda i, out: seen.append(int(out["x"][0])),
                       clock=clock, defer_outputs=True)
    assert events == ["clock", "call", "clock"] * 2 and seen == [1, 2]
