"""ComputeLanes: a fixed set of threads on which the model's tensor work runs.

Why: the libraries under torch keep state per *thread* — ideep's thread-local caches of convolution
primitives, an OpenMP team for each thread that enters a parallel region — and none of it is given back
while the thread lives (malloc's per-thread arenas are not it: with ``MALLOC_ARENA_MAX=1`` the growth
below was the same; :mod:`adaptive_tts.heap` bounds them anyway). A service that synthesizes on
whichever of its worker threads a request lands on pays that state once per worker: measured here
(fp32, 2 intra-op threads, texts of 5-30 words synthesized one at a time), resident memory after a
trim grew 81-103 MB over 40 texts when they ran on 2 threads and 153-192 MB when they ran on 16, and
the service's RSS kept climbing burst after burst. Running every step of every synthesis on a few lanes
bounds that state to the lanes, which warm-up fills once.

A lane runs one step (a sentence's encoding, a decoder chunk) at a time; a request waiting for memory
waits on its caller's thread, never on a lane, so waiting cannot starve the jobs it waits for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

T = TypeVar("T")
_DONE = object()


class ComputeLanes:
    """``count`` threads that run callables and drive generators for their callers."""

    def __init__(self, count: int, *, name: str = "compute") -> None:
        if count < 1:
            raise ValueError(f"compute lanes must be >= 1, got {count}")
        self.count = count
        self._executor = ThreadPoolExecutor(max_workers=count, thread_name_prefix=name)
        self._lane_threads: set[int] = set()

    def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` on a lane; blocks the caller until it returns (or re-raises what it raised)."""
        if threading.get_ident() in self._lane_threads:
            return fn(*args)  # already on a lane: a nested call must not wait for a lane of its own
        return self._executor.submit(self._on_lane, fn, *args).result()

    def _on_lane(self, fn: Callable[..., T], *args) -> T:
        self._lane_threads.add(threading.get_ident())
        return fn(*args)

    def iterate(self, items: Iterable[T], before_step: Callable[[], object] | None = None) -> Iterator[T]:
        """Each item of ``items``, computed on a lane and handed over on the caller's thread.

        A step at a time: the iterator never runs on two lanes at once. ``before_step`` runs on the
        lane before each step: what is set per thread there (torch's intra-op thread count is, like
        OpenMP's) applies to the step. Closing this generator (a client that left) closes ``items`` on
        a lane too, so its ``finally`` blocks run where its tensors live.
        """
        iterator = iter(items)

        def step() -> T | object:
            if before_step is not None:
                before_step()
            return next(iterator, _DONE)

        try:
            while (item := self.run(step)) is not _DONE:
                yield cast(T, item)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                self.run(close)

    def each(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` once on every lane, one lane after another (warm-up: each lane compiles its own
        kernels).

        The executor reuses idle threads, so the calls first meet at a barrier: that makes ``count``
        calls occupy ``count`` different threads. They then take turns: run at once, two lanes'
        warm-ups stacked their peaks (the memory sweep's floor, a 1-thread worker with 2 lanes: 328 MB
        with the warm-ups at once, 296 MB in turns)."""
        barrier = threading.Barrier(self.count)
        turn = threading.Lock()

        def on_each_lane() -> None:
            barrier.wait()
            with turn:
                fn()

        for future in [self._executor.submit(self._on_lane, on_each_lane) for _ in range(self.count)]:
            future.result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
