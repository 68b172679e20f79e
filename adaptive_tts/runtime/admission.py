"""AdmissionLedger: the reservations of running jobs, and the one lock that admission decides under.

The planner (:mod:`adaptive_tts.runtime.planner`) is pure; this is the state beside it. A job is
recorded in the same critical section as the decision that admitted it, so a request admitted right
after sees its reservation. A weight-precision change is applied only while the ledger is empty — no
running job, so no request ever runs on weights that change under it — and the change itself runs
under the lock, so no job can start halfway through it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .planner import Reservation


class AdmissionLedger:
    """Reservations of running jobs, with waiting for them to end."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: dict[int, Reservation] = {}
        self._ids = itertools.count()
        self._pending_switch: Callable[[], None] | None = None

    @contextmanager
    def deciding(self) -> Iterator[None]:
        """Hold the ledger while a decision is made and recorded."""
        with self._cond:
            yield

    def reservations(self) -> tuple[Reservation, ...]:
        """Reservations of the running jobs (call while :meth:`deciding`)."""
        return tuple(self._running.values())

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    def reserve(self, reservation: Reservation) -> int:
        """Record an admitted job (call while :meth:`deciding`); returns its id for :meth:`release`."""
        job = next(self._ids)
        self._running[job] = reservation
        return job

    def release(self, job: int) -> bool:
        """The job ended: drop its reservation, apply a deferred weight change if it was the last one,
        wake waiting requests. Returns whether the ledger is now empty."""
        with self._cond:
            del self._running[job]
            idle = not self._running
            if idle and self._pending_switch is not None:
                switch, self._pending_switch = self._pending_switch, None
                switch()
            self._cond.notify_all()
            return idle

    def wait(self, deadline: float) -> bool:
        """Wait (while :meth:`deciding`) until a job ends or ``deadline`` (monotonic) passes; returns
        False when the deadline has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._cond.wait(remaining)
        return True

    def when_idle(self, change: Callable[[], None]) -> bool:
        """Run ``change`` (a weight-precision switch) now if no job is running, else when the last
        running job ends. Returns True if it ran now. A later request replaces an earlier pending one."""
        with self._cond:
            if not self._running:
                change()
                self._cond.notify_all()
                return True
            self._pending_switch = change
            return False

    @property
    def switch_pending(self) -> bool:
        with self._cond:
            return self._pending_switch is not None


__all__ = ["AdmissionLedger"]
