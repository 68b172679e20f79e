"""Reading the machine: CPU model, logical/physical cores, performance and efficiency cores, SMT, RAM,
the memory cgroup and the GPU.

Why detection reads sysfs/procfs/`sysctl` itself instead of trusting ``os.cpu_count()``: the runtime's
decisions (pin to performance cores, one thread per physical core, budget against the container's memory
cap) need the *topology* and the *cgroup*, which no portable API exposes. Every root is injectable so a
captured tree from a machine we do not have (an Intel hybrid laptop, an M1 Air) is detected by exactly
the code that runs on the real one.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from ...units import MIB
from .cgroup import CgroupMemory, read_cgroup_memory
from .files import read_int, read_text

logger = logging.getLogger(__name__)

#: Max-frequency clusters closer than this to the fastest one are the same core type. AMD's preferred-core
#: ranking (amd-pstate) gives uniform cores max frequencies a few percent apart; real big/little clusters
#: (Intel P/E 4.4 vs 3.3 GHz, Arm A76/A55 2.4 vs 1.8 GHz) sit 25 % or more apart.
_SAME_CLUSTER_RATIO = 0.9


@dataclass(frozen=True)
class HardwareInfo:
    """What the runtime knows about the machine (or the captured machine) it was detected on."""

    os: str
    arch: str
    cpu_model: str
    logical_cores: int
    physical_cores: int
    performance_cpus: list[int]
    efficiency_cpus: list[int]
    smt_siblings: list[list[int]]
    is_hybrid: bool
    has_smt: bool
    #: what decided the core types: "intel_hybrid", "cpufreq", "sysctl" or "uniform"
    core_type_source: str
    total_ram_mb: float
    cgroup_version: int | None = None
    cgroup_limit_mb: float | None = None
    cgroup_usage_mb: float | None = None
    cuda_available: bool = False
    gpu_name: str | None = None
    gpu_total_mb: float | None = None
    gpu_free_mb: float | None = None
    mps_available: bool = False

    @property
    def total_ram_gb(self) -> float:
        return self.total_ram_mb / 1024

    @property
    def effective_memory_mb(self) -> float:
        """RAM the process can ever use: the machine's, or the cgroup cap when that is lower."""
        if self.cgroup_limit_mb is None:
            return self.total_ram_mb
        return min(self.total_ram_mb, self.cgroup_limit_mb)

    def one_cpu_per_core(self, cpus: Iterable[int]) -> list[int]:
        """The lowest-numbered of ``cpus`` on each physical core: SMT siblings share one core's execution
        units, so a second compute thread on a sibling mostly contends with the first."""
        wanted = set(cpus)
        chosen: list[int] = []
        grouped: set[int] = set()
        for group in self.smt_siblings:
            grouped.update(group)
            present = sorted(wanted.intersection(group))
            if present:
                chosen.append(present[0])
        chosen.extend(wanted - grouped)  # CPUs the sibling map does not cover stand for themselves
        return sorted(chosen)

    @property
    def performance_cores(self) -> int:
        """Physical performance cores (all physical cores on a uniform machine)."""
        return len(self.one_cpu_per_core(self.performance_cpus))

    @property
    def efficiency_cores(self) -> int:
        return len(self.one_cpu_per_core(self.efficiency_cpus))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view, with the derived counts a reader wants next to the raw fields."""
        data = asdict(self)
        data.update(
            total_ram_gb=round(self.total_ram_gb, 2),
            effective_memory_mb=round(self.effective_memory_mb, 1),
            performance_cores=self.performance_cores,
            efficiency_cores=self.efficiency_cores,
        )
        return data


def parse_cpulist(text: str) -> list[int]:
    """Parse the kernel's cpulist format ("0-3,8-11", "0,6", "") into sorted CPU ids."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1))
        else:
            cpus.add(int(part))
    return sorted(cpus)


def parse_sysctl(output: str) -> dict[str, str]:
    """Parse ``sysctl -a`` output ("key: value" on macOS, "key = value" on BSD/Linux procps)."""
    values: dict[str, str] = {}
    for line in output.splitlines():
        for sep in (": ", " = "):
            key, found, value = line.partition(sep)
            if found and key and " " not in key:
                values[key.strip()] = value.strip()
                break
    return values


@dataclass(frozen=True)
class _CpuTopology:
    logical: list[int]
    physical_cores: int
    performance: list[int]
    efficiency: list[int]
    siblings: list[list[int]]
    source: str


def _iterdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _linux_topology(sysfs_root: Path, cpuinfo: str) -> _CpuTopology:
    """Core types in order of trust: the hybrid PMU's own CPU lists (Intel 12th gen and later), then
    max-frequency clusters (Arm big.LITTLE, older kernels on Intel hybrids), else uniform."""
    cpu_dir = sysfs_root / "devices" / "system" / "cpu"
    online = read_text(cpu_dir / "online")
    if online is not None:
        logical = parse_cpulist(online)
    else:
        logical = sorted(
            int(m.group(1)) for m in (re.fullmatch(r"cpu(\d+)", p.name) for p in _iterdir(cpu_dir)) if m
        ) or list(range(cpuinfo.count("processor\t:") or os.cpu_count() or 1))

    groups: dict[tuple[int, ...], None] = {}
    for cpu in logical:
        siblings = read_text(cpu_dir / f"cpu{cpu}" / "topology" / "thread_siblings_list")
        group = tuple(parse_cpulist(siblings)) if siblings else (cpu,)
        groups.setdefault(tuple(c for c in group if c in logical) or (cpu,), None)
    siblings_list = sorted((list(g) for g in groups), key=lambda g: g[0])

    core = read_text(sysfs_root / "devices" / "cpu_core" / "cpus")
    atom = read_text(sysfs_root / "devices" / "cpu_atom" / "cpus")
    if core is not None and atom is not None:
        performance, efficiency = parse_cpulist(core), parse_cpulist(atom)
        return _CpuTopology(logical, len(siblings_list), performance, efficiency, siblings_list, "intel_hybrid")

    max_freq = {
        cpu: freq
        for cpu in logical
        if (freq := read_int(cpu_dir / f"cpu{cpu}" / "cpufreq" / "cpuinfo_max_freq")) is not None
    }
    if len(max_freq) == len(logical) and max_freq:
        top = max(max_freq.values())
        performance = [c for c in logical if max_freq[c] >= top * _SAME_CLUSTER_RATIO]
        if len(performance) < len(logical):
            efficiency = [c for c in logical if c not in performance]
            return _CpuTopology(logical, len(siblings_list), performance, efficiency, siblings_list, "cpufreq")
    return _CpuTopology(logical, len(siblings_list), list(logical), [], siblings_list, "uniform")


def _darwin_topology(sysctl: dict[str, str]) -> _CpuTopology:
    """macOS exposes core *counts* per performance level, not which CPU ids they are. The ids below follow
    the seed's numbering (performance 0..P-1, efficiency after) and are nominal: macOS has no affinity API
    to use them with, only thread counts. No sibling map is exposed either, so SMT reads as absent."""
    logical_count = int(sysctl.get("hw.logicalcpu", sysctl.get("hw.ncpu", os.cpu_count() or 1)))
    physical = int(sysctl.get("hw.physicalcpu", logical_count))
    logical = list(range(logical_count))
    siblings = [[c] for c in logical]
    p_cores = sysctl.get("hw.perflevel0.logicalcpu", sysctl.get("hw.perflevel0.physicalcpu"))
    e_cores = sysctl.get("hw.perflevel1.logicalcpu", sysctl.get("hw.perflevel1.physicalcpu"))
    if p_cores is not None and e_cores is not None:
        p = int(p_cores)
        return _CpuTopology(logical, physical, logical[:p], logical[p : p + int(e_cores)], siblings, "sysctl")
    return _CpuTopology(logical, physical, logical, [], siblings, "uniform")


def _cpuinfo_field(cpuinfo: str, *names: str) -> str | None:
    for name in names:
        match = re.search(rf"^{re.escape(name)}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return None


def _meminfo_total_mb(proc_root: Path) -> float | None:
    text = read_text(proc_root / "meminfo")
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB", text or "", re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


@dataclass(frozen=True)
class _GpuInfo:
    cuda_available: bool = False
    gpu_name: str | None = None
    gpu_total_mb: float | None = None
    gpu_free_mb: float | None = None
    mps_available: bool = False


def _detect_gpu() -> _GpuInfo:
    """CUDA and MPS through torch, imported only here: the runtime must load (and the CLI answer
    ``hardware``) on machines where torch is absent or its CUDA driver is broken."""
    try:
        import torch
    except ImportError:
        logger.info("torch not installed: no GPU detection")
        return _GpuInfo()
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    try:
        if not torch.cuda.is_available():
            return _GpuInfo(mps_available=mps)
        free, total = torch.cuda.mem_get_info(0)
        return _GpuInfo(True, torch.cuda.get_device_name(0), total / MIB, free / MIB, mps)
    except RuntimeError as exc:  # driver present but unusable: run on the CPU
        logger.warning("CUDA present but unusable: %s", exc)
        return _GpuInfo(mps_available=mps)


def _run_sysctl() -> str:
    try:
        result = subprocess.run(["sysctl", "-a"], capture_output=True, text=True, timeout=10, check=False)
        return result.stdout
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("sysctl -a failed: %s", exc)
        return ""


def detect_hardware(
    *,
    sysfs_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    sysctl_output: str | None = None,
    platform_system: str | None = None,
    probe_gpu: bool = True,
) -> HardwareInfo:
    """Detect the machine. Pass captured roots / ``sysctl -a`` output (and ``probe_gpu=False``, since
    the GPU is probed on the live machine) to detect a machine that is not this one."""
    system = platform_system or platform.system()
    arch = platform.machine()
    if system == "Darwin":
        sysctl = parse_sysctl(sysctl_output if sysctl_output is not None else _run_sysctl())
        topo = _darwin_topology(sysctl)
        cpu_model = sysctl.get("machdep.cpu.brand_string") or platform.processor() or "unknown"
        arch = sysctl.get("hw.machine", arch)
        memsize = sysctl.get("hw.memsize")
        total_mb = int(memsize) / MIB if memsize else psutil.virtual_memory().total / MIB
        cgroup = CgroupMemory(None, None, None, None)  # macOS has no cgroups
    elif system == "Linux":
        cpuinfo = read_text(proc_root / "cpuinfo") or ""
        topo = _linux_topology(sysfs_root, cpuinfo)
        cpu_model = (
            _cpuinfo_field(cpuinfo, "model name", "Model", "Hardware", "Processor") or platform.processor() or "unknown"
        )
        total_mb = _meminfo_total_mb(proc_root) or psutil.virtual_memory().total / MIB
        cgroup = read_cgroup_memory(proc_root=proc_root, cgroup_root=cgroup_root)
    else:  # Windows and others: counts only, no topology API worth parsing here
        logical_count = psutil.cpu_count(logical=True) or 1
        logical = list(range(logical_count))
        physical = psutil.cpu_count(logical=False) or logical_count
        topo = _CpuTopology(logical, physical, logical, [], [[c] for c in logical], "uniform")
        cpu_model = platform.processor() or "unknown"
        total_mb = psutil.virtual_memory().total / MIB
        cgroup = CgroupMemory(None, None, None, None)

    gpu = _detect_gpu() if probe_gpu else _GpuInfo()
    info = HardwareInfo(
        os=system,
        arch=arch,
        cpu_model=cpu_model,
        logical_cores=len(topo.logical),
        physical_cores=topo.physical_cores,
        performance_cpus=topo.performance,
        efficiency_cpus=topo.efficiency,
        smt_siblings=topo.siblings,
        is_hybrid=bool(topo.performance and topo.efficiency),
        has_smt=any(len(group) > 1 for group in topo.siblings),
        core_type_source=topo.source,
        total_ram_mb=total_mb,
        cgroup_version=cgroup.version,
        cgroup_limit_mb=cgroup.limit_mb,
        cgroup_usage_mb=cgroup.usage_mb,
        cuda_available=gpu.cuda_available,
        gpu_name=gpu.gpu_name,
        gpu_total_mb=gpu.gpu_total_mb,
        gpu_free_mb=gpu.gpu_free_mb,
        mps_available=gpu.mps_available,
    )
    logger.debug("detected hardware: %s", info)
    return info


__all__ = ["HardwareInfo", "detect_hardware", "parse_cpulist", "parse_sysctl"]
