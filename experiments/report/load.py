"""Reading a dataset: where the harness's rows are, the rows as one frame, and the quantization bench.

A dataset is a run folder, a run id under the harness's results directory, a folder of runs, a rows
folder or a single Parquet file; several merge by concatenation, as datasets from several machines do.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from experiments.results import CORE_SCHEMA, read_rows

REPO_ROOT = Path(__file__).resolve().parents[2]

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
