"""Memory budget manager: may synthesis start, and how large may the audio cache grow, right now?

Why "available" is the minimum of two readings: psutil sees the machine, but a process in a container
or a simulated device is killed at its cgroup's cap long before the machine runs out. Both are re-read
on every call because the answer changes as other processes (and our own cache) allocate.

Two policies set the safety margin kept free (``BUDGET_POLICIES``):

- ``seed``: the feature document's table as written (1.5 GB on an 8 GB M1 Air). It was sized for a
  model of gigabytes; this voice's whole process peaks at well under 1 GB, so the seed's margin alone
  refuses most requests that would fit.
- ``calibrated``: the margin is what measurements say can go wrong between admission and the
  request's peak: the worst under-prediction in the estimator's calibration
  (:meth:`MemoryBudgetManager.set_estimator_error`)
  plus how far other processes' memory has swung while we watched (:class:`MemoryWatch`). On a quiet
  device that is tens of MB; beside an app whose memory rises and falls, it grows to that app's swing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from adaptive_tts.runtime.hardware import MIB, CgroupMemory, HardwareInfo, HardwareProfile, read_cgroup_memory
from adaptive_tts.runtime.process import anon_rss_mb

logger = logging.getLogger(__name__)

BUDGET_POLICIES = ("seed", "calibrated")
#: How long the memory watch remembers other processes' usage: long enough to have seen a background
#: app's cycle, short enough that an app that quit stops costing margin.
WATCH_WINDOW_S = 60.0
#: How often the watch samples (a reading is two small file reads; ~0.1 % of one core).
WATCH_INTERVAL_S = 0.05
#: How far this process's anonymous RSS may move during one reading before the sample is dropped
#: (quiet, it moves by well under 1 MB; a decoder chunk's activations are tens of MB).
WATCH_RSS_TOLERANCE_MB = 2.0


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
    def bound_mb(self) -> float:
        """The total that ``available_mb`` is measured against (the cap, or the machine's RAM)."""
        if self.limited_by == "system" or self.cgroup.limit_mb is None:
            return self.system.total_mb
        return self.cgroup.limit_mb

    @property
    def used_percent(self) -> float:
        """The fuller of machine and cgroup: 95 % of a container's cap is critical on an idle host."""
        percent = self.system.percent
        if self.cgroup.limit_mb and self.cgroup.usage_mb is not None:
            percent = max(percent, 100.0 * self.cgroup.usage_mb / self.cgroup.limit_mb)
        return percent


@dataclass(frozen=True)
class MemoryRoom:
    """What work starting now may use: available MB, the margin to keep, and which reading bounds it."""

    available_mb: float
    safety_margin_mb: float
    limited_by: str


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


class MemoryWatch:
    """Samples how much memory *other* processes hold, to see how far it swings.

    "Others" is the bound's used memory less this process's anonymous RSS: what a background app (and
    the page cache the kernel will not reclaim) holds. Memory read at admission is not memory a second
    later when another app grows, so the calibrated policy keeps free, on top of the estimator's error,
    how far the others may still grow (:meth:`headroom_mb`: from what they hold now to the most seen
    over the last :data:`WATCH_WINDOW_S` seconds). A daemon thread samples every
    :data:`WATCH_INTERVAL_S`; :meth:`swing_mb` and :meth:`headroom_mb` are 0 until two samples exist.
    """

    def __init__(
        self,
        read: Callable[[], MemoryReading],
        own_rss: Callable[[], float] = anon_rss_mb,
        *,
        window_s: float = WATCH_WINDOW_S,
        interval_s: float = WATCH_INTERVAL_S,
    ) -> None:
        self._read = read
        self._own_rss = own_rss
        self.window_s = window_s
        self.interval_s = interval_s
        self._samples: deque[tuple[float, float]] = deque()
        self.skipped = 0  # samples dropped because this process's RSS moved during the reading
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def others_now(self) -> tuple[MemoryReading, float | None]:
        """One reading, and what other processes hold in it (MB; None when it could not be told apart).

        The bound's reading and this process's RSS are two reads, not one: while a synthesis allocates
        or frees a chunk's activations between them, the difference would charge this process's own
        change to "others". So RSS is read before and after, and a reading during which it moved more
        than :data:`WATCH_RSS_TOLERANCE_MB` gives None: the next quiet instant gives the true figure.
        """
        before = self._own_rss()
        reading = self._read()
        after = self._own_rss()
        if abs(after - before) > WATCH_RSS_TOLERANCE_MB:
            return reading, None
        return reading, reading.bound_mb - reading.available_mb - (before + after) / 2

    def sample(self) -> float | None:
        """Take one sample now; returns other processes' MB, or None when it had to be skipped."""
        _, others = self.others_now()
        if others is None:
            self.skipped += 1
            return None
        now = time.monotonic()
        with self._lock:
            self._samples.append((now, others))
            while self._samples and self._samples[0][0] < now - self.window_s:
                self._samples.popleft()
        return others

    def _seen(self) -> list[float]:
        with self._lock:
            return [mb for _, mb in self._samples]

    def swing_mb(self) -> float:
        """Max minus min of other processes' memory over the window (0 until two samples exist)."""
        values = self._seen()
        return max(values) - min(values) if len(values) >= 2 else 0.0

    def headroom_mb(self, others_mb: float | None) -> float:
        """How far other processes may still grow from ``others_mb`` (what they hold now): to the most
        the window has seen them hold. Memory that grows back to a level already seen is the risk; a
        background at its peak has nothing left to take. With ``None`` (a reading that could not tell
        them apart) it is the whole swing, as if they were at their least."""
        values = self._seen()
        if len(values) < 2:
            return 0.0
        if others_mb is None:
            return max(values) - min(values)
        return max(0.0, max(values) - others_mb)

    def reset(self) -> None:
        """Forget what was seen (a device whose other apps are known to have changed)."""
        with self._lock:
            self._samples.clear()

    def start(self) -> None:
        if self._thread is not None:
            return
        self.sample()

        def run() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.sample()
                except OSError as exc:  # a cgroup file vanished mid-read: skip the sample
                    logger.debug("memory watch sample failed: %s", exc)

        self._thread = threading.Thread(target=run, name="memory-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


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
        policy: str = "seed",
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
        self._estimator_error_mb: float | None = None
        self.watch = MemoryWatch(self.reading)
        self.set_policy(policy)

    def set_policy(self, policy: str) -> None:
        """Switch between the seed's margin and the measured one (the watch runs only for the latter)."""
        if policy not in BUDGET_POLICIES:
            raise ValueError(f"unknown budget policy {policy!r}; valid: {', '.join(BUDGET_POLICIES)}")
        self.policy = policy
        if policy == "calibrated":
            self.watch.start()

    def room(self) -> MemoryRoom:
        """Available memory and the margin to keep for work that starts now, from one reading.

        Under the calibrated policy the margin is the estimator's worst error plus how far other
        processes may still grow from what this very reading shows them holding (to the most seen in the
        watch's window). Read apart, available and margin could straddle a step of the background and
        admit as if it were at once high and low.
        """
        if self.policy == "seed" or self._estimator_error_mb is None:
            reading = self.reading()
            return MemoryRoom(reading.available_mb, self.profile.memory_budget.safety_margin_mb, reading.limited_by)
        reading, others = self.watch.others_now()
        margin = self._estimator_error_mb + self.watch.headroom_mb(others)
        return MemoryRoom(reading.available_mb, margin, reading.limited_by)

    @property
    def safety_margin_mb(self) -> float:
        """The memory kept free for work that starts now (:meth:`room`): the seed's constant, or the
        calibrated policy's measured one. With no calibration to measure the estimator's error by, the
        calibrated policy keeps the seed's."""
        return self.room().safety_margin_mb

    @property
    def resident_margin_mb(self) -> float:
        """The margin for memory held for the process's life (a decoder warm-up): the estimator's error
        plus the others' whole swing, however low they read now. A start-up has watched the others for a
        second or two, so their peak may be unseen; a request's memory is back within seconds, a warm-up's
        never is."""
        if self.policy == "seed" or self._estimator_error_mb is None:
            return self.profile.memory_budget.safety_margin_mb
        return self._estimator_error_mb + self.watch.swing_mb()

    def set_estimator_error(self, under_mb: float | None) -> None:
        """The calibrated policy's first term: the worst under-prediction in the estimator's calibration (MB);
        0 when nothing is predicted (estimation off); ``None`` when uncalibrated (then the calibrated
        policy falls back to the seed's margin, and logs it)."""
        if under_mb is None and self.policy == "calibrated":
            logger.warning(
                "calibrated budget policy without a calibration: keeping the seed's %.0f MB safety margin",
                self.profile.memory_budget.safety_margin_mb,
            )
        if under_mb is not None and under_mb < 0:
            raise ValueError(f"an under-prediction is >= 0 MB, got {under_mb}")
        self._estimator_error_mb = under_mb

    def margin_terms(self) -> dict[str, float | str | None]:
        """What the margin is made of, for status payloads and rows."""
        room = self.room()
        error = self._estimator_error_mb if self.policy == "calibrated" else None
        return {
            "policy": self.policy,
            "safety_margin_mb": round(room.safety_margin_mb, 1),
            "estimator_error_mb": error,
            "background_swing_mb": round(self.watch.swing_mb(), 1) if self.policy == "calibrated" else None,
            "background_headroom_mb": round(room.safety_margin_mb - error, 1) if error is not None else None,
        }

    def close(self) -> None:
        self.watch.stop()

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
        room = self.room()
        available, margin, source = room.available_mb, room.safety_margin_mb, room.limited_by
        headroom = available - required_mb - margin
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
    "BUDGET_POLICIES",
    "BudgetDecision",
    "MemoryWatch",
    "MemoryBudgetManager",
    "MemoryReading",
    "SystemMemory",
    "read_system_memory",
]
