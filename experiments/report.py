"""``python -m experiments.report [DATASET ...]``: the thesis's tables and figures, regenerated from the
harness's Parquet rows, each with its uncertainty, trial count and the machine it came from.

DATASET is a run folder, a run id under the harness's results directory, a folder of runs, a rows
folder or a single Parquet file (several merge by concatenation, as datasets from several machines do);
without one, the latest run under the results directory is used. Output goes to ``<run>/report/``
(``<file stem>-report/`` beside a Parquet file), or ``--out``:

* ``tables/<name>.md``, ``.tex`` (booktabs) and ``.csv`` (the same numbers at full precision, so any
  cell can be checked against the rows);
* ``figures/<name>.pdf``, ``.png`` and ``.caption.txt`` (n, runs, machine, how intervals were made).

Nothing here invents a number: a cell without rows behind it reads "—" (no data), a tail percentile
the sample cannot support reads "n.b." (not bounded, see :func:`experiments.stats.min_n_for_quantile`),
and a figure without data is skipped with the reason. Rates use Wilson intervals, latency means and
medians fixed-seed bootstrap intervals (:mod:`experiments.stats`). Success means status ``ok``.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import matplotlib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from experiments.results import CORE_SCHEMA, read_rows
from experiments.stats import (
    BOOTSTRAP_RESAMPLES,
    bootstrap_interval,
    min_n_for_quantile,
    tail_quantile,
    wilson_interval,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent

#: What makes two sets of rows different experiments (apart from the ablation): a table shows the ones
#: that vary in its dataset as columns and states the constant ones in its caption. ``quant`` is derived
#: per condition (:func:`with_quant`).
CONDITION_KEYS = ("host", "profile", "simulated", "workload", "engine", "quant")
#: The cumulative ablations of docs/architecture.md, fewest runtime features first.
ABLATION_ORDER = ("baseline", "budget", "affinity", "estimation")
#: The memory-stability comparison: without any runtime feature vs the whole runtime.
BEFORE_STABILITY, AFTER_STABILITY = "baseline", "estimation"
#: The affinity comparison: the budget manager alone vs budget manager + CPU affinity.
BEFORE_AFFINITY, AFTER_AFFINITY = "budget", "affinity"
#: The runtime as shipped (all features on): the condition the cross-platform table compares.
FULL_RUNTIME = "estimation"

NO_DATA = "—"
NOT_BOUNDED = "n.b."
NO_DATA_NOTE = "—: no data (no rows for this cell)."
NOT_BOUNDED_NOTE = (
    f"n.b.: not bounded — the sample p95 is reported from {min_n_for_quantile(0.95)} ok trials, "
    f"p99 from {min_n_for_quantile(0.99)} (at least one trial above the percentile)."
)
INTERVALS_NOTE = (
    "[ ]: 95 % intervals — Wilson score for rates, percentile bootstrap "
    f"({BOOTSTRAP_RESAMPLES} resamples, fixed seed) for means and medians; latency over ok trials."
)

#: Bench files ``python -m experiments.bench_quantize`` may leave, looked for when --quantize is not given.
BENCH_NAMES = ("bench_quantize.parquet", "bench_quantize.csv")
#: Accepted spellings of a bench file's columns: first match wins. ``python -m
#: experiments.bench_quantize --csv`` writes ``mode``, ``weight_bytes``, ``mcd_db`` and ``log_mel_db``.
BENCH_COLUMNS = {
    "quantization": ("quantization", "mode"),
    "weight_bytes": ("weight_bytes",),
    "mcd_db": ("mcd_db",),
    "log_mel_db": ("log_mel_db",),
}
QUALITY_COLUMNS = ("weight_bytes", "mcd_db", "log_mel_db")

#: Thesis column width, 8 pt text: readable when the PDF is included at 100 %.
FIGURE_STYLE = {
    "figure.figsize": (3.3, 2.6),
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.5,
    "errorbar.capsize": 2,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.5,
    "pdf.fonttype": 42,  # embed TrueType, so the PDF's text stays text in the thesis
    "savefig.dpi": 300,
}


# -- loading -------------------------------------------------------------------------------------------


def default_results_dir() -> Path:
    """The harness's results directory (conf/config.yaml's ``results_dir``, relative to the working
    directory as the harness takes it), so the report finds runs where the harness wrote them."""
    return Path(OmegaConf.load(REPO_ROOT / "conf" / "config.yaml").results_dir)


def latest_run(results_dir: Path) -> Path:
    """The run folder whose rows changed last (run ids are timestamps or Slurm ids, not sortable
    across both)."""
    runs = [rows.parent for rows in Path(results_dir).glob("*/rows") if rows.is_dir()]
    if not runs:
        raise FileNotFoundError(f"no runs under {results_dir}")
    return max(runs, key=lambda run: (run / "rows").stat().st_mtime)


def resolve_dataset(dataset: str | None, results_dir: Path) -> Path:
    """A path as given, else a run id under ``results_dir``, else (None) the latest run."""
    if dataset is None:
        return latest_run(results_dir)
    path = Path(dataset)
    if path.exists():
        return path
    if (Path(results_dir) / dataset).exists():
        return Path(results_dir) / dataset
    raise FileNotFoundError(f"{dataset!r} is neither a path nor a run under {results_dir}")


def load_rows(*paths: str | Path) -> pd.DataFrame:
    """Rows from run folders (:func:`experiments.results.read_rows`) and/or single Parquet files, with
    read_rows's nullable dtypes either way; every core column must be there."""
    frames = []
    for path in map(Path, paths):
        if path.is_file():
            frames.append(
                pq.read_table(path).to_pandas(
                    types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get
                )
            )
        else:
            frames.append(read_rows(path))
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    missing = [name for name in CORE_SCHEMA.names if name not in rows.columns]
    if missing:
        raise ValueError(f"not harness rows: core columns missing: {missing}")
    return rows


def default_out_dir(dataset: Path) -> Path:
    """``<run>/report`` for a run (or folder of runs), ``<run>/report`` for its rows folder,
    ``<stem>-report`` beside a Parquet file."""
    if dataset.is_file():
        return dataset.with_name(f"{dataset.stem}-report")
    if dataset.name == "rows":
        return dataset.parent / "report"
    return dataset / "report"


def find_bench(candidates: Iterable[Path]) -> Path | None:
    """The first bench_quantize output in the given folders."""
    for folder in candidates:
        for name in BENCH_NAMES:
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    return None


def load_bench(path: str | Path) -> pd.DataFrame:
    """``python -m experiments.bench_quantize``'s measurements per quantization mode: weight bytes and
    quality (MCD, log-mel distance vs fp32), averaged over the file's rows per mode.

    Columns are matched by :data:`BENCH_COLUMNS`; a file without a mode column cannot be attributed to
    a mode and is an error. Missing measurements stay missing."""
    path = Path(path)
    raw = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    columns = {}
    for name, spellings in BENCH_COLUMNS.items():
        found = next((s for s in spellings if s in raw.columns), None)
        if found is not None:
            columns[name] = pd.to_numeric(raw[found]) if name != "quantization" else raw[found].astype(str)
    if "quantization" not in columns:
        raise ValueError(f"{path}: no mode column (one of {BENCH_COLUMNS['quantization']})")
    grouped = pd.DataFrame(columns).groupby("quantization", sort=True)
    return grouped.mean().assign(bench_n=grouped.size()).reset_index()


# -- formatting ----------------------------------------------------------------------------------------


def _missing(x: object) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def fmt_num(x: float | None, digits: int | None = None) -> str:
    """A measurement: whole numbers from 100 up, one decimal below (or ``digits``)."""
    if _missing(x):
        return NO_DATA
    digits = digits if digits is not None else (0 if abs(x) >= 100 else 1)
    return f"{x:.{digits}f}"


def fmt_interval(x: float | None, low: float | None, high: float | None, digits: int | None = None) -> str:
    """``x [low, high]``; the bare value where no interval exists (a single observation)."""
    if _missing(x):
        return NO_DATA
    if _missing(low) or _missing(high):
        return fmt_num(x, digits)
    digits = digits if digits is not None else (0 if abs(x) >= 100 else 1)
    return f"{x:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_rate(p: float | None, low: float | None, high: float | None) -> str:
    """A proportion as a percentage with its interval."""
    if _missing(p):
        return NO_DATA
    return f"{100 * p:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def fmt_tail(x: float | None, n_ok: int, q: float) -> str:
    if n_ok == 0:
        return NO_DATA
    if n_ok < min_n_for_quantile(q):
        return NOT_BOUNDED
    return fmt_num(x)


def fmt_key(column: str, value: object) -> str:
    if _missing(value):
        return NO_DATA
    if column == "simulated":
        return "simulated" if value else "real"
    return str(value)


KEY_HEADERS = {
    "host": "host",
    "profile": "profile",
    "simulated": "device",
    "workload": "workload",
    "engine": "engine",
    "quant": "quant.",
    "quantization": "mode",
    "ablation": "ablation",
}


# -- statistics per group --------------------------------------------------------------------------------


def _ok_latency(group: pd.DataFrame) -> np.ndarray:
    ok = group[(group["status"] == "ok") & group["latency_ms"].notna()]
    return ok["latency_ms"].to_numpy(dtype=float)


def rate_stats(group: pd.DataFrame, status: str, prefix: str) -> dict[str, float]:
    """Share of ``group``'s trials with ``status``, with its Wilson interval (NaN without trials)."""
    n = len(group)
    if n == 0:
        return {prefix: math.nan, f"{prefix}_lo": math.nan, f"{prefix}_hi": math.nan}
    k = int((group["status"] == status).sum())
    low, high = wilson_interval(k, n)
    return {prefix: k / n, f"{prefix}_lo": low, f"{prefix}_hi": high}


def location_stats(values: np.ndarray, statistic: str, prefix: str) -> dict[str, float]:
    """Mean or median of ``values`` with its bootstrap interval (NaN where it does not exist)."""
    if len(values) == 0:
        return {prefix: math.nan, f"{prefix}_lo": math.nan, f"{prefix}_hi": math.nan}
    centre = float(np.mean(values) if statistic == "mean" else np.median(values))
    interval = bootstrap_interval(values, statistic)
    low, high = interval if interval else (math.nan, math.nan)
    return {prefix: centre, f"{prefix}_lo": low, f"{prefix}_hi": high}


def _ablation_rank(name: str) -> int:
    return ABLATION_ORDER.index(name) if name in ABLATION_ORDER else len(ABLATION_ORDER)


def _grouped(rows: pd.DataFrame, keys: Sequence[str]) -> Iterable[tuple[dict[str, object], pd.DataFrame]]:
    """(key values, rows) per group, nulls kept as a group of their own."""
    for values, group in rows.groupby(list(keys), dropna=False, sort=False):
        yield dict(zip(keys, values if isinstance(values, tuple) else (values,))), group


def _sorted(data: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Rows in key order, ablations in their cumulative order."""
    if data.empty:
        return data
    order = data.assign(
        _rank=data["ablation"].map(_ablation_rank) if "ablation" in data else 0,
        **{f"_{k}": data[k].map(lambda v: "\uffff" if _missing(v) else str(v)) for k in keys},  # no key: last
    )
    sort_by = [f"_{k}" for k in keys if k != "ablation"] + (["_rank", "_ablation"] if "ablation" in keys else [])
    return order.sort_values(sort_by, kind="stable").drop(columns=[c for c in order if c.startswith("_")]).reset_index(
        drop=True
    )


def with_quant(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``quant``: the quantization modes its condition's trials ran with ("fp32", or
    "int4+int8" where the runtime changed precision during the run; null if no trial says).

    Why not the ``quantization`` column itself: a row records the mode its synthesis *used*, and a trial
    that failed before synthesis records only the configured mode, which is null when the profile was
    to choose. Grouping by the raw column would tear such a condition in two — its failures apart from
    its successes — and report a 100 % success rate for the half that worked. A condition is the trial
    key without its length and iteration (experiments.sweep), on one host."""
    if "quant" in rows.columns:
        return rows
    if "trial_key" in rows.columns:
        condition = rows["trial_key"].str.rsplit("/", n=2).str[0]
    else:
        condition = pd.Series(pd.NA, index=rows.index, dtype="string")
    condition = condition.fillna(rows["run_id"].astype(str) + "/" + rows["ablation"].astype(str))
    modes = rows.groupby([rows["host"], condition], dropna=False)["quantization"].transform(
        lambda used: "+".join(sorted(used.dropna().unique())) or None
    )
    return rows.assign(quant=modes)


def varying_keys(rows: pd.DataFrame, keys: Sequence[str] = CONDITION_KEYS) -> list[str]:
    """Keys with more than one value (null counts as a value) in ``rows``."""
    return [k for k in keys if rows[k].nunique(dropna=False) > 1]


# -- provenance ----------------------------------------------------------------------------------------


def machines(rows: pd.DataFrame) -> list[str]:
    """One phrase per machine in ``rows``: host, CPU, real or simulated (with the cap and how)."""
    phrases = []
    keys = ["host", "cpu_model", "simulated", "profile", "mem_cap_mb", "mem_cap_mechanism"]
    present = [k for k in keys if k in rows.columns]
    for values, _ in rows.groupby(present, dropna=False, sort=True):
        m = dict(zip(present, values))
        if m.get("simulated") is True:
            cap = "" if _missing(m.get("mem_cap_mb")) else f", cap {m['mem_cap_mb']:.0f} MB"
            how = "" if _missing(m.get("mem_cap_mechanism")) else f" via {m['mem_cap_mechanism']}"
            kind = f"simulated {m['profile']}{cap}{how}"
        elif m.get("simulated") is False:
            kind = f"real, profile {m['profile']}"
        else:
            kind = f"real or simulated unknown, profile {m['profile']}"
        phrases.append(f"{fmt_key('host', m['host'])} ({fmt_key('cpu_model', m['cpu_model'])}; {kind})")
    return phrases


def provenance(rows: pd.DataFrame) -> str:
    """n, runs and machines of ``rows``: what every caption carries."""
    if rows.empty:
        return "n = 0 trials"
    n_ok = int((rows["status"] == "ok").sum())
    runs = ", ".join(sorted(map(str, rows["run_id"].dropna().unique())))
    return f"n = {len(rows)} trials ({n_ok} ok); run {runs}; machine: {'; '.join(machines(rows))}"


def constants(rows: pd.DataFrame, keys: Sequence[str]) -> str:
    """The condition keys that do not vary, as a phrase (they are not columns of the table)."""
    if rows.empty:
        return ""
    fixed = [k for k in keys if rows[k].nunique(dropna=False) == 1]
    return ", ".join(f"{KEY_HEADERS[k]} {fmt_key(k, rows[k].iloc[0])}" for k in fixed)


# -- tables --------------------------------------------------------------------------------------------


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
            }
        )
    columns = ["n", "n_ok", "success", "success_lo", "success_hi", "failures"] + [
        f"lat_{s}_ms{suffix}" for s in ("mean", "median") for suffix in ("", "_lo", "_hi")
    ] + ["lat_p95_ms", "lat_p99_ms", "lat_std_ms", "peak_rss_mb"]
    data = _frame(records, keys, columns)
    shown = varying_keys(rows) + ["ablation"]
    header, cells = _key_cells(data, shown)
    header += ["n", "success % [CI]", "failures", "mean ms [CI]", "median ms [CI]", "p95 ms", "p99 ms", "std ms",
               "peak RSS MB"]
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
        ]
    return Table(
        "ablation",
        _caption("Runtime features, cumulatively (ablations)", rows, CONDITION_KEYS),
        data,
        header,
        cells,
        [INTERVALS_NOTE, "Peak RSS: the largest worker peak of any trial of the row (all statuses)."],
        "l" * len(shown) + "rrlrrrrrr",
    )


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else x


def _caption(title: str, rows: pd.DataFrame, keys: Sequence[str]) -> str:
    fixed = constants(rows, keys)
    return f"{title}{' — ' + fixed if fixed else ''}. {provenance(rows)}."


def _before_after(
    rows: pd.DataFrame, before: str, after: str
) -> Iterable[tuple[dict[str, object], pd.DataFrame, pd.DataFrame]]:
    """Per condition, the ``before`` and ``after`` ablations' rows (conditions with neither skipped)."""
    subset = rows[rows["ablation"].isin([before, after])]
    for key, group in _grouped(subset, CONDITION_KEYS):
        yield key, group[group["ablation"] == before], group[group["ablation"] == after]


def memory_stability_table(rows: pd.DataFrame) -> Table:
    """OOM rate without the runtime (baseline) and with all of it (estimation), per condition."""
    rows = with_quant(rows)
    keys = list(CONDITION_KEYS)
    records = []
    for key, before, after in _before_after(rows, BEFORE_STABILITY, AFTER_STABILITY):
        record = {**key, "n_before": len(before), **rate_stats(before, "oom", "oom_before")}
        record |= {"n_after": len(after), **rate_stats(after, "oom", "oom_after")}
        record |= rate_stats(after, "refused", "refused_after")
        record["oom_change_pp"] = 100 * (record["oom_after"] - record["oom_before"])
        records.append(record)
    columns = ["n_before", "oom_before", "oom_before_lo", "oom_before_hi", "n_after", "oom_after", "oom_after_lo",
               "oom_after_hi", "refused_after", "refused_after_lo", "refused_after_hi", "oom_change_pp"]
    data = _frame(records, keys, columns)
    shown = varying_keys(rows) or ["profile"]
    header, cells = _key_cells(data, shown)
    header += [f"n {BEFORE_STABILITY}", "OOM % before [CI]", f"n {AFTER_STABILITY}", "OOM % after [CI]",
               "refused % after [CI]", "Δ OOM pp"]
    for row, out in zip(data.itertuples(index=False), cells):
        out += [
            str(row.n_before),
            fmt_rate(row.oom_before, row.oom_before_lo, row.oom_before_hi),
            str(row.n_after),
            fmt_rate(row.oom_after, row.oom_after_lo, row.oom_after_hi),
            fmt_rate(row.refused_after, row.refused_after_lo, row.refused_after_hi),
            fmt_num(row.oom_change_pp, 1),
        ]
    return Table(
        "memory_stability",
        _caption(f"Memory stability: OOM rate before ({BEFORE_STABILITY}) and after ({AFTER_STABILITY}, the whole "
                 "runtime)", rows, CONDITION_KEYS),
        data,
        header,
        cells,
        [INTERVALS_NOTE, "A request the runtime declines is `refused`, not OOM: the refused share says what the "
         "OOMs became. Δ pp: after minus before, percentage points."],
        "l" * len(shown) + "r" * 6,
    )


def affinity_table(rows: pd.DataFrame) -> Table:
    """Mean latency without CPU affinity (budget) and with it (affinity), per condition."""
    rows = with_quant(rows)
    keys = list(CONDITION_KEYS)
    records = []
    for key, before, after in _before_after(rows, BEFORE_AFFINITY, AFTER_AFFINITY):
        lat_before, lat_after = _ok_latency(before), _ok_latency(after)
        record = {**key, "n_before": len(lat_before), **location_stats(lat_before, "mean", "lat_before_ms")}
        record |= {"n_after": len(lat_after), **location_stats(lat_after, "mean", "lat_after_ms")}
        record["change_pct"] = 100 * (record["lat_after_ms"] / record["lat_before_ms"] - 1)
        records.append(record)
    columns = ["n_before", "lat_before_ms", "lat_before_ms_lo", "lat_before_ms_hi", "n_after", "lat_after_ms",
               "lat_after_ms_lo", "lat_after_ms_hi", "change_pct"]
    data = _frame(records, keys, columns)
    shown = varying_keys(rows) or ["profile"]
    header, cells = _key_cells(data, shown)
    header += [f"n ok {BEFORE_AFFINITY}", "mean ms before [CI]", f"n ok {AFTER_AFFINITY}", "mean ms after [CI]", "Δ %"]
    for row, out in zip(data.itertuples(index=False), cells):
        out += [
            str(row.n_before),
            fmt_interval(row.lat_before_ms, row.lat_before_ms_lo, row.lat_before_ms_hi),
            str(row.n_after),
            fmt_interval(row.lat_after_ms, row.lat_after_ms_lo, row.lat_after_ms_hi),
            fmt_num(row.change_pct, 1),
        ]
    return Table(
        "affinity_latency",
        _caption(f"Latency before ({BEFORE_AFFINITY}) and after ({AFTER_AFFINITY}) CPU affinity", rows, CONDITION_KEYS),
        data,
        header,
        cells,
        [INTERVALS_NOTE, "Δ %: after / before − 1 of the means; negative is faster."],
        "l" * len(shown) + "r" * 5,
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
    columns = ["n", "n_ok", "success", "success_lo", "success_hi", "lat_mean_ms", "lat_mean_ms_lo", "lat_mean_ms_hi",
               "notes"]
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
        _caption(f"Cross-platform validation, whole runtime ({FULL_RUNTIME})", rows,
                 [k for k in CONDITION_KEYS if k not in shown]),
        data,
        header,
        cells,
        [INTERVALS_NOTE, "simulated: the profile's memory and cores imposed on a bigger host (docs/harness.md); "
         "real: measured on the machine itself."],
        "l" * len(shown) + "rrrl",
    )


def quantization_table(rows: pd.DataFrame, bench: pd.DataFrame | None = None) -> Table:
    """Per quantization mode: weight bytes, latency, peak RSS and quality.

    Over ok trials, by the mode each one ran with (the ``quantization`` column): a failed trial may not
    know its mode. Weight bytes and quality are not per-trial measurements (the rows do not carry them):
    they come from the bench file for that mode; a mode only the bench measured gets a row with no
    trials."""
    keys = [k for k in CONDITION_KEYS if k != "quant"] + ["ablation", "quantization"]
    ok = rows[rows["status"] == "ok"]
    by_mode = (bench if bench is not None else pd.DataFrame(columns=["quantization"])).set_index("quantization")
    records = []
    for key, group in _grouped(ok, keys):
        latency = _ok_latency(group)
        record = {**key, "n_ok": len(group), **location_stats(latency, "mean", "lat_mean_ms"),
                  "peak_rss_mb": group["peak_rss_mb"].max()}
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
    columns = ["n_ok", "lat_mean_ms", "lat_mean_ms_lo", "lat_mean_ms_hi", "peak_rss_mb"] + [
        c for column in QUALITY_COLUMNS for c in (column, f"{column}_source")
    ]
    data = _frame(records, keys, columns)
    shown = [k for k in varying_keys(ok, keys) if k != "quantization"] + ["quantization"]
    header, cells = _key_cells(data, shown)
    header += ["n ok", "weights MB", "mean ms [CI]", "peak RSS MB", "MCD dB", "log-mel dB", "bytes/quality from"]
    for row, out in zip(data.itertuples(index=False), cells):
        sources = sorted({s for s in (row.weight_bytes_source, row.mcd_db_source, row.log_mel_db_source) if s})
        out += [
            str(row.n_ok),
            fmt_num(row.weight_bytes / 2**20 if not _missing(row.weight_bytes) else math.nan, 2),
            fmt_interval(row.lat_mean_ms, row.lat_mean_ms_lo, row.lat_mean_ms_hi),
            fmt_num(row.peak_rss_mb),
            fmt_num(row.mcd_db, 2),
            fmt_num(row.log_mel_db, 2),
            ", ".join(sources) or NO_DATA,
        ]
    notes = [INTERVALS_NOTE, "Ok trials only, by the mode they ran with. MCD / log-mel: distance from the fp32 "
             "model's rendering (adaptive_tts.runtime.quality); lower is closer."]
    if bench is None:
        notes.append("No bench_quantize file was given or found: weights and quality only where rows carry them.")
    return Table("quantization", _caption("Quantization modes", ok, [k for k in keys if k not in shown]), data,
                 header, cells, notes, "l" * len(shown) + "r" * 6 + "l")


def build_tables(rows: pd.DataFrame, bench: pd.DataFrame | None = None) -> list[Table]:
    """Every thesis table from ``rows`` (and the optional quantization bench); a memory sweep adds its own."""
    from experiments.report_memory import memory_tables  # it builds on this module's cells and statistics

    return [
        ablation_table(rows),
        memory_stability_table(rows),
        affinity_table(rows),
        cross_platform_table(rows),
        quantization_table(rows, bench),
        *memory_tables(rows),
    ]


# -- table rendering -------------------------------------------------------------------------------------


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table with its caption above and notes below."""
    lines = [f"**Table ({table.name}).** {table.caption}", ""]
    if table.cells:
        lines.append("| " + " | ".join(table.header) + " |")
        lines.append("|" + "|".join(":--" if a == "l" else "--:" for a in table.align) + "|")
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.cells]
    else:
        lines.append(f"{NO_DATA} no rows for this table in the dataset.")
    lines.append("")
    lines += [f"- {note}" for note in table.all_notes()]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "---", "–": "--", "−": "$-$", "≥": r"$\geq$",
    "≤": r"$\leq$", "Δ": r"$\Delta$", "×": r"$\times$", "`": "",
}
_LATEX_PATTERN = re.compile("|".join(map(re.escape, _LATEX_SPECIAL)))


def latex_escape(text: str) -> str:
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIAL[m.group()], text)


def to_latex(table: Table) -> str:
    """A booktabs table (``\\usepackage{booktabs}``); notes in small type under the rule."""
    lines = [
        "% Generated by `python -m experiments.report`; regenerate rather than edit.",
        r"\begin{table}[tbp]",
        r"\centering",
        r"\small",
        r"\setlength{\tabcolsep}{3pt}",
        rf"\caption{{{latex_escape(table.caption)}}}",
        rf"\label{{tab:{table.name.replace('_', '-')}}}",
    ]
    if table.cells:
        lines += [rf"\begin{{tabular}}{{{table.align}}}", r"\toprule"]
        lines.append(" & ".join(latex_escape(h) for h in table.header) + r" \\")
        lines.append(r"\midrule")
        lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in table.cells]
        lines += [r"\bottomrule", r"\end{tabular}"]
    else:
        lines.append(latex_escape(f"{NO_DATA} no rows for this table in the dataset.") + r"\par")
    notes = table.all_notes()
    if notes:
        # \par between notes, not \\: a note starting with "[" would read as \\[length].
        lines.append(r"\par\smallskip\footnotesize " + r"\par ".join(latex_escape(n) for n in notes))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# -- figures ---------------------------------------------------------------------------------------------


@dataclass
class FigureOut:
    """A drawn figure and its caption (the caption file carries n, runs and machine)."""

    name: str
    figure: Figure
    caption: str


@dataclass
class Skipped:
    """A figure the data cannot support, and why (the CLI says so instead of drawing an empty plot)."""

    name: str
    reason: str


def _new_figure() -> Figure:
    return Figure(layout="constrained")


def _series(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Rows per ablation in cumulative order."""
    names = sorted(rows["ablation"].dropna().unique(), key=lambda a: (_ablation_rank(a), a))
    return [(name, rows[rows["ablation"] == name]) for name in names]


def _per_length(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean of ``column`` per text length with its bootstrap interval."""
    records = []
    for length, group in rows.groupby("text_length", sort=True):
        values = group[column].dropna().to_numpy(dtype=float)
        if len(values):
            records.append({"text_length": int(length), "n": len(values), **location_stats(values, "mean", "y")})
    return pd.DataFrame(records, columns=["text_length", "n", "y", "y_lo", "y_hi"])


def _errorbar(ax, x: np.ndarray, stats: pd.DataFrame, scale: float, **kwargs) -> None:
    """Points with asymmetric interval bars (a point without an interval gets none). Bars are clipped
    at zero: identical values give a bound one rounding error past the mean, which matplotlib refuses."""
    y = stats["y"].to_numpy() * scale
    low = np.clip(np.nan_to_num((stats["y"] - stats["y_lo"]).to_numpy() * scale), 0, None)
    high = np.clip(np.nan_to_num((stats["y_hi"] - stats["y"]).to_numpy() * scale), 0, None)
    ax.errorbar(x, y, yerr=[low, high], marker="o", **kwargs)


def _legend_above(fig: Figure) -> None:
    """The legend above the axes, in two columns: inside, at column width, it would cover the data."""
    fig.legend(loc="outside upper center", ncols=2, frameon=False, columnspacing=1.0, handlelength=1.5)


def _dodge(index: int, count: int, span: float) -> float:
    """Horizontal offset of series ``index`` so that overlapping intervals stay apart."""
    return (index - (count - 1) / 2) * span * 0.012


def _per_length_figure(ok: pd.DataFrame, column: str, scale: float, label: str = "{}") -> tuple[Figure, Axes]:
    """A figure of ``column`` (times ``scale``) vs text length, one dodged series with intervals per
    ablation (``label`` formats its name)."""
    fig = _new_figure()
    ax = fig.add_subplot()
    series = _series(ok)
    span = float(ok["text_length"].max() - ok["text_length"].min()) or 1.0
    for i, (name, group) in enumerate(series):
        stats = _per_length(group, column)
        _errorbar(ax, stats["text_length"].to_numpy() + _dodge(i, len(series), span), stats, scale,
                  label=label.format(name))
    return fig, ax


def latency_vs_length(rows: pd.DataFrame) -> FigureOut | Skipped:
    ok = rows[(rows["status"] == "ok") & rows["latency_ms"].notna()]
    if ok.empty:
        return Skipped("latency_vs_length", "no ok trials with a latency")
    fig, ax = _per_length_figure(ok, "latency_ms", 1e-3)
    ax.set_xlabel("text length (characters)")
    ax.set_ylabel("latency to whole audio (s)")
    _legend_above(fig)
    return FigureOut(
        "latency_vs_length", fig,
        "Latency vs text length per ablation: mean over ok trials per length, bars 95 % bootstrap intervals "
        f"({BOOTSTRAP_RESAMPLES} resamples, fixed seed; none for a single trial); series offset slightly in x.",
    )


def memory_vs_length(rows: pd.DataFrame) -> FigureOut | Skipped:
    ok = rows[(rows["status"] == "ok") & rows["peak_rss_mb"].notna()]
    if ok.empty:
        return Skipped("memory_vs_length", "no ok trials with a peak RSS")
    fig, ax = _per_length_figure(ok, "peak_rss_mb", 1.0, label="{} (measured)")
    predicted = _per_length(rows[rows["estimated_mb"].notna()], "estimated_mb")
    note = "no rows carry an estimate"
    if not predicted.empty:
        ax.plot(predicted["text_length"], predicted["y"], "k--", marker="x", label="estimator (predicted)")
        note = "dashed: the estimator's mean prediction (estimated_mb) per length"
    ax.set_xlabel("text length (characters)")
    ax.set_ylabel("peak memory (MB)")
    _legend_above(fig)
    return FigureOut(
        "memory_vs_length", fig,
        "Peak worker memory (peak RSS) vs text length per ablation: mean over ok trials per length, bars 95 % "
        f"bootstrap intervals; {note}.",
    )


def success_rate(rows: pd.DataFrame) -> FigureOut | Skipped:
    if rows.empty:
        return Skipped("success_rate", "no trials")
    fig = _new_figure()
    ax = fig.add_subplot()
    series = _series(rows)
    names, rates, low, high = [], [], [], []
    for name, group in series:
        stats = rate_stats(group, "ok", "p")
        names.append(f"{name}\n(n={len(group)})")
        rates.append(100 * stats["p"])
        low.append(max(0.0, 100 * (stats["p"] - stats["p_lo"])))
        high.append(max(0.0, 100 * (stats["p_hi"] - stats["p"])))
    ax.errorbar(range(len(names)), rates, yerr=[low, high], fmt="o", label="success rate (95 % Wilson)")
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylim(0, 105)
    ax.set_xlabel("ablation")
    ax.set_ylabel("success rate (%)")
    ax.legend(loc="lower right")
    return FigureOut(
        "success_rate", fig,
        "Success rate (status ok) per ablation with 95 % Wilson score intervals; n under each ablation.",
    )


def estimator_vs_measured(rows: pd.DataFrame) -> FigureOut | Skipped:
    both = rows[(rows["status"] == "ok") & rows["estimated_mb"].notna() & rows["peak_rss_mb"].notna()
                & (rows["concurrency"] == 1)]
    if both.empty:
        return Skipped("estimator_vs_measured", "no ok one-request trials with both an estimate and a measured peak")
    fig = _new_figure()
    ax = fig.add_subplot()
    points = ax.scatter(both["estimated_mb"], both["peak_rss_mb"], c=both["text_length"].astype(float), s=10,
                        cmap="viridis", label="ok trial")
    fig.colorbar(points, ax=ax, label="text length (characters)")
    low = float(min(both["estimated_mb"].min(), both["peak_rss_mb"].min()))
    high = float(max(both["estimated_mb"].max(), both["peak_rss_mb"].max()))
    pad = 0.05 * (high - low or high or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], "k--", label="y = x")
    ax.set_xlabel("predicted memory (MB)")
    ax.set_ylabel("measured peak RSS (MB)")
    ax.legend(loc="upper left")
    ratio = float(np.median(both["estimated_mb"] / both["peak_rss_mb"]))
    return FigureOut(
        "estimator_vs_measured", fig,
        "The estimator's prediction (estimated_mb) vs the worker's measured peak RSS per ok trial of one request "
        "(a trial of several reports one request's estimate); dashed: y = x "
        f"(above it the estimator under-predicts). Median predicted / measured = {ratio:.2f}.",
    )


def quantization_tradeoff(table: Table, rows: pd.DataFrame) -> FigureOut | Skipped:
    """One point per mode: weight size against quality, labelled with the mode's mean latency over all
    its ok trials (pooled across conditions) where the harness ran it."""
    measured = table.data.dropna(subset=["weight_bytes", "mcd_db"])
    modes = measured.groupby("quantization")[["weight_bytes", "mcd_db"]].mean()
    if modes.empty:
        return Skipped("quantization_tradeoff", "no mode with both weight bytes and quality (MCD)")
    ok = rows[(rows["status"] == "ok") & rows["latency_ms"].notna()]
    latency = ok.groupby("quantization")["latency_ms"].agg(["mean", "size"])
    fig = _new_figure()
    ax = fig.add_subplot()
    x, y = modes["weight_bytes"] / 2**20, modes["mcd_db"]
    ax.scatter(x, y, s=14, label="quantization mode")
    middle = (x.min() + x.max()) / 2
    for mode, xi, yi in zip(modes.index, x, y):
        timed = f"\n{latency.at[mode, 'mean']:.0f} ms (n={latency.at[mode, 'size']})" if mode in latency.index else ""
        right = xi > middle  # labels point inwards, so they stay inside a column-wide figure
        ax.annotate(f"{mode}{timed}", (xi, yi), textcoords="offset points", xytext=(-4 if right else 4, 3),
                    ha="right" if right else "left", va="bottom")
    ax.margins(x=0.1, y=0.2)
    ax.set_xlabel("model weights (MB)")
    ax.set_ylabel("MCD vs fp32 (dB)")
    ax.legend(loc="best")
    return FigureOut(
        "quantization_tradeoff", fig,
        "Quantization trade-off: weight size vs quality (MCD against the fp32 rendering, lower is closer). Labels: "
        "the mode and, where harness trials ran it, their mean latency over all its ok trials and their number. "
        "Weights and quality from the sources named in the quantization table.",
    )


ROW_FIGURES: tuple[Callable[[pd.DataFrame], FigureOut | Skipped], ...] = (
    latency_vs_length,
    memory_vs_length,
    success_rate,
    estimator_vs_measured,
)


def _slug(values: dict[str, object]) -> str:
    text = "-".join(fmt_key(k, v) for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def build_figures(rows: pd.DataFrame, quantization: Table) -> list[tuple[FigureOut | Skipped, pd.DataFrame]]:
    """Every figure, with the rows it was drawn from (for its caption). Figures over rows are drawn
    once per condition when the dataset holds several (a file suffix says which). Draw and save inside
    ``matplotlib.rc_context(FIGURE_STYLE)``, as :func:`render_report` does: the style is the thesis's."""
    rows = with_quant(rows)
    varying = varying_keys(rows)
    out: list[tuple[FigureOut | Skipped, pd.DataFrame]] = []
    parts = list(_grouped(rows, varying)) if varying else [({}, rows)]
    for key, part in parts:
        suffix = f"-{_slug(key)}" if key else ""
        for draw in ROW_FIGURES:
            result = draw(part)
            result.name += suffix
            out.append((result, part))
    out.append((quantization_tradeoff(quantization, rows), rows))
    from experiments.report_memory import outcome_vs_free_memory, sweep_rows

    sweep = sweep_rows(rows)
    if not sweep.empty:
        out.append((outcome_vs_free_memory(sweep), sweep))
    return out


def figure_caption(figure: FigureOut, rows: pd.DataFrame) -> str:
    """The caption file: what is drawn, then n, runs and machine, then the condition."""
    fixed = constants(rows, CONDITION_KEYS)
    return f"{figure.caption}\n{provenance(rows)}.\n{('Condition: ' + fixed + '.') if fixed else ''}\n"


# -- the report ------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What :func:`render_report` wrote, and the figures it could not draw (and why)."""

    written: list[Path]
    skipped: list[Skipped]


def render_report(rows: pd.DataFrame, out_dir: str | Path, bench: pd.DataFrame | None = None) -> Report:
    """Write every table and figure of ``rows`` under ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    report = Report([], [])
    tables = build_tables(rows, bench)
    for table in tables:
        base = out_dir / "tables" / table.name
        for path, text in ((base.with_suffix(".md"), to_markdown(table)), (base.with_suffix(".tex"), to_latex(table))):
            path.write_text(text, encoding="utf-8")
            report.written.append(path)
        table.data.to_csv(base.with_suffix(".csv"), index=False)
        report.written.append(base.with_suffix(".csv"))
    quantization = next(t for t in tables if t.name == "quantization")
    with matplotlib.rc_context(FIGURE_STYLE):
        for result, part in build_figures(rows, quantization):
            if isinstance(result, Skipped):
                logger.info("figure %s skipped: %s", result.name, result.reason)
                report.skipped.append(result)
                continue
            for suffix in (".pdf", ".png"):
                path = out_dir / "figures" / f"{result.name}{suffix}"
                result.figure.savefig(path)
                report.written.append(path)
            caption = out_dir / "figures" / f"{result.name}.caption.txt"
            caption.write_text(figure_caption(result, part), encoding="utf-8")
            report.written.append(caption)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*",
                        help="run folder, run id, folder of runs or Parquet file (default: the latest run)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where run ids and the latest run are looked up (default: the harness's)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/report)")
    parser.add_argument("--quantize", type=Path, default=None,
                        help="bench_quantize output (CSV or Parquet); default: a bench_quantize.{parquet,csv} "
                        "beside the dataset or in the results directory's parent, if any")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    results_dir = args.results_dir or default_results_dir()
    try:
        datasets = [resolve_dataset(d, results_dir) for d in args.datasets] or [resolve_dataset(None, results_dir)]
    except FileNotFoundError as missing:
        parser.error(str(missing))
    if len(datasets) > 1 and args.out is None:
        parser.error("several datasets: say where the merged report goes with --out")
    out_dir = args.out or default_out_dir(datasets[0])
    bench_path = args.quantize or find_bench([d if d.is_dir() else d.parent for d in datasets] + [results_dir.parent])
    bench = load_bench(bench_path) if bench_path else None

    start = time.perf_counter()
    rows = load_rows(*datasets)
    loaded = time.perf_counter()
    report = render_report(rows, out_dir, bench)
    done = time.perf_counter()

    print(f"dataset: {', '.join(map(str, datasets))} ({len(rows)} rows)")
    print(f"quantization bench: {bench_path or 'none'}")
    for path in report.written:
        print(f"wrote {path}")
    for skipped in report.skipped:
        print(f"skipped figure {skipped.name}: {skipped.reason}")
    print(f"read in {loaded - start:.1f} s, rendered in {done - loaded:.1f} s")


if __name__ == "__main__":
    main()
