"""Sweeps end to end through the CLI: one row per trial, interrupted at any point and resumed."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, cgroup_mechanism, harness_cli, our_cgroups

from adaptive_tts.runtime.hardware import detect_hardware
from experiments.results import RowStore, read_rows

cli = harness_cli


def wait_for_rows(rows_dir: Path, n: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(RowStore(rows_dir.parent).done()) < n:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no rows appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_an_interrupted_sweep_resumes_to_exactly_one_row_per_trial(tmp_path: Path, how: signal.Signals) -> None:
    """On a simulated device (a cgroup here), with a background app: nothing may be left behind."""
    run_args = cli(
        tmp_path,
        "run_id=resume-me",
        "hardware=m1_air",
        "workload=smoke",
        "workload.iterations=4",  # 20 trials of 0.2 s: a loaded machine delivers the signal late
        "workload.background_mb=20",
        "+trial.options={hold_s: 0.2}",
    )
    rows_dir = tmp_path / "runs" / "resume-me" / "rows"
    driver = subprocess.Popen(run_args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_rows(rows_dir, 3, driver)
    if cgroup_mechanism() is not None:  # the simulated device is a cgroup, found where it is: the checks
        assert our_cgroups(driver.pid)  # below that none is left would otherwise pass for any driver
    children = [int(p) for p in Path(f"/proc/{driver.pid}/task/{driver.pid}/children").read_text().split()]
    driver.send_signal(how)  # mid-sweep, most likely mid-trial
    driver.communicate(timeout=30)
    first = read_rows(rows_dir)
    assert 3 <= len(first) < 20
    time.sleep(0.5)  # the kernel delivers the workers' parent-death signal asynchronously
    for child in children:  # the worker and the background app died with the driver
        assert not Path(f"/proc/{child}").exists() or "State:\tZ" in Path(f"/proc/{child}/status").read_text()
    if how == signal.SIGINT:
        assert not our_cgroups(driver.pid)  # an interrupted driver cleans up after itself

    finished = subprocess.run(run_args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert f"{20 - len(first)} trials run, {len(first)} already done" in finished.stdout
    rows = read_rows(rows_dir)
    assert len(rows) == 20 and rows["trial_id"].is_unique
    assert sorted(zip(rows["text_length"], rows["iteration"])) == sorted(
        (length, i) for length in (100, 300, 500, 800, 1000) for i in range(4)
    )
    assert set(rows["status"]) == {"ok"}
    kept = rows.set_index("trial_id").loc[first["trial_id"], "started_at"]
    assert list(kept) == list(first["started_at"])  # finished rows were not redone
    assert not list(rows_dir.glob(".*"))  # no torn parts left behind
    assert not our_cgroups(driver.pid)  # a SIGKILLed driver's cgroup is removed by the next run


def test_a_multirun_over_all_ablations_lands_in_one_run(tmp_path: Path) -> None:
    done = subprocess.run(
        cli(
            tmp_path,
            "+ablation=baseline,budget,affinity,estimation",
            "workload=smoke",
            "workload.lengths=[100,300]",
            multirun=True,
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = read_rows(run_dir)
    assert len(rows) == 8 and rows["trial_id"].is_unique
    flags = rows.groupby("ablation")[["budget_on", "affinity_on", "estimation_on"]].first()
    assert flags.to_dict("index") == {
        "baseline": {"budget_on": False, "affinity_on": False, "estimation_on": False},
        "budget": {"budget_on": True, "affinity_on": False, "estimation_on": False},
        "affinity": {"budget_on": True, "affinity_on": True, "estimation_on": False},
        "estimation": {"budget_on": True, "affinity_on": True, "estimation_on": True},
    }
    assert len(list((run_dir / "configs").glob("*.yaml"))) == 4
    assert f"run_id: {run_dir.name}" in next((run_dir / "configs").glob("baseline-*.yaml")).read_text()
    table = done.stdout.rsplit("lat_mean_ms", 1)[1]  # the last job's summary covers the whole run
    positions = [table.index(f" {a} ") for a in ("baseline", "budget", "affinity", "estimation")]
    assert positions == sorted(positions)


def test_default_invocation_needs_no_overrides(tmp_path: Path) -> None:
    done = subprocess.run(
        cli(tmp_path, "workload.lengths=[100]", "workload.iterations=1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = read_rows(tmp_path / "runs")
    assert list(rows["ablation"]) == ["estimation"] and list(rows["simulated"]) == [False]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    commit = rf"{head.stdout.strip()}(-dirty)?" if head.returncode == 0 else "unknown"  # not a git checkout
    assert re.fullmatch(commit, rows.loc[0, "git_commit"]), rows.loc[0, "git_commit"]  # dirty: files differ
    assert rows.loc[0, "host"] == socket.gethostname()
    assert rows.loc[0, "cpu_model"] == detect_hardware(probe_gpu=False).cpu_model
