"""The whole report of a dataset: every table and figure, the memory sweep's among them, written as
Markdown, LaTeX and CSV (tables) and PDF, PNG and caption files (figures)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pandas as pd

from experiments.report.cells import _grouped, fmt_key, varying_keys, with_quant
from experiments.report.effects import affinity_table, design_table, effects_table, variance_table
from experiments.report.figures import (
    FIGURE_STYLE,
    ROW_FIGURES,
    FigureOut,
    Skipped,
    figure_caption,
    quantization_tradeoff,
)
from experiments.report.memory import memory_tables, outcome_vs_free_memory, sweep_rows
from experiments.report.render import to_latex, to_markdown
from experiments.report.tables import (
    Table,
    ablation_table,
    cross_platform_table,
    memory_stability_table,
    quantization_table,
)

logger = logging.getLogger(__name__)


def build_tables(rows: pd.DataFrame, bench: pd.DataFrame | None = None) -> list[Table]:
    """Every thesis table from ``rows`` (and the optional quantization bench); a memory sweep adds its own."""
    return [
        ablation_table(rows),
        memory_stability_table(rows),
        affinity_table(rows),
        effects_table(rows),
        design_table(rows),
        variance_table(rows),
        cross_platform_table(rows),
        quantization_table(rows, bench),
        *memory_tables(rows),
    ]


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
    sweep = sweep_rows(rows)
    if not sweep.empty:
        out.append((outcome_vs_free_memory(sweep), sweep))
    return out


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
