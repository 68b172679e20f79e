"""System monitor: the seed's ``/system-status`` payload, with throttling risk from real signals.

Why real thermal signals: the seed guessed "thermal throttling likely" from "M1 Air and CPU > 70 %".
Linux tells us directly: the kernel counts throttle events per CPU, thermal zones expose their
temperature next to the trip points where cooling (frequency capping) starts, and a CPU that runs far
below its max frequency while busy is being held back. The seed's guess remains only as the fallback
for the one profile it was written for, where no sensor is readable (macOS exposes none without root).

``status()`` must answer an HTTP poll quickly, so CPU load is psutil's non-blocking reading (the
average since the previous call, primed at construction) and everything else is a few small file reads.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from adaptive_tts.runtime.budget import MemoryBudgetManager
from adaptive_tts.runtime.hardware import HardwareInfo, HardwareProfile, SelectedConfiguration, read_int

logger = logging.getLogger(__name__)

MEMORY_CRITICAL_PERCENT = 85.0
CPU_MAXED_PERCENT = 90.0
#: The seed's load threshold for thermal risk; also the load above which a low clock means throttling.
THERMAL_CPU_PERCENT = 70.0
#: A thermal zone this close (°C) to a passive/hot/critical trip point is about to be cooled by force.
TRIP_MARGIN_C = 5.0
#: Busy CPUs clocked below this fraction of their max are being held back (sustained all-core turbo on a
#: 15 W laptop chip sits around 0.6-0.8 of the single-core max; throttled ones well under half).
LOW_FREQUENCY_RATIO = 0.5

ACTION_OK = "OK"
ACTION_MEMORY = "Reduce text length or clear cache"
ACTION_THERMAL = "Wait for system to cool"
ACTION_CPU = "Reduce CPU load"

_TRIP_TYPES = ("critical", "hot", "passive")


_nvml_lock = threading.Lock()
_nvml_handle: Any = None


def _nvml_util() -> float | None:
    """Utilisation through NVML (the nvidia-ml-py package), initialised once per process."""
    global _nvml_handle
    try:
        import pynvml
    except ImportError:
        return None
    try:
        with _nvml_lock:
            if _nvml_handle is None:
                pynvml.nvmlInit()
                _nvml_handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return float(pynvml.nvmlDeviceGetUtilizationRates(_nvml_handle).gpu)
    except pynvml.NVMLError as exc:
        logger.debug("NVML could not read GPU utilisation: %s", exc)
        return None


def read_nvidia_gpu_util() -> float | None:
    """GPU utilisation (%) of the first NVIDIA GPU through NVML, else ``nvidia-smi``; None if neither
    answers. torch cannot report utilisation without NVML, so it is not used here."""
    util = _nvml_util()
    if util is not None:
        return util
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        ).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        logger.debug("nvidia-smi could not read GPU utilisation: %s", exc)
        return None


def reoptimized(
    config: SelectedConfiguration,
    status: dict[str, Any],
    *,
    cache_limit_mb: float,
    chunk_ceiling: int,
    min_chunk: int,
) -> tuple[SelectedConfiguration, list[str]]:
    """The seed's re-optimization, decided from one :meth:`SystemMonitor.status`: the configuration
    the machine's state calls for now, and why (pure: the backend applies it).

    Memory short (critical, or the budget unsafe): halve the decoder chunk, down to ``min_chunk``; memory
    back: double it again, up to ``chunk_ceiling`` (the chunk asked for or the profile's). CPU maxed or
    thermal throttling likely: halve the threads. The cache limit follows the budget's
    (``cache_limit_mb``) whatever else changes.
    """
    risk = status["throttling_risk"]
    reasons: list[str] = []
    chunk, threads = config.chunk_length, config.num_threads
    if risk["memory_critical"] or not status["memory_budget_safe"]:
        chunk = max(min_chunk, chunk // 2)
        reasons.append("memory is short: smaller decoder chunks")
    elif chunk < chunk_ceiling:
        chunk = min(chunk * 2, chunk_ceiling)
        reasons.append("memory recovered: larger decoder chunks")
    if risk["cpu_maxed"] or risk["thermal_likely"]:
        threads = max(1, threads // 2)
        reasons.append("CPU maxed or thermal throttling likely: fewer threads")
    return replace(config, chunk_length=chunk, num_threads=threads, cache_limit=cache_limit_mb), reasons


class SystemMonitor:
    """Resources, throttling risk and a recommended action, for one profile.

    ``cpu_percent`` and ``gpu_util`` read load (defaults: psutil, NVML/nvidia-smi); memory comes from
    the budget manager, so "available" means the same thing here as where synthesis is admitted.
    ``sysfs_root`` is where thermal signals are read (a captured tree in tests).
    """

    def __init__(
        self,
        profile: HardwareProfile,
        *,
        info: HardwareInfo | None = None,
        budget_manager: MemoryBudgetManager | None = None,
        sysfs_root: Path = Path("/sys"),
        cpu_percent: Callable[[], float] | None = None,
        gpu_util: Callable[[], float | None] = read_nvidia_gpu_util,
    ) -> None:
        self.profile = profile
        self.info = info
        self.memory_budget_manager = budget_manager or MemoryBudgetManager(profile, info=info)
        self._cpu_dir = sysfs_root / "devices" / "system" / "cpu"
        self._thermal_dir = sysfs_root / "class" / "thermal"
        if cpu_percent is None:
            psutil.cpu_percent(interval=None)  # prime: the next non-blocking call averages since now
            self._cpu_percent: Callable[[], float] = lambda: psutil.cpu_percent(interval=None)
        else:
            self._cpu_percent = cpu_percent
        self._gpu_util = gpu_util
        self._lock = threading.Lock()
        self._last_throttle_count = self._throttle_count()
        self._last_action = ACTION_OK

    # ---- thermal signals --------------------------------------------------------------------------

    def _throttle_count(self) -> int | None:
        """Sum of the kernel's core/package throttle event counters over all CPUs (x86 only)."""
        counts = [
            value
            for path in self._cpu_dir.glob("cpu[0-9]*/thermal_throttle/*_throttle_count")
            if (value := read_int(path)) is not None
        ]
        return sum(counts) if counts else None

    def _zone_near_trip(self) -> tuple[str | None, bool]:
        """(description of the zone closest to a trip point, whether it is within TRIP_MARGIN_C)."""
        closest: tuple[float, str] | None = None
        for zone in sorted(self._thermal_dir.glob("thermal_zone*")):
            temp = read_int(zone / "temp")
            if temp is None:
                continue
            try:
                zone_type = (zone / "type").read_text().strip()
            except OSError:
                zone_type = "?"
            for trip_type_path in zone.glob("trip_point_*_type"):
                try:
                    trip_type = trip_type_path.read_text().strip()
                except OSError:
                    continue
                trip = read_int(zone / trip_type_path.name.replace("_type", "_temp"))
                if trip_type not in _TRIP_TYPES or trip is None or trip <= 0:
                    continue
                margin_c = (trip - temp) / 1000
                if closest is None or margin_c < closest[0]:
                    where = "above" if margin_c < 0 else f"{margin_c:.1f} °C below"
                    closest = (
                        margin_c,
                        f"{zone.name} ({zone_type}) at {temp / 1000:.1f} °C, {where} its {trip_type} trip point "
                        f"{trip / 1000:.1f} °C",
                    )
        if closest is None:
            return None, False
        return closest[1], closest[0] <= TRIP_MARGIN_C

    def _frequency_ratio(self) -> tuple[float, float, float] | None:
        """(current/max ratio, mean current GHz, mean max GHz) over the CPUs that expose cpufreq."""
        current_total = max_total = 0
        count = 0
        for freq_dir in self._cpu_dir.glob("cpu[0-9]*/cpufreq"):
            current = read_int(freq_dir / "scaling_cur_freq")
            maximum = read_int(freq_dir / "cpuinfo_max_freq")
            if current is None or not maximum:
                continue
            current_total += current
            max_total += maximum
            count += 1
        if not count:
            return None
        return current_total / max_total, current_total / count / 1e6, max_total / count / 1e6

    def _thermal(self, cpu_percent: float) -> tuple[bool, str]:
        """Whether thermal throttling is likely, and the signal that decided it."""
        checked: list[str] = []
        count = self._throttle_count()
        if count is not None:
            previous, self._last_throttle_count = self._last_throttle_count, count
            if previous is not None and count > previous:
                return True, f"thermal_throttle: kernel throttle count rose by {count - previous} since last reading"
            checked.append("thermal_throttle counts steady")

        zone, near = self._zone_near_trip()
        if zone is not None:
            if near:
                return True, f"thermal_zone: {zone}"
            checked.append(f"thermal_zone: hottest relative to trip is {zone}")

        freq = self._frequency_ratio()
        if freq is not None:
            ratio, current_ghz, max_ghz = freq
            described = f"{current_ghz:.2f} GHz is {ratio:.0%} of max {max_ghz:.2f} GHz at {cpu_percent:.0f} % CPU"
            if cpu_percent > THERMAL_CPU_PERCENT and ratio < LOW_FREQUENCY_RATIO:
                return True, f"cpufreq: mean frequency {described}"
            checked.append(f"cpufreq: {described}")

        if checked:
            return False, "no signal: " + "; ".join(checked)
        if self.profile.name == "m1_air":
            if cpu_percent > THERMAL_CPU_PERCENT:
                return True, (
                    f"seed rule: m1_air profile at {cpu_percent:.0f} % CPU > {THERMAL_CPU_PERCENT:.0f} % "
                    "(no thermal sensor readable)"
                )
            return False, f"seed rule: m1_air profile at {cpu_percent:.0f} % CPU (no thermal sensor readable)"
        return False, "no thermal sensor readable; the seed's CPU rule applies to the m1_air profile only"

    # ---- status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The seed's ``/system-status`` payload."""
        cpu = float(self._cpu_percent())
        budget = self.memory_budget_manager
        reading = budget.reading()
        memory_percent = reading.used_percent
        available_mb = reading.available_mb
        resources: dict[str, Any] = {
            "cpu_percent": round(cpu, 1),
            "memory_percent": round(memory_percent, 1),
            "memory_available_gb": round(available_mb / 1024, 2),
        }
        if self.info is not None and self.info.cuda_available:
            util = self._gpu_util()
            resources["gpu_util"] = None if util is None else round(util, 1)

        with self._lock:
            thermal_likely, thermal_signal = self._thermal(cpu)
        memory_critical = memory_percent > MEMORY_CRITICAL_PERCENT
        cpu_maxed = cpu > CPU_MAXED_PERCENT
        budget_safe = available_mb >= budget.safety_margin_mb

        if memory_critical or not budget_safe:
            action = ACTION_MEMORY
        elif thermal_likely:
            action = ACTION_THERMAL
        elif cpu_maxed:
            action = ACTION_CPU
        else:
            action = ACTION_OK
        self._log_action_change(action, memory_percent, available_mb, cpu, thermal_signal)

        return {
            "resources": resources,
            "throttling_risk": {
                "memory_critical": memory_critical,
                "cpu_maxed": cpu_maxed,
                "thermal_likely": thermal_likely,
                "thermal_signal": thermal_signal,
            },
            "memory_budget_safe": budget_safe,
            "recommended_action": action,
        }

    def _log_action_change(
        self, action: str, memory_percent: float, available_mb: float, cpu: float, thermal_signal: str
    ) -> None:
        """Log when the recommendation changes, not on every poll."""
        with self._lock:
            previous, self._last_action = self._last_action, action
        if action == previous:
            return
        details = (
            f"memory {memory_percent:.0f} % used, {available_mb / 1024:.1f} GB available; CPU {cpu:.0f} %; "
            f"{thermal_signal}"
        )
        if action == ACTION_OK:
            logger.info("system status back to OK (%s)", details)
        else:
            logger.warning("system status: %s (%s)", action, details)


__all__ = [
    "reoptimized",
    "ACTION_CPU",
    "ACTION_MEMORY",
    "ACTION_OK",
    "ACTION_THERMAL",
    "CPU_MAXED_PERCENT",
    "MEMORY_CRITICAL_PERCENT",
    "SystemMonitor",
    "THERMAL_CPU_PERCENT",
    "read_nvidia_gpu_util",
]
