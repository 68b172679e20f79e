"""What each runtime feature changes, read from paired trials, and how much trials of one text length vary.

The sweep interleaves its conditions in blocks (experiments/design.py): within a block every condition
runs the same texts in a seeded random order. Two conditions' trials can therefore be matched one to
one — same run, block, text (length and iteration), concurrency and memory level — and an effect is
read from the pairs (:func:`experiments.stats.paired_difference_interval`): whatever drifted on the
machine during a block hit both trials of a pair alike and cancels. An unpaired ratio of means has no
such protection; on this VM a sequential sweep measured ``budget`` 11 % slower than ``baseline`` on
the same compute path.

* ``effects`` — per condition and metric (latency, RTF): each feature's effect over the ablation before
  it (baseline, budget, affinity, estimation), and every A/A control (a condition run twice under two
  names, ``replicate_of``), whose interval is the noise floor printed beside every effect;
* ``variance`` — per condition, ablation and text length: standard deviation and CV of latency and RTF.
  Pooled over lengths, a standard deviation mostly measures how far apart the lengths' latencies are.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from experiments.design import spans
from experiments.report.cells import (
    ABLATION_ORDER,
    CONDITION_KEYS,
    CV_SETTING,
    INTERVALS_NOTE,
    KEY_HEADERS,
    NO_DATA,
    NOT_AVAILABLE,
    UNSTABLE_CV,
    _grouped,
    _missing,
    _ok_latency,
    _sorted,
    fmt_interval,
    fmt_key,
    fmt_num,
    fmt_unstable,
    location_stats,
    varying_keys,
    with_quant,
)
from experiments.report.pairs import PAIRED_NOTE, fmt_effect, relative_effect
from experiments.report.tables import (
    AFTER_AFFINITY,
    BEFORE_AFFINITY,
    CHANGE_COLUMNS,
    Table,
    _before_after,
    _caption,
    _frame,
    _key_cells,
)
from experiments.stats import PairedEffect

logger = logging.getLogger(__name__)

#: The metrics effects are read on; for both, larger is slower.
METRICS = {"latency_ms": "latency", "rtf": "RTF"}
#: Headers of the settings a condition's trials vary in (the variance table's rows).
SETTING_HEADERS = {
    "text_length": "length",
    "concurrency": "concurrency",
    "free_above_floor_mb": "free above floor MB",
    "background_kind": "background",
}
SLOWER, FASTER, NOT_DETECTED = "slower", "faster", "no difference detected"


def verdict(effect: PairedEffect | None) -> str:
    """``slower`` or ``faster`` where the interval excludes zero, else that no difference was detected."""
    if effect is None:
        return NO_DATA
    if not effect.detected:
        return NOT_DETECTED
    return SLOWER if effect.low > 0 else FASTER


class Comparison(NamedTuple):
    """One line of the effects table: ``after`` against ``before``; ``control``: an A/A control."""

    label: str
    before: str
    after: str
    control: bool


def _comparisons(group: pd.DataFrame) -> list[Comparison]:
    """Each feature over the ablation before it, then each A/A control, where both of its ablations
    have rows in ``group``."""
    present = set(group["ablation"].dropna())
    out = [
        Comparison(f"{lower} vs {upper}", lower, upper, False)
        for lower, upper in zip(ABLATION_ORDER, ABLATION_ORDER[1:])
        if lower in present and upper in present
    ]
    if "replicate_of" in group:
        copies = group.loc[group["replicate_of"].notna(), ["replicate_of", "ablation"]].drop_duplicates()
        for original, copy in sorted(copies.itertuples(index=False, name=None)):
            if original in present:
                out.append(Comparison(f"A/A: {original} vs {copy}", original, copy, True))
    return out


def _noise_floor(effects: list[PairedEffect | None]) -> float:
    """The largest absolute bound of the A/A intervals (a fraction), NaN without one: identical conditions
    differed by up to this much, so a smaller effect is within what noise alone produces."""
    bounds = [max(abs(e.low), abs(e.high)) for e in effects if e is not None]
    return max(bounds) if bounds else math.nan


def effects_table(rows: pd.DataFrame) -> Table:
    """Per condition and metric: each feature's paired effect over the ablation before it and each A/A
    control's, with the verdict and the A/A noise floor beside it."""
    rows = with_quant(rows)
    keys = list(CONDITION_KEYS)
    records = []
    alarms = []
    for key, group in _grouped(rows, keys):
        comparisons = _comparisons(group)
        for value, metric in METRICS.items():
            measured = [(c, *relative_effect(group, c.before, c.after, value)) for c in comparisons]
            floor = _noise_floor([effect for c, _, effect in measured if c.control])
            for c, n_pairs, effect in measured:
                pct = (math.nan,) * 3 if effect is None else (effect.estimate, effect.low, effect.high)
                records.append(
                    {
                        **key,
                        "comparison": c.label,
                        "before": c.before,
                        "after": c.after,
                        "aa_control": c.control,
                        "metric": value,
                        "n_pairs": n_pairs,
                        "epochs": effect.clusters if effect is not None else None,
                        **dict(zip(("effect_pct", "effect_pct_lo", "effect_pct_hi"), (100 * x for x in pct))),
                        "verdict": verdict(effect),
                        "noise_floor_pct": 100 * floor,
                    }
                )
                if c.control and effect is not None and effect.detected:
                    alarms.append(f"{c.label} ({metric}; {', '.join(fmt_key(k, v) for k, v in key.items())})")
    columns = ["comparison", "before", "after", "aa_control", "metric", "n_pairs", "epochs"]
    columns += ["effect_pct", "effect_pct_lo", "effect_pct_hi", "verdict", "noise_floor_pct"]
    data = _frame(records, keys, columns)
    shown = varying_keys(rows)
    header = [KEY_HEADERS[k] for k in shown]
    header += ["comparison", "metric", "n pairs", "resampled", "effect % [95 % CI]", "verdict", "A/A noise floor %"]
    cells = [
        [fmt_key(k, row[k]) for k in shown]
        + [
            row["comparison"],
            METRICS[row["metric"]],
            str(row["n_pairs"]),
            "pairs" if pd.isna(row["epochs"]) else f"{int(row['epochs'])} epochs",
            fmt_effect(row["effect_pct"], row["effect_pct_lo"], row["effect_pct_hi"]),
            row["verdict"],
            fmt_num(row["noise_floor_pct"], 1),
        ]
        for _, row in data.iterrows()
    ]
    caption = _caption("Effects of the runtime features and A/A controls, paired by text and block", rows, keys)
    if alarms:
        caption += (
            f" Warning: {len(alarms)} A/A control(s) found a difference between identical conditions — "
            f"{'; '.join(alarms)}: the intervals understate the noise; rerun with more blocks or "
            "epochs (design.restart_every) or on a quieter machine."
        )
    notes = [
        PAIRED_NOTE,
        "X vs Y: Y's change over X (for the features: the ablation that adds it over the one before). "
        f"{SLOWER}, {FASTER}: the interval excludes 0; {NOT_DETECTED}: it covers 0 — an effect that small "
        "cannot be told from the pairs' variation, which is not evidence that there is none.",
        "resampled: what the bootstrap drew — the worker epochs the pairs span (experiments/design.py), or "
        "the pairs one by one where fewer epochs were recorded.",
        "A/A noise floor %: the larger absolute bound of the interval of an A/A control (the same condition run "
        "twice under two names) for that metric and condition — a difference identical conditions show; "
        f"{NO_DATA}: the sweep had no A/A control (+ablation=baseline,baseline_repeat,...).",
    ]
    if (data["n_pairs"] < 2).any():
        notes.append(
            f"{NO_DATA} with n pairs below 2: the trials could not be matched (e.g. a dataset from before "
            "the interleaved design, or texts run more than once per block); no unpaired ratio is shown "
            "instead, since drift between the conditions' trials would pose as an effect."
        )
    return Table("effects", caption, data, header, cells, notes, "l" * len(shown) + "llrlrlr")


def _spread(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, sample standard deviation and CV (std / mean) of ``values``; NaN below two values. Sorted
    first, so the sums (and the last digit) do not depend on the order rows were read in."""
    values = np.sort(values)
    if len(values) < 2:
        return math.nan, math.nan, math.nan
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    return mean, std, std / mean if mean > 0 else math.nan


def _fmt_spread(x: float, digits: int | None = None) -> str:
    return NOT_AVAILABLE if _missing(x) else fmt_num(x, digits)


def variance_table(rows: pd.DataFrame) -> Table:
    """Per condition, ablation and text length (and concurrency and memory level, where the workload
    sweeps them): the spread of latency and RTF over the ok trials, and whether the latency is unstable."""
    rows = with_quant(rows)
    setting = [k for k in CV_SETTING if k in rows.columns]
    keys = [*CONDITION_KEYS, "ablation", *setting]
    records = []
    for key, group in _grouped(rows, keys):
        ok = group[group["status"] == "ok"]
        latency = ok["latency_ms"].dropna().to_numpy(dtype=float)
        lat_mean, lat_std, lat_cv = _spread(latency)
        rtf_mean, rtf_std, rtf_cv = _spread(ok["rtf"].dropna().to_numpy(dtype=float))
        records.append(
            {
                **key,
                "n_ok": len(latency),
                "lat_mean_ms": lat_mean,
                "lat_std_ms": lat_std,
                "lat_cv": lat_cv,
                "rtf_mean": rtf_mean,
                "rtf_std": rtf_std,
                "rtf_cv": rtf_cv,
                "unstable": None if _missing(lat_cv) else bool(lat_cv >= UNSTABLE_CV),
            }
        )
    columns = ["n_ok", "lat_mean_ms", "lat_std_ms", "lat_cv", "rtf_mean", "rtf_std", "rtf_cv", "unstable"]
    # Settings in numeric order (1000 after 300) within each condition's ablations, in their order.
    by_setting = pd.DataFrame(records, columns=[*keys, *columns]).sort_values(setting, na_position="last")
    data = _sorted(by_setting, [*CONDITION_KEYS, "ablation"])
    swept = varying_keys(rows, [k for k in setting if k != "text_length"])
    shown = [*varying_keys(rows), "ablation", "text_length", *swept]
    header = [{**KEY_HEADERS, **SETTING_HEADERS}[k] for k in shown]
    header += ["n ok", "latency std ms", "latency CV %", "RTF std", "RTF CV %", "unstable"]
    cells = [
        [fmt_key(k, row[k]) for k in shown]
        + [
            str(row["n_ok"]),
            _fmt_spread(row["lat_std_ms"]),
            _fmt_spread(100 * row["lat_cv"], 1),
            _fmt_spread(row["rtf_std"], 3),
            _fmt_spread(100 * row["rtf_cv"], 1),
            fmt_unstable(row["unstable"]),
        ]
        for _, row in data.iterrows()
    ]
    caption = _caption(
        "Variance per text length: spread of latency and RTF over the ok trials of one condition, ablation "
        "and length — the thesis's variance figure, in place of a standard deviation pooled over lengths, "
        "which mostly measures how far apart the lengths' latencies are",
        rows,
        CONDITION_KEYS,
    )
    notes = [
        "std: sample standard deviation (n − 1); CV: std / mean. unstable: a latency CV of "
        f"{100 * UNSTABLE_CV:.0f} % or more (pyperf's rule, as in the ablation table); RTF's CV is shown but "
        "not judged, since it also moves with the length of the audio produced. "
        f"{NOT_AVAILABLE}: fewer than two ok trials.",
    ]
    return Table("variance", caption, data, header, cells, notes, "l" * len(shown) + "rrrrrl")


def design_table(rows: pd.DataFrame) -> Table:
    """Per run and ablation: how many trials and blocks, and where in the run's time its first and last
    trial started (0 %: the run's first trial, 100 %: its last). Interleaved, every condition spans the
    run; a condition in a slice of its own was run in sequence, and its effects carry the drift."""
    rows = with_quant(rows)
    records = []
    timed = rows.dropna(subset=["started_at"]) if "started_at" in rows.columns else rows.iloc[0:0]
    for run_id, run in timed.groupby("run_id", sort=True):
        blocks = run["block"] if "block" in run.columns else pd.Series(0, index=run.index)
        span = spans(run)
        for ablation, part in run.groupby("ablation"):
            records.append(
                {
                    "run_id": run_id,
                    "ablation": ablation,
                    "n": int(span.loc[ablation, "n"]),
                    "blocks": int(blocks[part.index].nunique()),
                    "first_pct": 100 * span.loc[ablation, "first"],
                    "last_pct": 100 * span.loc[ablation, "last"],
                }
            )
    data = _sorted(
        pd.DataFrame(records, columns=["run_id", "ablation", "n", "blocks", "first_pct", "last_pct"]),
        ["run_id", "ablation"],
    )
    header = ["run", "ablation", "n", "blocks", "first trial at %", "last trial at %"]
    cells = [
        [
            str(row.run_id),
            str(row.ablation),
            str(row.n),
            str(row.blocks),
            fmt_num(row.first_pct, 1),
            fmt_num(row.last_pct, 1),
        ]
        for row in data.itertuples(index=False)
    ]
    caption = _caption("Design: where in each run's time every condition's trials ran", rows, CONDITION_KEYS)
    notes = ["% of the run's time from its first trial's start to its last's (experiments.design.spans)."]
    return Table("design", caption, data, header, cells, notes, "llrrrr")


def affinity_table(rows: pd.DataFrame) -> Table:
    """Mean latency without CPU affinity (budget) and with it (affinity), per condition, and the change
    affinity makes, paired by text and block (:mod:`experiments.report.effects`)."""
    rows = with_quant(rows)
    keys = list(CONDITION_KEYS)
    records = []
    for key, before, after in _before_after(rows, BEFORE_AFFINITY, AFTER_AFFINITY):
        lat_before, lat_after = _ok_latency(before), _ok_latency(after)
        record = {**key, "n_before": len(lat_before), **location_stats(lat_before, "mean", "lat_before_ms")}
        record |= {"n_after": len(lat_after), **location_stats(lat_after, "mean", "lat_after_ms")}
        n_pairs, effect = relative_effect(pd.concat([before, after]), BEFORE_AFFINITY, AFTER_AFFINITY, "latency_ms")
        change = (math.nan,) * 3 if effect is None else (effect.estimate, effect.low, effect.high)
        record |= {"n_pairs": n_pairs, **dict(zip(CHANGE_COLUMNS, (100 * x for x in change)))}
        records.append(record)
    columns = [
        "n_before",
        "lat_before_ms",
        "lat_before_ms_lo",
        "lat_before_ms_hi",
        "n_after",
        "lat_after_ms",
        "lat_after_ms_lo",
        "lat_after_ms_hi",
        "n_pairs",
        *CHANGE_COLUMNS,
    ]
    data = _frame(records, keys, columns)
    shown = varying_keys(rows) or ["profile"]
    header, cells = _key_cells(data, shown)
    header += [f"n ok {BEFORE_AFFINITY}", "mean ms before [CI]", f"n ok {AFTER_AFFINITY}", "mean ms after [CI]"]
    header += ["n pairs", "Δ % paired [CI]"]
    for row, out in zip(data.itertuples(index=False), cells):
        out += [
            str(row.n_before),
            fmt_interval(row.lat_before_ms, row.lat_before_ms_lo, row.lat_before_ms_hi),
            str(row.n_after),
            fmt_interval(row.lat_after_ms, row.lat_after_ms_lo, row.lat_after_ms_hi),
            str(row.n_pairs),
            fmt_effect(row.change_pct, row.change_pct_lo, row.change_pct_hi),
        ]
    notes = [
        INTERVALS_NOTE,
        f"Δ %: latency, {AFTER_AFFINITY} over {BEFORE_AFFINITY}; negative is faster. {PAIRED_NOTE} "
        "The effects table has RTF too and the A/A noise floor.",
    ]
    if data["change_pct"].isna().any():
        notes.append(
            f"{NO_DATA} in Δ: fewer than two pairs (trials that cannot be matched, e.g. a dataset from before "
            "the interleaved design); no unpaired ratio of the means is shown instead, since drift between "
            "the conditions' trials would pose as an effect."
        )
    return Table(
        "affinity_latency",
        _caption(f"Latency before ({BEFORE_AFFINITY}) and after ({AFTER_AFFINITY}) CPU affinity", rows, CONDITION_KEYS),
        data,
        header,
        cells,
        notes,
        "l" * len(shown) + "r" * 6,
    )
