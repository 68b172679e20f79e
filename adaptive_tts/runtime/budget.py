"""Memory budget manager: may synthesis start, and how large may the audio cache grow, right now?

Why "available" is the minimum of two readings: psutil sees the machine, but a process in a container
or a simulated device is killed at its cgroup's cap long before the machine runs out. Both are re-read
on every call because the answer changes as other processes (and our own cache) allocate.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import psutil

from adaptive_tts.runtime.hardware import MIB, CgroupMemory, HardwareInfo, HardwareProfile, read_cgroup_memory

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SystemMemory:
    """The machine's memory as the OS reports it (psutil's ``available`` counts reclaimable cache)."""

    total_mb: float
    available_mb: float

    @property
    def percent(self) -> float:
        return 100.0 * (self.total_mb - self.available_mb) / self.total_mb if self.total_mb else 0.0


def read_system_memory() -> SystemMemory:
    vm = psutil.virtual_memory()
    return SystemMemory(vm.total / MIB, vm.available / MIB)


@dataclass(frozen=True)
class MemoryReading:
    """One simultaneous reading of the machine and of the process's cgroup."""

    system: SystemMemory
    cgroup: CgroupMemory

    @property
    def available_mb(self) -> float:
        cgroup_available = self.cgroup.available_mb
        if cgroup_available is None:
            return self.system.available_mb
        return min(self.system.available_mb, cgroup_available)

    @property
    def limited_by(self) -> str:
        """Which reading bounds ``available_mb``: "system" or "cgroup v1"/"cgroup v2"."""
        cgroup_available = self.cgroup.available_mb
        if cgroup_available is not None and cgroup_available < self.system.available_mb:
            return f"cgroup v{self.cgroup.version}"
        return "system"

    @property
    def used_percent(self) -> float:
        """The fuller of machine and cgroup: 95 % of a container's cap is critical on an idle host."""
        percent = self.system.percent
        if self.cgroup.limit_mb and self.cgroup.usage_mb is not None:
            percent = max(percent, 100.0 * self.cgroup.usage_mb / self.cgroup.limit_mb)
        return percent


@dataclass(frozen=True)
class BudgetDecision:
    """Whether work needing ``required_mb`` may start, with the numbers that decided it."""

    allowed: bool
    reason: str
    required_mb: float
    available_mb: float
    safety_margin_mb: float
    headroom_mb: float  # available - required - safety margin; negative when refused


_NO_CGROUP = CgroupMemory(None, None, None, None)


class MemoryBudgetManager:
    """Enforces a profile's memory budget against live readings.

    ``system_memory`` and ``cgroup_memory`` read the machine and the cgroup; the defaults read the live
    ones (psutil, ``/proc/self/cgroup``). Tests inject readers only to simulate machines we lack.
    When ``info`` says the machine has no memory cgroup at all, the cgroup is not re-read: a controller
    does not appear under a running process.
    """

    def __init__(
        self,
        profile: HardwareProfile,
        *,
        info: HardwareInfo | None = None,
        system_memory: Callable[[], SystemMemory] = read_system_memory,
        cgroup_memory: Callable[[], CgroupMemory] | None = None,
    ) -> None:
        self.profile = profile
        self.info = info
        self._system_memory = system_memory
        if cgroup_memory is not None:
            self._cgroup_memory = cgroup_memory
        elif info is not None and info.cgroup_version is None:
            self._cgroup_memory = lambda: _NO_CGROUP
        else:
            self._cgroup_memory = read_cgroup_memory
        budget = profile.memory_budget
        self._cache_ceiling_mb = min(profile.selected_configuration.cache_limit, budget.max_cache_mb)
        self._cache_limit_mb = self._cache_ceiling_mb
        self._cache_listeners: list[Callable[[float], None]] = []
        self._lock = threading.Lock()

    @property
    def safety_margin_mb(self) -> float:
        return self.profile.memory_budget.safety_margin_mb

    def reading(self) -> MemoryReading:
        """Read the machine and the cgroup now."""
        return MemoryReading(self._system_memory(), self._cgroup_memory())

    def available_mb(self) -> float:
        """MB this process can still allocate: min(system available, cgroup limit - cgroup usage)."""
        return self.reading().available_mb

    def check(self, required_mb: float) -> BudgetDecision:
        """May work needing ``required_mb`` start and still leave the safety margin free? Does not log:
        the caller decides whether a refusal is an event (synthesis) or a state (status polling)."""
        if required_mb < 0:
            raise ValueError(f"required_mb must be >= 0, got {required_mb}")
        reading = self.reading()
        available = reading.available_mb
        margin = self.safety_margin_mb
        headroom = available - required_mb - margin
        source = reading.limited_by
        if headroom >= 0:
            reason = (
                f"{required_mb:.0f} MB required fits: {available:.0f} MB available ({source}) keeps the "
                f"{margin:.0f} MB safety margin with {headroom:.0f} MB to spare"
            )
        else:
            reason = (
                f"{required_mb:.0f} MB required + {margin:.0f} MB safety margin exceeds {available:.0f} MB "
                f"available ({source}) by {-headroom:.0f} MB"
            )
        return BudgetDecision(headroom >= 0, reason, required_mb, available, margin, headroom)

    def enforce_limits(self) -> bool:
        """Whether synthesis may start: at least the safety margin must be available. Logs a critical
        warning with the numbers when not, since a start now risks the OOM killer."""
        available = self.available_mb()
        margin = self.safety_margin_mb
        if available >= margin:
            return True
        logger.critical(
            "CRITICAL: only %.1f GB available (need %.1f GB safety margin)", available / 1024, margin / 1024
        )
        return False

    # ---- audio cache limit ------------------------------------------------------------------------

    @property
    def cache_limit_mb(self) -> float:
        return self._cache_limit_mb

    @property
    def cache_ceiling_mb(self) -> float:
        """The most the cache may ever hold: the profile's cache limit, never above its max cache."""
        return self._cache_ceiling_mb

    def add_cache_listener(self, listener: Callable[[float], None]) -> None:
        """Call ``listener(new_limit_mb)`` whenever the cache limit changes (an audio cache evicts to it)."""
        self._cache_listeners.append(listener)

    def remove_cache_listener(self, listener: Callable[[float], None]) -> None:
        self._cache_listeners.remove(listener)

    def adjust_cache_limit(self) -> float:
        """Move the cache limit so the cache can never push available memory below the safety margin.

        The cache's own memory is already counted as used, so the limit moves by the headroom above the
        margin: short by 300 MB → the limit drops by 300 MB (the cache evicts exactly what is missing);
        300 MB spare → it may grow by 300 MB. Once the cache settles at its limit the headroom is zero
        and the limit stays, so it does not oscillate. Clamped to [0, ceiling].
        """
        headroom = self.available_mb() - self.safety_margin_mb
        with self._lock:
            old = self._cache_limit_mb
            new = min(self._cache_ceiling_mb, max(0.0, old + headroom))
            if new == old:
                return old
            self._cache_limit_mb = new
            listeners = list(self._cache_listeners)
        log = logger.warning if new < old else logger.info
        log("audio cache limit %.0f MB -> %.0f MB (%.0f MB headroom above the safety margin)", old, new, headroom)
        for listener in listeners:
            listener(new)
        return new


__all__ = [
    "BudgetDecision",
    "MemoryBudgetManager",
    "MemoryReading",
    "SystemMemory",
    "read_system_memory",
]
