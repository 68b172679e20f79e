"""CPU affinity: really applied and restored on this machine; planned for captured machines we lack."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace

import psutil
import pytest
from conftest import FIXTURES, linux_fixture

from adaptive_tts.runtime.affinity import CPUAffinityManager
from adaptive_tts.runtime.hardware import HardwareInfo, detect_hardware

torch = pytest.importorskip("torch")

linux_only = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")


def m1_air() -> HardwareInfo:
    return detect_hardware(
        sysctl_output=(FIXTURES / "m1_air" / "sysctl.txt").read_text(), platform_system="Darwin", probe_gpu=False
    )


@pytest.fixture(scope="module")
def live() -> HardwareInfo:
    return detect_hardware(probe_gpu=False)


# ---- this machine ---------------------------------------------------------------------------------


def test_live_auto_plan_matches_psutil_topology(live: HardwareInfo) -> None:
    plan = CPUAffinityManager(live).plan()
    logical, physical = psutil.cpu_count(logical=True), psutil.cpu_count(logical=False)
    if live.is_hybrid:
        assert plan.strategy == "performance" and len(plan.cpus) == live.performance_cores
    elif logical > physical:
        assert plan.strategy == "physical" and len(plan.cpus) == physical
    else:
        assert plan.strategy == "all" and len(plan.cpus) == logical
    assert plan.num_threads == len(plan.cpus)


@linux_only
def test_apply_restricts_every_thread_and_restore_undoes_it(live: HardwareInfo) -> None:
    """Pins the process to one CPU for real: the calling thread, a thread started *before* apply (as
    torch's pool would be), and torch's thread count all change, and restore brings all back."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs 2 allowed CPUs to observe a restriction")
    target = max(allowed)
    threads_before = torch.get_num_threads()
    go, done = threading.Event(), threading.Event()
    seen: dict[str, set[int]] = {}

    def worker() -> None:
        go.wait(5)
        seen["worker"] = os.sched_getaffinity(0)
        done.set()

    existing = threading.Thread(target=worker)
    existing.start()
    manager = CPUAffinityManager(live, [target])
    try:
        result = manager.apply()
        go.set()
        done.wait(5)
        assert result.affinity_applied and result.cpus == [target]
        assert os.sched_getaffinity(0) == {target}
        assert seen["worker"] == {target}
        assert torch.get_num_threads() == 1 and result.num_threads == 1 and result.threads_applied
    finally:
        manager.restore()
        existing.join(5)
    assert os.sched_getaffinity(0) == allowed
    assert torch.get_num_threads() == threads_before


@linux_only
def test_apply_auto_on_this_machine(live: HardwareInfo) -> None:
    manager = CPUAffinityManager(live)
    plan = manager.plan()
    allowed = os.sched_getaffinity(0)
    if not set(plan.cpus) <= allowed:
        pytest.skip(f"a cpuset allows only {sorted(allowed)} of the planned {plan.cpus}")
    try:
        result = manager.apply()
        assert result.affinity_applied
        assert sorted(os.sched_getaffinity(0)) == plan.cpus == result.cpus
        assert torch.get_num_threads() == plan.num_threads
    finally:
        manager.restore()
    assert os.sched_getaffinity(0) == allowed


@linux_only
def test_kernel_refusal_is_reported_and_synthesis_goes_on(live: HardwareInfo) -> None:
    """The kernel refuses a CPU it lacks with EINVAL, as a container's cpuset refuses foreign CPUs: the
    result says so, affinity is untouched, and the thread count is still set."""
    phantom = replace(live, performance_cpus=[4095], efficiency_cpus=[], smt_siblings=[[4095]])
    allowed = os.sched_getaffinity(0)
    threads_before = torch.get_num_threads()
    manager = CPUAffinityManager(phantom, [4095])
    try:
        result = manager.apply()
        assert not result.affinity_applied
        assert "Invalid argument" in result.message
        assert os.sched_getaffinity(0) == allowed
        assert torch.get_num_threads() == 1
    finally:
        manager.restore()
    assert torch.get_num_threads() == threads_before


def test_unavailable_is_logged_once_per_process() -> None:
    """In a fresh interpreter, two managers applied for an M1 Air (a fixture) log the message once."""
    script = textwrap.dedent(
        f"""
        import logging, sys
        from pathlib import Path
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
        from adaptive_tts.runtime.affinity import CPUAffinityManager
        from adaptive_tts.runtime.hardware import detect_hardware
        text = Path({str(FIXTURES / "m1_air" / "sysctl.txt")!r}).read_text()
        info = detect_hardware(sysctl_output=text, platform_system="Darwin", probe_gpu=False)
        for _ in range(2):
            manager = CPUAffinityManager(info)
            manager.apply()
            manager.restore()
        """
    )
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True).stderr
    assert err.count("CPU affinity not available: macOS has no CPU affinity API") == 1


# ---- captured machines ----------------------------------------------------------------------------


def test_i5_1235u_pins_one_cpu_per_physical_p_core() -> None:
    """Runs on a fixture: i5-1235U, P-cores 0-3 (HT pairs 0-1, 2-3), E-cores 4-11."""
    info = linux_fixture("i5_1235u")
    plan = CPUAffinityManager(info).plan()
    assert (plan.cpus, plan.num_threads, plan.strategy) == ([0, 2], 2, "performance")
    assert "hybrid" in plan.reason and "efficiency cores" in plan.reason
    assert CPUAffinityManager(info, "physical").plan().cpus == [0, 2, *range(4, 12)]
    assert CPUAffinityManager(info, "all").plan().cpus == list(range(12))
    assert CPUAffinityManager(info, [4, 5]).plan().strategy == "explicit"


def test_ryzen5_5600_uses_one_cpu_per_physical_core() -> None:
    """Runs on a fixture: Ryzen 5 5600, siblings "n,n+6" (the seed's "even cores" assumed adjacent
    siblings; Linux numbers AMD's second threads after all first ones)."""
    info = linux_fixture("ryzen5_5600")
    plan = CPUAffinityManager(info).plan()
    assert (plan.cpus, plan.num_threads, plan.strategy) == ([0, 1, 2, 3, 4, 5], 6, "physical")
    assert CPUAffinityManager(info, "performance").plan().cpus == [0, 1, 2, 3, 4, 5]


def test_m1_air_plans_p_cores_but_does_not_pin() -> None:
    """Runs on a fixture: M1 Air. macOS has no affinity API: the thread count follows the 4 P-cores and
    scheduling is left to the OS; restore puts torch's thread count back."""
    info = m1_air()
    threads_before = torch.get_num_threads()
    affinity_before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    manager = CPUAffinityManager(info)
    plan = manager.plan()
    assert (plan.cpus, plan.num_threads) == ([0, 1, 2, 3], 4)
    assert "macOS" in plan.reason
    try:
        result = manager.apply()
        assert not result.affinity_applied and result.cpus is None
        assert "macOS" in result.message
        assert torch.get_num_threads() == 4
        if affinity_before is not None:
            assert os.sched_getaffinity(0) == affinity_before
    finally:
        manager.restore()
    assert torch.get_num_threads() == threads_before


def test_explicit_lists_are_validated_against_the_machine() -> None:
    """Runs on a fixture: the i5-1235U has CPUs 0-11 only."""
    info = linux_fixture("i5_1235u")
    with pytest.raises(ValueError, match=r"\[12\]"):
        CPUAffinityManager(info, [0, 12])
    with pytest.raises(ValueError):
        CPUAffinityManager(info, [])
    with pytest.raises(ValueError, match="performance"):
        CPUAffinityManager(info, "fastest")


@pytest.mark.skipif(platform.system() != "Linux", reason="live Linux check")
def test_restore_without_apply_changes_nothing(live: HardwareInfo) -> None:
    allowed, threads = os.sched_getaffinity(0), torch.get_num_threads()
    CPUAffinityManager(live).restore()
    assert (os.sched_getaffinity(0), torch.get_num_threads()) == (allowed, threads)
