"""Busy background processes (``workload.background_cpu``): confined to the device's CPUs, spinning only
while one of that device's trials runs, gone with the device; a sweep over load levels shows them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, harness_cli

from experiments.limits import Confinement, CPULoad, Device, DeviceSpec, host_cpus
from experiments.results import read_rows


def state(pid: int) -> str:
    """The process's scheduler state letter (R running, S sleeping, T stopped); "gone" once reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def states(pids: list[int], want: str, timeout_s: float = 5.0) -> bool:
    """Whether every process reaches state ``want`` within ``timeout_s`` (a signal is delivered when the
    process is next scheduled, not at once)."""
    deadline = time.monotonic() + timeout_s
    while any(state(pid) != want for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_busy_processes_spin_only_while_a_trial_runs_and_die_with_the_device() -> None:
    cpus = tuple(host_cpus()[:1])
    spec = DeviceSpec("auto", False, None, cpus, background_cpu=2)
    with Device(spec) as device:
        pids = [process.pid for process in device.cpu_load.processes]
        assert len(pids) == 2 and states(pids, "T")  # held stopped between trials
        assert all(os.sched_getaffinity(pid) == set(cpus) for pid in pids)  # in the device's CPU set
        with device.busy():
            assert states(pids, "R")
        assert states(pids, "T")
    assert states(pids, "gone")


def test_no_load_starts_no_process_and_bad_counts_name_themselves() -> None:
    load = CPULoad(0, Confinement())
    load.start()
    with load.running():
        assert load.processes == []
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="background_cpu must be a whole number"):
            CPULoad(bad, Confinement())


def test_a_sweep_over_load_levels_slows_a_fixed_amount_of_work(tmp_path: Path) -> None:
    """Interleaved with no load, two busy processes on this machine's CPUs take CPU time from the same
    work: its median wall time rises (by ~(n + 2) / n on n CPUs with a share each; asserted loosely)."""
    argv = harness_cli(
        tmp_path,
        "+trial.options={work: 15}",  # ~0.4 s: long enough that a woken task cannot outrun the load
        "workload=smoke",
        "workload.lengths=[100]",
        "workload.iterations=6",
        f"workload.background_cpu=0,{2 * len(host_cpus())}",
        "run_id=load",
        multirun=True,
    )
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(tmp_path / "runs" / "load")
    assert len(rows) == 12 and set(rows["status"]) == {"ok"}
    median = rows.groupby("background_cpu")["latency_ms"].median()
    assert median.index.tolist() == [0, 2 * len(host_cpus())]
    assert median.iloc[1] > 1.5 * median.iloc[0], median.to_dict()
