"""``python -m experiments.report [DATASET ...]``: the thesis's tables and figures, regenerated from the
harness's Parquet rows, each with its uncertainty, trial count and the machine it came from.

DATASET is a run folder, a run id under the harness's results directory, a folder of runs, a rows
folder or a single Parquet file (several merge by concatenation, as datasets from several machines do);
without one, the latest run under the results directory is used. Output goes to ``<run>/report/``
(``<file stem>-report/`` beside a Parquet file), or ``--out``:

* ``tables/<name>.md``, ``.tex`` (booktabs) and ``.csv`` (the same numbers at full precision, so any
  cell can be checked against the rows);
* ``figures/<name>.pdf``, ``.png`` and ``.caption.txt`` (n, runs, machine, how intervals were made).

A figure without data is skipped, and the CLI says why.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from experiments.report.build import render_report
from experiments.report.load import (
    default_out_dir,
    default_results_dir,
    find_bench,
    load_bench,
    load_rows,
    resolve_dataset,
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "datasets", nargs="*", help="run folder, run id, folder of runs or Parquet file (default: the latest run)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where run ids and the latest run are looked up (default: the harness's)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/report)")
    parser.add_argument(
        "--quantize",
        type=Path,
        default=None,
        help="bench_quantize output (CSV or Parquet); default: a bench_quantize.{parquet,csv} "
        "beside the dataset or in the results directory's parent, if any",
    )
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
