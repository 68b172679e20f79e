"""The admission planner: how (and whether) one request runs, as a pure function of the state now.

``plan_request(state) -> Plan | Wait | Refusal``. Nothing here reads the machine or touches a model:
the backend takes one snapshot (free memory, what running jobs reserved, the estimator's predictions
for every configuration it may choose) and acts on the answer, so every decision can be replayed and
tested from numbers alone.

Memory model. A request of configuration *c* needs ``increment_mb[c]`` above what the process holds
now while it computes, and ``queued_mb[c]`` while it waits for one of the ``lanes`` compute lanes (the
estimator's calibrated costs): at most ``lanes`` requests compute at once, so together the requests hold
at worst the ``lanes`` largest increments plus the others' queued costs (:func:`held_mb`). Running jobs
keep their whole reservation until they end, even the part they have already allocated, so the sum can
only over-count: the planner is conservative by construction. A plan fits when

    held_mb(running reservations + this request) + margin <= available

The degradation order, cheapest and most reversible first (each step is taken only if the estimator
predicts it saves memory):

1. the preferred configuration now;
2. a smaller decoder chunk now (decoder windows are the largest per-request buffers; a smaller chunk
   costs a few percent of speed, measured in ``docs/architecture.md``);
3. wait for running jobs to end (costs latency only; "fewer concurrent jobs");
4. lower weight precision (costs quality for every later request, and can only be applied when no job
   is using the weights, so it waits for the running jobs to drain first);
5. refuse, only when even the most frugal configuration cannot fit with nothing else of ours running
   (while jobs run, the request waits: the memory they hold comes back when they end).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: Weight precisions from highest to lowest: the planner only ever moves right (in place, the higher
#: precision's weights are freed).
PRECISIONS = ("fp32", "int8", "int4")


@dataclass(frozen=True)
class Reservation:
    """What one admitted request may hold: ``computing_mb`` while it computes on a lane, ``queued_mb``
    while it waits for one (at most as much)."""

    computing_mb: float
    queued_mb: float


def held_mb(reservations: Iterable[Reservation], lanes: int) -> float:
    """The most that ``reservations`` hold together when at most ``lanes`` of them compute at once:
    the ones with the most to add by computing do, the others wait."""
    ordered = sorted(reservations, key=lambda r: r.computing_mb - r.queued_mb, reverse=True)
    return sum(r.computing_mb for r in ordered[:lanes]) + sum(r.queued_mb for r in ordered[lanes:])


@dataclass(frozen=True)
class Candidate:
    """One configuration the planner may choose, with the estimator's prediction for this request."""

    chunk_length: int | None
    precision: str
    increment_mb: float  # memory the request needs above what the process holds now, computing
    estimated_mb: float  # the process's predicted peak while it runs alone
    queued_mb: float | None = None  # while it waits for a compute lane; None: as much as computing

    @property
    def reservation(self) -> Reservation:
        queued = self.increment_mb if self.queued_mb is None else min(self.queued_mb, self.increment_mb)
        return Reservation(self.increment_mb, queued)


@dataclass(frozen=True)
class PlannerState:
    """Everything a decision depends on, read once.

    ``candidates`` come in preference order: the configuration the runtime wants first, then smaller
    chunks at the same precision, then lower precisions (each with its chunks).
    """

    candidates: tuple[Candidate, ...]
    available_mb: float
    margin_mb: float
    precision_now: str
    running: tuple[Reservation, ...] = ()
    lanes: int = 1

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError("the planner needs at least one candidate configuration")
        if self.lanes < 1:
            raise ValueError(f"the planner needs at least one compute lane, got {self.lanes}")
        if self.precision_now not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision_now!r}")


@dataclass(frozen=True)
class Plan:
    """Run now with this configuration, holding ``reservation`` until the job ends."""

    chunk_length: int | None
    precision: str
    estimated_mb: float | None
    reservation: Reservation
    degraded: tuple[str, ...] = ()
    safety_margin_mb: float | None = None  # the margin the decision kept (None: no budget decided)


@dataclass(frozen=True)
class Wait:
    """Not now: a plan fits once running jobs end (``switch_to``: and the weights are lowered to it)."""

    reason: str
    switch_to: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Even the most frugal configuration cannot fit with nothing else of ours running."""

    reason: str
    required_mb: float
    available_mb: float
    safety_margin_mb: float


def _describe(preferred: Candidate, chosen: Candidate) -> tuple[str, ...]:
    steps = []
    if chosen.precision != preferred.precision:
        steps.append(f"quantization {chosen.precision}")
    if chosen.chunk_length != preferred.chunk_length:
        steps.append(f"chunk_length {chosen.chunk_length}")
    return tuple(steps)


def plan_request(state: PlannerState) -> Plan | Wait | Refusal:
    """The decision for one request; see the module docstring for the order it tries."""
    preferred = state.candidates[0]
    reserved = held_mb(state.running, state.lanes)
    now = [c for c in state.candidates if c.precision == state.precision_now]
    lower = [c for c in state.candidates if PRECISIONS.index(c.precision) > PRECISIONS.index(state.precision_now)]

    def needs(candidate: Candidate, beside: tuple[Reservation, ...]) -> float:
        """What running ``candidate`` beside ``beside`` adds to what they hold."""
        return held_mb((*beside, candidate.reservation), state.lanes) - held_mb(beside, state.lanes)

    def fits(candidate: Candidate, beside: tuple[Reservation, ...]) -> bool:
        """Whether ``candidate`` fits beside the running jobs ``beside``; the others' reservations
        (gone once they end) come back to what is available."""
        back = reserved - held_mb(beside, state.lanes)
        return held_mb((*beside, candidate.reservation), state.lanes) + state.margin_mb <= state.available_mb + back

    def plan(candidate: Candidate) -> Plan:
        return Plan(
            candidate.chunk_length,
            candidate.precision,
            candidate.estimated_mb,
            candidate.reservation,
            _describe(preferred, candidate),
            state.margin_mb,
        )

    # 1-2: the preferred configuration, else the largest chunk that saves memory and fits now.
    tried = float("inf")
    for candidate in now:
        need = needs(candidate, state.running)
        if need >= tried:
            continue  # a degradation the estimator says saves nothing is not taken
        if fits(candidate, state.running):
            return plan(candidate)
        tried = need
    least_now = min((c.increment_mb for c in now), default=float("inf"))
    # 3-4: with jobs running, nothing is refused: what they hold (reserved, or freed into the heap
    # and not yet returned) comes back when they end, and the decision is taken again then. A lower
    # precision that would fit with their reservations back is named, to be applied once they end.
    if state.running:
        for candidate in lower:
            if candidate.increment_mb < least_now and not any(fits(c, ()) for c in now) and fits(candidate, ()):
                return Wait(
                    f"lowering weights to {candidate.precision} once {len(state.running)} running job(s) end",
                    switch_to=candidate.precision,
                )
        return Wait(f"waiting for {len(state.running)} running job(s) holding {reserved:.0f} MB")
    for candidate in lower:
        if candidate.increment_mb < least_now and fits(candidate, ()):
            return plan(candidate)
    # 5: nothing fits even alone.
    frugal = min(state.candidates, key=lambda c: c.increment_mb)
    available = state.available_mb
    return Refusal(
        f"{frugal.increment_mb:.0f} MB required (most frugal plan: {frugal.precision}, chunk "
        f"{frugal.chunk_length}) + {state.margin_mb:.0f} MB safety margin exceeds {available:.0f} MB available "
        f"by {frugal.increment_mb + state.margin_mb - available:.0f} MB",
        frugal.increment_mb,
        available,
        state.margin_mb,
    )


def plan_warm_up(increments_mb: Mapping[int, float], available_mb: float, margin_mb: float) -> int | Refusal:
    """The largest decoder chunk whose warm-up fits now, else a refusal naming the smallest one's cost.

    A warm-up decodes every window length up to its chunk on every compute lane: its peak is planned
    like a request's. The chunk it picks is the runtime's ceiling from then on, since a longer window
    would pay its first compile inside a request, where the calibration measured it warm.
    ``increments_mb`` maps each chunk to what warming up to it adds to the loaded runtime at its peak.
    """
    if not increments_mb:
        raise ValueError("the warm-up planner needs at least one chunk length")
    for chunk in sorted(increments_mb, reverse=True):
        if increments_mb[chunk] + margin_mb <= available_mb:
            return chunk
    smallest = min(increments_mb)
    need = increments_mb[smallest]
    return Refusal(
        f"warming the decoder up to chunk {smallest} takes {need:.0f} MB + {margin_mb:.0f} MB safety margin, "
        f"more than the {available_mb:.0f} MB available by {need + margin_mb - available_mb:.0f} MB",
        need,
        available_mb,
        margin_mb,
    )


__all__ = [
    "PRECISIONS",
    "Candidate",
    "Plan",
    "PlannerState",
    "Refusal",
    "Reservation",
    "Wait",
    "held_mb",
    "plan_request",
    "plan_warm_up",
]
