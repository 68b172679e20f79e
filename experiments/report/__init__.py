"""The thesis report: its tables and figures, regenerated from the harness's Parquet rows, each with its
uncertainty, trial count and the machine it came from (``python -m experiments.report``, see
:mod:`experiments.report.__main__`).

Nothing here invents a number: a cell without rows behind it reads "—" (no data), a tail percentile
the sample cannot support reads "n.b." (not bounded), and a figure without data is skipped with the
reason. "MB" is the project's one megabyte, :data:`adaptive_tts.units.MIB` bytes, in every table and
figure, as in the rows.

One module per responsibility; imports point one way (``a <- b``: b imports a)::

    cells  <-  tables  <-  render, figures, effects  <-  memory  <-  build  <-  __main__
    load  <-  __main__

* :mod:`~experiments.report.load` — where a dataset is, its rows as one frame, the quantization bench;
* :mod:`~experiments.report.cells` — statistics per group of rows (Wilson and bootstrap intervals),
  their formatting, the provenance every caption carries;
* :mod:`~experiments.report.tables` — the thesis's tables (:class:`Table`: numbers and cells);
* :mod:`~experiments.report.effects` — effects as paired differences (same text, same block) with
  bootstrap intervals, the A/A noise floor, latency variance per text length;
* :mod:`~experiments.report.render` — a table as Markdown and as LaTeX (booktabs);
* :mod:`~experiments.report.figures` — the figures (matplotlib, column width) and their captions;
* :mod:`~experiments.report.memory` — the memory sweep's tables and its outcome-vs-free-memory figure;
* :mod:`~experiments.report.build` — every table and figure of a dataset, written to disk
  (:func:`render_report`);
* :mod:`~experiments.report.__main__` — the CLI.

The names below are importable from the package itself (``from experiments.report import load_rows``).
"""

from __future__ import annotations

from experiments.report.build import Report, build_figures, build_tables, render_report
from experiments.report.cells import (
    ABLATION_ORDER,
    CONDITION_KEYS,
    INTERVALS_NOTE,
    KEY_HEADERS,
    NO_DATA,
    NO_DATA_NOTE,
    NOT_BOUNDED,
    NOT_BOUNDED_NOTE,
    constants,
    fmt_interval,
    fmt_key,
    fmt_num,
    fmt_rate,
    fmt_tail,
    location_stats,
    machines,
    provenance,
    rate_stats,
    varying_keys,
    with_quant,
)
from experiments.report.effects import affinity_table, design_table, effects_table, variance_table
from experiments.report.figures import (
    FIGURE_STYLE,
    ROW_FIGURES,
    FigureOut,
    Skipped,
    estimator_vs_measured,
    figure_caption,
    latency_vs_length,
    memory_vs_length,
    quantization_tradeoff,
    success_rate,
)
from experiments.report.load import (
    BENCH_COLUMNS,
    BENCH_NAMES,
    REPO_ROOT,
    default_out_dir,
    default_results_dir,
    find_bench,
    latest_run,
    load_bench,
    load_rows,
    resolve_dataset,
)
from experiments.report.memory import memory_tables, outcome_vs_free_memory, sweep_rows
from experiments.report.pairs import pair_trials, rate_effect, relative_effect
from experiments.report.render import latex_escape, to_latex, to_markdown
from experiments.report.tables import (
    AFTER_AFFINITY,
    AFTER_STABILITY,
    BEFORE_AFFINITY,
    BEFORE_STABILITY,
    FULL_RUNTIME,
    QUALITY_COLUMNS,
    Table,
    ablation_table,
    cross_platform_table,
    memory_stability_table,
    quantization_table,
)

__all__ = [
    "ABLATION_ORDER",
    "AFTER_AFFINITY",
    "AFTER_STABILITY",
    "BEFORE_AFFINITY",
    "BEFORE_STABILITY",
    "BENCH_COLUMNS",
    "BENCH_NAMES",
    "CONDITION_KEYS",
    "FIGURE_STYLE",
    "FULL_RUNTIME",
    "FigureOut",
    "INTERVALS_NOTE",
    "KEY_HEADERS",
    "NOT_BOUNDED",
    "NOT_BOUNDED_NOTE",
    "NO_DATA",
    "NO_DATA_NOTE",
    "QUALITY_COLUMNS",
    "REPO_ROOT",
    "ROW_FIGURES",
    "Report",
    "Skipped",
    "Table",
    "ablation_table",
    "affinity_table",
    "build_figures",
    "build_tables",
    "constants",
    "cross_platform_table",
    "default_out_dir",
    "design_table",
    "effects_table",
    "pair_trials",
    "rate_effect",
    "relative_effect",
    "variance_table",
    "default_results_dir",
    "estimator_vs_measured",
    "figure_caption",
    "find_bench",
    "fmt_interval",
    "fmt_key",
    "fmt_num",
    "fmt_rate",
    "fmt_tail",
    "latency_vs_length",
    "latest_run",
    "latex_escape",
    "load_bench",
    "load_rows",
    "location_stats",
    "machines",
    "memory_stability_table",
    "memory_tables",
    "memory_vs_length",
    "outcome_vs_free_memory",
    "provenance",
    "quantization_table",
    "quantization_tradeoff",
    "rate_stats",
    "render_report",
    "resolve_dataset",
    "success_rate",
    "sweep_rows",
    "to_latex",
    "to_markdown",
    "varying_keys",
    "with_quant",
]
