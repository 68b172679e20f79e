"""Hardware detection and the hardware profiles: the one place the seed's per-device tables live.

The modules, each importing only those above it:

* :mod:`.files` — reading sysfs/procfs/cgroupfs files, where a missing file means an absent feature.
* :mod:`.cgroup` — the project's one reader of ``/proc/self/cgroup``: this process's path in each
  hierarchy (:func:`own_cgroup`, also used by the harness's simulated devices) and its memory cgroup's
  cap and working set (:func:`read_cgroup_memory`).
* :mod:`.detect` — :func:`detect_hardware`: reading the machine into a :class:`HardwareInfo` (topology,
  hybrid P/E cores, SMT, RAM, the cgroup, the GPU), from live or captured roots.
* :mod:`.profiles` — the seed's five :data:`PROFILES`, :func:`generic_profile` for other machines,
  :func:`select_profile` and the ``/hardware`` payload.

Why detection is separate from policy: detection states facts about a machine and is tested against
captured trees of machines we lack; the profiles are the seed's choices (budgets, quantization, thread
counts) made *from* those facts. Keeping them apart lets a profile be forced onto a detected machine
(simulating a device) and lets a new table row change without touching how the machine is read.
``conf/hardware/*.yaml`` only selects a profile by name; the dataclasses here are the source of truth.

Of the project this package imports only :mod:`adaptive_tts.units`: no other runtime module, never the backend.
"""

from __future__ import annotations

from ...units import MIB
from .cgroup import CgroupMemory, CgroupPaths, own_cgroup, read_cgroup_memory, read_cgroup_paths
from .detect import HardwareInfo, detect_hardware, parse_cpulist, parse_sysctl
from .files import read_int
from .profiles import (
    INT4_BELOW_GB,
    PROFILES,
    EstimateDefaults,
    HardwareProfile,
    MemoryBudget,
    QuantizationConfig,
    SelectedConfiguration,
    generic_profile,
    hardware_payload,
    select_profile,
    with_cache_limit,
)

__all__ = [
    "INT4_BELOW_GB",
    "MIB",
    "PROFILES",
    "CgroupMemory",
    "CgroupPaths",
    "EstimateDefaults",
    "HardwareInfo",
    "HardwareProfile",
    "MemoryBudget",
    "QuantizationConfig",
    "SelectedConfiguration",
    "detect_hardware",
    "generic_profile",
    "hardware_payload",
    "own_cgroup",
    "parse_cpulist",
    "parse_sysctl",
    "read_cgroup_memory",
    "read_cgroup_paths",
    "read_int",
    "select_profile",
    "with_cache_limit",
]
