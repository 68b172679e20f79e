"""System monitor: the seed's /system-status payload, thresholds, and thermal signals."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from conftest import FIXTURES, I5, M1, Memory, linux_fixture, simulated_budget

from adaptive_tts.runtime.budget import MemoryBudgetManager
from adaptive_tts.runtime.hardware import MIB, PROFILES, CgroupMemory, HardwareProfile, detect_hardware
from adaptive_tts.runtime.monitor import (
    ACTION_CPU,
    ACTION_MEMORY,
    ACTION_OK,
    ACTION_THERMAL,
    SystemMonitor,
)


def simulated(
    profile: HardwareProfile,
    sysfs: Path,
    *,
    cpu: float = 20.0,
    total_mb: float = 16384,
    available_mb: float = 8192,
    cgroup: CgroupMemory | None = None,
    **kwargs,
) -> SystemMonitor:
    """A monitor for a machine we lack: its load and memory given, its sysfs a captured tree."""
    budget = simulated_budget(profile, Memory(available_mb, total_mb=total_mb), cgroup)
    return SystemMonitor(profile, budget_manager=budget, sysfs_root=sysfs, cpu_percent=lambda: cpu, **kwargs)


@pytest.fixture
def no_sensors(tmp_path: Path) -> Path:
    """A sysfs with no thermal sensors at all (as macOS, or a VM like this project's)."""
    (tmp_path / "sys").mkdir()
    return tmp_path / "sys"


def copy_tree(name: str, tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES / name / "sys", tmp_path / name)
    return tmp_path / name


# ---- this machine ---------------------------------------------------------------------------------


def test_live_status_payload_is_the_seeds_and_fast() -> None:
    info = detect_hardware(probe_gpu=False)
    monitor = SystemMonitor(I5, info=info)
    assert isinstance(monitor.memory_budget_manager, MemoryBudgetManager)
    start = time.perf_counter()
    status = monitor.status()
    elapsed = time.perf_counter() - start
    assert elapsed < 0.1  # non-blocking CPU reading: fit for an HTTP poll
    assert list(status) == ["resources", "throttling_risk", "memory_budget_safe", "recommended_action"]
    assert list(status["resources"]) == ["cpu_percent", "memory_percent", "memory_available_gb"]
    assert list(status["throttling_risk"]) == ["memory_critical", "cpu_maxed", "thermal_likely", "thermal_signal"]
    assert 0.0 <= status["resources"]["cpu_percent"] <= 100.0
    vm = psutil.virtual_memory()
    assert status["resources"]["memory_percent"] >= vm.percent - 5
    assert status["resources"]["memory_available_gb"] <= vm.available / MIB / 1024 + 0.1
    # the one action this reading's risks determine, memory first, then heat, then load
    risk = status["throttling_risk"]
    if risk["memory_critical"] or not status["memory_budget_safe"]:
        expected = ACTION_MEMORY
    elif risk["thermal_likely"]:
        expected = ACTION_THERMAL
    elif risk["cpu_maxed"]:
        expected = ACTION_CPU
    else:
        expected = ACTION_OK
    assert status["recommended_action"] == expected, status


def test_live_monitor_sees_its_own_cpu_load() -> None:
    """psutil's non-blocking reading averages since the previous call: a busy loop in between shows up."""
    monitor = SystemMonitor(I5, info=detect_hardware(probe_gpu=False))
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
    busy = monitor.status()["resources"]["cpu_percent"]
    assert busy >= 100 / psutil.cpu_count() * 0.5  # one core of N, at least half-busy


# ---- thresholds (machines we lack, given readings) -------------------------------------------------


@pytest.mark.parametrize(("cpu", "maxed"), [(90.0, False), (90.5, True)])
def test_cpu_maxed_threshold(no_sensors: Path, cpu: float, maxed: bool) -> None:
    status = simulated(I5, no_sensors, cpu=cpu).status()
    assert status["throttling_risk"]["cpu_maxed"] is maxed
    assert status["recommended_action"] == (ACTION_CPU if maxed else ACTION_OK)


@pytest.mark.parametrize(("used_percent", "critical"), [(85.0, False), (86.0, True)])
def test_memory_critical_threshold(no_sensors: Path, used_percent: float, critical: bool) -> None:
    total = 100_000  # MB: exact percentages, and the 2 GB safety margin stays met at 86 %
    status = simulated(I5, no_sensors, total_mb=total, available_mb=total - used_percent * 1000).status()
    assert status["throttling_risk"]["memory_critical"] is critical
    assert status["memory_budget_safe"] is True
    assert status["resources"]["memory_percent"] == used_percent
    assert status["recommended_action"] == (ACTION_MEMORY if critical else ACTION_OK)


def test_memory_outranks_cpu_and_unsafe_budget_counts_as_memory(no_sensors: Path) -> None:
    both = simulated(I5, no_sensors, cpu=99, total_mb=16384, available_mb=1000).status()
    assert both["throttling_risk"]["cpu_maxed"] and both["throttling_risk"]["memory_critical"]
    assert both["recommended_action"] == ACTION_MEMORY
    # 82 % used is not critical, but 1.8 GB is under the i5's 2 GB margin
    unsafe = simulated(I5, no_sensors, total_mb=10240, available_mb=1843).status()
    assert not unsafe["throttling_risk"]["memory_critical"]
    assert unsafe["memory_budget_safe"] is False
    assert unsafe["recommended_action"] == ACTION_MEMORY


def test_a_full_container_is_critical_on_an_idle_host(no_sensors: Path) -> None:
    """Runs on a simulated container: 1900 of its 2048 MB cgroup used while the host is 20 % used."""
    status = simulated(
        M1,
        no_sensors,
        cpu=10,
        total_mb=65536,
        available_mb=52428,
        cgroup=CgroupMemory(1, "/docker/x", 2048, 1900),
    ).status()
    assert status["throttling_risk"]["memory_critical"]
    assert status["resources"]["memory_available_gb"] == round(148 / 1024, 2)
    assert status["memory_budget_safe"] is False


def test_gpu_util_only_with_an_nvidia_gpu(no_sensors: Path) -> None:
    """Runs on fixtures: the i5 laptop without a GPU, and the same with a CUDA GPU and its reading."""
    info = linux_fixture("i5_1235u")
    assert "gpu_util" not in simulated(I5, no_sensors, info=info).status()["resources"]
    with_gpu = replace(info, cuda_available=True, gpu_name="NVIDIA GeForce RTX 3060")
    status = simulated(I5, no_sensors, info=with_gpu, gpu_util=lambda: 60.0).status()
    assert status["resources"]["gpu_util"] == 60.0


# ---- thermal signals ---------------------------------------------------------------------------------


def test_rising_throttle_count_means_thermal(tmp_path: Path) -> None:
    """Runs on a fixture: the i5-1235U's sysfs, whose core throttle counter the test raises."""
    sysfs = copy_tree("i5_1235u", tmp_path)
    monitor = simulated(I5, sysfs, cpu=40)
    first = monitor.status()
    assert first["throttling_risk"]["thermal_likely"] is False
    assert "thermal_throttle counts steady" in first["throttling_risk"]["thermal_signal"]

    counter = sysfs / "devices/system/cpu/cpu2/thermal_throttle/core_throttle_count"
    counter.write_text(str(int(counter.read_text()) + 2))
    hot = monitor.status()
    assert hot["throttling_risk"]["thermal_likely"] is True
    assert hot["throttling_risk"]["thermal_signal"].startswith("thermal_throttle: kernel throttle count rose by 2")
    assert hot["recommended_action"] == ACTION_THERMAL

    assert monitor.status()["throttling_risk"]["thermal_likely"] is False  # no new events since


def test_thermal_zone_near_its_passive_trip(tmp_path: Path) -> None:
    """Runs on a fixture: the i5-1235U's TCPU zone heated to 97 °C, 3 °C below its passive trip.
    (Its x86_pkg_temp zone's disabled 0 °C trips must not count.)"""
    sysfs = copy_tree("i5_1235u", tmp_path)
    cool = simulated(I5, sysfs).status()["throttling_risk"]
    assert cool["thermal_likely"] is False and "thermal_zone3 (TCPU)" in cool["thermal_signal"]
    (sysfs / "class/thermal/thermal_zone3/temp").write_text("97000\n")
    risk = simulated(I5, sysfs).status()["throttling_risk"]
    assert risk["thermal_likely"] is True
    assert risk["thermal_signal"].startswith("thermal_zone: thermal_zone3 (TCPU) at 97.0 °C")
    assert "passive trip point 100.0 °C" in risk["thermal_signal"]


def test_low_clock_under_load_means_thermal(tmp_path: Path) -> None:
    """Runs on a fixture: the Ryzen 5 5600 (no throttle counters, no thermal zones) clocked at 1.4 GHz
    of its ~4.4 GHz; that is throttling only while the CPU is busy."""
    sysfs = copy_tree("ryzen5_5600", tmp_path)
    profile = PROFILES["ryzen5"]
    assert simulated(profile, sysfs, cpu=85).status()["throttling_risk"]["thermal_likely"] is False  # as captured
    for freq in sysfs.glob("devices/system/cpu/cpu*/cpufreq/scaling_cur_freq"):
        freq.write_text("1400000\n")
    busy = simulated(profile, sysfs, cpu=85).status()["throttling_risk"]
    assert busy["thermal_likely"] is True and busy["thermal_signal"].startswith("cpufreq: mean frequency 1.40 GHz")
    assert simulated(profile, sysfs, cpu=50).status()["throttling_risk"]["thermal_likely"] is False


def test_seed_rule_only_for_m1_air_without_sensors(tmp_path: Path, no_sensors: Path) -> None:
    air = M1
    hot = simulated(air, no_sensors, cpu=75).status()
    assert hot["throttling_risk"]["thermal_likely"] is True
    assert hot["throttling_risk"]["thermal_signal"].startswith("seed rule: m1_air")
    assert hot["recommended_action"] == ACTION_THERMAL
    assert simulated(air, no_sensors, cpu=65).status()["throttling_risk"]["thermal_likely"] is False
    other = simulated(I5, no_sensors, cpu=75).status()["throttling_risk"]
    assert other["thermal_likely"] is False and "m1_air profile only" in other["thermal_signal"]
    # where real sensors exist (the Ryzen tree, captured cool), they decide, not the seed's guess
    sensed = simulated(air, copy_tree("ryzen5_5600", tmp_path), cpu=75).status()["throttling_risk"]
    assert sensed["thermal_likely"] is False and sensed["thermal_signal"].startswith("no signal: cpufreq")


def test_action_changes_are_logged_once(no_sensors: Path, caplog: pytest.LogCaptureFixture) -> None:
    monitor = simulated(I5, no_sensors, cpu=95)
    with caplog.at_level(logging.INFO, logger="adaptive_tts.runtime.monitor"):
        monitor.status()
        monitor.status()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and ACTION_CPU in warnings[0].getMessage()
