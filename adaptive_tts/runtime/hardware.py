"""Hardware detection and the hardware profiles: the one place the seed's per-device tables live.

Why detection reads sysfs/procfs/`sysctl` itself instead of trusting ``os.cpu_count()``: the runtime's
decisions (pin to performance cores, one thread per physical core, budget against the container's memory
cap) need the *topology* and the *cgroup*, which no portable API exposes. Every root is injectable so a
captured tree from a machine we do not have (an Intel hybrid laptop, an M1 Air) is detected by exactly
the code that runs on the real one.

Profiles carry the seed's three tables per device class (memory budget, quantization, pre-synthesis
estimate) plus the configuration the runtime starts with. The library must work without Hydra, so these
dataclasses are the source of truth and ``conf/hardware/*.yaml`` only selects one by name.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import psutil

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: cgroup v1 reports "no limit" as LONG_MAX rounded down to a page (9223372036854771712); anything this
#: large is no real limit on any machine.
_UNLIMITED_BYTES = 1 << 62
#: Max-frequency clusters closer than this to the fastest one are the same core type. AMD's preferred-core
#: ranking (amd-pstate) gives uniform cores max frequencies a few percent apart; real big/little clusters
#: (Intel P/E 4.4 vs 3.3 GHz, Arm A76/A55 2.4 vs 1.8 GHz) sit 25 % or more apart.
_SAME_CLUSTER_RATIO = 0.9


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupMemory:
    """The memory cgroup the process runs in, read from the kernel's own files.

    ``usage_mb`` is the *working set* (usage minus inactive page cache), as the kubelet computes it:
    the kernel reclaims inactive file pages before it OOM-kills, so counting them would refuse work that
    fits.
    """

    version: int | None
    path: str | None
    limit_mb: float | None
    usage_mb: float | None
    #: the cgroup's directory (where a child cgroup would be created)
    directory: Path | None = None

    @property
    def available_mb(self) -> float | None:
        """Memory left under the cap, or None when the cgroup sets no cap."""
        if self.limit_mb is None:
            return None
        return max(0.0, self.limit_mb - (self.usage_mb or 0.0))


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


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def read_int(path: Path) -> int | None:
    """An integer sysfs or procfs file's value; ``None`` if it is missing or not an integer."""
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


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


def _cgroup_value_mb(path: Path) -> float | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED_BYTES else value / MIB


def _inactive_file_mb(stat_path: Path, keys: tuple[str, ...]) -> float:
    text = _read(stat_path) or ""
    stats = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    for key in keys:
        if key in stats:
            return int(stats[key]) / MIB
    return 0.0


def _cgroup_dir(base: Path, cgroup_path: str) -> Path:
    """The cgroup's directory under its mount; a path that does not resolve there (another cgroup
    namespace, "/.." entries) means the mount itself is our cgroup."""
    rel = cgroup_path.strip().lstrip("/")
    candidate = base / rel if rel and ".." not in rel.split("/") else base
    return candidate if candidate.is_dir() else base


def _hierarchical_limit_mb(base: Path, directory: Path, limit_file: str) -> float | None:
    """The tightest limit on the way from ``directory`` up to the mount: a parent's cap binds its
    children even when their own file says "max"."""
    limits: list[float] = []
    current = directory
    while True:
        limit = _cgroup_value_mb(current / limit_file)
        if limit is not None:
            limits.append(limit)
        if current == base or base not in current.parents:
            break
        current = current.parent
    return min(limits) if limits else None


def read_cgroup_memory(
    *, proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> CgroupMemory:
    """Read the memory cgroup of the calling process (v1 or v2) from ``<proc_root>/self/cgroup``.

    The memory controller lives on exactly one hierarchy: a v1 ``memory`` line wins when its mount
    exists (hybrid hosts like this project's VMs list a v2 ``0::`` line too, without memory in it).
    """
    text = _read(proc_root / "self" / "cgroup")
    if text is None:
        return CgroupMemory(None, None, None, None)
    v1_path: str | None = None
    v2_path: str | None = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path

    if v1_path is not None and (cgroup_root / "memory").is_dir():
        base = cgroup_root / "memory"
        directory = _cgroup_dir(base, v1_path)
        usage = _cgroup_value_mb(directory / "memory.usage_in_bytes")
        if usage is not None:
            inactive = _inactive_file_mb(directory / "memory.stat", ("total_inactive_file", "inactive_file"))
            usage = max(0.0, usage - inactive)
        limit = _hierarchical_limit_mb(base, directory, "memory.limit_in_bytes")
        return CgroupMemory(1, v1_path, limit, usage, directory)

    if v2_path is not None:
        for base in (cgroup_root, cgroup_root / "unified"):
            controllers = (_read(base / "cgroup.controllers") or "").split()
            if "memory" not in controllers:
                continue
            directory = _cgroup_dir(base, v2_path)
            usage = _cgroup_value_mb(directory / "memory.current")
            if usage is not None:
                usage = max(0.0, usage - _inactive_file_mb(directory / "memory.stat", ("inactive_file",)))
            limit = _hierarchical_limit_mb(base, directory, "memory.max")
            return CgroupMemory(2, v2_path, limit, usage, directory)

    return CgroupMemory(None, None, None, None)


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
    online = _read(cpu_dir / "online")
    if online is not None:
        logical = parse_cpulist(online)
    else:
        logical = sorted(
            int(m.group(1)) for m in (re.fullmatch(r"cpu(\d+)", p.name) for p in _iterdir(cpu_dir)) if m
        ) or list(range(cpuinfo.count("processor\t:") or os.cpu_count() or 1))

    groups: dict[tuple[int, ...], None] = {}
    for cpu in logical:
        siblings = _read(cpu_dir / f"cpu{cpu}" / "topology" / "thread_siblings_list")
        group = tuple(parse_cpulist(siblings)) if siblings else (cpu,)
        groups.setdefault(tuple(c for c in group if c in logical) or (cpu,), None)
    siblings_list = sorted((list(g) for g in groups), key=lambda g: g[0])

    core = _read(sysfs_root / "devices" / "cpu_core" / "cpus")
    atom = _read(sysfs_root / "devices" / "cpu_atom" / "cpus")
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
    text = _read(proc_root / "meminfo")
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
        cpuinfo = _read(proc_root / "cpuinfo") or ""
        topo = _linux_topology(sysfs_root, cpuinfo)
        cpu_model = (
            _cpuinfo_field(cpuinfo, "model name", "Model", "Hardware", "Processor")
            or platform.processor()
            or "unknown"
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


# --------------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryBudget:
    """The seed's budget table row, in GB."""

    total_ram_gb: float
    reserved_os_gb: float
    max_model_gb: float
    max_cache_gb: float
    safety_margin_gb: float

    @property
    def safety_margin_mb(self) -> float:
        return self.safety_margin_gb * 1024

    @property
    def max_cache_mb(self) -> float:
        return self.max_cache_gb * 1024


@dataclass(frozen=True)
class QuantizationConfig:
    """The seed's quantization table row."""

    quantization: str  # "int8" or "int4"
    layer_wise: bool
    weight_only: bool
    dynamic: bool
    calibration_size: int


@dataclass(frozen=True)
class EstimateDefaults:
    """The seed's pre-synthesis estimate row. Uncalibrated: the estimator falls back to these only until
    constants fitted from measurements on the machine exist."""

    base_model_mb: float
    per_100_tokens_mb: float
    cache_overhead_mb: float


@dataclass(frozen=True)
class SelectedConfiguration:
    """What the runtime starts synthesis with on this profile.

    ``chunk_length`` counts decoder latent frames (256 samples each at 22050 Hz, ~11.6 ms), so 256 frames
    is ~3 s of audio per decoded chunk. ``cache_limit`` is MB of audio cache, at most the budget's max
    cache.
    """

    chunk_length: int
    num_threads: int
    cache_limit: float
    max_text_length: int
    quantization: str


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    memory_budget: MemoryBudget
    quantization: QuantizationConfig
    estimates: EstimateDefaults
    selected_configuration: SelectedConfiguration
    #: CPU cores of the reference device (what a simulation of it pins the worker to).
    cores: int = 0


#: Characters one request may carry, per GB of the profile's model budget. Streaming decoding keeps a
#: request's memory flat in its length (measured: tests/test_streaming_memory.py), so this limit bounds
#: how long one request holds the engine (~1 minute of audio per 1000 characters), not its memory; the
#: seed's quick-start answer of 300 for Intel i5 would refuse the seed's own 1000-character benchmark.
_TEXT_LENGTH_PER_MODEL_GB = 500
#: The seed's "< 6 GB" row: below this the model must be INT4 to leave room for anything else.
INT4_BELOW_GB = 6.0


def _max_text_length(max_model_gb: float) -> int:
    return max(500, int(round(max_model_gb * _TEXT_LENGTH_PER_MODEL_GB / 500) * 500))


def _profile(
    name: str,
    description: str,
    budget: tuple[float, float, float, float, float],
    quant: tuple[str, bool, bool, bool, int],
    estimates: tuple[float, float, float],
    chunk_length: int,
    num_threads: int,
    cores: int,
) -> HardwareProfile:
    memory_budget = MemoryBudget(*(float(gb) for gb in budget))
    quantization = QuantizationConfig(*quant)
    return HardwareProfile(
        name=name,
        description=description,
        memory_budget=memory_budget,
        quantization=quantization,
        estimates=EstimateDefaults(*estimates),
        cores=cores,
        selected_configuration=SelectedConfiguration(
            chunk_length=chunk_length,
            num_threads=num_threads,
            cache_limit=memory_budget.max_cache_mb,
            max_text_length=_max_text_length(memory_budget.max_model_gb),
            quantization=quantization.quantization,
        ),
    )


#: The five seed device classes. num_threads is the reference device's physical performance cores
#: (M1: 4 P; M1 Pro 10-core: 8 P; i5-1235U: 2 P; Ryzen 5 5600: 6; high end: 8); ``select_profile``
#: replaces it with the detected machine's count. The seed gives M1 Pro no quantization row: it gets the
#: 16 GB machines' row (Intel i5 / Ryzen 5).
PROFILES: dict[str, HardwareProfile] = {
    p.name: p
    for p in (
        # budget GB (total, OS, model, cache, margin); quantization (type, layer-wise, weight-only, dynamic,
        # calibration samples); estimates MB (base model, per 100 tokens, cache overhead)
        _profile("m1_air", "Apple M1 Air, 8 GB", (8, 2.0, 2.0, 1.0, 1.5),
                 ("int8", True, True, True, 32), (2000, 50, 200), chunk_length=256, num_threads=4, cores=8),
        _profile("m1_pro", "Apple M1 Pro/Max, 16 GB", (16, 2.5, 4.0, 2.0, 2.0),
                 ("int8", True, True, True, 64), (3000, 40, 300), chunk_length=512, num_threads=8, cores=10),
        _profile("intel_i5", "Intel Core i5 (12th gen hybrid), 16 GB", (16, 3.0, 3.0, 1.5, 2.0),
                 ("int8", True, True, True, 64), (2500, 60, 250), chunk_length=256, num_threads=2, cores=10),
        _profile("ryzen5", "AMD Ryzen 5, 16 GB", (16, 3.0, 3.0, 1.5, 2.0),
                 ("int8", True, True, True, 64), (2500, 60, 250), chunk_length=256, num_threads=6, cores=6),
        _profile("high_end", "32 GB or more", (32, 4.0, 6.0, 3.0, 3.0),
                 ("int8", False, False, True, 128), (3000, 50, 300), chunk_length=512, num_threads=8, cores=8),
    )
}

#: Budget anchors by RAM for machines no profile names: the seed's 8, 16 and 32 GB rows.
_BUDGET_ANCHORS: list[tuple[float, MemoryBudget]] = [
    (8.0, PROFILES["m1_air"].memory_budget),
    (16.0, PROFILES["intel_i5"].memory_budget),
    (32.0, PROFILES["high_end"].memory_budget),
]


def _scaled_budget(ram_gb: float) -> MemoryBudget:
    """Budget for ``ram_gb`` of RAM: proportional to the 8 GB row below 8 GB (a 4 GB box gets half of
    every reserve), linear between the seed's rows, the 32 GB row above it (more RAM needs no bigger
    reserve for one model)."""
    fields = ("reserved_os_gb", "max_model_gb", "max_cache_gb", "safety_margin_gb")
    lo_ram, lo = _BUDGET_ANCHORS[0]
    if ram_gb <= lo_ram:
        scale = ram_gb / lo_ram
        return MemoryBudget(ram_gb, *(round(getattr(lo, f) * scale, 2) for f in fields))
    for (a_ram, a), (b_ram, b) in zip(_BUDGET_ANCHORS, _BUDGET_ANCHORS[1:]):
        if ram_gb <= b_ram:
            t = (ram_gb - a_ram) / (b_ram - a_ram)
            return MemoryBudget(
                ram_gb, *(round(getattr(a, f) + t * (getattr(b, f) - getattr(a, f)), 2) for f in fields)
            )
    top = _BUDGET_ANCHORS[-1][1]
    return MemoryBudget(ram_gb, *(getattr(top, f) for f in fields))


def generic_profile(info: HardwareInfo) -> HardwareProfile:
    """A profile for a machine no seed profile names, derived from its effective RAM (the cgroup cap
    when lower: that is what the process can use) and its performance cores."""
    ram_gb = round(info.effective_memory_mb / 1024, 1)
    budget = _scaled_budget(ram_gb)
    if ram_gb < INT4_BELOW_GB:
        quant = QuantizationConfig("int4", True, True, True, 32)
    elif ram_gb >= 32:
        quant = PROFILES["high_end"].quantization
    elif ram_gb < 12:
        quant = PROFILES["m1_air"].quantization
    else:
        quant = PROFILES["intel_i5"].quantization
    chunk_length = 128 if ram_gb < 8 else 256 if ram_gb < 24 else 512
    return HardwareProfile(
        name=f"generic-{max(1, round(ram_gb))}gb",
        description=f"derived from {ram_gb:g} GB RAM and {info.performance_cores} performance cores",
        memory_budget=budget,
        quantization=quant,
        estimates=PROFILES["intel_i5"].estimates,  # the x86 CPU row: uncalibrated either way
        cores=info.physical_cores,
        selected_configuration=SelectedConfiguration(
            chunk_length=chunk_length,
            num_threads=max(1, info.performance_cores),
            cache_limit=budget.max_cache_mb,
            max_text_length=_max_text_length(budget.max_model_gb),
            quantization=quant.quantization,
        ),
    )


def _match_profile_name(info: HardwareInfo) -> tuple[str | None, str]:
    model = info.cpu_model
    if model.startswith("Apple M"):
        if re.search(r"\b(Pro|Max|Ultra)\b", model):
            return "m1_pro", f"{model} is a Pro/Max-class Apple chip"
        if info.total_ram_gb > 8.5:
            return "m1_pro", f"Apple chip with {info.total_ram_gb:.0f} GB > 8 GB"
        return "m1_air", f"Apple chip with {info.total_ram_gb:.0f} GB"
    if re.search(r"Core\(TM\) i5|Core i5", model):
        return "intel_i5", f"{model} is an Intel Core i5"
    if "Ryzen 5" in model:
        return "ryzen5", f"{model} is an AMD Ryzen 5"
    if info.total_ram_gb >= 30:  # a "32 GB" machine reports ~31 GB: firmware keeps some
        return "high_end", f"{info.total_ram_gb:.0f} GB RAM"
    return None, f"no seed profile matches {model!r} with {info.total_ram_gb:.0f} GB"


def _with_threads(profile: HardwareProfile, num_threads: int) -> HardwareProfile:
    config = replace(profile.selected_configuration, num_threads=max(1, num_threads))
    return replace(profile, selected_configuration=config)


def with_cache_limit(profile: HardwareProfile, cache_limit_mb: float) -> HardwareProfile:
    """``profile`` with its audio cache limited to ``cache_limit_mb`` (never above its max cache): a
    service that wants less of its memory spent on repeated prompts, or a soak that fills the cache."""
    if cache_limit_mb < 0:
        raise ValueError(f"cache limit must be >= 0 MB, got {cache_limit_mb}")
    selected = replace(profile.selected_configuration,
                       cache_limit=min(cache_limit_mb, profile.memory_budget.max_cache_mb))
    return replace(profile, selected_configuration=selected)


def select_profile(info: HardwareInfo, name: str | None = None) -> HardwareProfile:
    """The profile for ``info``: ``name`` forces one of PROFILES ("auto"/None matches the machine).

    An auto-matched profile takes the machine's own performance-core count as its thread count (an
    i5-12400 has 6 P-cores, not the i5-1235U's 2). A forced profile simulates that device, so it keeps
    the device's thread count, capped by what this machine has.
    """
    if name is not None and name != "auto":
        if name not in PROFILES:
            raise ValueError(f"unknown hardware profile {name!r}; valid: auto, {', '.join(PROFILES)}")
        profile = PROFILES[name]
        threads = min(profile.selected_configuration.num_threads, max(1, info.performance_cores))
        logger.info("hardware profile %s forced", name)
        return _with_threads(profile, threads)
    matched, why = _match_profile_name(info)
    if matched is None:
        profile = generic_profile(info)
        logger.info("hardware profile %s: %s", profile.name, why)
        return profile
    logger.info("hardware profile %s: %s", matched, why)
    return _with_threads(PROFILES[matched], info.performance_cores)


def hardware_payload(info: HardwareInfo, profile: HardwareProfile) -> dict[str, Any]:
    """The seed's ``/hardware`` response: what was detected and what the runtime chose from it."""
    return {
        "hardware": info.to_dict(),
        "profile": profile.name,
        "memory_budget": asdict(profile.memory_budget),
        "quantization": asdict(profile.quantization),
        "estimation_defaults": asdict(profile.estimates),
        "selected_configuration": asdict(profile.selected_configuration),
    }


__all__ = [
    "CgroupMemory",
    "EstimateDefaults",
    "HardwareInfo",
    "HardwareProfile",
    "INT4_BELOW_GB",
    "MemoryBudget",
    "PROFILES",
    "QuantizationConfig",
    "SelectedConfiguration",
    "detect_hardware",
    "generic_profile",
    "hardware_payload",
    "parse_cpulist",
    "parse_sysctl",
    "read_cgroup_memory",
    "select_profile",
]
