"""ComputeLanes: a fixed set of threads that runs the model's work for any caller thread."""

from __future__ import annotations

import threading
import time
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


def test_each_runs_once_on_every_lane_one_lane_at_a_time() -> None:
    lanes = ComputeLanes(3, name="lane")
    names: list[str] = []
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    def record() -> None:
        with lock:
            names.append(threading.current_thread().name)
            running[0] += 1
            running[1] = max(running)
        time.sleep(0.05)  # long enough for another lane to overlap, were they not taking turns
        with lock:
            running[0] -= 1

    try:
        lanes.each(record)
    finally:
        lanes.close()
    assert len(names) == 3 and len(set(names)) == 3
    assert running[1] == 1


def test_no_lanes_is_an_error() -> None:
    with pytest.raises(ValueError, match="compute lanes must be >= 1, got 0"):
        ComputeLanes(0)
