"""Pairs of trials: what makes two conditions' trials comparable one to one, and the paired effects read
from them.

The sweep interleaves its conditions in blocks (experiments/design.py): within a block every condition
runs the same texts. Two conditions' trials of the same run, block, text (length and iteration),
concurrency and memory level are a pair: whatever drifted on the machine during that block hit both
alike and cancels in their difference. Every before/after of the report (the features' effects, the
affinity table, memory stability, quantization) reads its change from pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from experiments.report.cells import CONDITION_KEYS, NO_DATA, _missing, with_quant
from experiments.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    MIN_CLUSTERS,
    PairedEffect,
    paired_difference_interval,
)

logger = logging.getLogger(__name__)

#: What makes two trials of different conditions a pair (within the same condition keys): the same
#: text (length, iteration) at the same concurrency and memory level, in the same block of the same run
#: — block numbers restart in every run. Columns a dataset lacks are left out: without ``block`` (a
#: dataset from before the interleaved design) the run is one block.
PAIR_KEYS = ("run_id", "block", "text_length", "iteration", "concurrency", "free_above_floor_mb", "background_kind")
PAIRED_NOTE = (
    "Paired by text and block: each ok trial is matched with the other condition's ok trial of the same "
    "run, block, text (length and iteration), concurrency and memory level; trials without exactly one "
    "such partner are left out. Effect %: the median over pairs of after / before − 1; [ ]: 95 % "
    f"percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) over worker epochs, "
    "the pairs that ran on the same worker processes resampled as a whole, where the pairs span at least "
    f"{MIN_CLUSTERS} of them; else over the pairs (resampled: pairs), which leaves out how much one worker "
    "process differs from the next."
)


class Pairs(NamedTuple):
    """Matched trials: ``before[i]`` and ``after[i]`` are one pair, ``clusters[i]`` its cluster: the
    run and worker epoch both its trials ran in (experiments/design.py)."""

    before: np.ndarray
    after: np.ndarray
    clusters: np.ndarray


def pair_trials(
    rows: pd.DataFrame,
    before: str,
    after: str,
    value: str,
    side: str = "ablation",
    ok_only: bool = True,
    across: Sequence[str] = (),
) -> Pairs:
    """``value`` of the trials whose ``side`` column is ``before`` and of those where it is ``after``,
    matched on :data:`PAIR_KEYS` within the same :data:`~experiments.report.cells.CONDITION_KEYS` (and
    ablation, when the sides are something else, e.g. ``side="quant"``): element ``i`` of both arrays is
    one pair. Pairs come in the order of their keys, whatever the order of ``rows``.

    ``ok_only``: pair the ok trials only (a latency); without it every trial with a ``value`` takes part
    (an outcome such as OOM, which a failed trial has too). ``across``: condition keys the two sides may
    differ in, being part of what one side does — the whole runtime chooses its own quantization.

    A key with more than one trial on either side (a text run twice in one block, or a dataset without
    iterations) has no one partner to match: its trials are left out rather than paired arbitrarily."""
    if before == after:
        raise ValueError(f"cannot pair {before!r} with itself")
    rows = with_quant(rows)
    chosen = rows[rows[side].isin([before, after]) & rows[value].notna()]
    if ok_only:
        chosen = chosen[chosen["status"] == "ok"]
    candidates = (*CONDITION_KEYS, "ablation", *PAIR_KEYS)
    match = [key for key in dict.fromkeys(candidates) if key not in (side, *across) and key in chosen.columns]
    trials = pd.DataFrame(
        {
            "key": chosen.groupby(match, dropna=False, sort=True).ngroup().to_numpy(),
            "after": (chosen[side] == after).to_numpy(dtype=bool),
            "value": chosen[value].to_numpy(dtype=float),
            "cluster": _clusters(chosen),
        }
    )
    sides = trials.groupby(["key", "after"]).size().unstack(fill_value=0).reindex(columns=[False, True], fill_value=0)
    matched = sides.index[(sides[False] == 1) & (sides[True] == 1)]
    ordered = trials[trials["key"].isin(matched)].sort_values(["key", "after"])
    paired = ordered["value"].to_numpy().reshape(-1, 2)
    logger.debug(
        "%s vs %s on %s: %d pairs, %d trials unmatched", before, after, value, len(paired), len(chosen) - paired.size
    )
    return Pairs(paired[:, 0], paired[:, 1], ordered["cluster"].to_numpy()[::2])


def _clusters(rows: pd.DataFrame) -> np.ndarray:
    """Each row's cluster number: its run and worker epoch. A run that recorded no epochs (rows from
    before they were) is one cluster, so its pairs are resampled one by one. A pair's two trials share
    run and block, hence their epoch."""
    if "epoch" not in rows.columns:
        return np.zeros(len(rows), dtype=int)
    keys = rows.assign(_epoch=rows["epoch"].fillna(-1))
    return keys.groupby([c for c in ("run_id", "_epoch") if c in keys.columns], dropna=False).ngroup().to_numpy()


def relative_effect(
    rows: pd.DataFrame, before: str, after: str, value: str, side: str = "ablation"
) -> tuple[int, PairedEffect | None]:
    """The number of pairs of :func:`pair_trials` (ok trials) and the paired relative effect of ``after``
    over ``before`` on ``value`` (a fraction; None below two pairs)."""
    pairs = pair_trials(rows, before, after, value, side)
    effect = paired_difference_interval(pairs.before, pairs.after, "median", relative=True, clusters=pairs.clusters)
    return len(pairs.before), effect


def rate_effect(
    rows: pd.DataFrame, before: str, after: str, status: str, across: Sequence[str] = ()
) -> tuple[int, PairedEffect | None]:
    """The number of pairs (all trials, whatever their outcome) and the paired change in the share of
    trials ending ``status`` from ``before`` to ``after``: the mean over pairs of the difference of the
    two 0/1 outcomes, a fraction (None below two pairs). Same text, memory level and block on both sides,
    so a level that the schedule happened to give one ablation more often than the other does not pose
    as an effect. ``across``: as for :func:`pair_trials`."""
    marked = rows.assign(_outcome=(rows["status"] == status).astype(float))
    pairs = pair_trials(marked, before, after, "_outcome", ok_only=False, across=across)
    return len(pairs.before), paired_difference_interval(pairs.before, pairs.after, "mean", clusters=pairs.clusters)


def fmt_effect(pct: float | None, low: float | None, high: float | None) -> str:
    """``+10.0 [+9.1, +11.2]``: a signed change in percent with its interval."""
    if _missing(pct):
        return NO_DATA
    if _missing(low) or _missing(high):
        return f"{pct:+.1f}"
    return f"{pct:+.1f} [{low:+.1f}, {high:+.1f}]"
