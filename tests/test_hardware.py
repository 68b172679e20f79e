"""Hardware detection and profile selection: for real on this machine, on captured trees for the rest."""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from conftest import FIXTURES, linux_fixture

from adaptive_tts.runtime.budget import MemoryBudgetManager
from adaptive_tts.runtime.hardware import (
    MIB,
    PROFILES,
    HardwareInfo,
    detect_hardware,
    generic_profile,
    hardware_payload,
    parse_cpulist,
    parse_sysctl,
    read_cgroup_memory,
    select_profile,
    with_cache_limit,
)


def detect_m1_air(sysctl_text: str | None = None) -> HardwareInfo:
    text = sysctl_text if sysctl_text is not None else (FIXTURES / "m1_air" / "sysctl.txt").read_text()
    return detect_hardware(sysctl_output=text, platform_system="Darwin", probe_gpu=False)


# ---- this machine ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live() -> HardwareInfo:
    return detect_hardware()


def test_live_core_counts_match_psutil(live: HardwareInfo) -> None:
    assert live.os == platform.system()
    assert live.arch == platform.machine()
    assert live.logical_cores == psutil.cpu_count(logical=True)
    assert live.physical_cores == psutil.cpu_count(logical=False)
    assert sorted(set(live.performance_cpus) | set(live.efficiency_cpus)) == sorted(
        c for group in live.smt_siblings for c in group
    )
    assert live.has_smt == (live.logical_cores > live.physical_cores)


def test_live_memory_matches_psutil(live: HardwareInfo) -> None:
    assert live.total_ram_mb == pytest.approx(psutil.virtual_memory().total / MIB, abs=1.0)
    assert live.effective_memory_mb <= live.total_ram_mb


@pytest.mark.skipif(platform.system() != "Linux", reason="cpuinfo and cgroups are Linux's")
def test_live_linux_model_and_cgroup(live: HardwareInfo) -> None:
    assert live.cpu_model and live.cpu_model != "unknown"
    cgroup_lines = Path("/proc/self/cgroup").read_text().splitlines()
    if any(line.split(":")[1] == "memory" for line in cgroup_lines):
        assert live.cgroup_version == 1  # a v1 memory hierarchy, as on this project's VMs
    if live.cgroup_version is not None:
        assert live.cgroup_usage_mb is not None and 0 < live.cgroup_usage_mb < live.total_ram_mb


def test_live_gpu_matches_torch(live: HardwareInfo) -> None:
    torch = pytest.importorskip("torch")
    assert live.cuda_available == torch.cuda.is_available()
    if live.cuda_available:
        assert live.gpu_name == torch.cuda.get_device_name(0)
        assert 0 < live.gpu_free_mb <= live.gpu_total_mb
    else:
        assert live.gpu_name is None and live.gpu_total_mb is None


def test_live_profile_and_payload_are_consistent(live: HardwareInfo) -> None:
    profile = select_profile(live)
    payload = json.loads(json.dumps(hardware_payload(live, profile)))
    assert payload["profile"] == profile.name
    assert payload["hardware"]["logical_cores"] == os.cpu_count()
    assert payload["selected_configuration"]["num_threads"] == profile.selected_configuration.num_threads
    assert 1 <= profile.selected_configuration.num_threads <= live.logical_cores


# ---- captured machines ----------------------------------------------------------------------------


def test_intel_i5_1235u_fixture() -> None:
    """Runs on a fixture: an i5-1235U's sysfs/procfs (2 P-cores with HT = CPUs 0-3, 8 E-cores = 4-11)."""
    info = linux_fixture("i5_1235u")
    assert info.cpu_model == "12th Gen Intel(R) Core(TM) i5-1235U"
    assert (info.logical_cores, info.physical_cores) == (12, 10)
    assert info.performance_cpus == [0, 1, 2, 3]
    assert info.efficiency_cpus == list(range(4, 12))
    assert info.core_type_source == "intel_hybrid"
    assert info.is_hybrid and info.has_smt
    assert info.smt_siblings[:2] == [[0, 1], [2, 3]]
    assert (info.performance_cores, info.efficiency_cores) == (2, 8)
    assert info.total_ram_mb == pytest.approx(15678796 / 1024)
    assert info.cgroup_version == 2 and info.cgroup_limit_mb is None
    assert info.cgroup_usage_mb == pytest.approx((48234496 - 10485760) / MIB)

    profile = select_profile(info)
    assert profile.name == "intel_i5"
    assert profile.selected_configuration.num_threads == 2
    payload = json.loads(json.dumps(hardware_payload(info, profile)))
    assert payload["selected_configuration"]["max_text_length"] == 1500  # 3 GB model budget x 500


def test_hybrid_from_cpufreq_clusters_without_intel_pmu_files(tmp_path: Path) -> None:
    """Runs on a fixture: the i5-1235U tree with devices/cpu_core and cpu_atom removed, as kernels before
    5.16 show it; the 4.4 vs 3.3 GHz max-frequency clusters must still separate P from E."""
    root = tmp_path / "i5"
    shutil.copytree(FIXTURES / "i5_1235u", root)
    shutil.rmtree(root / "sys" / "devices" / "cpu_core")
    shutil.rmtree(root / "sys" / "devices" / "cpu_atom")
    info = detect_hardware(
        sysfs_root=root / "sys",
        proc_root=root / "proc",
        cgroup_root=root / "cgroup",
        platform_system="Linux",
        probe_gpu=False,
    )
    assert info.core_type_source == "cpufreq"
    assert info.performance_cpus == [0, 1, 2, 3]
    assert info.efficiency_cpus == list(range(4, 12))


def test_ryzen5_5600_fixture_is_uniform_despite_preferred_core_clocks() -> None:
    """Runs on a fixture: a Ryzen 5 5600 (6 cores, SMT, siblings "n,n+6") under amd-pstate, whose
    per-core max clocks differ by a few percent; that must not read as a hybrid CPU."""
    info = linux_fixture("ryzen5_5600")
    assert info.cpu_model == "AMD Ryzen 5 5600 6-Core Processor"
    assert (info.logical_cores, info.physical_cores) == (12, 6)
    assert not info.is_hybrid and info.has_smt
    assert info.core_type_source == "uniform"
    assert info.smt_siblings == [[c, c + 6] for c in range(6)]
    assert info.one_cpu_per_core(range(12)) == [0, 1, 2, 3, 4, 5]
    profile = select_profile(info)
    assert profile.name == "ryzen5"
    assert profile.selected_configuration.num_threads == 6


def test_m1_air_fixture() -> None:
    """Runs on a fixture: an M1 Air's `sysctl -a` excerpt (4 P + 4 E cores, 8 GB)."""
    info = detect_m1_air()
    assert (info.os, info.arch, info.cpu_model) == ("Darwin", "arm64", "Apple M1")
    assert info.logical_cores == 8
    assert info.performance_cpus == [0, 1, 2, 3] and info.efficiency_cpus == [4, 5, 6, 7]
    assert info.is_hybrid and not info.has_smt
    assert info.total_ram_mb == 8192
    assert info.cgroup_version is None
    profile = select_profile(info)
    assert profile.name == "m1_air"
    assert profile.selected_configuration.num_threads == 4


def test_apple_pro_chip_or_more_memory_selects_m1_pro() -> None:
    """Runs on a fixture: the M1 Air excerpt edited into an M1 Pro, and into a 16 GB plain M1."""
    text = (FIXTURES / "m1_air" / "sysctl.txt").read_text()
    pro = text.replace("machdep.cpu.brand_string: Apple M1", "machdep.cpu.brand_string: Apple M1 Pro")
    assert select_profile(detect_m1_air(pro)).name == "m1_pro"
    big = text.replace("hw.memsize: 8589934592", "hw.memsize: 17179869184")
    assert select_profile(detect_m1_air(big)).name == "m1_pro"


@pytest.mark.parametrize(
    ("name", "version", "limit_mb", "usage_mb"),
    [
        ("cgroup_v1", 1, 2048.0, 500.0),
        ("cgroup_v2", 2, 4096.0, 768.0),
        ("cgroup_v2_pod", 2, 512.0, 130.0),  # the pod slice's cap binds the uncapped container scope
        ("cgroup_v2_unified", 2, 3072.0, 450.0),
    ],
)
def test_cgroup_fixtures(name: str, version: int, limit_mb: float, usage_mb: float) -> None:
    """Runs on fixtures: captured cgroup v1/v2 trees (Docker, Kubernetes pod, hybrid unified mount)."""
    root = FIXTURES / name
    memory = read_cgroup_memory(proc_root=root / "proc", cgroup_root=root / "cgroup")
    assert (memory.version, memory.limit_mb, memory.usage_mb) == (version, limit_mb, usage_mb)
    assert memory.available_mb == limit_mb - usage_mb


def test_no_cgroup_file_means_no_cgroup(tmp_path: Path) -> None:
    memory = read_cgroup_memory(proc_root=tmp_path, cgroup_root=tmp_path)
    assert memory.version is None and memory.available_mb is None


# ---- profiles ---------------------------------------------------------------------------------------


def test_profiles_carry_the_seed_tables() -> None:
    assert list(PROFILES) == ["m1_air", "m1_pro", "intel_i5", "ryzen5", "high_end"]
    air, i5, high = PROFILES["m1_air"], PROFILES["intel_i5"], PROFILES["high_end"]
    assert (
        air.memory_budget.reserved_os_gb,
        air.memory_budget.max_model_gb,
        air.memory_budget.max_cache_gb,
        air.memory_budget.safety_margin_gb,
    ) == (2.0, 2.0, 1.0, 1.5)
    assert PROFILES["m1_pro"].memory_budget.safety_margin_gb == 2.0
    assert high.memory_budget.total_ram_gb == 32 and high.memory_budget.max_model_gb == 6.0
    assert (
        air.quantization.calibration_size,
        i5.quantization.calibration_size,
        high.quantization.calibration_size,
    ) == (32, 64, 128)
    assert not high.quantization.layer_wise and not high.quantization.weight_only and high.quantization.dynamic
    assert (i5.estimates.base_model_mb, i5.estimates.per_100_tokens_mb, i5.estimates.cache_overhead_mb) == (
        2500,
        60,
        250,
    )
    assert PROFILES["m1_pro"].estimates.per_100_tokens_mb == 40
    for profile in PROFILES.values():
        config = profile.selected_configuration
        assert config.cache_limit <= profile.memory_budget.max_cache_gb * 1024
        assert config.quantization == profile.quantization.quantization == "int8"
        assert config.chunk_length in (128, 256, 512)
    assert i5.selected_configuration.max_text_length == 1500


def test_generic_profile_scales_with_ram_and_goes_int4_below_6gb() -> None:
    """Runs on a fixture: the Ryzen tree relabelled as an unknown CPU with various RAM sizes."""
    base = replace(linux_fixture("ryzen5_5600"), cpu_model="Some Future CPU 9000")
    small = select_profile(replace(base, total_ram_mb=4096))
    assert small.name == "generic-4gb"
    assert small.quantization.quantization == "int4" == small.selected_configuration.quantization
    assert small.memory_budget.safety_margin_gb == pytest.approx(0.75)  # half of the 8 GB row
    assert small.selected_configuration.chunk_length == 128
    mid = select_profile(replace(base, total_ram_mb=24 * 1024))
    assert mid.name == "generic-24gb" and mid.quantization.quantization == "int8"
    assert 2.0 < mid.memory_budget.safety_margin_gb < 3.0  # between the 16 and 32 GB rows
    assert mid.selected_configuration.num_threads == 6
    assert select_profile(replace(base, total_ram_mb=64 * 1024)).name == "high_end"


def test_generic_profile_budgets_by_the_cgroup_cap() -> None:
    """Runs on a fixture: an unknown 16 GB machine whose process sits in a 3 GiB cgroup."""
    info = replace(linux_fixture("ryzen5_5600"), cpu_model="Some Future CPU 9000", cgroup_limit_mb=3072.0)
    profile = generic_profile(info)
    assert profile.name == "generic-3gb"
    assert profile.quantization.quantization == "int4"
    assert profile.memory_budget.total_ram_gb == 3.0


def test_forced_profile_and_unknown_name() -> None:
    """Runs on a fixture: the i5-1235U simulating other devices."""
    info = linux_fixture("i5_1235u")
    forced = select_profile(info, "ryzen5")
    assert forced.name == "ryzen5"
    assert forced.selected_configuration.num_threads == 2  # the Ryzen's 6, capped by the i5's 2 P-cores
    assert select_profile(info, "auto").name == "intel_i5"
    with pytest.raises(ValueError, match="m1_air, m1_pro, intel_i5, ryzen5, high_end"):
        select_profile(info, "raspberry_pi")


# ---- parsers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cpus"), [("0-3\n", [0, 1, 2, 3]), ("0,6", [0, 6]), ("0-1,8-9", [0, 1, 8, 9]), ("", []), ("5", [5])]
)
def test_parse_cpulist(text: str, cpus: list[int]) -> None:
    assert parse_cpulist(text) == cpus


def test_parse_sysctl_formats() -> None:
    assert parse_sysctl("hw.ncpu: 8\nkern.version = Darwin 23\nnoise line\n") == {
        "hw.ncpu": "8",
        "kern.version": "Darwin 23",
    }


def test_a_cache_limit_lowers_the_profile_cache_and_never_raises_it():
    air = PROFILES["m1_air"]
    small = with_cache_limit(air, 32)
    assert small.selected_configuration.cache_limit == 32 and small.memory_budget == air.memory_budget
    assert MemoryBudgetManager(small).cache_ceiling_mb == 32
    assert with_cache_limit(air, 10**6).selected_configuration.cache_limit == air.memory_budget.max_cache_mb
    with pytest.raises(ValueError, match="cache limit"):
        with_cache_limit(air, -1)
