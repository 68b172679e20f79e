"""The memory-sweep part of the thesis report: outcome against free memory, per level, per policy.

Rows of a memory sweep (``+experiment=memory_sweep``) carry the level (``free_above_floor_mb``), the
measured floor, the background's kind and the budget policy. From them:

* ``memory_levels`` — per policy, ablation, background kind and level: ok / refused / OOM shares with
  Wilson intervals, the median latency of ok trials and the median wait for memory;
* ``seed_margins`` — how many requests the seed's margins refuse that would have fit (the baseline,
  the system without the runtime, ran the same cell to completion);
* ``waiting_cost`` — what admission by waiting costs: latency of ok trials that waited vs those that
  did not, per concurrency;
* ``estimator_calibration`` — predicted vs measured peak of single-request ok trials after calibration,
  and how many trials the estimator under-predicted by more than the margin they kept;
* ``memory_repeats`` — with several runs of the same sweep: each ablation's ok share per run, and
  whether every run's share lies inside every other run's interval;
* the figure ``outcome_vs_free_memory`` — outcome shares against free memory per ablation, the floor
  marked.

Everything is computed from the rows; a cell without rows reads "—".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from experiments.report.cells import (
    INTERVALS_NOTE,
    _ablation_rank,
    fmt_num,
    fmt_rate,
    location_stats,
    provenance,
    rate_stats,
)
from experiments.report.figures import FigureOut, Skipped, _new_figure
from experiments.report.tables import Table

LEVEL_KEYS = ("budget_policy", "ablation", "background_kind", "free_above_floor_mb")
CELL_KEYS = ("background_kind", "free_above_floor_mb", "concurrency", "text_length")
OUTCOMES = (("ok", "tab:green"), ("refused", "tab:orange"), ("oom", "tab:red"))


def sweep_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of memory sweeps (a level and a floor), or an empty frame. Trials whose background app
    vanished (``background_restarted``: the kernel killed it rather than a dying worker) did not run at
    their level; they are left out here and counted in the levels table's notes."""
    if "free_above_floor_mb" not in rows or "floor_mb" not in rows:
        return rows.iloc[0:0]
    sweep = rows[rows["free_above_floor_mb"].notna() & rows["floor_mb"].notna()]
    if "background_restarted" in sweep:
        sweep = sweep[sweep["background_restarted"].fillna(False) != True]  # noqa: E712 - NA-safe
    return sweep


def _disturbed(rows: pd.DataFrame) -> int:
    """How many sweep trials ran without their background app (left out of every sweep table)."""
    if "background_restarted" not in rows or "free_above_floor_mb" not in rows:
        return 0
    return int((rows["background_restarted"].fillna(False) == True).sum())  # noqa: E712


def _order(data: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    return (
        data.assign(_rank=data["ablation"].map(_ablation_rank))
        .sort_values([k if k != "ablation" else "_rank" for k in keys])
        .drop(columns="_rank")
        .reset_index(drop=True)
    )


def _device(rows: pd.DataFrame) -> str:
    floors = sorted(set(rows["floor_mb"].round(0).astype(int)))
    caps = sorted(set(rows["mem_cap_mb"].dropna().round(0).astype(int)))
    return (
        f"device {', '.join(sorted(set(rows['profile'])))} ({'/'.join(map(str, caps))} MB, kernel cap), "
        f"measured floor {'/'.join(map(str, floors))} MB free"
    )


def levels_table(rows: pd.DataFrame) -> Table:
    """Outcome shares per policy, ablation, background kind and level."""
    records = []
    for values, group in rows.groupby(list(LEVEL_KEYS), dropna=False, sort=False):
        key = dict(zip(LEVEL_KEYS, values))
        ok = group[group["status"] == "ok"]
        waited = ok["waited_ms"].dropna().to_numpy(dtype=float) if "waited_ms" in ok else np.array([])
        margins = group["safety_margin_mb"].dropna() if "safety_margin_mb" in group else pd.Series(dtype=float)
        margin = float(margins.median()) if len(margins) else math.nan
        records.append(
            {
                **key,
                "free_mb": float(group["free_mb"].median()),
                "n": len(group),
                **rate_stats(group, "ok", "ok"),
                **rate_stats(group, "refused", "refused"),
                **rate_stats(group, "oom", "oom"),
                **location_stats(ok["latency_ms"].dropna().to_numpy(dtype=float), "median", "latency_p50"),
                "wait_p50_ms": float(np.median(waited)) if len(waited) else math.nan,
                "margin_p50_mb": margin,
                "above_margin": None if math.isnan(margin) else bool(key["free_above_floor_mb"] >= margin),
            }
        )
    data = _order(pd.DataFrame(records), LEVEL_KEYS)
    header = [
        "policy",
        "ablation",
        "background",
        "free − floor MB",
        "free MB",
        "n",
        "ok % [CI]",
        "refused % [CI]",
        "OOM % [CI]",
        "latency p50 ms [CI]",
        "wait p50 ms",
        "margin p50 MB",
        "≥ floor + margin",
    ]
    cells = [
        [
            str(r.budget_policy),
            str(r.ablation),
            str(r.background_kind),
            fmt_num(r.free_above_floor_mb, 0),
            fmt_num(r.free_mb, 0),
            str(r.n),
            fmt_rate(r.ok, r.ok_lo, r.ok_hi),
            fmt_rate(r.refused, r.refused_lo, r.refused_hi),
            fmt_rate(r.oom, r.oom_lo, r.oom_hi),
            fmt_num(r.latency_p50, 0),
            fmt_num(r.wait_p50_ms, 0),
            fmt_num(r.margin_p50_mb, 0),
            "" if r.above_margin is None else ("yes" if r.above_margin else "no"),
        ]
        for r in data.itertuples(index=False)
    ]
    return Table(
        "memory_levels",
        f"Memory sweep: outcome per level of free memory relative to the floor; {_device(rows)}; {provenance(rows)}.",
        data,
        header,
        cells,
        [
            INTERVALS_NOTE,
            "free MB: the device's RAM less the background app's peak; a dynamic background moves "
            "up to its swing below that peak. wait: time the slowest request of an ok trial waited for memory.",
            "margin: the safety margin the runtime kept (median over the level's trials); ≥ floor + margin: the "
            "level leaves at least that much above the floor, where every request should be served.",
        ],
        "lll" + "r" * 10,
    )


def seed_margins_table(rows: pd.DataFrame) -> Table:
    """Seed-policy refusals of requests that fit: the baseline finished the same cell."""
    baseline = rows[rows["ablation"] == "baseline"]
    fitted = baseline.groupby(list(CELL_KEYS))["status"].apply(lambda s: bool((s == "ok").all()))
    records = []
    for (policy, ablation), group in rows[rows["ablation"] != "baseline"].groupby(
        ["budget_policy", "ablation"], sort=False
    ):
        cells = group.set_index(list(CELL_KEYS)).index
        would_fit = np.array([bool(fitted.get(cell, False)) for cell in cells])
        fit_rows = group[would_fit]
        refused = int((fit_rows["status"] == "refused").sum())
        stats = rate_stats(fit_rows, "refused", "refused_fit")
        records.append(
            {
                "budget_policy": policy,
                "ablation": ablation,
                "n": len(group),
                "n_fit": len(fit_rows),
                "refused_fit_n": refused,
                **stats,
                **rate_stats(group, "ok", "ok"),
            }
        )
    data = _order(
        pd.DataFrame(
            records,
            columns=[
                "budget_policy",
                "ablation",
                "n",
                "n_fit",
                "refused_fit_n",
                "refused_fit",
                "refused_fit_lo",
                "refused_fit_hi",
                "ok",
                "ok_lo",
                "ok_hi",
            ],
        ),
        ["budget_policy", "ablation"],
    )
    header = ["policy", "ablation", "n", "n that fit", "refused of those % [CI]", "ok % [CI]"]
    cells = [
        [
            str(r.budget_policy),
            str(r.ablation),
            str(r.n),
            str(r.n_fit),
            fmt_rate(r.refused_fit, r.refused_fit_lo, r.refused_fit_hi),
            fmt_rate(r.ok, r.ok_lo, r.ok_hi),
        ]
        for r in data.itertuples(index=False)
    ]
    return Table(
        "seed_margins",
        'Requests refused that would have fit, per budget policy: a trial "would have fit" when every baseline '
        f"trial (no runtime features) of the same level, background, concurrency and text ran to completion; "
        f"{provenance(rows)}.",
        data,
        header,
        cells,
        [INTERVALS_NOTE],
        "ll" + "r" * 4,
    )


def waiting_table(rows: pd.DataFrame) -> Table:
    """Latency of ok trials that waited for memory vs those admitted at once, per concurrency."""
    ok = rows[(rows["status"] == "ok") & rows["waited_ms"].notna()] if "waited_ms" in rows else rows.iloc[0:0]
    records = []
    for (policy, ablation, concurrency), group in ok.groupby(["budget_policy", "ablation", "concurrency"], sort=False):
        waited = group[group["waited_ms"] > 0]
        at_once = group[group["waited_ms"] <= 0]
        records.append(
            {
                "budget_policy": policy,
                "ablation": ablation,
                "concurrency": int(concurrency),
                "n_waited": len(waited),
                "n_at_once": len(at_once),
                **location_stats(waited["latency_ms"].to_numpy(dtype=float), "median", "lat_waited"),
                **location_stats(at_once["latency_ms"].to_numpy(dtype=float), "median", "lat_at_once"),
                "wait_p50_ms": float(waited["waited_ms"].median()) if len(waited) else math.nan,
            }
        )
    data = pd.DataFrame(
        records,
        columns=[
            "budget_policy",
            "ablation",
            "concurrency",
            "n_waited",
            "n_at_once",
            "lat_waited",
            "lat_waited_lo",
            "lat_waited_hi",
            "lat_at_once",
            "lat_at_once_lo",
            "lat_at_once_hi",
            "wait_p50_ms",
        ],
    )
    data = _order(data, ["budget_policy", "ablation", "concurrency"]) if not data.empty else data
    header = [
        "policy",
        "ablation",
        "concurrency",
        "n waited",
        "latency p50 ms, waited [CI]",
        "wait p50 ms",
        "n at once",
        "latency p50 ms, at once [CI]",
    ]
    cells = [
        [
            str(r.budget_policy),
            str(r.ablation),
            str(r.concurrency),
            str(r.n_waited),
            fmt_num(r.lat_waited, 0)
            + (
                f" [{fmt_num(r.lat_waited_lo, 0)}, {fmt_num(r.lat_waited_hi, 0)}]"
                if not math.isnan(r.lat_waited_lo)
                else ""
            ),
            fmt_num(r.wait_p50_ms, 0),
            str(r.n_at_once),
            fmt_num(r.lat_at_once, 0)
            + (
                f" [{fmt_num(r.lat_at_once_lo, 0)}, {fmt_num(r.lat_at_once_hi, 0)}]"
                if not math.isnan(r.lat_at_once_lo)
                else ""
            ),
        ]
        for r in data.itertuples(index=False)
    ]
    return Table(
        "waiting_cost",
        "The latency cost of waiting for memory: ok trials whose slowest request waited vs those admitted at once; "
        f"{provenance(rows)}.",
        data,
        header,
        cells,
        [INTERVALS_NOTE, "Latency includes the wait."],
        "ll" + "r" * 6,
    )


def estimator_table(rows: pd.DataFrame) -> Table:
    """Predicted vs measured peak of single-request ok trials with an estimate."""
    both = rows[
        (rows["status"] == "ok")
        & rows["estimated_mb"].notna()
        & rows["peak_rss_mb"].notna()
        & (rows["concurrency"] == 1)
    ]
    records = []
    for (policy, constants), group in both.groupby(["budget_policy", "estimator_constants"], dropna=False, sort=False):
        ratio = (group["estimated_mb"] / group["peak_rss_mb"]).to_numpy(dtype=float)
        under = (group["peak_rss_mb"] - group["estimated_mb"]).clip(lower=0)
        margin = group["safety_margin_mb"] if "safety_margin_mb" in group else pd.Series(math.nan, index=group.index)
        records.append(
            {
                "budget_policy": policy,
                "estimator_constants": constants,
                "n": len(group),
                **location_stats(ratio, "median", "ratio"),
                "worst_under_mb": float(under.max()),
                "fit_max_under_mb": float(group["estimator_max_under_mb"].max())
                if "estimator_max_under_mb" in group
                else math.nan,
                "margin_min_mb": float(margin.min()),
                "under_beyond_margin_n": int((under > margin).sum()),
            }
        )
    data = pd.DataFrame(
        records,
        columns=[
            "budget_policy",
            "estimator_constants",
            "n",
            "ratio",
            "ratio_lo",
            "ratio_hi",
            "worst_under_mb",
            "fit_max_under_mb",
            "margin_min_mb",
            "under_beyond_margin_n",
        ],
    )
    header = [
        "policy",
        "constants",
        "n",
        "predicted / measured p50 [CI]",
        "worst under-prediction MB",
        "fit's held-out worst MB",
        "smallest margin kept MB",
        "under by more than its margin",
    ]
    cells = [
        [
            str(r.budget_policy),
            str(r.estimator_constants),
            str(r.n),
            f"{fmt_num(r.ratio, 3)} [{fmt_num(r.ratio_lo, 3)}, {fmt_num(r.ratio_hi, 3)}]",
            fmt_num(r.worst_under_mb, 1),
            fmt_num(r.fit_max_under_mb, 1),
            fmt_num(r.margin_min_mb, 1),
            str(r.under_beyond_margin_n),
        ]
        for r in data.itertuples(index=False)
    ]
    return Table(
        "estimator_calibration",
        "The estimator in the sweep: predicted peak (estimated_mb) vs the worker's measured peak RSS, ok trials of one "
        f"request; {provenance(both) if len(both) else 'no trials'}.",
        data,
        header,
        cells,
        [
            INTERVALS_NOTE,
            "Under-prediction: measured above predicted. The calibrated policy's "
            "margin keeps the fit's held-out worst plus how far the background may grow back to the most "
            "the runtime saw it hold; the last "
            "column counts trials whose under-prediction exceeded the margin that trial kept.",
        ],
        "ll" + "r" * 6,
    )


def repeats_table(rows: pd.DataFrame) -> Table | None:
    """Each ablation's ok share per run of the same sweep, and whether the runs agree: every run's share
    inside every other run's Wilson interval. Conditions only one run has are left out; ``None`` when
    no condition ran twice."""
    runs = sorted(set(rows["run_id"]))
    if len(runs) < 2:
        return None
    records = []
    for (policy, ablation), group in rows.groupby(["budget_policy", "ablation"], sort=False):
        per_run = {run: rate_stats(group[group["run_id"] == run], "ok", "ok") for run in runs}
        ran = [stats for stats in per_run.values() if not math.isnan(stats["ok"])]
        if len(ran) < 2:  # a condition only one of the runs has: nothing to compare
            continue
        agree = all(other["ok_lo"] <= mine["ok"] <= other["ok_hi"] for mine in ran for other in ran)
        records.append(
            {
                "budget_policy": policy,
                "ablation": ablation,
                "n": len(group),
                "agree": agree,
                **{f"{run}:{k}": v for run, stats in per_run.items() for k, v in stats.items()},
            }
        )
    if not records:
        return None
    data = _order(pd.DataFrame(records), ["budget_policy", "ablation"])
    header = ["policy", "ablation", "n", *[f"{run} ok % [CI]" for run in runs], "within each other's CIs"]
    cells = [
        [
            str(r["budget_policy"]),
            str(r["ablation"]),
            str(r["n"]),
            *[fmt_rate(r[f"{run}:ok"], r[f"{run}:ok_lo"], r[f"{run}:ok_hi"]) for run in runs],
            "yes" if r["agree"] else "no",
        ]
        for r in data.to_dict("records")
    ]
    return Table(
        "memory_repeats",
        f"The same memory sweep run {len(runs)} times ({', '.join(runs)}): ok share per ablation and run; "
        f"{provenance(rows)}.",
        data,
        header,
        cells,
        [INTERVALS_NOTE, "Runs agree when every run's ok share lies inside every other run's 95 % interval."],
        "ll" + "r" * (len(runs) + 2),
    )


def memory_tables(rows: pd.DataFrame) -> list[Table]:
    """The memory sweep's tables, or none when the rows hold no sweep."""
    sweep = sweep_rows(rows)
    if sweep.empty:
        return []
    levels = levels_table(sweep)
    left_out = _disturbed(rows)
    if left_out:
        levels.notes.append(
            f"{left_out} trial(s) left out of every memory table: their background app was killed "
            "by the kernel (rather than a dying worker) during the trial or earlier in its worker's life."
        )
    repeats = repeats_table(sweep)
    return [
        levels,
        seed_margins_table(sweep),
        waiting_table(sweep),
        estimator_table(sweep),
        *([repeats] if repeats is not None else []),
    ]


def outcome_vs_free_memory(rows: pd.DataFrame) -> FigureOut | Skipped:
    """Outcome shares against free memory, one panel per ablation, the floor marked."""
    sweep = sweep_rows(rows)
    if sweep.empty:
        return Skipped("outcome_vs_free_memory", "no memory-sweep rows")
    panels = sorted(
        set(zip(sweep["ablation"], sweep["budget_policy"].fillna("—"))), key=lambda p: (_ablation_rank(p[0]), p[1])
    )
    fig: Figure = _new_figure()
    fig.set_size_inches(3.3, 1.5 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    floor = float(sweep["floor_mb"].median())
    for ax, (ablation, policy) in zip(axes, panels):
        part = sweep[(sweep["ablation"] == ablation) & (sweep["budget_policy"].fillna("—") == policy)]
        levels = sorted(set(part["free_mb"].round(0)))
        for index, (status, colour) in enumerate(OUTCOMES):
            stats = [rate_stats(part[part["free_mb"].round(0) == level], status, "p") for level in levels]
            y = np.array([100 * s["p"] for s in stats])
            # clipped: at a share of 0 or 1 the interval's bound can differ from it by a rounding error
            low = np.clip([100 * (s["p"] - s["p_lo"]) for s in stats], 0.0, None)
            high = np.clip([100 * (s["p_hi"] - s["p"]) for s in stats], 0.0, None)
            x = np.array(levels) * (1 + 0.01 * (index - 1))  # dodge on the log axis
            ax.errorbar(x, y, yerr=[low, high], fmt="o-", color=colour, label=status)
        ax.axvline(floor, color="k", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_ylim(-5, 105)
        ax.set_title(f"{ablation} ({policy} policy, n={len(part)})", loc="left")
        ax.set_ylabel("%")
    ticks = sorted(set(sweep["free_mb"].round(0)))
    for ax in axes:
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(ticks, [f"{t:.0f}" for t in ticks], rotation=90)
    axes[0].legend(loc="lower center", bbox_to_anchor=(0.5, 1.25), ncols=3, frameon=False)
    axes[-1].set_xlabel("least free memory (MB, log); dashed: floor")
    kinds = "/".join(sorted(set(sweep["background_kind"].dropna())))
    return FigureOut(
        "outcome_vs_free_memory",
        fig,
        f"Outcome of memory-sweep trials (ok, refused, OOM-killed; 95 % Wilson intervals) against the free memory "
        f"the background app left, per ablation and budget policy; {_device(sweep)}; {kinds} backgrounds pooled; "
        "n per panel.",
    )


__all__ = ["memory_tables", "outcome_vs_free_memory", "sweep_rows"]
