"""A sweep through hydra-submitit-launcher's local executor (``hydra/launcher=local``): every block range a
submitit job of its own, pickled and run in a process of its own, as on Slurm up to the scheduler. A job
killed mid-run loses only its trial in flight, and rerunning the command finishes the run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (the plugin the Makefile installs: no skip)
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.results import read_rows
from experiments.sweep import SweepSpec
from experiments.workload import plan

RUN_ID = "submitit-local"
#: Two conditions of 8 trials each: the memory probe holds 0.3 s a trial, so a job can be killed mid-run.
SWEEP = [
    "trial.body=experiments.bodies:memory_probe",
    "+trial.options={hold_s: 0.3}",
    "workload=smoke",
    "workload.lengths=[100,300]",
    "workload.iterations=4",
    "progress=false",
    f"run_id={RUN_ID}",
]
CONDITIONS = ("baseline", "budget")


def cli(tmp_path: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.run",
        "-m",
        *overrides,
        f"results_dir={tmp_path / 'runs'}",
        f"hydra.sweep.dir={tmp_path / 'hydra'}",
    ]


def planned_keys() -> set[str]:
    """The trial keys the harness plans for the sweep's conditions, as :func:`run_sweep` forms them."""
    keys = set()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for ablation in CONDITIONS:
            spec = SweepSpec.from_config(compose("config", [*SWEEP, f"ablation={ablation}"]))
            keys |= {f"{spec.condition_name}/{t.key}" for t in plan(spec.workload)}
    return keys


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (an orphan's zombie, which nobody may reap here, does not)."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_until(condition, process: subprocess.Popen, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def rows_in(run_dir: Path, blocks: range) -> int:
    rows_dir = run_dir / "rows"
    return int(read_rows(rows_dir)["block"].isin(blocks).sum()) if rows_dir.is_dir() else 0


def test_a_killed_local_job_resumes_to_exactly_one_row_per_trial(tmp_path: Path) -> None:
    """Two jobs of two blocks each (``blocks_per_job=2``): blocks, not conditions, are what the jobs
    split, so each job interleaves both conditions. One is killed mid-run; the rerun finishes it."""
    command = cli(
        tmp_path, "hydra/launcher=local", "hydra.sweeper.blocks_per_job=2", "+ablation=" + ",".join(CONDITIONS), *SWEEP
    )
    run_dir = tmp_path / "runs" / RUN_ID
    planned = planned_keys()
    assert len(planned) == 16

    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: rows_in(run_dir, range(0, 2)) >= 2, driver, "the first job wrote no rows")
    job = OmegaConf.load(tmp_path / "hydra" / "0" / ".hydra" / "hydra.yaml").hydra.job
    assert "design.blocks=[0,2]" in job.override_dirname
    controllers = children(driver.pid)  # submitit's controller of each job, the job's process below it
    assert int(job.id) in controllers and len(controllers) == 2
    (job_process,) = children(int(job.id))
    workers = children(job_process)
    assert len(workers) == len(CONDITIONS)  # one warm worker per condition
    processes = controllers + [task for controller in controllers for task in children(controller)] + workers
    os.kill(job_process, signal.SIGKILL)  # mid-job, most likely mid-trial

    output, _ = driver.communicate(timeout=60)
    assert driver.returncode != 0, output  # the sweep fails: one of its jobs did not finish
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in processes):  # the other job runs on, as on a cluster
        assert time.monotonic() < deadline, "a job's processes outlived the sweep"
        time.sleep(0.1)
    first = read_rows(run_dir / "rows")
    killed = int(first["block"].isin(range(0, 2)).sum())
    assert 2 <= killed < 8 and len(first) == killed + 8

    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    rows = read_rows(run_dir / "rows")
    assert len(rows) == len(planned) and set(rows["trial_key"]) == planned  # no loss, no duplicate
    assert set(rows["ablation"]) == set(CONDITIONS) and set(rows["status"]) == {"ok"}
    assert set(rows["run_id"]) == {RUN_ID} and set(rows["host"]) == {socket.gethostname()}
    for blocks in (range(0, 2), range(2, 4)):  # each job ran both conditions, each block's 4 positions once
        part = rows[rows["block"].isin(blocks)]
        assert set(part["ablation"]) == set(CONDITIONS)
        for _, block in part.groupby("block"):
            assert sorted(block["position"]) == list(range(4))
    kept = rows.set_index("trial_id").loc[first["trial_id"], "started_at"]
    assert list(kept) == list(first["started_at"])  # finished rows were not redone
    assert not list((run_dir / "rows").glob(".*"))  # the killed job left no torn part
    logs = "".join(p.read_text() for p in (tmp_path / "hydra" / ".submitit").glob("*/*_log.out"))
    assert f"{8 - killed} trials run, {killed} already done" in logs  # the rerun's first job resumed
    assert "0 trials run, 8 already done" in logs  # the second had finished

    configs = sorted((run_dir / "configs").glob("*.yaml"))
    assert len(configs) == len(CONDITIONS)
    for path in configs:  # the resolved config of each condition reproduces it and its run
        saved = OmegaConf.load(path)
        assert saved.run_id == RUN_ID and SweepSpec.from_config(saved).condition_name == path.stem


def test_an_unknown_launcher_is_one_line_naming_it_and_the_valid_ones(tmp_path: Path) -> None:
    done = subprocess.run(
        cli(tmp_path, "hydra/launcher=nope", "+ablation=baseline"), cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 1 and not done.stdout
    assert (
        done.stderr
        == "unknown launcher hydra/launcher=nope; valid: basic, local, slurm, submitit_local, submitit_slurm\n"
    )


def test_a_launcher_whose_plugin_is_missing_is_one_line_naming_the_plugin(tmp_path: Path) -> None:
    """Without hydra-submitit-launcher (here: Hydra finds no plugins at all), as on a fresh install."""
    hide_plugins = (
        "import runpy, sys, types; plugins = types.ModuleType('hydra_plugins'); plugins.__path__ = []; "
        "sys.modules['hydra_plugins'] = plugins; runpy.run_module('experiments.run', run_name='__main__')"
    )
    for launcher in ("local", "slurm"):
        args = cli(tmp_path, f"hydra/launcher={launcher}", "+ablation=baseline")[3:]
        done = subprocess.run([sys.executable, "-c", hide_plugins, *args], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 1 and not done.stdout
        assert done.stderr == (
            f"hydra/launcher={launcher} needs the hydra-submitit-launcher plugin, which is not installed: "
            "pip install -e '.[slurm]'\n"
        )
