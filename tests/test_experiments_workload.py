"""Workload texts: cut from the repository's corpus at word boundaries, deterministic per trial."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from experiments.workload import Workload, _corpus_words, cut_text, plan

LENGTHS = (100, 300, 500, 800, 1000)


@pytest.mark.parametrize("length", [*LENGTHS, 37])
def test_cut_is_at_most_the_length_and_ends_on_word_boundaries(length: int) -> None:
    words = set(_corpus_words()[0])
    longest_word = max(map(len, words))
    for iteration in range(20):
        text = cut_text(length, iteration)
        assert len(text) <= length
        assert len(text) > length - longest_word - 1  # as long as the next whole word allows
        assert text == text.strip() and "  " not in text
        assert all(word in words for word in text.split())  # no word was cut in half


def test_cut_is_deterministic_across_processes() -> None:
    """Python randomises str hashing per process; the text of a trial must not depend on it."""
    code = (
        "from experiments.workload import cut_text; "
        "print(repr([cut_text(L, i) for L in (100, 1000) for i in range(5)]))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == repr([cut_text(L, i) for L in (100, 1000) for i in range(5)])


def test_iterations_vary_the_text() -> None:
    assert len({cut_text(300, i) for i in range(50)}) > 20


def test_corpus_has_what_a_frontend_must_handle() -> None:
    corpus = " ".join(_corpus_words()[0])
    for needle in ("Dr.", "e.g.", "St.", "$", "£", "€", "a.m.", "p.m.", "2025", "%"):
        assert needle in corpus


def test_plan_covers_lengths_times_iterations_iteration_major() -> None:
    trials = plan(Workload("t", LENGTHS, iterations=3))
    assert [(t.iteration, t.text_length) for t in trials] == [(i, L) for i in range(3) for L in LENGTHS]
    assert all(t.text == cut_text(t.text_length, t.iteration) for t in trials)


def test_workload_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Workload("bad", (100,), iterations=0)
    with pytest.raises(ValueError):
        cut_text(2, 0)


def test_memory_levels_are_outer_loops_with_their_own_keys() -> None:
    from experiments.workload import MemoryLevels

    levels = MemoryLevels(free_above_floor_mb=(-100, 300), kinds=("static", "dynamic"), swing_mb=200)
    trials = plan(Workload("m", (100, 400), iterations=2, concurrency=(1, 4), memory=levels))
    assert len(trials) == 2 * 2 * 2 * 2 * 2
    assert [(t.background_kind, t.free_above_floor_mb) for t in trials[:: len(trials) // 4]] == [
        ("static", -100),
        ("static", 300),
        ("dynamic", -100),
        ("dynamic", 300),
    ]
    keys = [t.key for t in trials]
    assert len(set(keys)) == len(keys)
    assert keys[0] == "L100/i0/f-100/static" and keys[1] == "L100/i0/c4/f-100/static"
    plain = plan(Workload("p", (100,), iterations=1))
    assert plain[0].key == "L100/i0"  # workloads without levels keep their historical keys


def test_memory_levels_reject_nonsense() -> None:
    from experiments.workload import MemoryLevels

    with pytest.raises(ValueError, match="at least one level"):
        MemoryLevels(free_above_floor_mb=())
    with pytest.raises(ValueError, match="'weekly'"):
        MemoryLevels(free_above_floor_mb=(0,), kinds=("weekly",))
    with pytest.raises(ValueError, match="swing_mb > 0"):
        MemoryLevels(free_above_floor_mb=(0,), kinds=("dynamic",))
    with pytest.raises(ValueError, match="not both"):
        Workload("w", (100,), 1, background_mb=100, memory=MemoryLevels(free_above_floor_mb=(0,)))
    with pytest.raises(ValueError, match="concurrency"):
        Workload("w", (100,), 1, concurrency=(1, 0))
