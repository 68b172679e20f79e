"""Workloads: which texts a sweep synthesizes, how many times, and under what load.

Texts are cut from a fixed corpus shipped in the repository (``experiments/corpus/*.txt``) so every
machine that runs a sweep synthesizes exactly the same characters: a trial is reproducible from its
``(text_length, iteration)`` alone, which is what lets datasets from several machines be compared.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CORPUS_DIR = Path(__file__).with_name("corpus")
# Words ending in a period that do not end a sentence (the corpus uses them on purpose).
_ABBREVIATIONS = frozenset(
    "Dr. Mr. Mrs. Ms. Prof. St. No. Ave. Sq. e.g. i.e. a.m. p.m. hrs. sq. ft. Jan. Nov. Dec. "
    "Mon.-Fri. Mon.-Thu.".split()
)


BACKGROUND_KINDS = ("static", "dynamic")


@dataclass(frozen=True)
class MemoryLevels:
    """A memory-pressure sweep: free memory set *relative to the measured floor*.

    The floor is the least free memory in which one request at the most frugal plan succeeds
    (measured by bisection under the device's real cap, :mod:`experiments.floor`); each level leaves
    at least ``floor + offset`` MB of the device free, the rest held by a background "app". A
    ``dynamic`` app moves within ``swing_mb`` below that peak on a seeded schedule (a new size every
    ``step_s`` seconds, drawn uniformly), so memory read at admission is not memory later.
    """

    free_above_floor_mb: tuple[float, ...]
    kinds: tuple[str, ...] = ("static",)
    swing_mb: float = 0.0
    step_s: tuple[float, float] = (0.2, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.free_above_floor_mb) < 1:
            raise ValueError("a memory sweep needs at least one level (free_above_floor_mb)")
        unknown = [k for k in self.kinds if k not in BACKGROUND_KINDS]
        if unknown or not self.kinds:
            raise ValueError(
                f"unknown background kind(s) {unknown or self.kinds}; valid: {', '.join(BACKGROUND_KINDS)}"
            )
        if "dynamic" in self.kinds and self.swing_mb <= 0:
            raise ValueError(f"a dynamic background needs swing_mb > 0, got {self.swing_mb}")
        if self.swing_mb < 0 or len(self.step_s) != 2 or not 0 < self.step_s[0] <= self.step_s[1]:
            raise ValueError(
                f"swing_mb must be >= 0 and step_s a range (low, high) > 0, got {self.swing_mb}, {self.step_s}"
            )


@dataclass(frozen=True)
class Workload:
    """One workload config (``conf/workload/*.yaml``).

    ``concurrency`` requests of the same text run at once in one worker (like a server sharing the
    model); a tuple sweeps several. ``background_mb`` is held by another process on the same
    (simulated) device; ``memory`` instead sweeps levels of free memory relative to the floor.
    ``background_cpu`` busy processes spin in the device's CPU set while each trial runs.
    """

    name: str
    lengths: tuple[int, ...]
    iterations: int
    concurrency: int | tuple[int, ...] = 1
    background_mb: float = 0.0
    memory: MemoryLevels | None = None
    background_cpu: int = 0

    def __post_init__(self) -> None:
        if not self.lengths or min(self.lengths) <= 0:
            raise ValueError(f"workload {self.name!r}: lengths must be positive, got {self.lengths}")
        if self.iterations < 1 or min(self.concurrencies) < 1 or self.background_mb < 0:
            raise ValueError(f"workload {self.name!r}: iterations/concurrency must be >= 1, background >= 0")
        if isinstance(self.background_cpu, bool) or not isinstance(self.background_cpu, int) or self.background_cpu < 0:
            raise ValueError(
                f"workload {self.name!r}: background_cpu must be a whole number of busy processes >= 0, "
                f"got {self.background_cpu!r}"
            )
        if self.memory is not None and self.background_mb:
            raise ValueError(f"workload {self.name!r}: give background_mb or memory levels, not both")

    @property
    def concurrencies(self) -> tuple[int, ...]:
        return self.concurrency if isinstance(self.concurrency, tuple) else (self.concurrency,)


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of a workload, before it has an id or a condition."""

    text_length: int
    iteration: int
    text: str
    concurrency: int = 1
    #: memory sweeps: the level (MB free above the floor) and the background's kind
    free_above_floor_mb: float | None = None
    background_kind: str = "static"

    @property
    def key(self) -> str:
        """The trial's part of its key; plain workloads keep their historical ``L<len>/i<iter>``."""
        key = f"L{self.text_length}/i{self.iteration}"
        if self.concurrency != 1:
            key += f"/c{self.concurrency}"
        if self.free_above_floor_mb is not None:
            key += f"/f{self.free_above_floor_mb:+g}/{self.background_kind}"
        return key


@cache
def _corpus_words() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """All corpus words in file order, and the indices of words that start a sentence.

    Starting texts at sentence starts keeps them natural for the frontend; whitespace (including
    paragraph breaks) is collapsed so the character count is exactly what is synthesized.
    """
    files = sorted(CORPUS_DIR.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no corpus files in {CORPUS_DIR}")
    words: list[str] = []
    starts: list[int] = []
    for path in files:
        text_words = path.read_text(encoding="utf-8").split()
        for i, word in enumerate(text_words):
            previous = text_words[i - 1] if i else ""
            if i == 0 or (re.search(r"[.!?]$", previous) and previous not in _ABBREVIATIONS and word[0].isupper()):
                starts.append(len(words) + i)
        words.extend(text_words)
    return tuple(words), tuple(starts)


def cut_text(length: int, iteration: int) -> str:
    """The text of ``length`` characters or fewer for this iteration, ending at a word boundary.

    The start sentence is drawn by a RNG seeded with ``(length, iteration)`` (string seeds are hashed
    deterministically, independent of ``PYTHONHASHSEED``); the corpus wraps around so any length fits.
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    words, starts = _corpus_words()
    start = random.Random(f"{length}:{iteration}").choice(starts)
    picked: list[str] = []
    size = -1  # the first word adds no separating space
    for offset in range(len(words)):
        word = words[(start + offset) % len(words)]
        if size + 1 + len(word) > length:
            break
        picked.append(word)
        size += 1 + len(word)
    if not picked:
        raise ValueError(f"length {length} is shorter than the word {words[start]!r}; use >= 20 characters")
    return " ".join(picked)


def plan(workload: Workload) -> list[PlannedTrial]:
    """Every trial of the workload. Memory levels and background kinds are the outer loops (each
    needs its own device: cap, background app, worker); within one, iteration-major so an interrupted
    sweep has covered every length and concurrency."""
    levels: list[tuple[float | None, str]] = [(None, "static")]
    if workload.memory is not None:
        levels = [(offset, kind) for kind in workload.memory.kinds for offset in workload.memory.free_above_floor_mb]
    return [
        PlannedTrial(length, iteration, cut_text(length, iteration), concurrency, offset, kind)
        for offset, kind in levels
        for iteration in range(workload.iterations)
        for length in workload.lengths
        for concurrency in workload.concurrencies
    ]
