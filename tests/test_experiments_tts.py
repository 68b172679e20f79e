"""The harness around the real TTS backend (slow: loads the voice in worker processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cgroup_mechanism

from adaptive_tts.runtime.estimator import CalibrationStore
from experiments.limits import host_memory_mb
from experiments.results import read_rows

pytestmark = pytest.mark.slow


def sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "-m",
            f"results_dir={tmp_path / 'runs'}",
            f"hydra.sweep.dir={tmp_path / 'hydra'}",
            "progress=false",
            *overrides,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_ablations_synthesize_and_report_what_ran(tmp_path: Path) -> None:
    sweep(tmp_path, "+ablation=baseline,estimation", "workload=smoke", "workload.lengths=[100,300]")
    rows = read_rows(tmp_path / "runs").set_index(["ablation", "text_length"])
    assert set(rows["status"]) == {"ok"}, rows["error"].dropna().tolist()
    assert (rows["audio_s"] > 1).all() and (rows["text_tokens"] > 0).all()
    assert (rows["latency_ms"] >= rows["first_audio_ms"]).all()
    assert (rows["rtf"] - rows["latency_ms"] / 1000 / rows["audio_s"]).abs().max() < 1e-6
    assert set(rows["engine"]) == {"torch"} and set(rows["quantization"]) == {"fp32"}
    assert (rows["num_threads"] >= 1).all() and (rows["peak_rss_mb"] > 100).all()
    assert rows["threads_min"].between(1, rows["num_threads"]).all()
    assert (rows.loc["baseline", "threads_min"] == rows.loc["baseline", "num_threads"]).all()  # affinity off: fixed
    assert rows.loc["baseline", "estimated_mb"].isna().all()  # estimation off: no prediction
    assert rows.loc["estimation", "estimated_mb"].notna().all()


@pytest.mark.skipif(
    cgroup_mechanism() is None or host_memory_mb() < 10 * 1024,
    reason="the memory sweep needs a cgroup-capped 8 GB device on a host with more than 8 GB",
)
def test_memory_sweep_turns_the_baselines_ooms_into_refusals(tmp_path: Path) -> None:
    """Two levels of the short memory sweep under real kernel caps: below the measured floor the
    baseline is OOM-killed and the whole runtime refuses with the numbers; with ample memory both
    serve eight requests at once. The floor is measured once per run, the estimator calibrated on
    the device before the trials, and rows say so."""
    done = sweep(
        tmp_path,
        "+experiment=memory_sweep",
        "workload=memory_sweep_short",
        "+ablation=baseline,estimation",
        "workload.memory.free_above_floor_mb=[-100,1200]",
        "workload.memory.kinds=[static]",
        "workload.concurrency=[1,8]",
    )
    rows = read_rows(tmp_path / "runs")
    run = next((tmp_path / "runs").glob("*/floor.json"))
    assert (tmp_path / "runs" / "calibration.json").exists() and run.exists()
    (machine,) = json.loads((tmp_path / "runs" / "calibration.json").read_text())
    start_up = CalibrationStore(tmp_path / "runs" / "calibration.json").load_start_up(machine)
    assert sorted(start_up.warm_up_mb) == [64, 128, 256]  # every chunk the planner may choose
    peaks = [start_up.warm_up_mb[chunk] for chunk in (64, 128, 256)]
    assert start_up.rest_mb < peaks[0] <= peaks[1] <= peaks[2]  # warming longer windows keeps more resident
    low, ample = rows[rows["free_above_floor_mb"] < 0], rows[rows["free_above_floor_mb"] > 0]
    baseline, runtime = (low[low["ablation"] == a] for a in ("baseline", "estimation"))
    assert set(baseline["status"]) == {"oom"}, baseline[["concurrency", "status", "error"]]
    assert set(runtime["status"]) == {"refused"}, runtime[["concurrency", "status", "error"]]
    assert runtime["error"].str.contains("MB available").all() and runtime["available_mb"].notna().all()
    assert set(ample["status"]) == {"ok"}, ample[["ablation", "concurrency", "status", "error"]]
    whole = rows[rows["ablation"] == "estimation"]
    assert (whole["budget_policy"] == "calibrated").all() and (whole["estimator_constants"] == "calibrated").all()
    assert whole["estimator_max_under_mb"].notna().all() and (whole["calibrated"] == True).all()  # noqa: E712
    assert (rows["floor_mb"] == rows["floor_mb"].iloc[0]).all() and 100 < rows["floor_mb"].iloc[0] < 2048
    assert (rows["free_mb"] - rows["floor_mb"] - rows["free_above_floor_mb"]).abs().max() < 1e-6
    assert "memory_sweep_short" in done.stdout
