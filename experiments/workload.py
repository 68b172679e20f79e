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
    "Dr. Mr. Mrs. Ms. Prof. St. No. Ave. Sq. e.g. i.e. a.m. p.m. hrs. sq. ft. Jan. Nov. Dec. Mon.-Fri. Mon.-Thu.".split()
)


@dataclass(frozen=True)
class Workload:
    """One workload config (``conf/workload/*.yaml``).

    ``concurrency`` requests of the same text run at once in one worker (like a server sharing the
    model); ``background_mb`` is held by another process on the same (simulated) device.
    """

    name: str
    lengths: tuple[int, ...]
    iterations: int
    concurrency: int = 1
    background_mb: float = 0.0

    def __post_init__(self) -> None:
        if not self.lengths or min(self.lengths) <= 0:
            raise ValueError(f"workload {self.name!r}: lengths must be positive, got {self.lengths}")
        if self.iterations < 1 or self.concurrency < 1 or self.background_mb < 0:
            raise ValueError(f"workload {self.name!r}: iterations/concurrency must be >= 1, background >= 0")


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of a workload, before it has an id or a condition."""

    text_length: int
    iteration: int
    text: str


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
    """Every trial of the workload, iteration-major so an interrupted sweep has covered all lengths."""
    return [
        PlannedTrial(text_length=length, iteration=iteration, text=cut_text(length, iteration))
        for iteration in range(workload.iterations)
        for length in workload.lengths
    ]
