"""A simulated device as a sweep runs on it: its spec, and the live device (memory cap, background app,
busy background processes)."""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

from experiments.limits.background import BackgroundLoad
from experiments.limits.cgroups import MIB, Confinement, MemoryCap, create_memory_cap, global_oom_kills
from experiments.limits.cpuload import CPULoad
from experiments.limits.cpus import host_cpus

logger = logging.getLogger(__name__)


def host_memory_mb() -> float:
    """This host's physical memory: a simulated device's cap cannot bind above it."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MIB


@dataclass(frozen=True)
class DeviceSpec:
    """The device a sweep runs on: a profile, simulated on this host or not.

    ``mem_cap_mb`` is None for a real device (its own RAM is the limit); ``cpus`` is the worker's CPU
    set (for a real device, all the CPUs this process may use).
    """

    profile: str
    simulated: bool
    mem_cap_mb: float | None
    cpus: tuple[int, ...]
    background_mb: float = 0.0
    mechanism: str = "auto"
    #: a dynamic background: its memory moves within background_mb ± swing / 2 (0: static)
    background_swing_mb: float = 0.0
    background_step_s: tuple[float, float] = (0.2, 1.0)
    background_seed: int = 0
    #: busy processes in the device's CPU set while a trial runs (experiments/limits/cpuload.py)
    background_cpu: int = 0

    def __post_init__(self) -> None:
        if self.mem_cap_mb is not None and self.background_mb + self.background_swing_mb / 2 >= self.mem_cap_mb:
            raise ValueError(
                f"background of {self.background_mb:.0f} MB (+{self.background_swing_mb / 2:.0f} MB swing) does not "
                f"fit the {self.profile} device's {self.mem_cap_mb:.0f} MB of RAM"
            )

    def with_background(
        self, mb: float, *, swing_mb: float = 0.0, step_s: tuple[float, float] = (0.2, 1.0), seed: int = 0
    ) -> DeviceSpec:
        """The same device with another background app (a memory sweep's level)."""
        return replace(
            self, background_mb=mb, background_swing_mb=swing_mb, background_step_s=tuple(step_s), background_seed=seed
        )

    @classmethod
    def for_profile(
        cls,
        profile: str,
        *,
        simulate: bool,
        cores: int | None,
        background_mb: float = 0.0,
        mechanism: str = "auto",
        background_cpu: int = 0,
    ) -> DeviceSpec:
        """A simulated profile gets its total RAM and core count (from ``adaptive_tts``' PROFILES, the one
        source of truth; ``cores`` overrides the count) as the cap and its first ``cores`` host CPUs
        (capped by the host) as the CPU set."""
        host = host_cpus()
        if not simulate:
            return cls(profile, False, None, tuple(host), background_mb, mechanism, background_cpu=background_cpu)
        # Imported here, not at the top: workers import this module before they confine themselves.
        from adaptive_tts.runtime.hardware import PROFILES

        if profile not in PROFILES:
            raise ValueError(f"cannot simulate profile {profile!r}; simulated profiles: {', '.join(PROFILES)}")
        if cores is None:
            cores = PROFILES[profile].cores
        if cores < 1:
            raise ValueError(f"simulating {profile!r} needs a positive core count, got {cores!r}")
        if cores > len(host):
            logger.warning("profile %s has %d cores; this host lends only %d", profile, cores, len(host))
        mem_cap_mb = PROFILES[profile].memory_budget.total_ram_gb * 1024
        host_mb = host_memory_mb()
        if mem_cap_mb > host_mb:
            logger.warning(
                "profile %s has %.0f MB; this host has only %.0f MB, so the cap cannot bind",
                profile,
                mem_cap_mb,
                host_mb,
            )
        return cls(
            profile, True, mem_cap_mb, tuple(host[:cores]), background_mb, mechanism, background_cpu=background_cpu
        )


class Device:
    """The live device of a :class:`DeviceSpec`: its memory cap and background load, for ``with``.

    Workers join it through :meth:`worker_confinement`. A simulated device's worker volunteers as the
    OOM killer's first victim (``oom_score_adj`` 1000), so an OOM is recorded against the trial that
    caused it instead of silently killing the background "app".
    """

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self.cap: MemoryCap | None = None
        self.background: BackgroundLoad | None = None
        self.cpu_load = CPULoad(spec.background_cpu, Confinement(cpus=spec.cpus))

    def __enter__(self) -> Device:
        try:
            self.cpu_load.start()
            if self.spec.mem_cap_mb is not None:
                self.cap = create_memory_cap(self.spec.mem_cap_mb, self.spec.mechanism)
            if self.spec.background_mb > 0:
                self.set_background(self.spec)
        except BaseException:
            self.close()
            raise
        return self

    def set_background(self, spec: DeviceSpec) -> None:
        """Move the background app to ``spec``'s level (same device, another background), starting
        it if there is none yet. Workers started after this see the new level."""
        if (spec.profile, spec.mem_cap_mb, spec.cpus, spec.mechanism, spec.background_cpu) != (
            self.spec.profile,
            self.spec.mem_cap_mb,
            self.spec.cpus,
            self.spec.mechanism,
            self.spec.background_cpu,
        ):
            raise ValueError(f"{spec} is another device than {self.spec}")
        self.spec = spec
        if self.background is None:
            cgroup = self.cap.cgroup if self.cap is not None else None
            joined = Confinement(
                cgroup_procs=str(cgroup / "cgroup.procs") if cgroup is not None else None,
                cpus=spec.cpus if spec.simulated else None,
            )
            self.background = BackgroundLoad(
                spec.background_mb,
                joined,
                spec.background_swing_mb,
                spec.background_step_s,
                spec.background_seed,
                size_mb=spec.mem_cap_mb,
            )
            self.background.start()
        else:
            self.background.set(spec.background_mb, spec.background_swing_mb)

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def mem_cap_mechanism(self) -> str:
        return self.cap.mechanism if self.cap is not None else "none"

    def worker_confinement(self) -> Confinement:
        """Join the cgroup, or under ``RLIMIT_AS`` get the cap less what the background load holds
        (an rlimit is per process, so the device's total is split by hand)."""
        if not self.spec.simulated:
            return Confinement()
        cap = self.cap
        rlimit = None
        if cap.cgroup is None:
            rlimit = int((cap.limit_mb - self.spec.background_mb) * MIB)
        return Confinement(
            cgroup_procs=str(cap.cgroup / "cgroup.procs") if cap.cgroup is not None else None,
            rlimit_as_bytes=rlimit,
            cpus=self.spec.cpus,
            oom_score_adj=1000,
        )

    def oom_kills(self) -> int | None:
        """The OOM-kill counter that covers the worker: its cgroup's, else the host's."""
        if self.cap is not None and self.cap.cgroup is not None:
            return self.cap.oom_kills()
        return global_oom_kills()

    def busy(self) -> AbstractContextManager[None]:
        """While a trial runs: the device's busy background processes spin (if it has any)."""
        return self.cpu_load.running()

    def close(self) -> None:
        """Stop the background loads and remove the cgroup (workers must have exited already)."""
        self.cpu_load.stop()
        if self.background is not None:
            self.background.stop()
            self.background = None
        if self.cap is not None:
            self.cap.close()
            self.cap = None
