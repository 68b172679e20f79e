"""The Parquet rows of a sweep: schema, crash-safe append, resume, merge, and the CLI summary.

Layout: ``<results_dir>/<run_id>/rows/trial-<trial_id>.parquet``, one file per finished trial, written
to a hidden temporary name and ``os.replace``-d into place. So a sweep killed at any instant (Ctrl-C,
SIGKILL, power cut after the page cache is flushed) leaves only whole rows; the trial ids already on disk
are what a rerun with the same run id skips, and a trial id can only ever have one file: no duplicates.
A run folder is a pyarrow dataset; folders from several machines merge by concatenation.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

#: The core columns of docs/architecture.md (names and types fixed), then the harness's own.
CORE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("trial_id", pa.int64()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("git_commit", pa.string()),
        ("host", pa.string()),
        ("os", pa.string()),
        ("cpu_model", pa.string()),
        ("torch_version", pa.string()),
        ("profile", pa.string()),
        ("simulated", pa.bool_()),
        ("mem_cap_mb", pa.float64()),
        ("cpus", pa.string()),
        ("background_mb", pa.float64()),
        ("ablation", pa.string()),
        ("budget_on", pa.bool_()),
        ("affinity_on", pa.bool_()),
        ("estimation_on", pa.bool_()),
        ("engine", pa.string()),
        ("quantization", pa.string()),
        ("num_threads", pa.int64()),
        ("chunk_length", pa.int64()),
        ("text_length", pa.int64()),
        ("text_tokens", pa.int64()),
        ("concurrency", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("latency_ms", pa.float64()),
        ("first_audio_ms", pa.float64()),
        ("audio_s", pa.float64()),
        ("rtf", pa.float64()),
        ("peak_rss_mb", pa.float64()),
        ("estimated_mb", pa.float64()),
    ]
)
EXTRA_FIELDS = [
    pa.field("trial_key", pa.string()),  # the readable identity the trial_id is hashed from
    pa.field("workload", pa.string()),
    pa.field("iteration", pa.int64()),
    pa.field("text", pa.string()),
    pa.field("mem_cap_mechanism", pa.string()),  # cgroup_v2 | cgroup_v1 | rlimit | none
    pa.field("peak_mem_mechanism", pa.string()),  # vmhwm_clear_refs | rss_sampling_5ms
    pa.field("cgroup_peak_mb", pa.float64()),  # the device's peak: worker + background (cgroup v1)
    pa.field("worker_trials", pa.int64()),  # trials the worker served before this one (0: fresh)
    pa.field("requests_ok", pa.int64()),  # of the trial's `concurrency` requests
    pa.field("required_mb", pa.float64()),  # a refusal's numbers
    pa.field("available_mb", pa.float64()),
    pa.field("host_cpus", pa.int64()),
    pa.field("host_mem_mb", pa.float64()),
    pa.field("compute", pa.string()),  # what the engine multiplied in: fp32 or bf16
    # memory adaptation (docs/harness.md, "Memory sweeps")
    pa.field("budget_policy", pa.string()),  # seed | calibrated
    pa.field("safety_margin_mb", pa.float64()),  # the margin in force at admission (null: budget off)
    pa.field("background_swing_seen_mb", pa.float64()),  # other processes' swing the runtime observed
    pa.field("estimator_constants", pa.string()),  # calibrated | seed (null: estimation off)
    pa.field("calibrated", pa.bool_()),  # every configuration the planner may choose has fitted constants
    pa.field("estimator_max_under_mb", pa.float64()),  # the fit's worst held-out under-prediction
    pa.field("estimator_mape_percent", pa.float64()),  # the fit's held-out error
    pa.field("waited_ms", pa.float64()),  # how long the slowest-admitted request waited for memory
    pa.field("degraded", pa.string()),  # the plan's degradations (";"-separated), null if none
    pa.field("background_kind", pa.string()),  # static | dynamic (memory sweeps)
    pa.field("background_swing_mb", pa.float64()),  # a dynamic background's configured swing
    pa.field("free_mb", pa.float64()),  # device RAM less the background's mean
    pa.field("floor_mb", pa.float64()),  # the measured floor of the run (experiments/floor.py)
    pa.field("free_above_floor_mb", pa.float64()),  # the level: free_mb - floor_mb
    pa.field("background_restarted", pa.bool_()),  # the background app died during the trial or earlier in its worker
    # benchmark hygiene: the machine around the trial (experiments/hygiene.py; null where not readable)
    pa.field("loadavg_1m", pa.float64()),  # 1-minute load average at the trial's start
    pa.field("cpu_pressure_some_avg10", pa.float64()),  # PSI cpu "some avg10" (%) at the trial's start
    pa.field("steal_percent", pa.float64()),  # steal time, % of all CPU time over the trial
    pa.field("cpu_governor", pa.string()),  # cpu0's cpufreq scaling governor
    pa.field("power_source", pa.string()),  # ac | battery
    # the interleaved design (experiments/design.py)
    pa.field("block", pa.int64()),  # the block the trial ran in: every condition gets the same texts
    pa.field("position", pa.int64()),  # its order within the block, over all conditions
    pa.field("epoch", pa.int64()),  # the generation of workers it ran on (fresh every design.restart_every blocks)
    pa.field("replicate_of", pa.string()),  # an A/A copy's original ablation (null: not a copy)
    pa.field("background_cpu", pa.int64()),  # busy processes in the device's CPU set during the trial
    pa.field("threads_min", pa.int64()),  # the fewest intra-op threads a step ran on (contention adapts them)
]
SCHEMA = pa.schema(list(CORE_SCHEMA) + EXTRA_FIELDS)
STATUSES = ("ok", "oom", "refused", "error", "timeout")
_PART = re.compile(r"^trial-(\d+)\.parquet$")


class RowStore:
    """The rows folder of one run: append one trial at a time, atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.rows_dir = self.run_dir / "rows"
        self.rows_dir.mkdir(parents=True, exist_ok=True)

    def done(self) -> set[int]:
        """Trial ids with a row on disk (from the file names: no Parquet is opened)."""
        return {int(m.group(1)) for name in os.listdir(self.rows_dir) if (m := _PART.match(name))}

    def write(self, row: dict[str, Any]) -> Path:
        """Write one row as its own part. Unknown columns are an error (a typo would lose data)."""
        unknown = set(row) - set(SCHEMA.names)
        if unknown:
            raise KeyError(f"columns not in the schema: {sorted(unknown)}")
        if row.get("status") not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {row.get('status')!r}")
        if row["status"] != "ok" and not row.get("error"):
            raise ValueError(f"a {row['status']!r} row must say why (error)")
        table = pa.Table.from_pylist([row], schema=SCHEMA)
        final = self.rows_dir / f"trial-{row['trial_id']}.parquet"
        tmp = self.rows_dir / f".{final.name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        return final


def _rows_dirs(path: Path) -> list[Path]:
    """Every rows folder at or under ``path`` (a rows folder, a run, or a folder of runs)."""
    path = Path(path)
    if any(_PART.match(p.name) for p in path.glob("trial-*.parquet")):
        return [path]
    return sorted(p for p in path.rglob("rows") if p.is_dir())


def read_rows(*paths: str | Path) -> pd.DataFrame:
    """All rows under ``paths`` (runs of any machines), concatenated; columns a newer harness added
    are null in older runs."""
    tables = [ds.dataset(d, format="parquet").to_table() for p in paths for d in _rows_dirs(Path(p))]
    table = pa.concat_tables(tables, promote_options="permissive") if tables else SCHEMA.empty_table()
    # Nullable pandas dtypes, so an int column with nulls (text_tokens of a refused trial) stays int.
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)


def summarize(rows: pd.DataFrame, by: Iterable[str] = ("profile", "workload", "ablation")) -> pd.DataFrame:
    """Per group: n, success rate, counts of each failure, latency mean/p50/p95/std over ok trials,
    and peak memory (the worker's max peak RSS; the device's max where a cgroup measured it).

    Groups come in the ablations' cumulative order (fewest runtime features on first)."""
    by = list(by)
    rows = rows.assign(_features=rows[["budget_on", "affinity_on", "estimation_on"]].fillna(False).sum(axis=1))
    ok = rows[rows["status"] == "ok"]
    groups = rows.groupby(by, dropna=False)
    latency = ok.groupby(by, dropna=False)["latency_ms"]
    summary = pd.DataFrame(
        {
            "n": groups.size(),
            "success": groups["status"].apply(lambda s: (s == "ok").mean()),
            **{status: groups["status"].apply(lambda s, st=status: int((s == st).sum())) for status in STATUSES[1:]},
            "lat_mean_ms": latency.mean(),
            "lat_p50_ms": latency.median(),
            "lat_p95_ms": latency.quantile(0.95),
            "lat_std_ms": latency.std(),
            "peak_rss_mb": groups["peak_rss_mb"].max(),
            "device_peak_mb": groups["cgroup_peak_mb"].max(),
            "_features": groups["_features"].max(),
        }
    )
    order = [*by[:-1], "_features", by[-1]]
    return summary.reset_index().sort_values(order).drop(columns="_features").reset_index(drop=True)
