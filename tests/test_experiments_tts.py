"""The harness around the real TTS backend (slow: loads the voice in worker processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.limits import create_memory_cap
from experiments.results import read_rows

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "experiments.run", "-m", f"results_dir={tmp_path / 'runs'}",
         f"hydra.sweep.dir={tmp_path / 'hydra'}", "progress=false", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=900,
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
    assert rows.loc["baseline", "estimated_mb"].isna().all()  # estimation off: no prediction
    assert rows.loc["estimation", "estimated_mb"].notna().all()


def cgroup_cap_available() -> bool:
    cap = create_memory_cap(64)
    cap.close()
    return cap.cgroup is not None


@pytest.mark.skipif(
    not cgroup_cap_available() or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") < 10 * 2**30,
    reason="the pressure workload is tuned for a cgroup-capped 8 GB device on a host with more than 8 GB",
)
def test_pressure_makes_the_baseline_run_out_of_memory(tmp_path: Path) -> None:
    done = sweep(tmp_path, "+experiment=pressure", "+ablation=baseline,budget", "workload.iterations=1")
    rows = read_rows(tmp_path / "runs")
    baseline, budget = (rows[rows["ablation"] == a] for a in ("baseline", "budget"))
    assert (baseline["status"] == "oom").sum() >= 2, baseline[["text_length", "status", "error"]]
    assert (budget["status"] == "oom").sum() == 0
    assert (budget["status"] == "refused").any() and budget["error"].str.contains("MB").all()
    assert f"background {rows['background_mb'].iloc[0]:g} MB" in done.stdout  # the summary prints the pressure
