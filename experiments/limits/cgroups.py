"""Kernel memory caps of a simulated device, and how a process joins its device (its confinement).

The cap is the kernel's, not the runtime's own bookkeeping: a cgroup v2 ``memory.max``, else a cgroup v1
``memory.limit_in_bytes``, else ``RLIMIT_AS`` on the worker (address space, a much blunter instrument).
Whichever is used is recorded per row (``mem_cap_mechanism``), together with the kernel's OOM-kill
counters that let a SIGKILL be told apart as an OOM kill.

Processes join their confinement themselves as the first thing they do (:func:`confine_current_process`),
before they import torch or allocate anything, so their memory is charged to the device from the start.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Our cgroups are named with this prefix so leftovers of a killed driver can be found and removed.
CGROUP_PREFIX = "adaptive-tts-"
MECHANISMS = ("cgroup_v2", "cgroup_v1", "rlimit")
_names = itertools.count()


@dataclass(frozen=True)
class Confinement:
    """What a process of the device applies to itself at start-up; JSON-able to cross ``exec``."""

    cgroup_procs: str | None = None  # the cgroup.procs file to join
    rlimit_as_bytes: int | None = None
    cpus: tuple[int, ...] | None = None  # None: leave the affinity alone
    oom_score_adj: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Confinement:
        data = json.loads(text)
        cpus = data.pop("cpus")
        return cls(cpus=tuple(cpus) if cpus is not None else None, **data)


def confine_current_process(confinement: Confinement) -> None:
    """Join the device: cgroup first (so everything after is charged to it), then rlimit and CPUs.

    Raises OSError when the kernel refuses, so a worker that could not be confined never measures.
    """
    if confinement.cgroup_procs is not None:
        Path(confinement.cgroup_procs).write_text(f"{os.getpid()}\n")
    if confinement.rlimit_as_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (confinement.rlimit_as_bytes, confinement.rlimit_as_bytes))
    if confinement.cpus is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, confinement.cpus)
    if confinement.oom_score_adj is not None:
        Path("/proc/self/oom_score_adj").write_text(str(confinement.oom_score_adj))


def _mount_point(fstype: str, super_option: str | None = None) -> Path | None:
    """Where a cgroup hierarchy is mounted, from /proc/self/mountinfo (not every host uses /sys/fs/cgroup)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        pre, _, post = line.partition(" - ")
        post_fields = post.split()
        if len(post_fields) < 3 or post_fields[0] != fstype:
            continue
        if super_option is None or super_option in post_fields[2].split(","):
            return Path(pre.split()[4])
    return None


def _counter(path: Path, key: str) -> int | None:
    """A "key value" line of a kernel stats file (memory.events, memory.oom_control, /proc/vmstat)."""
    try:
        match = re.search(rf"^{key} (\d+)$", path.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def global_oom_kills() -> int | None:
    """The host-wide OOM-kill count: the evidence for a SIGKILL when no cgroup of ours counts kills."""
    return _counter(Path("/proc/vmstat"), "oom_kill")


def _remove_stale_cgroups(parent: Path) -> None:
    """Remove our empty cgroups left behind by a driver that was SIGKILLed (rmdir refuses busy ones)."""
    for stale in parent.glob(f"{CGROUP_PREFIX}*"):
        try:
            stale.rmdir()
            logger.info("removed stale cgroup %s", stale)
        except OSError:
            pass


@dataclass
class MemoryCap:
    """A kernel memory cap of ``limit_mb`` for the device's processes.

    ``cgroup`` is the cgroup directory for the cgroup mechanisms (None for rlimit). The cgroup also caps
    swap where the kernel offers it, so the simulated device does not page to the host's disk.
    """

    mechanism: str
    limit_mb: float
    cgroup: Path | None = None

    def oom_kills(self) -> int | None:
        """How many processes the kernel has OOM-killed in this cgroup (None: it cannot say)."""
        if self.mechanism == "cgroup_v2":
            return _counter(self.cgroup / "memory.events", "oom_kill")
        if self.mechanism == "cgroup_v1":
            return _counter(self.cgroup / "memory.oom_control", "oom_kill")
        return None

    def reset_peak(self) -> None:
        """Start a new peak of the cgroup's usage (v1 only: v2's memory.peak resets per open file)."""
        if self.mechanism == "cgroup_v1":
            (self.cgroup / "memory.max_usage_in_bytes").write_text("0")

    def peak_mb(self) -> float | None:
        """The cgroup's peak usage since :meth:`reset_peak` (the whole device: worker plus background)."""
        if self.mechanism != "cgroup_v1":
            return None
        return int((self.cgroup / "memory.max_usage_in_bytes").read_text()) / MIB

    def close(self) -> None:
        """Remove the cgroup; its processes must have exited (the kernel refuses to rmdir a busy one)."""
        if self.cgroup is None:
            return
        for _ in range(50):
            try:
                self.cgroup.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # a killed process is still leaving the cgroup
                time.sleep(0.1)
        logger.warning("could not remove cgroup %s", self.cgroup)


def _cgroup_v2(limit_mb: float) -> MemoryCap:
    from adaptive_tts.runtime.hardware.cgroup import own_cgroup  # here: workers import this module unconfined

    mount, own = _mount_point("cgroup2"), own_cgroup(None)
    if mount is None or own is None:
        raise OSError("no cgroup v2 hierarchy")
    parent = mount / own.lstrip("/")
    if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
        (parent / "cgroup.subtree_control").write_text("+memory")  # fails where the parent holds processes
    _remove_stale_cgroups(parent)
    group = parent / f"{CGROUP_PREFIX}{os.getpid()}-{next(_names)}"
    group.mkdir()
    try:
        (group / "memory.max").write_text(str(int(limit_mb * MIB)))
        if (group / "memory.swap.max").exists():
            (group / "memory.swap.max").write_text("0")
    except OSError:
        group.rmdir()
        raise
    return MemoryCap("cgroup_v2", limit_mb, group)


def _cgroup_v1(limit_mb: float) -> MemoryCap:
    from adaptive_tts.runtime.hardware.cgroup import own_cgroup  # here: workers import this module unconfined

    mount, own = _mount_point("cgroup", "memory"), own_cgroup("memory")
    if mount is None or own is None:
        raise OSError("no cgroup v1 memory hierarchy")
    parent = mount / own.lstrip("/")
    _remove_stale_cgroups(parent)
    group = parent / f"{CGROUP_PREFIX}{os.getpid()}-{next(_names)}"
    group.mkdir()
    limit = str(int(limit_mb * MIB))
    try:
        (group / "memory.limit_in_bytes").write_text(limit)
        if (group / "memory.memsw.limit_in_bytes").exists():  # only with swap accounting enabled
            (group / "memory.memsw.limit_in_bytes").write_text(limit)
    except OSError:
        group.rmdir()
        raise
    return MemoryCap("cgroup_v1", limit_mb, group)


def create_memory_cap(limit_mb: float, mechanism: str = "auto") -> MemoryCap:
    """The strongest cap the kernel offers here (or the named ``mechanism``), never silently none:
    ``RLIMIT_AS`` always works on POSIX, so a cap is always in force."""
    if mechanism not in (*MECHANISMS, "auto"):
        raise ValueError(f"unknown memory cap mechanism {mechanism!r}; valid: auto, {', '.join(MECHANISMS)}")
    makers = {"cgroup_v2": _cgroup_v2, "cgroup_v1": _cgroup_v1}
    for name in makers if mechanism == "auto" else [m for m in makers if m == mechanism]:
        try:
            cap = makers[name](limit_mb)
        except OSError as exc:
            if mechanism != "auto":
                raise
            logger.info("memory cap: %s unavailable (%s)", name, exc)
            continue
        logger.info("memory cap: %s at %.0f MB in %s", name, limit_mb, cap.cgroup)
        return cap
    logger.info("memory cap: RLIMIT_AS at %.0f MB", limit_mb)
    return MemoryCap("rlimit", limit_mb)
