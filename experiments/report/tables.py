"""The thesis's tables: per condition and ablation, the numbers (full precision, for the CSV) and the
cells shown, with the caption and notes each needs (:class:`Table`). The memory sweep's tables are
:mod:`experiments.report.memory`'s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from adaptive_tts.units import MIB
from experiments.report.cells import (
    CONDITION_KEYS,
    CV_NOTE,
    HYGIENE_NOTE,
    HYGIENE_STATS,
    INTERVALS_NOTE,
    KEY_HEADERS,
    NO_DATA,
    NO_DATA_NOTE,
    NOT_BOUNDED,
    NOT_BOUNDED_NOTE,
    UNSTABLE_CV,
    _grouped,
    _missing,
    _ok_latency,
    _sorted,
    constants,
    cv_stats,
    fmt_cv,
    fmt_hygiene,
    fmt_interval,
    fmt_key,
    fmt_num,
    fmt_rate,
    fmt_tail,
    fmt_unstable,
    hygiene_stats,
    is_unstable,
    location_stats,
    provenance,
    rate_stats,
    varying_keys,
    with_quant,
)
from experiments.report.pairs import PAIRED_NOTE, fmt_effect, rate_effect, relative_effect
from experiments.stats import tail_quantile

#: The memory-stability comparison: without any runtime feature vs the whole runtime.
BEFORE_STABILITY, AFTER_STABILITY = "baseline", "estimation"
#: The affinity comparison: the budget manager alone vs budget manager + CPU affinity.
BEFORE_AFFINITY, AFTER_AFFINITY = "budget", "affinity"
#: The runtime as shipped (all features on): the condition the cross-platform table compares.
FULL_RUNTIME = "estimation"

QUALITY_COLUMNS = ("weight_bytes", "mcd_db", "log_mel_db")
#: The affinity table's paired change in latency and its interval, in percent.
CHANGE_COLUMNS = ("change_pct", "change_pct_lo", "change_pct_hi")
#: The mode the quantization table's changes are read against.
FULL_PRECISION = "fp32"
#: Condition keys the memory-stability table compares across: the whole runtime picks its own mode.
STABILITY_ACROSS = ("quant",)
#: The memory-stability table's paired change in OOM rate, percentage points.
OOM_CHANGE_COLUMNS = ("oom_change_pp", "oom_change_pp_lo", "oom_change_pp_hi")


@dataclass
class Table:
    """A rendered table: its numbers (``data``, full precision) and the cells shown (``cells``)."""

    name: str
    caption: str
    data: pd.DataFrame
    header: list[str]
    cells: list[list[str]]
    notes: list[str] = field(default_factory=list)
    #: Per column, "l" (names, text) or "r" (numbers).
    align: str = ""

    def all_notes(self) -> list[str]:
        """The notes the shown cells need (no data, not bounded), then the table's own."""
        shown = {cell for row in self.cells for cell in row}
        marks = [note for mark, note in ((NO_DATA, NO_DATA_NOTE), (NOT_BOUNDED, NOT_BOUNDED_NOTE)) if mark in shown]
        return marks + self.notes


def _frame(records: list[dict[str, object]], keys: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    return _sorted(pd.DataFrame(records, columns=[*keys, *columns]), keys)


def _key_cells(data: pd.DataFrame, shown: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    return [KEY_HEADERS[k] for k in shown], [[fmt_key(k, row[k]) for k in shown] for _, row in data.iterrows()]


def _failures(group: pd.DataFrame) -> str:
    counts = group.loc[group["status"] != "ok", "status"].value_counts()
    return "; ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"


def ablation_table(rows: pd.DataFrame) -> Table:
    """The seed's benchmark table: per condition and ablation, success, latency and memory."""
    rows = with_quant(rows)
    keys = [*CONDITION_KEYS, "ablation"]
    records = []
    for key, group in _grouped(rows, keys):
        latency = _ok_latency(group)
        records.append(
            {
                **key,
                "n": len(group),
                "n_ok": len(latency),
                **rate_stats(group, "ok", "success"),
                "failures": _failures(group),
                **location_stats(latency, "mean", "lat_mean_ms"),
                **location_stats(latency, "median", "lat_median_ms"),
                "lat_p95_ms": _or_nan(tail_quantile(latency, 0.95)),
                "lat_p99_ms": _or_nan(tail_quantile(latency, 0.99)),
                "lat_std_ms": float(np.std(latency, ddof=1)) if len(latency) > 1 else math.nan,
                "peak_rss_mb": group["peak_rss_mb"].max(),
                **cv_stats(group),
                **hygiene_stats(group),
            }
        )
    columns = (
        ["n", "n_ok", "success", "success_lo", "success_hi", "failures"]
        + [f"lat_{s}_ms{suffix}" for s in ("mean", "median") for suffix in ("", "_lo", "_hi")]
        + ["lat_p95_ms", "lat_p99_ms", "lat_std_ms", "peak_rss_mb"]
        + ["lat_cv_max", "lat_cv_max_length", "unstable", "unstable_lengths"]
        + list(HYGIENE_STATS)
    )
    data = _frame(records, keys, columns)
    shown = varying_keys(rows) + ["ablation"]
    header, cells = _key_cells(data, shown)
    header += [
        "n",
        "success % [CI]",
        "failures",
        "mean ms [CI]",
        "median ms [CI]",
        "p95 ms",
        "p99 ms",
        "std ms",
        "peak RSS MB",
        "max CV % (length)",
        "unstable",
    ]
    for row, out in zip(data.itertuples(index=False), cells):
        out += [
            str(row.n),
            fmt_rate(row.success, row.success_lo, row.success_hi),
            row.failures,
            fmt_interval(row.lat_mean_ms, row.lat_mean_ms_lo, row.lat_mean_ms_hi),
            fmt_interval(row.lat_median_ms, row.lat_median_ms_lo, row.lat_median_ms_hi),
            fmt_tail(row.lat_p95_ms, row.n_ok, 0.95),
            fmt_tail(row.lat_p99_ms, row.n_ok, 0.99),
            fmt_num(row.lat_std_ms),
            fmt_num(row.peak_rss_mb),
            fmt_cv(row.lat_cv_max, row.lat_cv_max_length),
            fmt_unstable(row.unstable),
        ]
    caption = _caption("Runtime features, cumulatively (ablations)", rows, CONDITION_KEYS)
    notes = [INTERVALS_NOTE, "Peak RSS: the largest worker peak of any trial of the row (all statuses).", CV_NOTE]
    unstable = data[data["unstable"].map(is_unstable)] if len(data) else data
    if len(unstable):
        caption += (
            f" Warning: {len(unstable)} of {len(data)} conditions are unstable (latency CV ≥ "
            f"{100 * UNSTABLE_CV:.0f} %, pyperf's rule; column unstable): their latency differences need a "
            "quieter machine or more trials."
        )
        for _, row in unstable.iterrows():
            name = ", ".join(f"{KEY_HEADERS[k]} {fmt_key(k, row[k])}" for k in shown)
            lengths = row["unstable_lengths"].replace(";", ", ")
            at = (
                ""
                if fmt_key("text_length", row["lat_cv_max_length"]) == NO_DATA
                else f" at {row['lat_cv_max_length']:.0f}"
            )
            notes.append(
                f"Unstable — {name}: CV ≥ {100 * UNSTABLE_CV:.0f} % at length {lengths} (largest "
                f"{100 * row['lat_cv_max']:.1f} %{at}); machine: {fmt_hygiene(row)}."
            )
    notes.append(f"{HYGIENE_NOTE}: {fmt_hygiene(hygiene_stats(rows))}.")
    return Table("ablation", caption, data, header, cells, notes, "l" * len(shown) + "rrlrrrrrrrl")


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else x


def _caption(title: str, rows: pd.DataFrame, keys: Sequence[str]) -> str:
    fixed = constants(rows, keys)
    return f"{title}{' — ' + fixed if fixed else ''}. {provenance(rows)}."


def _before_after(
    rows: pd.DataFrame, before: str, after: str, keys: Sequence[str] = CONDITION_KEYS
) -> Iterable[tuple[dict[str, object], pd.DataFrame, pd.DataFrame]]:
    """Per condition (``keys``), the ``before`` and ``after`` ablations' rows (conditions with neither
    skipped)."""
    subset = rows[rows["ablation"].isin([before, after])]
    for key, group in _grouped(subset, keys):
        yield key, group[group["ablation"] == before], group[group["ablation"] == after]


def memory_stability_table(rows: pd.DataFrame) -> Table:
    """OOM rate without the runtime (baseline) and with all of it (estimation), per condition and budget
    policy of the whole runtime; the change in OOM rate paired by text, memory level and block.

    Not per quantization mode: choosing one (int8 where fp32 would not fit) is part of what the whole
    runtime does, so its trials are compared with the baseline's whatever mode they ran in."""
    rows = with_quant(rows)
    condition = [k for k in CONDITION_KEYS if k not in STABILITY_ACROSS]
    keys = [*condition, "budget_policy"]
    records = []
    for key, before, after_all in _before_after(rows, BEFORE_STABILITY, AFTER_STABILITY, condition):
        # The whole runtime under two budget policies (seed, calibrated) is two conditions, each against
        # the one baseline; rows without the column are one policy.
        policy_of = after_all.get("budget_policy", pd.Series(pd.NA, index=after_all.index, dtype="object"))
        by_policy = list(after_all.groupby(policy_of.fillna(NO_DATA), sort=True)) or [(NO_DATA, after_all)]
        for policy, after in by_policy:
            record = {**key, "budget_policy": policy, "n_before": len(before)}
            record |= rate_stats(before, "oom", "oom_before")
            record |= {"n_after": len(after), **rate_stats(after, "oom", "oom_after")}
            record |= rate_stats(after, "refused", "refused_after")
            both = pd.concat([before, after])
            n_pairs, change = rate_effect(both, BEFORE_STABILITY, AFTER_STABILITY, "oom", STABILITY_ACROSS)
            pp = (math.nan,) * 3 if change is None else (change.estimate, change.low, change.high)
            record |= {"n_pairs": n_pairs, **dict(zip(OOM_CHANGE_COLUMNS, (100 * x for x in pp)))}
            records.append(record)
    columns = [
        "n_before",
        "oom_before",
        "oom_before_lo",
        "oom_before_hi",
        "n_after",
        "oom_after",
        "oom_after_lo",
        "oom_after_hi",
        "refused_after",
        "refused_after_lo",
        "refused_after_hi",
        "n_pairs",
        *OOM_CHANGE_COLUMNS,
    ]
    data = _frame(records, keys, columns)
    shown = varying_keys(rows, condition) or ["profile"]
    if data["budget_policy"].nunique(dropna=False) > 1:
        shown = [*shown, "budget_policy"]
    header, cells = _key_cells(data, shown)
    header += [
        f"n {BEFORE_STABILITY}",
        "OOM % before [CI]",
        f"n {AFTER_STABILITY}",
        "OOM % after [CI]",
        "refused % after [CI]",
        "n pairs",
        "Δ OOM pp paired [CI]",
    ]
    for row, out in zip(data.itertuples(index=False), cells):
        out += [
            str(row.n_before),
            fmt_rate(row.oom_before, row.oom_before_lo, row.oom_before_hi),
            str(row.n_after),
            fmt_rate(row.oom_after, row.oom_after_lo, row.oom_after_hi),
            fmt_rate(row.refused_after, row.refused_after_lo, row.refused_after_hi),
            str(row.n_pairs),
            fmt_effect(row.oom_change_pp, row.oom_change_pp_lo, row.oom_change_pp_hi),
        ]
    notes = [
        INTERVALS_NOTE,
        "A request the runtime declines is `refused`, not OOM: the refused share says what the OOMs became.",
        "Δ OOM pp: the change in the OOM rate, after minus before in percentage points, paired: each trial "
        f"of {BEFORE_STABILITY} is matched with the {AFTER_STABILITY} trial of the same run, block, text, "
        "concurrency, memory level and background, whatever either's outcome; the mean over pairs of the "
        "two 0/1 outcomes' difference, with a 95 % percentile bootstrap over the pairs.",
    ]
    if data["n_pairs"].lt(2).any():
        notes.append(
            f"{NO_DATA} in Δ: fewer than two pairs (the two ablations ran in different runs, or a text ran "
            "more than once per cell); no difference of the unpaired rates is shown instead."
        )
    return Table(
        "memory_stability",
        _caption(
            f"Memory stability: OOM rate before ({BEFORE_STABILITY}) and after ({AFTER_STABILITY}, the whole runtime)",
            rows,
            condition,
        ),
        data,
        header,
        cells,
        notes,
        "l" * len(shown) + "r" * 7,
    )


def _platform_notes(group: pd.DataFrame) -> str:
    """What the rows say about the machine and its failures (no judgement added)."""
    parts = sorted(map(str, group["cpu_model"].dropna().unique()))
    caps = group["mem_cap_mb"].dropna().unique()
    if len(caps):
        how = sorted(map(str, group["mem_cap_mechanism"].dropna().unique())) if "mem_cap_mechanism" in group else []
        parts.append(f"cap {', '.join(f'{c:.0f}' for c in sorted(caps))} MB" + (f" ({', '.join(how)})" if how else ""))
    parts.append(f"cpus {', '.join(sorted(map(str, group['cpus'].dropna().unique())))}")
    parts.append(f"failures: {_failures(group)}")
    return "; ".join(parts)


def cross_platform_table(rows: pd.DataFrame) -> Table:
    """The whole runtime per machine: success, mean latency, what the rows say; real vs simulated."""
    rows = with_quant(rows)
    keys = list(CONDITION_KEYS)
    records = []
    for key, group in _grouped(rows[rows["ablation"] == FULL_RUNTIME], keys):
        latency = _ok_latency(group)
        records.append(
            {
                **key,
                "n": len(group),
                "n_ok": len(latency),
                **rate_stats(group, "ok", "success"),
                **location_stats(latency, "mean", "lat_mean_ms"),
                "notes": _platform_notes(group),
            }
        )
    columns = [
        "n",
        "n_ok",
        "success",
        "success_lo",
        "success_hi",
        "lat_mean_ms",
        "lat_mean_ms_lo",
        "lat_mean_ms_hi",
        "notes",
    ]
    data = _frame(records, keys, columns)
    shown = ["profile", "simulated"] + [k for k in varying_keys(rows) if k not in ("profile", "simulated")]
    header, cells = _key_cells(data, shown)
    header = ["simulated" if h == KEY_HEADERS["simulated"] else h for h in header]
    header += ["n", "success % [CI]", "mean ms [CI]", "notes"]
    for row, out in zip(data.itertuples(index=False), cells):
        out += [
            str(row.n),
            fmt_rate(row.success, row.success_lo, row.success_hi),
            fmt_interval(row.lat_mean_ms, row.lat_mean_ms_lo, row.lat_mean_ms_hi),
            row.notes,
        ]
    return Table(
        "cross_platform",
        _caption(
            f"Cross-platform validation, whole runtime ({FULL_RUNTIME})",
            rows,
            [k for k in CONDITION_KEYS if k not in shown],
        ),
        data,
        header,
        cells,
        [
            INTERVALS_NOTE,
            "simulated: the profile's memory and cores imposed on a bigger host (docs/harness.md); "
            "real: measured on the machine itself.",
        ],
        "l" * len(shown) + "rrrl",
    )


def quantization_table(rows: pd.DataFrame, bench: pd.DataFrame | None = None) -> Table:
    """Per quantization mode: weight bytes, latency, peak RSS and quality.

    Over ok trials, by the mode each one ran with (the ``quantization`` column): a failed trial may not
    know its mode. Weight bytes and quality are not per-trial measurements (the rows do not carry them):
    they come from the bench file for that mode; a mode only the bench measured gets a row with no
    trials."""
    rows = with_quant(rows)  # for the condition columns older datasets lack
    keys = [k for k in CONDITION_KEYS if k != "quant"] + ["ablation", "quantization"]
    ok = rows[rows["status"] == "ok"]
    by_mode = (bench if bench is not None else pd.DataFrame(columns=["quantization"])).set_index("quantization")
    records = []
    for base, same in _grouped(ok, keys[:-1]):
        for mode, group in _grouped(same, ["quantization"]):
            key = base | mode
            latency = _ok_latency(group)
            record = {
                **key,
                "n_ok": len(group),
                **location_stats(latency, "mean", "lat_mean_ms"),
                "peak_rss_mb": group["peak_rss_mb"].max(),
            }
            record |= _against_full_precision(same, key["quantization"])
            for column in QUALITY_COLUMNS:
                known = column in by_mode and key["quantization"] in by_mode.index
                value = by_mode.at[key["quantization"], column] if known else math.nan
                record |= {column: value, f"{column}_source": "" if _missing(value) else "bench"}
            records.append(record)
    for mode in sorted(set(by_mode.index) - set(ok["quantization"].dropna())):
        record = {"quantization": mode, "n_ok": 0}
        for column in QUALITY_COLUMNS:
            value = by_mode.at[mode, column] if column in by_mode else math.nan
            record |= {column: value, f"{column}_source": "" if _missing(value) else "bench"}
        records.append(record)
    columns = ["n_ok", "lat_mean_ms", "lat_mean_ms_lo", "lat_mean_ms_hi", "n_pairs", *CHANGE_COLUMNS, "peak_rss_mb"]
    columns += [c for column in QUALITY_COLUMNS for c in (column, f"{column}_source")]
    data = _frame(records, keys, columns)
    shown = [k for k in varying_keys(ok, keys) if k != "quantization"] + ["quantization"]
    header, cells = _key_cells(data, shown)
    header += ["n ok", "weights MB", "mean ms [CI]", f"n pairs vs {FULL_PRECISION}", "Δ latency % paired [CI]"]
    header += ["peak RSS MB", "MCD dB", "log-mel dB", "bytes/quality from"]
    for row, out in zip(data.itertuples(index=False), cells):
        sources = sorted({s for s in (row.weight_bytes_source, row.mcd_db_source, row.log_mel_db_source) if s})
        out += [
            str(row.n_ok),
            fmt_num(row.weight_bytes / MIB if not _missing(row.weight_bytes) else math.nan, 2),
            fmt_interval(row.lat_mean_ms, row.lat_mean_ms_lo, row.lat_mean_ms_hi),
            NO_DATA if _missing(row.n_pairs) else str(int(row.n_pairs)),
            fmt_effect(row.change_pct, row.change_pct_lo, row.change_pct_hi),
            fmt_num(row.peak_rss_mb),
            fmt_num(row.mcd_db, 2),
            fmt_num(row.log_mel_db, 2),
            ", ".join(sources) or NO_DATA,
        ]
    notes = [
        INTERVALS_NOTE,
        "Ok trials only, by the mode they ran with. MCD / log-mel: distance from the fp32 "
        "model's rendering (adaptive_tts.runtime.quality); lower is closer.",
        f"Δ latency %: the mode's condition against the {FULL_PRECISION} condition of the same ablation and "
        f"sweep (e.g. -m engine.quantization={FULL_PRECISION},int8); {PAIRED_NOTE} {NO_DATA}: the "
        f"{FULL_PRECISION} row itself, or fewer than two pairs — no unpaired ratio is shown instead.",
    ]
    if bench is None:
        notes.append("No bench_quantize file was given or found: weights and quality only where rows carry them.")
    return Table(
        "quantization",
        _caption("Quantization modes", ok, [k for k in keys if k not in shown]),
        data,
        header,
        cells,
        notes,
        "l" * len(shown) + "r" * 8 + "l",
    )


def _against_full_precision(rows: pd.DataFrame, mode: object) -> dict[str, object]:
    """The number of pairs and the paired latency change (percent, with its interval) of the condition
    that ran ``mode`` over the full-precision condition in ``rows`` (one ablation and condition but for
    its quantization); NaN where either is missing."""
    if _missing(mode) or mode == FULL_PRECISION:
        return {"n_pairs": math.nan, **dict.fromkeys(CHANGE_COLUMNS, math.nan)}
    n_pairs, effect = relative_effect(rows, FULL_PRECISION, str(mode), "latency_ms", side="quant")
    change = (math.nan,) * 3 if effect is None else (effect.estimate, effect.low, effect.high)
    return {"n_pairs": n_pairs, **dict(zip(CHANGE_COLUMNS, (100 * x for x in change)))}
