"""What a cell says: the statistics of a group of rows, their formatting, and the provenance every
caption carries — shared by the tables, the figures and the memory sweep's report, so that a number
reads the same wherever it appears.

Nothing here invents a number: a cell without rows behind it reads "—" (no data), a tail percentile the
sample cannot support reads "n.b." (not bounded, see :func:`experiments.stats.min_n_for_quantile`).
Rates use Wilson intervals, latency means and medians fixed-seed bootstrap intervals
(:mod:`experiments.stats`). Success means status ``ok``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from experiments.stats import BOOTSTRAP_RESAMPLES, bootstrap_interval, min_n_for_quantile, wilson_interval

#: What makes two sets of rows different experiments (apart from the ablation): a table shows the ones
#: that vary in its dataset as columns and states the constant ones in its caption. ``quant`` is derived
#: per condition (:func:`with_quant`).
CONDITION_KEYS = ("host", "profile", "simulated", "workload", "background_cpu", "engine", "quant")
#: The cumulative ablations of docs/architecture.md, fewest runtime features first.
ABLATION_ORDER = ("baseline", "budget", "affinity", "estimation")

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
#: pyperf's rule: a benchmark whose standard deviation is 10 % of its mean or more is unstable.
UNSTABLE_CV = 0.10
#: A value the rows do not carry: a dataset from before the harness recorded it, or not readable there.
NOT_AVAILABLE = "n/a"
#: What varies between a condition's trials by design; the latency CV is taken within one such setting.
CV_SETTING = ("text_length", "concurrency", "free_above_floor_mb", "background_kind")
CV_NOTE = (
    "CV: latency standard deviation / mean over the ok trials of one text length (and concurrency and "
    "memory level, where the workload sweeps them), the largest of the row's lengths, at the length in "
    f"( ); unstable: a CV of {100 * UNSTABLE_CV:.0f} % or more at some length (pyperf's rule); "
    f"{NOT_AVAILABLE}: no length with two ok trials."
)


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
    "background_cpu": "busy CPUs",
    "engine": "engine",
    "quant": "quant.",
    "quantization": "mode",
    "ablation": "ablation",
    "budget_policy": "policy",
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


def latency_cv(group: pd.DataFrame) -> list[tuple[int | None, float]]:
    """Per setting of :data:`CV_SETTING` with at least two ok trials: (text length, latency CV), the CV
    being the sample standard deviation over the mean (as pyperf computes it)."""
    ok = group[(group["status"] == "ok") & group["latency_ms"].notna()]
    setting = [c for c in CV_SETTING if c in ok.columns]
    out = []
    for values, trials in ok.groupby(setting, dropna=False, sort=True):
        latency = trials["latency_ms"].to_numpy(dtype=float)
        mean = float(np.mean(latency)) if len(latency) else math.nan
        if len(latency) < 2 or not mean > 0:
            continue
        length = values[0] if isinstance(values, tuple) else values
        out.append((None if _missing(length) else int(length), float(np.std(latency, ddof=1)) / mean))
    return out


def cv_stats(group: pd.DataFrame) -> dict[str, object]:
    """The largest latency CV of ``group`` (a condition), its length, whether it is unstable (CV ≥
    :data:`UNSTABLE_CV` at some length; None without any CV) and the unstable lengths ("300;800")."""
    cvs = latency_cv(group)
    if not cvs:
        return {"lat_cv_max": math.nan, "lat_cv_max_length": None, "unstable": None, "unstable_lengths": None}
    length, worst = max(cvs, key=lambda item: item[1])
    unstable = sorted({str(n) for n, cv in cvs if cv >= UNSTABLE_CV}, key=lambda n: (len(n), n))
    return {
        "lat_cv_max": worst,
        "lat_cv_max_length": length,
        "unstable": bool(unstable),
        "unstable_lengths": ";".join(unstable) or None,
    }


def fmt_cv(cv: float | None, length: int | None) -> str:
    """``12.3 (300)``: a CV in percent and the text length it was found at."""
    if _missing(cv):
        return NOT_AVAILABLE
    return f"{100 * cv:.1f}" + ("" if _missing(length) else f" ({int(length)})")


def is_unstable(unstable: object) -> bool:
    """Whether a :func:`cv_stats` ``unstable`` value (bool, numpy bool or None) says unstable."""
    return not _missing(unstable) and bool(unstable)


def fmt_unstable(unstable: bool | None) -> str:
    return NOT_AVAILABLE if _missing(unstable) else ("yes" if unstable else "no")


#: The benchmark-hygiene columns (experiments/hygiene.py): numbers summarized by their largest value.
HYGIENE_NUMBERS = {
    "loadavg_1m": "load avg 1 min",
    "cpu_pressure_some_avg10": "CPU pressure some avg10 %",
    "steal_percent": "steal %",
}
HYGIENE_LABELS = {"cpu_governor": "governor", "power_source": "power"}
#: The columns :func:`hygiene_stats` returns.
HYGIENE_STATS = (*(f"{column}_max" for column in HYGIENE_NUMBERS), *HYGIENE_LABELS)
HYGIENE_NOTE = "Machine around the trials (experiments/hygiene.py; ≤: the largest of any trial; n/a: not recorded)"


def hygiene_stats(group: pd.DataFrame) -> dict[str, object]:
    """The machine around ``group``'s trials: the largest load, pressure and steal, the governors and
    power sources seen (";"-joined); NaN/None where no row carries them (older datasets: no column)."""
    out: dict[str, object] = {}
    for column in HYGIENE_NUMBERS:
        values = pd.to_numeric(group[column], errors="coerce") if column in group else pd.Series(dtype=float)
        out[f"{column}_max"] = float(values.max()) if values.notna().any() else math.nan
    for column in HYGIENE_LABELS:
        seen = sorted(map(str, group[column].dropna().unique())) if column in group else []
        out[column] = ";".join(seen) or None
    return out


def fmt_hygiene(stats: dict[str, object]) -> str:
    """``load avg 1 min ≤ 0.4, CPU pressure some avg10 % ≤ 1.2, steal % ≤ 0.0, governor performance,
    power ac``; ``n/a`` for what the rows do not say (alone if they say none of it: an older dataset)."""
    if all(_missing(stats[column]) for column in HYGIENE_STATS):
        return NOT_AVAILABLE
    parts = []
    for column, label in HYGIENE_NUMBERS.items():
        value = stats[f"{column}_max"]
        parts.append(f"{label} {NOT_AVAILABLE}" if _missing(value) else f"{label} ≤ {value:.2f}")
    parts += [f"{label} {NOT_AVAILABLE if _missing(stats[c]) else stats[c]}" for c, label in HYGIENE_LABELS.items()]
    return ", ".join(parts)


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
    return (
        order.sort_values(sort_by, kind="stable")
        .drop(columns=[c for c in order if c.startswith("_")])
        .reset_index(drop=True)
    )


def with_quant(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``quant``: the quantization modes its condition's trials ran with ("fp32", or
    "int4+int8" where the runtime changed precision during the run; null if no trial says).

    Why not the ``quantization`` column itself: a row records the mode its synthesis *used*, and a trial
    that failed before synthesis records only the configured mode, which is null when the profile was
    to choose. Grouping by the raw column would tear such a condition in two — its failures apart from
    its successes — and report a 100 % success rate for the half that worked. A condition is the trial
    key without its length and iteration (experiments.sweep), on one host.

    Rows from before the CPU-load workload get ``background_cpu`` 0: they ran without busy processes."""
    if "background_cpu" not in rows.columns or rows["background_cpu"].isna().any():
        busy = rows["background_cpu"] if "background_cpu" in rows.columns else pd.Series(0, index=rows.index)
        rows = rows.assign(background_cpu=busy.fillna(0).astype("int64"))
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
