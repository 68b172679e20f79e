"""Memory budget manager: live readings on this machine, a real capped cgroup, and captured containers."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from conftest import FIXTURES, I5, M1, Memory, no_cgroup, simulated_budget

from adaptive_tts.runtime.budget import MemoryBudgetManager, MemoryReading, MemoryRoom, MemoryWatch
from adaptive_tts.runtime.hardware import MIB, HardwareProfile, detect_hardware, read_cgroup_memory


def with_safety_margin(profile: HardwareProfile, gb: float) -> HardwareProfile:
    return replace(profile, memory_budget=replace(profile.memory_budget, safety_margin_gb=gb))


# ---- this machine ---------------------------------------------------------------------------------


def test_live_available_never_exceeds_system_available() -> None:
    budget = MemoryBudgetManager(I5)
    ours = budget.available_mb()
    system = psutil.virtual_memory().available / MIB
    assert 0 < ours <= system + 64  # 64 MB: other processes move between the two readings
    reading = budget.reading()
    assert reading.cgroup.version == read_cgroup_memory().version


def test_live_enforce_limits_and_check() -> None:
    budget = MemoryBudgetManager(with_safety_margin(I5, 0.01))
    assert budget.enforce_limits()
    fits = budget.check(1.0)
    assert fits.allowed and fits.headroom_mb > 0
    too_big = budget.check(psutil.virtual_memory().total / MIB * 2)
    assert not too_big.allowed and too_big.headroom_mb < 0
    assert "exceeds" in too_big.reason


@contextmanager
def child_memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A child of this process's memory cgroup with a real kernel limit; skips where none can be made."""
    if platform.system() != "Linux":
        pytest.skip("memory cgroups are Linux's")
    own = read_cgroup_memory()
    if own.version is None or own.directory is None:
        pytest.skip("this kernel has no memory cgroup controller for the process")
    child = own.directory / f"adaptive-tts-test-{os.getpid()}"
    try:
        child.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a child memory cgroup under {own.directory}: {exc}")
    try:
        limit_file = child / ("memory.limit_in_bytes" if own.version == 1 else "memory.max")
        if not limit_file.exists():
            pytest.skip(
                f"cgroup v{own.version}: no {limit_file.name} in a child of {own.directory} (on v2 the parent's "
                "cgroup.subtree_control lacks +memory, which a cgroup holding processes cannot delegate)"
            )
        limit_file.write_text(str(limit_bytes))
        yield child
    finally:
        for _ in range(50):  # the kernel frees an exited task's cgroup asynchronously
            try:
                child.rmdir()
                break
            except OSError:
                time.sleep(0.02)


CHILD = textwrap.dedent(
    """
    import json, logging, sys
    sys.stdin.readline()  # wait until the parent has moved us into the capped cgroup
    import psutil
    from adaptive_tts.runtime.budget import MemoryBudgetManager
    from adaptive_tts.runtime.hardware import PROFILES, detect_hardware

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    info = detect_hardware(probe_gpu=False)
    budget = MemoryBudgetManager(PROFILES["m1_air"], info=info)
    before = budget.available_mb()
    blob = b"x" * (96 * 1024 * 1024)  # written, so the pages are really charged
    after = budget.available_mb()
    print(json.dumps({
        "version": info.cgroup_version, "limit_mb": info.cgroup_limit_mb, "before": before, "after": after,
        "psutil_available_mb": psutil.virtual_memory().available / 1024 / 1024,
        "enforce": budget.enforce_limits(), "allowed_64": budget.check(64).allowed,
    }))
    """
)


def test_budget_sees_a_real_cgroup_cap() -> None:
    """A subprocess in a child cgroup capped at 256 MiB: detection reports the cap, available memory is
    bounded by it and falls as the child allocates, and the M1 Air's 1.5 GB margin cannot be met."""
    with child_memory_cgroup(256 * MIB) as cgroup:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
        out, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["limit_mb"] == 256
    assert result["version"] == read_cgroup_memory().version  # the child sits in this process's hierarchy
    assert 0 < result["before"] <= 256
    assert result["before"] < result["psutil_available_mb"]
    assert result["before"] - result["after"] >= 80  # the 96 MB the child wrote, seen through the cgroup
    assert result["enforce"] is False
    assert result["allowed_64"] is False
    assert "CRITICAL: only 0." in err and "GB available (need 1.5 GB safety margin)" in err


# ---- machines we lack -----------------------------------------------------------------------------


def test_enforce_limits_logs_the_numbers(caplog: pytest.LogCaptureFixture) -> None:
    """Runs on a simulated 16 GB laptop with 1.2 GB available."""
    budget = simulated_budget(I5, Memory(1.2 * 1024, total_mb=16384))
    with caplog.at_level(logging.CRITICAL, logger="adaptive_tts.runtime.budget"):
        assert budget.enforce_limits() is False
    assert "CRITICAL: only 1.2 GB available (need 2.0 GB safety margin)" in caplog.text


def test_check_is_bounded_by_the_container_cgroup() -> None:
    """Runs on a fixture: a Docker container capped at 2 GiB (cgroup v1) on a host with 12 GB free."""
    root = FIXTURES / "cgroup_v1"
    budget = simulated_budget(
        with_safety_margin(I5, 0.5),
        Memory(12288, total_mb=16384),
        read_cgroup_memory(proc_root=root / "proc", cgroup_root=root / "cgroup"),
    )
    assert budget.available_mb() == 2048 - 500
    ok = budget.check(1000)
    assert ok.allowed
    assert (ok.required_mb, ok.available_mb, ok.safety_margin_mb, ok.headroom_mb) == (1000, 1548, 512, 36)
    assert "1000 MB" in ok.reason and "1548 MB" in ok.reason and "cgroup v1" in ok.reason
    refused = budget.check(1100)
    assert not refused.allowed and refused.headroom_mb == -64
    assert "exceeds 1548 MB available (cgroup v1) by 64 MB" in refused.reason
    with pytest.raises(ValueError):
        budget.check(-1)


def test_no_cgroup_in_info_skips_cgroup_reads() -> None:
    """Runs on a fixture: the M1 Air (macOS has no cgroups)."""
    sysctl = (FIXTURES / "m1_air" / "sysctl.txt").read_text()
    info = detect_hardware(sysctl_output=sysctl, platform_system="Darwin", probe_gpu=False)
    budget = MemoryBudgetManager(M1, info=info, system_memory=Memory(3000, total_mb=8192))
    assert budget.reading().cgroup.version is None
    assert budget.available_mb() == 3000


def test_cache_limit_follows_memory_pressure() -> None:
    """Runs on a simulated 16 GB laptop whose free memory the test moves."""
    machine = Memory(8000, total_mb=16384)
    budget = simulated_budget(I5, machine)
    seen: list[float] = []
    budget.add_cache_listener(seen.append)
    assert budget.cache_limit_mb == budget.cache_ceiling_mb == 1536

    assert budget.adjust_cache_limit() == 1536 and seen == []  # plenty: stays at the ceiling
    machine.available_mb = 2048 - 300  # 300 MB short of the margin
    assert budget.adjust_cache_limit() == 1236 and seen == [1236]
    machine.available_mb = 2048  # the cache evicted those 300 MB: settled, no change
    assert budget.adjust_cache_limit() == 1236 and seen == [1236]
    machine.available_mb = 100
    assert budget.adjust_cache_limit() == 0 and seen[-1] == 0
    machine.available_mb = 2048 + 500  # recovering
    assert budget.adjust_cache_limit() == 500
    machine.available_mb = 9000
    assert budget.adjust_cache_limit() == 1536 and seen == [1236, 0, 500, 1536]  # never above max cache
    budget.remove_cache_listener(seen.append)
    machine.available_mb = 1000
    budget.adjust_cache_limit()
    assert seen == [1236, 0, 500, 1536]


# ---- policies -------------------------------------------------------------------------------------


def test_seed_policy_keeps_the_documents_margin() -> None:
    budget = simulated_budget(M1, Memory(1000, total_mb=8192))
    assert budget.policy == "seed" and budget.safety_margin_mb == 1536
    assert not budget.check(100).allowed


def test_calibrated_policy_keeps_the_estimators_error_plus_how_far_others_may_grow_back() -> None:
    machine = Memory(1000, total_mb=8192)
    budget = simulated_budget(M1, machine)
    budget.watch.stop()  # sampled by hand below, so the numbers are the test's
    budget.watch = type(budget.watch)(budget.reading, own_rss=lambda: 300.0)
    budget.set_policy("calibrated")
    budget.watch.stop()
    budget.set_estimator_error(None)  # no calibration: the seed's margin stays
    assert budget.safety_margin_mb == 1536
    budget.set_estimator_error(35.0)
    for available in (1000, 880, 1000, 940):  # another app grows by 120 MB, then shrinks
        machine.available_mb = available
        budget.watch.sample()
    assert budget.watch.swing_mb() == pytest.approx(120)
    # now 60 MB below the most seen: it may take those 60 MB back
    assert budget.safety_margin_mb == pytest.approx(95)
    assert budget.check(800).allowed  # 940 - 800 - 95 >= 0, where the seed's margin refused 100 MB
    assert budget.resident_margin_mb == pytest.approx(155)  # held for life: the whole 120 MB swing
    assert 940 - 800 - budget.resident_margin_mb < 0  # what a request may take, a warm-up may not
    terms = budget.margin_terms()
    assert terms == {
        "policy": "calibrated",
        "safety_margin_mb": 95.0,
        "estimator_error_mb": 35.0,
        "background_swing_mb": 120.0,
        "background_headroom_mb": 60.0,
    }
    machine.available_mb = 880  # the app at its peak: nothing left to take back
    assert budget.room() == MemoryRoom(880, 35.0, "system")
    machine.available_mb = 1000  # at its least: the whole swing
    assert budget.room().safety_margin_mb == pytest.approx(155)


def test_a_reading_while_this_process_allocates_is_not_charged_to_others() -> None:
    machine = Memory(1000, total_mb=8192)
    rss = iter([300.0, 300.5, 300.0, 420.0, 300.0, 300.0])  # the second reading straddles a 120 MB allocation
    watch = MemoryWatch(lambda: MemoryReading(machine(), no_cgroup()), own_rss=lambda: next(rss))
    assert watch.sample() == pytest.approx(8192 - 1000 - 300.25)
    assert watch.sample() is None and watch.skipped == 1
    assert watch.sample() == pytest.approx(8192 - 1000 - 300)
    assert watch.swing_mb() == pytest.approx(0.25)
    assert watch.headroom_mb(None) == pytest.approx(0.25)  # unknown now: as if at the least seen


def test_the_watch_forgets_what_left_its_window() -> None:
    machine = Memory(1000, total_mb=8192)
    watch = simulated_budget(M1, machine).watch
    watch.window_s = 0.05
    machine.available_mb = 500
    watch.sample()
    time.sleep(0.1)
    machine.available_mb = 1000
    watch.sample()
    watch.sample()
    assert watch.swing_mb() < 1.0  # the 500 MB dip has left; only this process's own RSS jitter remains


def test_the_live_watch_samples_a_real_machine() -> None:
    budget = MemoryBudgetManager(M1, policy="calibrated")
    time.sleep(0.3)
    budget.close()
    assert len(budget.watch._samples) >= 3
    assert 0 <= budget.watch.swing_mb() < psutil.virtual_memory().total / MIB


def test_unknown_policy_is_an_error() -> None:
    with pytest.raises(ValueError, match="'generous'"):
        MemoryBudgetManager(M1, policy="generous")
    with pytest.raises(ValueError, match=">= 0"):
        MemoryBudgetManager(M1).set_estimator_error(-1)
