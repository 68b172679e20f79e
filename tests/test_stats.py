"""The paired bootstrap (experiments/stats.py): recomputed by its documented recipe, and checked for what
pairing is for — a drift both conditions share cancels, while breaking the pairs would not let it."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    MIN_CLUSTERS,
    PairedEffect,
    bootstrap_interval,
    paired_difference_interval,
)


def paired_by_recipe(before: np.ndarray, after: np.ndarray, relative: bool) -> tuple[float, float, float]:
    """The documented recipe written out again: per-pair differences, sorted, resampled with the seed,
    median per resample, 2.5 % and 97.5 % percentiles."""
    differences = np.sort(after / before - 1 if relative else after - before)
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(
        0, len(differences), size=(BOOTSTRAP_RESAMPLES, len(differences))
    )
    estimates = np.median(differences[draws], axis=1)
    return float(np.median(differences)), float(np.percentile(estimates, 2.5)), float(np.percentile(estimates, 97.5))


def test_paired_interval_follows_its_recipe_whatever_the_order_of_the_pairs() -> None:
    rng = np.random.default_rng(3)
    before = rng.normal(1000.0, 80.0, size=40)
    after = before * rng.normal(1.05, 0.02, size=40)
    for relative in (False, True):
        effect = paired_difference_interval(before, after, relative=relative)
        assert effect is not None and effect.n_pairs == 40
        assert (effect.estimate, effect.low, effect.high) == pytest.approx(paired_by_recipe(before, after, relative))
        order = rng.permutation(40)  # the pairs shuffled, each kept whole
        assert paired_difference_interval(before[order], after[order], relative=relative) == effect
    assert paired_difference_interval(before, after, relative=True).detected  # +5 % with 2 % noise


def test_ten_percent_slower_per_pair_is_plus_ten_percent_and_detected() -> None:
    before = np.array([812.0, 2400.0, 790.5, 5012.0, 801.1, 2399.9])  # three lengths mixed
    effect = paired_difference_interval(before, before * 1.1, relative=True)
    assert effect.estimate == pytest.approx(0.10)
    assert (effect.low, effect.high) == pytest.approx((0.10, 0.10))
    assert effect.detected and effect.low > 0
    faster = paired_difference_interval(before, before * 0.9, "mean", relative=True)
    assert faster.estimate == pytest.approx(-0.10) and faster.detected and faster.high < 0


def test_a_drift_both_conditions_share_cancels_in_the_pairs() -> None:
    """A drift of 0 to 950 ms over the blocks, added to both conditions alike, and a true +5 ms: the
    pairs find the 5 ms with a narrow interval; the two conditions' own intervals overlap all over."""
    rng = np.random.default_rng(11)
    drift = np.repeat(np.arange(20) * 50.0, 3)
    before = 800.0 + drift + rng.normal(0.0, 2.0, size=60)
    after = before + 5.0 + rng.normal(0.0, 2.0, size=60)
    effect = paired_difference_interval(before, after)
    assert effect.detected and 4.0 < effect.low < effect.estimate < effect.high < 6.0
    low_before, high_before = bootstrap_interval(before, "median")
    low_after, high_after = bootstrap_interval(after, "median")
    assert low_after < high_before and low_before < high_after  # unpaired: the effect is lost in the drift


def test_identical_pairs_detect_nothing_and_few_pairs_give_no_interval() -> None:
    values = np.array([100.0, 200.0, 300.0])
    assert paired_difference_interval(values, values) == PairedEffect(3, 0.0, 0.0, 0.0)
    assert not PairedEffect(3, 0.0, 0.0, 0.0).detected
    assert not PairedEffect(3, 0.01, -0.002, 0.03).detected
    assert paired_difference_interval(values[:1], values[:1]) is None
    assert paired_difference_interval(np.array([]), np.array([])) is None


def test_paired_interval_rejects_what_cannot_be_pairs() -> None:
    with pytest.raises(ValueError, match="equal length"):
        paired_difference_interval(np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="positive"):
        paired_difference_interval(np.array([0.0, 2.0]), np.array([1.0, 2.0]), relative=True)
    with pytest.raises(ValueError, match="NaN"):
        paired_difference_interval(np.array([np.nan, 2.0]), np.array([1.0, 2.0]), relative=True)


#: Ten worker epochs of 25 pairs: each epoch's processes are a few percent apart for its whole life, the
#: pairs within it differ by 0.2 %. The offsets average +0.5 %.
EPOCH_OFFSETS = [0.03, -0.01, 0.02, -0.02, 0.04, 0.0, -0.03, 0.01, 0.02, -0.01]


def _epochs(offsets: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    clusters = np.repeat(np.arange(len(offsets)), 25)
    before = rng.normal(1000.0, 80.0, size=len(clusters))
    after = before * (1 + np.array(offsets)[clusters] + rng.normal(0.0, 0.002, size=len(clusters)))
    return before, after, clusters


def test_pairs_of_one_worker_epoch_are_resampled_together() -> None:
    """Resampling pairs one by one reads the epochs' chance offsets as a detected +0.5 %; resampling
    whole epochs, by the documented recipe, gives the interval the epoch-to-epoch variation implies and
    detects nothing."""
    before, after, clusters = _epochs(EPOCH_OFFSETS)
    by_pair = paired_difference_interval(before, after, "mean", relative=True)
    by_epoch = paired_difference_interval(before, after, "mean", relative=True, clusters=clusters)
    assert by_pair is not None and by_pair.detected and by_pair.clusters is None
    assert by_epoch is not None and not by_epoch.detected and by_epoch.clusters == 10
    assert by_epoch.estimate == pytest.approx(by_pair.estimate)
    differences = after / before - 1
    groups = [np.sort(differences[clusters == c]) for c in range(10)]
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, 10, size=(BOOTSTRAP_RESAMPLES, 10))
    estimates = [np.mean(np.concatenate([groups[i] for i in draw])) for draw in draws]
    assert (by_epoch.low, by_epoch.high) == pytest.approx(tuple(np.percentile(estimates, [2.5, 97.5])))
    order = np.random.default_rng(4).permutation(len(clusters))
    assert paired_difference_interval(before[order], after[order], "mean", True, clusters=clusters[order]) == by_epoch


def test_too_few_epochs_fall_back_to_the_pairs_and_labels_must_fit() -> None:
    before, after, clusters = _epochs(EPOCH_OFFSETS[: MIN_CLUSTERS - 1])
    few = paired_difference_interval(before, after, relative=True, clusters=clusters)
    assert few == paired_difference_interval(before, after, relative=True) and few.clusters is None
    before, after, clusters = _epochs(EPOCH_OFFSETS)
    with pytest.raises(ValueError, match="one cluster label per pair: 249 labels for 250 pairs"):
        paired_difference_interval(before, after, relative=True, clusters=clusters[1:])
