"""ComputeLanes: a fixed set of threads that runs the model's work for any caller thread."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from adaptive_tts.voice.lanes import ComputeLanes


def test_run_returns_and_raises_on_a_lane() -> None:
    lanes = ComputeLanes(1, name="lane")
    try:
        assert lanes.run(lambda: threading.current_thread().name).startswith("lane")
        with pytest.raises(ZeroDivisionError):
            lanes.run(lambda: 1 / 0)
        assert lanes.run(lambda: lanes.run(lambda: 7)) == 7  # nested: no deadlock on a single lane
    finally:
        lanes.close()


def test_iterate_computes_every_step_on_the_lanes_whoever_consumes() -> None:
    lanes = ComputeLanes(2, name="lane")
    seen: set[str] = set()

    def steps(n: int):
        for i in range(n):
            seen.add(threading.current_thread().name)
            yield i

    def consume(n: int) -> list[int]:
        return list(lanes.iterate(steps(n)))

    try:
        with ThreadPoolExecutor(8) as callers:
            results = list(callers.map(consume, range(1, 17)))
    finally:
        lanes.close()
    assert results == [list(range(n)) for n in range(1, 17)]
    assert seen and all(name.startswith("lane") for name in seen)
    assert len(seen) <= 2


def test_closing_the_consumer_closes_the_steps_on_a_lane() -> None:
    lanes = ComputeLanes(1, name="lane")
    closed_on: list[str] = []

    def steps():
        try:
            yield from range(100)
        finally:
            closed_on.append(threading.current_thread().name)

    try:
        it = lanes.iterate(steps())
        assert next(it) == 0
        it.close()
    finally:
        lanes.close()
    assert len(closed_on) == 1 and closed_on[0].startswith("lane")


def test_each_runs_once_on_every_lane() -> None:
    lanes = ComputeLanes(3, name="lane")
    names: list[str] = []
    lock = threading.Lock()

    def record() -> None:
        with lock:
            names.append(threading.current_thread().name)

    try:
        lanes.each(record)
    finally:
        lanes.close()
    assert len(names) == 3 and len(set(names)) == 3


def test_no_lanes_is_an_error() -> None:
    with pytest.raises(ValueError, match="compute lanes must be >= 1, got 0"):
        ComputeLanes(0)
