"""The thesis's figures (matplotlib, column width): latency, memory and success per ablation, the
estimator against measurement, and the quantization trade-off; each a :class:`FigureOut` with its
caption, or a :class:`Skipped` saying why the data cannot support it. The memory sweep's figure is
:mod:`experiments.report.memory`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from adaptive_tts.units import MIB
from experiments.report.cells import (
    CONDITION_KEYS,
    _ablation_rank,
    constants,
    location_stats,
    provenance,
    rate_stats,
)
from experiments.report.tables import Table
from experiments.stats import BOOTSTRAP_RESAMPLES

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
        _errorbar(
            ax, stats["text_length"].to_numpy() + _dodge(i, len(series), span), stats, scale, label=label.format(name)
        )
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
        "latency_vs_length",
        fig,
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
        "memory_vs_length",
        fig,
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
        "success_rate",
        fig,
        "Success rate (status ok) per ablation with 95 % Wilson score intervals; n under each ablation.",
    )


def estimator_vs_measured(rows: pd.DataFrame) -> FigureOut | Skipped:
    both = rows[
        (rows["status"] == "ok")
        & rows["estimated_mb"].notna()
        & rows["peak_rss_mb"].notna()
        & (rows["concurrency"] == 1)
    ]
    if both.empty:
        return Skipped("estimator_vs_measured", "no ok one-request trials with both an estimate and a measured peak")
    fig = _new_figure()
    ax = fig.add_subplot()
    points = ax.scatter(
        both["estimated_mb"],
        both["peak_rss_mb"],
        c=both["text_length"].astype(float),
        s=10,
        cmap="viridis",
        label="ok trial",
    )
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
        "estimator_vs_measured",
        fig,
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
    x, y = modes["weight_bytes"] / MIB, modes["mcd_db"]
    ax.scatter(x, y, s=14, label="quantization mode")
    middle = (x.min() + x.max()) / 2
    for mode, xi, yi in zip(modes.index, x, y):
        timed = f"\n{latency.at[mode, 'mean']:.0f} ms (n={latency.at[mode, 'size']})" if mode in latency.index else ""
        right = xi > middle  # labels point inwards, so they stay inside a column-wide figure
        ax.annotate(
            f"{mode}{timed}",
            (xi, yi),
            textcoords="offset points",
            xytext=(-4 if right else 4, 3),
            ha="right" if right else "left",
            va="bottom",
        )
    ax.margins(x=0.1, y=0.2)
    ax.set_xlabel("model weights (MB)")
    ax.set_ylabel("MCD vs fp32 (dB)")
    ax.legend(loc="best")
    return FigureOut(
        "quantization_tradeoff",
        fig,
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


def figure_caption(figure: FigureOut, rows: pd.DataFrame) -> str:
    """The caption file: what is drawn, then n, runs and machine, then the condition."""
    fixed = constants(rows, CONDITION_KEYS)
    return f"{figure.caption}\n{provenance(rows)}.\n{('Condition: ' + fixed + '.') if fixed else ''}\n"
