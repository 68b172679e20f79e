"""Parquet rows: the architecture's core columns and types, atomic parts, merging, the summary."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from experiments.results import RowStore, read_rows, summarize

ARCHITECTURE = REPO / "docs" / "architecture.md"
DOC_TYPES = {
    "str": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp (UTC)": pa.timestamp("us", tz="UTC"),
}


def core_columns_from_docs() -> dict[str, pa.DataType]:
    """The core-column table of docs/architecture.md, expanded ("bool ×3") to one type per name."""
    section = ARCHITECTURE.read_text().split("## Parquet rows", 1)[1]
    columns: dict[str, pa.DataType] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("column", "") or set(cells[0]) <= {"-"}:
            continue
        names = [n.strip() for n in cells[0].split(",")]
        types: list[str] = []
        for part in cells[1].split(","):
            match = re.fullmatch(r"(.+?)\s*×(\d+)", part.strip())
            types += [match.group(1)] * int(match.group(2)) if match else [part.strip()]
        if len(types) == 1:
            types *= len(names)
        assert len(types) == len(names), line
        columns.update({n: DOC_TYPES[t] for n, t in zip(names, types)})
    return columns


def make_row(trial_id: int, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "run_id": "r1",
        "trial_id": trial_id,
        "started_at": datetime.now(timezone.utc),
        "profile": "m1_air",
        "simulated": True,
        "ablation": "baseline",
        "budget_on": False,
        "affinity_on": False,
        "estimation_on": False,
        "text_length": 100,
        "concurrency": 1,
        "status": "ok",
        "latency_ms": 100.0 + trial_id,
        "peak_rss_mb": 300.0,
        "workload": "smoke",
    }
    row.update(overrides)
    return row


def test_schema_has_every_core_column_of_the_architecture_with_its_type(tmp_path: Path) -> None:
    core = core_columns_from_docs()
    assert len(core) == 32
    path = RowStore(tmp_path).write(make_row(1, status="refused", error="over budget"))
    written = pq.read_schema(path)
    for name, dtype in core.items():
        assert written.field(name).type == dtype, name
    extras = set(written.names) - set(core)
    assert {"mem_cap_mechanism", "peak_mem_mechanism", "iteration", "workload"} <= extras


def test_rows_are_parts_named_by_trial_and_rewriting_one_keeps_one(tmp_path: Path) -> None:
    store = RowStore(tmp_path / "run")
    for tid in (3, 1, 2):
        store.write(make_row(tid))
    store.write(make_row(2, latency_ms=999.0))
    assert store.done() == {1, 2, 3}
    assert sorted(p.name for p in store.rows_dir.iterdir()) == [f"trial-{i}.parquet" for i in (1, 2, 3)]
    rows = read_rows(tmp_path / "run")
    assert sorted(rows["trial_id"]) == [1, 2, 3]
    assert rows.set_index("trial_id").loc[2, "latency_ms"] == 999.0


def test_a_torn_write_is_invisible(tmp_path: Path) -> None:
    """What a SIGKILL mid-write leaves (the hidden temporary file) is neither read nor counted done."""
    store = RowStore(tmp_path)
    store.write(make_row(1))
    (store.rows_dir / ".trial-2.parquet.tmp").write_bytes(b"PAR1 half a file")
    assert store.done() == {1}
    assert list(read_rows(tmp_path)["trial_id"]) == [1]


def test_bad_rows_are_refused(tmp_path: Path) -> None:
    store = RowStore(tmp_path)
    with pytest.raises(KeyError):
        store.write(make_row(1, latncy_ms=1.0))
    with pytest.raises(ValueError):
        store.write(make_row(1, status="oom"))  # a failure must say why
    with pytest.raises(ValueError):
        store.write(make_row(1, status="crashed", error="x"))
    assert store.done() == set()


def test_runs_of_several_machines_merge_by_concatenation(tmp_path: Path) -> None:
    a, b = RowStore(tmp_path / "air" / "runA"), RowStore(tmp_path / "i5" / "runB")
    a.write(make_row(1, run_id="runA", host="air"))
    a.write(make_row(2, run_id="runA", host="air"))
    b.write(make_row(1, run_id="runB", host="i5", simulated=False))
    merged = read_rows(tmp_path / "air", b.rows_dir)
    assert sorted(zip(merged["run_id"], merged["trial_id"])) == [("runA", 1), ("runA", 2), ("runB", 1)]
    assert read_rows(tmp_path).shape[0] == 3  # a folder of folders finds every run
    assert read_rows(tmp_path / "nothing-here").empty


def test_nullable_ints_stay_ints(tmp_path: Path) -> None:
    store = RowStore(tmp_path)
    store.write(make_row(1, text_tokens=42))
    store.write(make_row(2, status="refused", error="no"))
    rows = read_rows(tmp_path).set_index("trial_id")
    assert str(rows["text_tokens"].dtype) == "Int64"
    assert rows.loc[1, "text_tokens"] == 42 and rows["text_tokens"].isna().sum() == 1


def test_summary_per_ablation_in_cumulative_order(tmp_path: Path) -> None:
    store = RowStore(tmp_path)
    store.write(
        make_row(1, ablation="estimation", budget_on=True, affinity_on=True, estimation_on=True, latency_ms=100.0)
    )
    store.write(
        make_row(2, ablation="estimation", budget_on=True, affinity_on=True, estimation_on=True, latency_ms=300.0)
    )
    store.write(make_row(3, ablation="baseline", status="oom", error="killed", peak_rss_mb=None))
    store.write(make_row(4, ablation="baseline", latency_ms=50.0))
    summary = summarize(read_rows(tmp_path)).set_index("ablation")
    assert list(summary.index) == ["baseline", "estimation"]
    assert summary.loc["baseline", "n"] == 2 and summary.loc["baseline", "success"] == 0.5
    assert summary.loc["baseline", "oom"] == 1
    assert summary.loc["estimation", "lat_mean_ms"] == 200.0
    assert summary.loc["estimation", "lat_p50_ms"] == 200.0
    assert summary.loc["estimation", "lat_p95_ms"] == pytest.approx(290.0)
