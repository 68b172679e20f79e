"""CPU affinity manager: which CPUs synthesis runs on, and how many compute threads it uses.

Why: a VITS decoder is a few large convolutions per chunk, parallelised across torch's intra-op
threads. A thread on an E-core finishes last and the whole chunk waits for it; two threads on SMT
siblings share one core's vector units. So the useful set is one logical CPU per physical *performance*
core, with exactly as many torch threads. Affinity is set on every thread of the process (Linux applies
``sched_setaffinity`` per thread, and torch's pool may already exist) and read back, because containers
and cpusets can silently narrow or refuse it.

The thread count is also adapted while synthesis runs: before every step (a sentence's encoding, a
decoder chunk) :meth:`CPUAffinityManager.step_threads` reads the contention on the CPUs
(:mod:`adaptive_tts.runtime.contention`) and gives the step only as many threads as other tasks leave
CPUs free, so that no step waits at a barrier for a thread the scheduler preempted.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adaptive_tts.runtime.contention import ContentionWatch, ThreadChoice
from adaptive_tts.runtime.hardware import HardwareInfo

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "performance", "physical", "all")

_unavailable_logged = False
_unavailable_lock = threading.Lock()


def _log_unavailable(reason: str) -> None:
    """Log "CPU affinity not available" once per process: it is a property of the platform, and every
    backend built in the process (the harness builds one per trial) would otherwise repeat it."""
    global _unavailable_logged
    with _unavailable_lock:
        if _unavailable_logged:
            return
        _unavailable_logged = True
    logger.warning("CPU affinity not available: %s", reason)


@dataclass(frozen=True)
class AffinityPlan:
    """The CPUs to run on and the thread count to match; ``strategy`` is the resolved one."""

    cpus: list[int]
    num_threads: int
    strategy: str
    reason: str


@dataclass(frozen=True)
class AffinityResult:
    """What ``apply`` asked for and what the OS reports afterwards."""

    plan: AffinityPlan
    affinity_applied: bool  # every thread's affinity read back equal to plan.cpus
    cpus: list[int] | None  # read back from os.sched_getaffinity; None where the platform has no API
    num_threads: int | None  # read back from torch.get_num_threads; None without torch
    message: str

    @property
    def threads_applied(self) -> bool:
        return self.num_threads == self.plan.num_threads


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


class CPUAffinityManager:
    """Plans, applies and restores CPU affinity and torch's thread count for one machine.

    ``strategy``: "auto" (hybrid → performance cores; uniform with SMT → one CPU per physical core;
    uniform without SMT → all), "performance", "physical", "all", or an explicit list of CPU ids.
    """

    def __init__(
        self, info: HardwareInfo, strategy: str | Sequence[int] = "auto", *, watch: ContentionWatch | None = None
    ) -> None:
        self.info = info
        #: the contention reader behind :meth:`step_threads`
        self.watch = watch or ContentionWatch()
        self._machine_cpus = sorted(set(info.performance_cpus) | set(info.efficiency_cpus))
        if isinstance(strategy, str):
            if strategy not in STRATEGIES:
                raise ValueError(
                    f"unknown affinity strategy {strategy!r}; valid: {', '.join(STRATEGIES)} or a CPU list"
                )
            self.strategy: str | list[int] = strategy
        else:
            cpus = sorted(set(int(c) for c in strategy))
            unknown = [c for c in cpus if c not in self._machine_cpus]
            if not cpus or unknown:
                raise ValueError(
                    f"CPU list {list(strategy)} names CPUs this machine lacks ({unknown}); it has {self._machine_cpus}"
                )
            self.strategy = cpus
        self._saved_affinity: set[int] | None = None
        self._saved_threads: int | None = None

    def plan(self) -> AffinityPlan:
        info = self.info
        if isinstance(self.strategy, list):
            return AffinityPlan(self.strategy, len(self.strategy), "explicit", f"explicit CPU list {self.strategy}")
        strategy = self.strategy
        prefix = ""
        if strategy == "auto":
            if info.is_hybrid:
                strategy, prefix = "performance", "auto, hybrid CPU: "
            elif info.has_smt:
                strategy, prefix = "physical", "auto, uniform cores with SMT: "
            else:
                strategy, prefix = "all", "auto, uniform cores without SMT: "
        if strategy == "performance":
            cpus = info.one_cpu_per_core(info.performance_cpus)
            reason = f"one logical CPU on each of the {len(cpus)} physical performance cores"
            if info.efficiency_cpus:
                reason += f", efficiency cores {info.efficiency_cpus} left to the OS"
        elif strategy == "physical":
            cpus = info.one_cpu_per_core(self._machine_cpus)
            reason = f"one logical CPU on each of the {len(cpus)} physical cores, SMT siblings left idle"
        else:
            cpus = list(self._machine_cpus)
            reason = f"all {len(cpus)} logical CPUs"
        if info.os == "Darwin":
            reason += "; macOS has no affinity API, so only the thread count applies"
        return AffinityPlan(cpus, len(cpus), strategy, prefix + reason)

    def apply(self) -> AffinityResult:
        """Pin every thread of the process to the plan's CPUs and set torch's thread count to match,
        then read both back. Where affinity is unavailable, set the thread count only and carry on."""
        plan = self.plan()
        applied, cpus_after, message = self._apply_affinity(plan.cpus)
        torch = _torch()
        threads_after: int | None = None
        if torch is not None:
            if self._saved_threads is None:
                self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(plan.num_threads)
            threads_after = torch.get_num_threads()
            if threads_after != plan.num_threads:
                logger.warning("torch runs %d threads, not the %d planned", threads_after, plan.num_threads)
        result = AffinityResult(plan, applied, cpus_after, threads_after, message)
        logger.info("%s; %s; torch threads: %s", plan.reason, message, threads_after)
        return result

    def step_threads(self, planned: int, *, first_step: bool = False) -> ThreadChoice:
        """The threads the next synthesis step should run with, out of ``planned``, given the CPU
        contention now (the seed's "CPU maxed" action, taken per step rather than on request); a
        request's ``first_step`` reads afresh (:meth:`ContentionWatch.choose`)."""
        return self.watch.choose(planned, first_step=first_step)

    def preview_threads(self, planned: int) -> ThreadChoice:
        """What :meth:`step_threads` would answer now, without counting as a step's reading."""
        return self.watch.preview(planned)

    def _apply_affinity(self, cpus: list[int]) -> tuple[bool, list[int] | None, str]:
        if self.info.os == "Darwin":
            _log_unavailable("macOS has no CPU affinity API; scheduling left to the OS")
            return False, None, "not applied: macOS schedules threads itself"
        if not hasattr(os, "sched_setaffinity"):
            _log_unavailable(f"os.sched_setaffinity is not implemented on {self.info.os}")
            return False, None, f"not applied: no affinity API on {self.info.os}"
        previous = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:  # containers and cpusets may refuse (EPERM, EINVAL)
            _log_unavailable(str(exc))
            return False, sorted(previous), f"not applied: {exc}"
        if self._saved_affinity is None:
            self._saved_affinity = previous
        self._set_all_threads(set(cpus))
        after = sorted(os.sched_getaffinity(0))
        mismatched = [tid for tid, mask in self._thread_masks().items() if sorted(mask) != cpus]
        if after != cpus or mismatched:
            logger.warning(
                "CPU affinity only partly applied: asked for %s, calling thread has %s, %d other threads differ",
                cpus,
                after,
                len(mismatched),
            )
            return False, after, f"partly applied: asked for {cpus}, got {after}"
        return True, after, f"affinity set to CPUs {after}"

    @staticmethod
    def _thread_ids() -> list[int]:
        try:
            return [int(name) for name in os.listdir(Path("/proc/self/task"))]
        except OSError:  # no procfs: only the calling thread can be reached
            return []

    def _set_all_threads(self, cpus: set[int]) -> None:
        for tid in self._thread_ids():
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # the thread exited meanwhile
                continue

    def _thread_masks(self) -> dict[int, set[int]]:
        masks: dict[int, set[int]] = {}
        for tid in self._thread_ids():
            try:
                masks[tid] = os.sched_getaffinity(tid)
            except ProcessLookupError:
                continue
        return masks

    def restore(self) -> None:
        """Undo ``apply``: the affinity and torch thread count from before the first ``apply``."""
        if self._saved_affinity is not None:
            os.sched_setaffinity(0, self._saved_affinity)
            self._set_all_threads(self._saved_affinity)
            logger.info("CPU affinity restored to %s", sorted(self._saved_affinity))
            self._saved_affinity = None
        if self._saved_threads is not None:
            torch = _torch()
            if torch is not None:
                torch.set_num_threads(self._saved_threads)
            self._saved_threads = None


__all__ = ["AffinityPlan", "AffinityResult", "CPUAffinityManager", "STRATEGIES"]
