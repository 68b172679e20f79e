"""experiments.bench_contention: its arithmetic on given runs, its bad-input errors, and one real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from experiments.bench_contention import Run, spread, summarize


def _runs(*latencies: float, threads: int | None = 2) -> list[Run]:
    return [Run(latency, latency / 4, 10.0, threads, 1.0, 0.5, 3) for latency in latencies]


def test_summary_reads_medians_spreads_slowdowns_and_same_round_ratios() -> None:
    results = {
        0: {"ours": _runs(1.0, 1.2, 0.8), "reference": _runs(2.0, 2.0, 2.0, threads=None)},
        2: {"ours": _runs(1.5, 1.5, 3.0, threads=1), "reference": _runs(3.0, 4.0, 5.0, threads=None)},
    }
    rows = {(r["busy"], r["variant"]): r for r in summarize(results)}
    quiet, loaded = rows[(0, "ours")], rows[(2, "ours")]
    assert quiet["median_s"] == 1.0 and quiet["spread"] == pytest.approx(0.4) and quiet["vs_reference"] == 0.5
    assert loaded["slowdown"] == 1.5 and loaded["spread"] == pytest.approx(1.0) and loaded["threads_min"] == 1
    assert loaded["vs_reference"] == pytest.approx(1.5 / 4.0) and rows[(2, "reference")]["slowdown"] == 2.0
    assert rows[(2, "reference")]["threads_min"] is None and loaded["rtf"] == pytest.approx(0.15)
    assert spread([2.0, 1.0, 3.0]) == 1.0


def _bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "experiments.bench_contention", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loads", "0,x"], "whole numbers"),
        (["--loads", "-1"], ">= 0"),
        (["--variants", "ours,nope"], "unknown variant"),
        (["--runs", "0"], "must be >= 1"),
        (["--first-rounds", "-1"], "--first-rounds >= 0"),
    ],
)
def test_bad_arguments_fail_in_one_line_naming_them(args: list[str], message: str) -> None:
    done = _bench(*args, timeout=60)
    assert done.returncode == 2 and message in done.stderr


def test_a_real_run_alternates_ours_and_the_reference_under_load(tmp_path: Path) -> None:
    """Quiet and beside one busy process, one round each: every variant measured at every level, ours
    gives a thread up where the busy process holds a CPU of two."""
    out = tmp_path / "rows.json"
    done = _bench("--loads", "0,1", "--runs", "1", "--length", "80", "--variants", "ours,reference", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert {(r["busy"], r["variant"]) for r in rows} == {(0, "ours"), (0, "reference"), (1, "ours"), (1, "reference")}
    assert all(r["median_s"] > 0 and r["rtf"] > 0 for r in rows)
    ours_loaded = next(r for r in rows if r["busy"] == 1 and r["variant"] == "ours")
    assert ours_loaded["vs_reference"] > 0 and ours_loaded["cpu_s"] > 0
    import os

    if len(os.sched_getaffinity(0)) == 2:
        assert ours_loaded["threads_min"] == 1
    assert "| busy | variant |" in done.stdout
    assert all(len(r["first_runs_s"]) == 1 and len(r["latencies_s"]) == 1 for r in rows)  # one round apart
