"""Shared fixtures and helpers.

Fixtures: the real voice, loaded once per test session. Helpers: plain functions and classes that test
files import with ``from conftest import ...`` (this folder is on ``sys.path``, as for ``from texts
import ...``): a machine's memory as a test sets it, a budget manager and a backend that read it, the
cgroup probes of the harness tests, and the repository's paths.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import pytest

from adaptive_tts.runtime.budget import MemoryBudgetManager, SystemMemory
from adaptive_tts.runtime.hardware import PROFILES, CgroupMemory, HardwareInfo, HardwareProfile, detect_hardware
from experiments.limits import CGROUP_PREFIX, _mount_point, create_memory_cap

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
#: ``python -m adaptive_tts``, as a user runs the command line
CLI = [sys.executable, "-m", "adaptive_tts"]
M1 = PROFILES["m1_air"]
I5 = PROFILES["intel_i5"]  # safety margin 2048 MB, max cache 1536 MB


@pytest.fixture(scope="session")
def engine():
    from adaptive_tts.voice.engine import Engine

    # fp32: the parity and exactness tests compare against onnxruntime and against other decodes at
    # 1e-3 and 1e-4, bounds set for fp32 arithmetic; the bf16 default is judged in test_compute.py
    return Engine(compute="fp32")


@pytest.fixture(scope="session")
def reference():
    from adaptive_tts.voice.reference import ReferenceEngine

    return ReferenceEngine()


# ------------------------------------------------------------------------------------------------
# A machine we lack: its memory set by the test
# ------------------------------------------------------------------------------------------------


class Memory:
    """A settable 'available memory' reading of a machine (8 GB unless ``total_mb`` says otherwise),
    to inject as a budget manager's ``system_memory``."""

    def __init__(self, available_mb: float, total_mb: float = 8192.0) -> None:
        self.available_mb = available_mb
        self.total_mb = total_mb

    def __call__(self) -> SystemMemory:
        return SystemMemory(self.total_mb, self.available_mb)


def no_cgroup() -> CgroupMemory:
    """The reading of a process in no memory cgroup (nothing limits it beyond the machine)."""
    return CgroupMemory(None, None, None, None)


def simulated_budget(
    profile: HardwareProfile, memory: Memory, cgroup: CgroupMemory | None = None, **kwargs
) -> MemoryBudgetManager:
    """A budget manager for ``profile`` that reads ``memory`` instead of this machine, and ``cgroup``
    (default: none) instead of this process's cgroup, which must not cap the simulated machine."""
    return MemoryBudgetManager(profile, system_memory=memory, cgroup_memory=lambda: cgroup or no_cgroup(), **kwargs)


def simulated_backend(directory: Path, memory: Memory | None = None, **options):
    """A backend on the M1 Air profile (affinity off and fp32 unless ``options`` say otherwise), its
    calibration file ``directory/cal.json``; with ``memory``, its budget manager reads that machine."""
    from adaptive_tts.backend import BackendOptions, SmartAdaptiveBackend
    from adaptive_tts.runtime.estimator import CalibrationStore

    return SmartAdaptiveBackend(
        "m1_air",
        BackendOptions(**{"affinity": False, "quantization": "fp32", **options}),
        calibration=CalibrationStore(directory / "cal.json"),
        budget_manager=None if memory is None else simulated_budget(M1, memory),
    )


def linux_fixture(name: str) -> HardwareInfo:
    """What detection finds on a captured Linux machine (``fixtures/<name>``: its sys, proc and cgroup)."""
    root = FIXTURES / name
    return detect_hardware(
        sysfs_root=root / "sys",
        proc_root=root / "proc",
        cgroup_root=root / "cgroup",
        platform_system="Linux",
        probe_gpu=False,
    )


# ------------------------------------------------------------------------------------------------
# The harness's kernel memory caps
# ------------------------------------------------------------------------------------------------


@cache
def cgroup_mechanism() -> str | None:
    """The cgroup mechanism this kernel lets us use (``cgroup_v2``, ``cgroup_v1``), or None (then only
    RLIMIT_AS caps memory). Probed once, by making and removing a capped cgroup."""
    cap = create_memory_cap(64)
    cap.close()
    return cap.mechanism if cap.cgroup is not None else None


def our_cgroups(pid: int) -> list[Path]:
    """The cgroups that the harness process ``pid`` made and has not removed, wherever the hierarchies
    are mounted."""
    mounts = {m for m in (_mount_point("cgroup2"), _mount_point("cgroup", "memory")) if m is not None}
    return [group for mount in sorted(mounts) for group in mount.glob(f"**/{CGROUP_PREFIX}{pid}-*")]


# ------------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------------


def harness_cli(tmp_path: Path, *overrides: str, multirun: bool = False) -> list[str]:
    """``python -m experiments.run`` with the memory probe as trial body (the TTS is exercised by the
    slow suite), its results and Hydra's output under ``tmp_path``, no progress bar."""
    return [
        sys.executable,
        "-m",
        "experiments.run",
        *(["-m"] if multirun else []),
        "trial.body=experiments.bodies:memory_probe",
        f"results_dir={tmp_path / 'runs'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        f"hydra.sweep.dir={tmp_path / 'hydra'}",
        "progress=false",
        *overrides,
    ]
