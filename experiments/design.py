"""The order a sweep's trials run in: an interleaved block design.

Run one condition after another and whatever drifts on the machine meanwhile — a neighbour's load,
a thermal state, the page cache — is confounded with the conditions: on this VM a sweep run that way
measured ``budget`` 11 % slower than ``baseline`` on the same compute path. So a sweep runs in
*blocks*: a block holds, for every condition, the same texts (``block_size`` iterations of every
length), and within it the trials of all conditions run in a seeded random order. Drift then hits
every condition alike, and a paired comparison (same text, same block) cancels it.

A memory sweep cannot interleave single trials: each of its levels is a background app on the device
and a fresh worker per condition, and two conditions' workers cannot share the level's memory. There a
block is one level (and ``block_size`` iterations), and within it the conditions take turns in a seeded
random order, one condition's trials at a time.

Everything here is a pure function of the planned trials and the design, so a resumed run, or the
job of a job array that runs blocks 10-19, computes the same blocks and positions as the whole run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import pandas as pd

from experiments.workload import PlannedTrial

T = TypeVar("T")


#: Blocks a plain sweep's workers serve before every condition gets a fresh one (see :class:`Design`).
RESTART_EVERY = 10


@dataclass(frozen=True)
class Design:
    """``block_size``: iterations of every length per block; ``seed``: the orders within blocks;
    ``restart_every``: blocks per *epoch* of workers (``None``: one worker per condition for the run).

    Why epochs: a worker process is itself a source of variation that pairing by block cannot cancel.
    Two processes of the same condition differ by a steady few percent for their whole lives (where
    their memory landed, how their threads were placed), so with one worker per condition a condition
    is confounded with its process: an A/A control of a thesis-size sweep (the same condition twice,
    250 pairs, one worker each) read +2.1 % [+1.5, +3.3] in median RTF. Restarting every condition's
    worker at each epoch's first block makes the process a replicated factor, and the report resamples
    epochs (:func:`experiments.stats.paired_difference_interval`), so its intervals carry that
    variation instead of calling it an effect."""

    block_size: int = 1
    seed: int = 0
    restart_every: int | None = RESTART_EVERY

    def __post_init__(self) -> None:
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"design.block_size must be an integer >= 1, got {self.block_size!r}")
        every = self.restart_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"design.restart_every must be an integer >= 1 or null, got {every!r}")

    def epoch(self, block: int) -> int:
        """The epoch of workers block ``block`` runs on (0 for all blocks without restarts)."""
        return 0 if self.restart_every is None else block // self.restart_every


@dataclass(frozen=True)
class Slot(Generic[T]):
    """One trial's place in the design: its block, its position within the block (over all
    conditions), and which condition it belongs to (an index into the sweep's conditions)."""

    block: int
    position: int
    condition: int
    trial: T


def block_key(trial: PlannedTrial, design: Design) -> tuple[object, ...]:
    """What puts trials in the same block: the memory level (if any), then the iteration's group."""
    return (trial.background_kind, trial.free_above_floor_mb, trial.iteration // design.block_size)


def blocks_of(conditions: Sequence[Sequence[PlannedTrial]], design: Design) -> list[tuple[object, ...]]:
    """The blocks' keys in run order: the order in which the first condition's plan reaches them
    (levels outermost, then iterations), then any key only a later condition has."""
    keys: dict[tuple[object, ...], None] = {}
    for trials in conditions:
        for trial in trials:
            keys.setdefault(block_key(trial, design), None)
    return list(keys)


def schedule(
    conditions: Sequence[Sequence[PlannedTrial]], design: Design, *, by_condition: bool = False
) -> list[Slot[PlannedTrial]]:
    """Every trial of every condition in run order.

    ``by_condition`` (memory sweeps): within a block the conditions take turns in a seeded order, each
    running its trials of the block in plan order; otherwise all trials of the block are shuffled.
    The order within block ``b`` depends only on the seed, ``b`` and the trials, never on which blocks
    a job runs or which trials are already done.
    """
    keys = blocks_of(conditions, design)
    index = {key: i for i, key in enumerate(keys)}
    members: list[list[tuple[int, PlannedTrial]]] = [[] for _ in keys]
    for c, trials in enumerate(conditions):
        for trial in trials:
            members[index[block_key(trial, design)]].append((c, trial))
    slots: list[Slot[PlannedTrial]] = []
    for block, entries in enumerate(members):
        rng = random.Random(f"{design.seed}:{block}")
        if by_condition:
            turns = sorted({c for c, _ in entries})
            rng.shuffle(turns)
            ordered = [entry for c in turns for entry in entries if entry[0] == c]
        else:
            ordered = list(entries)
            rng.shuffle(ordered)
        slots += [Slot(block, position, c, trial) for position, (c, trial) in enumerate(ordered)]
    return slots


def block_range(spec: Sequence[int] | None, n_blocks: int) -> range:
    """The blocks a job runs: ``[start, stop)`` from the config (``null``: all of them)."""
    if spec is None:
        return range(n_blocks)
    if len(spec) != 2 or not 0 <= spec[0] <= spec[1]:
        raise ValueError(f"design.blocks must be [start, stop) with 0 <= start <= stop, got {list(spec)}")
    return range(spec[0], min(spec[1], n_blocks))


def split_blocks(n_blocks: int, blocks_per_job: int | None) -> list[tuple[int, int]]:
    """The block ranges of a job array: ``blocks_per_job`` blocks each (``None``: one job, all blocks)."""
    if blocks_per_job is None:
        return [(0, n_blocks)]
    if blocks_per_job < 1:
        raise ValueError(f"hydra.sweeper.blocks_per_job must be >= 1, got {blocks_per_job}")
    return [(start, min(start + blocks_per_job, n_blocks)) for start in range(0, n_blocks, blocks_per_job)]


def spans(rows: pd.DataFrame) -> pd.DataFrame:
    """Per ablation, where in the run's time its first and last trial started, as fractions of the run
    (0: the run's first trial, 1: its last). Interleaved, every condition spans ~0 to ~1; run in
    sequence, each holds a slice of its own."""
    start = rows["started_at"]
    t0, span = start.min(), (start.max() - start.min()).total_seconds() or 1.0
    fraction = (start - t0).dt.total_seconds() / span
    grouped = fraction.groupby(rows["ablation"])
    return pd.DataFrame({"first": grouped.min(), "last": grouped.max(), "n": grouped.size()})


__all__ = ["Design", "Slot", "block_range", "blocks_of", "schedule", "spans", "split_blocks"]
