"""The uncertainty the thesis tables and figures carry, kept apart from the rendering so that a test (or a
reader) can recompute any interval from the rows with nothing but numpy.

* Success and failure rates get a **Wilson score interval**: unlike the normal approximation it stays
  inside [0, 1] and does not collapse to a zero-width interval at 0 % or 100 %, which is exactly where
  the runtime's claims live ("0 % OOM").
* Latency means and medians get a **percentile bootstrap** interval with a fixed seed, so a report
  rendered twice from the same rows is byte-for-byte the same. Each interval draws from a fresh
  generator seeded with :data:`BOOTSTRAP_SEED`, so a cell's interval depends only on that cell's values,
  not on how many cells were computed before it.
* A comparison of two conditions that ran the same texts in the same blocks (experiments/design.py)
  gets a **paired bootstrap** (:func:`paired_difference_interval`): the unit resampled is the pair, so
  whatever the two trials of a pair share — the text's length, the machine's state during the block —
  cancels instead of widening the interval or, worse, posing as an effect.
* Pairs that share a worker process are not independent: a process is a few percent faster or slower
  for its whole life (experiments/design.py). Where the sweep replaced its workers in epochs, the
  paired bootstrap resamples whole epochs (a **cluster bootstrap**), so that variation is in the
  interval; with fewer than :data:`MIN_CLUSTERS` epochs it resamples pairs and says so.
* Tail percentiles (p95, p99) are reported only when the sample can support them; see
  :func:`min_n_for_quantile`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

#: Two-sided 95 % intervals throughout.
LEVEL = 0.95
#: Resamples per bootstrap interval: enough for a stable 2.5 %/97.5 % percentile (Efron & Tibshirani
#: recommend ≥ 1000 for percentile intervals).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20240601

#: Fewest clusters (worker epochs) a cluster bootstrap resamples: with fewer, the percentile interval of
#: a handful of clusters is too coarse to mean 95 %, and the pairs are resampled instead.
MIN_CLUSTERS = 5

Statistic = Literal["mean", "median"]
_STATISTICS: dict[str, Callable[..., np.ndarray]] = {"mean": np.mean, "median": np.median}


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n`` (``n`` > 0)."""
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within [0, {n}], got {successes}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # Clip the last ulp: at p = 0 or 1 the bound is exactly 0 or 1 in real arithmetic.
    return max(0.0, center - half), min(1.0, center + half)


def bootstrap_interval(
    values: np.ndarray,
    statistic: Statistic = "mean",
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` over ``values``; None below two values (a single
    observation says nothing about its spread).

    The values are sorted first (so the interval does not depend on the order rows were read in), the
    resampling is ``default_rng(seed).integers(0, n, size=(resamples, n))`` into them, the statistic is
    taken per resample, and the bounds are numpy's default (linear) quantiles at (1 ± level) / 2.
    """
    values = np.sort(np.asarray(values, dtype=float))
    if values.ndim != 1:
        raise ValueError("values must be one-dimensional")
    if np.isnan(values).any():
        raise ValueError("values contain NaN; drop missing measurements first")
    n = len(values)
    if n < 2:
        return None
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return _percentile_interval(_STATISTICS[statistic](values[index], axis=1), level)


def _percentile_interval(estimates: np.ndarray, level: float) -> tuple[float, float]:
    """The bounds of the bootstrap ``estimates`` at (1 ± level) / 2, numpy's default (linear) quantiles."""
    alpha = (1 - level) / 2
    low, high = np.quantile(estimates, [alpha, 1 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedEffect:
    """The effect of going from one condition to another over ``n_pairs`` matched pairs: the statistic of
    the per-pair differences (``estimate``) and its bootstrap interval (``low``, ``high``)."""

    n_pairs: int
    estimate: float
    low: float
    high: float
    #: clusters (worker epochs) resampled as wholes; None: the pairs were resampled one by one
    clusters: int | None = None

    @property
    def detected(self) -> bool:
        """Whether the interval excludes zero. Not detected is not "no effect": it means an effect of
        that size could not be told from the pairs' own variation."""
        return self.low > 0 or self.high < 0


def paired_difference_interval(
    before: np.ndarray,
    after: np.ndarray,
    statistic: Statistic = "median",
    relative: bool = False,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
    clusters: np.ndarray | None = None,
) -> PairedEffect | None:
    """Paired bootstrap of ``after`` against ``before``: ``before[i]`` and ``after[i]`` are one pair (the
    same text in the same block, under the two conditions). None below two pairs.

    ``clusters[i]`` (optional) labels pair ``i``'s cluster, the worker epoch both its trials ran in:
    with at least :data:`MIN_CLUSTERS` of them, :func:`cluster_bootstrap_interval` resamples whole
    clusters, since pairs of one epoch share their processes' lasting speed.

    The per-pair difference is ``after - before``, or with ``relative`` ``after / before - 1`` (a
    fraction; ``before`` must be positive). The estimate is ``statistic`` of those differences and the
    interval is :func:`bootstrap_interval` of them: resampling pairs is resampling their differences,
    since nothing else of a pair enters the statistic, so pairs stay whole and the differences' sorted
    order makes the result independent of the order the pairs came in.

    Why the relative effect is the statistic of per-pair ratios rather than the ratio of the two
    conditions' medians: a workload mixes texts whose latencies differ tenfold, and the ratio of
    medians would be the ratio at whichever length happens to sit in the middle of the pooled trials.
    A per-pair ratio weighs every text alike, and cancels a drift of the machine that slows a whole
    block by some factor as well as one that adds a constant.
    """
    before = np.asarray(before, dtype=float)
    after = np.asarray(after, dtype=float)
    if before.ndim != 1 or before.shape != after.shape:
        raise ValueError(f"before and after must be 1-D and of equal length, got {before.shape} and {after.shape}")
    if relative and (before <= 0).any():
        raise ValueError("a relative difference needs positive before values")
    differences = after / before - 1 if relative else after - before
    if clusters is not None and len(np.unique(clusters)) >= MIN_CLUSTERS:
        if len(clusters) != len(differences):
            raise ValueError(f"one cluster label per pair: {len(clusters)} labels for {len(differences)} pairs")
        interval = cluster_bootstrap_interval(differences, clusters, statistic, resamples, seed, level)
        n_clusters: int | None = len(np.unique(clusters))
    else:
        interval = bootstrap_interval(differences, statistic, resamples, seed, level)
        n_clusters = None
    if interval is None:
        return None
    estimate = float(_STATISTICS[statistic](np.sort(differences)))
    return PairedEffect(len(differences), estimate, *interval, clusters=n_clusters)


def cluster_bootstrap_interval(
    values: np.ndarray,
    clusters: np.ndarray,
    statistic: Statistic = "mean",
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> tuple[float, float] | None:
    """Percentile bootstrap of ``statistic`` that resamples whole clusters: each resample draws as many
    clusters as there are, with replacement, and pools their values. None below two clusters.

    Clusters are taken in the order of their labels and each one's values sorted, so the interval does
    not depend on the order of the rows."""
    values = np.asarray(values, dtype=float)
    labels, index = np.unique(np.asarray(clusters), return_inverse=True)
    if len(labels) < 2:
        return None
    groups = [np.sort(values[index == i]) for i in range(len(labels))]
    draws = np.random.default_rng(seed).integers(0, len(groups), size=(resamples, len(groups)))
    estimate = _STATISTICS[statistic]
    return _percentile_interval(
        np.array([estimate(np.concatenate([groups[i] for i in draw])) for draw in draws]), level
    )


def min_n_for_quantile(q: float) -> int:
    """The fewest observations for which the sample ``q``-quantile is reported.

    Rule: at least one observation must lie above the quantile's rank, i.e. ``n·(1 − q) ≥ 1``, so
    p95 needs n ≥ 20 and p99 needs n ≥ 100. Below that the interpolated "p99" is pulled toward the
    sample maximum and bounds nothing about the tail, so the table says *not bounded* instead.
    """
    if not 0 < q < 1:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    return math.ceil(round(1 / (1 - q), 9))


def tail_quantile(values: np.ndarray, q: float) -> float | None:
    """The sample ``q``-quantile (numpy/pandas linear interpolation), or None when ``len(values)`` is
    below :func:`min_n_for_quantile`."""
    values = np.asarray(values, dtype=float)
    if len(values) < min_n_for_quantile(q):
        return None
    return float(np.quantile(values, q))
