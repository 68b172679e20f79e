"""Worker supervision with real workers and a real memory probe body (not the TTS): kills, OOMs,
timeouts and exceptions each become exactly one classified outcome, and the next trial still runs."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import cgroup_mechanism

from experiments.limits import Device, DeviceSpec, host_cpus
from experiments.trial import Supervisor, TrialRequest

PROBE = "experiments.bodies:memory_probe"


def device(cap_mb: float | None = None, background_mb: float = 0.0, mechanism: str = "auto") -> Device:
    return Device(DeviceSpec("test", cap_mb is not None, cap_mb, tuple(host_cpus()[:1]), background_mb, mechanism))


needs_cgroup = pytest.mark.skipif(
    cgroup_mechanism() is None, reason="the kernel offers no writable memory cgroup (v1 or v2) to this user"
)


def run(supervisor: Supervisor, trial_id: int) -> dict:
    return supervisor.run(TrialRequest(trial_id, "text"))


def test_worker_serves_many_trials_and_measures_its_peak(tmp_path: Path) -> None:
    with device() as dev, Supervisor(dev, PROBE, {"alloc_mb": 80}, tmp_path) as sup:
        outcomes = [run(sup, i) for i in range(3)]
        pid = sup.worker.pid
    assert [o["status"] for o in outcomes] == ["ok"] * 3
    assert [o["worker_trials"] for o in outcomes] == [0, 1, 2]  # one process, model loaded once
    assert all(o["peak_rss_mb"] >= 80 for o in outcomes)  # the peak was reset per trial, and is real
    assert all(o["peak_rss_mb"] < 80 + 60 for o in outcomes)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker did not outlive the supervisor


def test_a_held_worker_is_stopped_until_its_next_trial_and_still_serves_it(tmp_path: Path) -> None:
    """An interleaved sweep holds every idle condition's worker off the CPUs (SIGSTOP): it stays
    loaded, takes no CPU time while held, and its next trial thaws it and runs in the same process."""

    def proc_state(pid: int) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    def cpu_ticks(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    with device() as dev, Supervisor(dev, PROBE, {}, tmp_path) as sup:
        sup.start()
        pid = sup.worker.pid
        sup.hold()
        deadline = time.monotonic() + 5
        while proc_state(pid) != "T":
            assert time.monotonic() < deadline, "the held worker did not stop"
            time.sleep(0.01)
        ticks = cpu_ticks(pid)
        time.sleep(0.5)
        assert cpu_ticks(pid) == ticks and proc_state(pid) == "T"
        outcome = run(sup, 0)
        assert outcome["status"] == "ok" and outcome["worker_trials"] == 0 and sup.worker.pid == pid
        assert proc_state(pid) != "T"
        sup.hold()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # a held worker is still ended with its supervisor


def test_a_worker_sigkilled_mid_trial_becomes_a_row_and_the_sweep_goes_on(tmp_path: Path) -> None:
    with device() as dev, Supervisor(dev, PROBE, {"hold_s": 1.0}, tmp_path, timeout_s=30) as sup:
        assert run(sup, 0)["status"] == "ok"
        victim = sup.worker.pid
        killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
        killer.start()
        killed = run(sup, 1)
        after = run(sup, 2)
    assert killed["status"] == "error"  # nothing raised the kernel's OOM-kill counter: not an OOM
    assert "SIGKILL" in killed["error"] and "running the trial" in killed["error"]
    assert after["status"] == "ok" and after["worker_trials"] == 0  # served by a replacement


def test_a_hung_trial_times_out_and_its_worker_is_replaced(tmp_path: Path) -> None:
    with device() as dev, Supervisor(dev, PROBE, {"hold_s": 30}, tmp_path, timeout_s=0.5) as sup:
        start = time.monotonic()
        outcome = run(sup, 0)
        assert time.monotonic() - start < 10
        assert sup.worker is None
    assert outcome["status"] == "timeout" and "0.5 s" in outcome["error"]


def test_an_exception_in_the_body_is_an_error_with_its_text(tmp_path: Path) -> None:
    with device() as dev, Supervisor(dev, PROBE, {"alloc_mb": "lots"}, tmp_path) as sup:
        outcome = run(sup, 0)
    assert outcome["status"] == "error" and "ValueError" in outcome["error"] and "lots" in outcome["error"]


def test_an_unimportable_body_is_an_error_not_a_crash(tmp_path: Path) -> None:
    with device() as dev, Supervisor(dev, "experiments.bodies:no_such_body", {}, tmp_path) as sup:
        outcome = run(sup, 0)
    assert outcome["status"] == "error" and "no_such_body" in outcome["error"]


@needs_cgroup
def test_a_cgroup_capped_worker_that_exceeds_its_cap_is_oom(tmp_path: Path) -> None:
    with device(cap_mb=150) as dev, Supervisor(dev, PROBE, {"alloc_mb": 400}, tmp_path) as sup:
        cgroup = dev.cap.cgroup
        outcome = run(sup, 0)
        assert dev.mem_cap_mechanism == cgroup_mechanism()
    assert outcome["status"] == "oom", outcome
    assert "OOM-killed" in outcome["error"]
    if cgroup_mechanism() == "cgroup_v1":  # the device's peak: v1 keeps one (max_usage_in_bytes)
        assert 140 <= (outcome["cgroup_peak_mb"] or 0) <= 150 + 1, outcome  # the worker died at the cap
    else:  # v2's memory.peak resets per open file: no peak is reported
        assert outcome["cgroup_peak_mb"] is None
    assert not cgroup.exists()  # cleaned up


@needs_cgroup
def test_background_memory_in_the_same_cgroup_causes_the_oom(tmp_path: Path) -> None:
    """200 MB fits a 300 MB device alone, but not next to an app holding 150 MB."""
    with device(cap_mb=300, background_mb=150) as dev:
        with Supervisor(dev, PROBE, {"alloc_mb": 40}, tmp_path) as sup:
            small = run(sup, 0)
        with Supervisor(dev, PROBE, {"alloc_mb": 200}, tmp_path) as sup:
            big = run(sup, 1)
        assert dev.background.process.poll() is None  # the worker was the victim, not the background app
    assert small["status"] == "ok"
    if cgroup_mechanism() == "cgroup_v1":  # the device's peak counts the background app's 150 MB too
        assert (small["cgroup_peak_mb"] or 0) > 150, small
    else:
        assert small["cgroup_peak_mb"] is None
    assert big["status"] == "oom", big
    with device(cap_mb=300) as dev, Supervisor(dev, PROBE, {"alloc_mb": 200}, tmp_path) as sup:
        assert run(sup, 2)["status"] == "ok"  # without the background app, the same trial fits


def test_an_rlimit_capped_worker_that_exceeds_its_cap_is_oom(tmp_path: Path) -> None:
    with device(cap_mb=300, mechanism="rlimit") as dev, Supervisor(dev, PROBE, {"alloc_mb": 600}, tmp_path) as sup:
        outcome = run(sup, 0)
    assert outcome["mem_cap_mechanism"] == "rlimit"
    assert outcome["status"] == "oom" and "MemoryError" in outcome["error"]


def test_a_worker_lost_between_trials_costs_no_trial(tmp_path: Path) -> None:
    with device() as dev, Supervisor(dev, PROBE, {}, tmp_path) as sup:
        assert run(sup, 0)["status"] == "ok"
        os.kill(sup.worker.pid, signal.SIGKILL)
        sup.worker.process.wait()
        outcome = run(sup, 1)
    assert outcome["status"] == "ok" and outcome["worker_trials"] == 0


def test_workers_are_recycled_after_max_trials(tmp_path: Path) -> None:
    with device() as dev, Supervisor(dev, PROBE, {}, tmp_path, max_trials_per_worker=2) as sup:
        served = [run(sup, i)["worker_trials"] for i in range(5)]
    assert served == [0, 1, 0, 1, 0]


def test_a_background_app_killed_between_levels_is_started_again_at_the_new_size() -> None:
    """The kernel may kill the background app rather than a dying worker; the next level's resize
    starts it again instead of ending the sweep."""
    with device(cap_mb=300, background_mb=50) as dev:
        first = dev.background.process
        first.kill()
        first.wait()
        dev.background.set(80)
        assert dev.background.process is not first and dev.background.process.poll() is None
        assert dev.background.mb == 80


def test_trials_a_background_app_vanished_from_are_flagged_until_a_fresh_worker(tmp_path: Path) -> None:
    """The kernel killed the background app (as it may, rather than a dying worker): the trial it died
    in and the later trials of the same worker (whose memory watch saw it vanish) say so; a fresh
    worker, started against the restarted app, does not."""
    with device(cap_mb=300, background_mb=50) as dev:
        with Supervisor(dev, PROBE, {"alloc_mb": 10}, tmp_path) as sup:
            assert run(sup, 0)["background_restarted"] is False
            dev.background.process.kill()
            dev.background.process.wait()
            assert run(sup, 1)["background_restarted"] is True  # restarted before it, seen by the worker
            assert dev.background.running
            assert run(sup, 2)["background_restarted"] is True
            sup.close_worker()
            assert run(sup, 3)["background_restarted"] is False
    with device(cap_mb=300) as dev, Supervisor(dev, PROBE, {"alloc_mb": 10}, tmp_path) as sup:
        assert "background_restarted" not in run(sup, 4)  # no background app: nothing to say
