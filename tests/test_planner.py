"""The admission planner as a pure function: numbers in, Plan | Wait | Refusal out."""

from __future__ import annotations

import pytest

from adaptive_tts.runtime.planner import (
    Candidate,
    Plan,
    PlannerState,
    Refusal,
    Reservation,
    Wait,
    held_mb,
    plan_request,
    plan_warm_up,
)

# increments measured-like: int8 chunks 256/128/64, then int4 (weights 7 MB smaller, same activations)
INT8 = (Candidate(256, "int8", 120.0, 640.0), Candidate(128, "int8", 90.0, 610.0), Candidate(64, "int8", 75.0, 595.0))
INT4 = (Candidate(256, "int4", 113.0, 633.0), Candidate(128, "int4", 83.0, 603.0), Candidate(64, "int4", 60.0, 580.0))
ALL = INT8 + INT4


def state(
    available: float, running: tuple[float, ...] = (), margin: float = 20.0, candidates=ALL, now="int8", lanes: int = 1
):
    """A planner state whose running jobs each hold ``running[i]`` MB, computing or not."""
    return PlannerState(candidates, available, margin, now, tuple(Reservation(mb, mb) for mb in running), lanes)


def test_the_preferred_configuration_when_it_fits():
    plan = plan_request(state(available=140.0))
    assert plan == Plan(256, "int8", 640.0, Reservation(120.0, 120.0), (), 20.0)


def test_a_smaller_chunk_before_anything_else():
    plan = plan_request(state(available=100.0))  # 120 + 20 > 100; 75 + 20 <= 100 but 90 + 20 > 100
    assert isinstance(plan, Plan)
    assert (plan.chunk_length, plan.precision, plan.reservation.computing_mb) == (64, "int8", 75.0)
    assert plan.degraded == ("chunk_length 64",)


def test_running_reservations_count_until_their_jobs_end():
    assert isinstance(plan_request(state(available=260.0, running=(120.0,))), Plan)  # 120 + 120 + 20 = 260
    waiting = plan_request(state(available=200.0, running=(120.0,)))  # nothing fits beside it; alone it would
    assert isinstance(waiting, Wait) and waiting.switch_to is None and "1 running job" in waiting.reason


def test_lower_precision_only_when_no_job_runs():
    # Alone, int8's most frugal plan (75 + 20) does not fit 90 MB; int4's (60 + 20) does.
    assert plan_request(state(available=90.0)) == Plan(
        64, "int4", 580.0, Reservation(60.0, 60.0), ("quantization int4", "chunk_length 64"), 20.0
    )
    waiting = plan_request(state(available=40.0, running=(50.0,)))  # with the job's 50 MB back: int4 fits
    assert isinstance(waiting, Wait) and waiting.switch_to == "int4"


def test_refuses_with_the_numbers_when_even_the_most_frugal_plan_cannot_fit():
    refusal = plan_request(state(available=70.0))
    assert isinstance(refusal, Refusal)
    assert (refusal.required_mb, refusal.available_mb, refusal.safety_margin_mb) == (60.0, 70.0, 20.0)
    assert "60 MB required" in refusal.reason and "70 MB available" in refusal.reason and "10 MB" in refusal.reason


def test_a_degradation_that_saves_nothing_is_not_taken():
    flat = (Candidate(256, "fp32", 100.0, 600.0), Candidate(128, "fp32", 100.0, 600.0))
    refusal = plan_request(state(available=110.0, candidates=flat, now="fp32"))
    assert isinstance(refusal, Refusal)  # 128 would not save memory: refused at 256's numbers
    assert refusal.required_mb == 100.0


def test_after_a_switch_the_current_precision_is_the_starting_point():
    plan = plan_request(state(available=140.0, now="int4"))
    assert plan == Plan(256, "int4", 633.0, Reservation(113.0, 113.0), ("quantization int4",), 20.0)


def test_requests_beyond_the_lanes_reserve_what_they_hold_while_waiting():
    """At most ``lanes`` requests compute at once: the others wait between steps for a lane and hold
    only their queued cost (measured on two lanes, INT8, chunk 256, 438 ids: one request +207 MB,
    four side by side +214 MB)."""
    lean = (Candidate(256, "int8", 200.0, 600.0, queued_mb=10.0),)
    two = tuple(Reservation(200.0, 10.0) for _ in range(2))
    # Two computing on two lanes: a third only waits, 10 MB more.
    assert isinstance(plan_request(PlannerState(lean, 430.0, 20.0, "int8", two, 2)), Plan)
    # On one lane the second already waits: 200 + 10 + 20 <= 230.
    assert isinstance(plan_request(PlannerState(lean, 230.0, 20.0, "int8", two[:1], 1)), Plan)
    # With queued cost unknown, every request counts as computing.
    assert isinstance(
        plan_request(PlannerState((Candidate(256, "int8", 200.0, 600.0),), 430.0, 20.0, "int8", two, 2)), Wait
    )


def test_held_memory_counts_the_largest_computing_requests():
    held = [Reservation(100.0, 10.0), Reservation(300.0, 20.0), Reservation(50.0, 50.0)]
    assert held_mb(held, 1) == 300.0 + 10.0 + 50.0
    assert held_mb(held, 2) == 300.0 + 100.0 + 50.0
    assert held_mb(held, 8) == 450.0
    assert held_mb([], 2) == 0.0


def test_bad_state_is_an_error():
    with pytest.raises(ValueError, match="at least one candidate"):
        PlannerState((), 100.0, 0.0, "fp32")
    with pytest.raises(ValueError, match="int2"):
        PlannerState(ALL, 100.0, 0.0, "int2")
    with pytest.raises(ValueError, match="compute lane, got 0"):
        PlannerState(ALL, 100.0, 0.0, "int8", (), 0)


def test_warm_up_takes_the_largest_chunk_that_fits():
    """Warming up is planned like a request that never ends: 256-frame windows where they fit, else
    the largest smaller chunk; the figures are a 2-lane INT8 start measured here (rest 209 MB)."""
    increments = {64: 78.0, 128: 180.0, 256: 458.0}
    assert plan_warm_up(increments, available_mb=600.0, margin_mb=50.0) == 256
    assert plan_warm_up(increments, available_mb=400.0, margin_mb=50.0) == 128
    assert plan_warm_up(increments, available_mb=128.0, margin_mb=50.0) == 64


def test_warm_up_refused_with_the_smallest_chunks_numbers():
    refusal = plan_warm_up({64: 78.0, 256: 458.0}, available_mb=100.0, margin_mb=50.0)
    assert isinstance(refusal, Refusal)
    assert (refusal.required_mb, refusal.available_mb, refusal.safety_margin_mb) == (78.0, 100.0, 50.0)
    assert "chunk 64 takes 78 MB + 50 MB safety margin" in refusal.reason and "by 28 MB" in refusal.reason
    with pytest.raises(ValueError, match="at least one chunk"):
        plan_warm_up({}, available_mb=100.0, margin_mb=0.0)
