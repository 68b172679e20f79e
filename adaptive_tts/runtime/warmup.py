"""Warming the decoder up within the memory budget, one measured step at a time.

A warm-up compiles the decoder's kernels for every window length up to a chunk, on every compute
lane, and its peak is real memory: a start at the edge of a device's memory can be OOM-killed by its
own warm-up. So it climbs from the smallest chunk, and before each step plans again
(:func:`~adaptive_tts.runtime.planner.plan_warm_up`) from what memory reads now and this machine's
measured start-up (:class:`~adaptive_tts.runtime.estimator.StartUpCost`), against the budget's
resident margin: warmed windows stay resident, so they keep room for the other apps' whole swing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from .budget import MemoryBudgetManager
from .estimator import StartUpCost
from .planner import Refusal, plan_warm_up

logger = logging.getLogger(__name__)


def warm_up_within(
    chunks: Sequence[int], cost: StartUpCost, budget: MemoryBudgetManager, warm: Callable[[int], None]
) -> int | None:
    """Call ``warm(chunk)`` for each step the budget allows, smallest chunk first; return the largest
    chunk warmed, or ``None`` when not even the smallest fits (logged with the planner's reason).

    ``cost`` must hold a measured warm-up for every chunk in ``chunks``.
    """
    warmed: int | None = None
    before_mb = budget.available_mb()
    while True:
        available_mb = budget.available_mb()
        # What the steps so far still hold, as the readings show it, at most their measured peak.
        # Their whole peak is not it: a step's heap is handed back, so the next step climbs from
        # lower (counted as held, chunk 128 looked 90 MB cheaper and starts at floor + 300 MB
        # were OOM-killed warming it up).
        held_mb = min(cost.increment_mb(warmed), max(0.0, before_mb - available_mb)) if warmed is not None else 0.0
        ahead = {chunk: cost.increment_mb(chunk) - held_mb for chunk in chunks if warmed is None or chunk > warmed}
        if not ahead:
            return warmed
        target = plan_warm_up(ahead, available_mb, budget.resident_margin_mb)
        if isinstance(target, Refusal):
            if warmed is None:
                logger.warning("no decoder warm-up: %s", target.reason)
            return warmed
        warmed = min(ahead)  # one step towards the target, then plan again
        warm(warmed)


__all__ = ["warm_up_within"]
