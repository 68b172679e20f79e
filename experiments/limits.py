"""Simulated devices: a kernel-enforced memory cap, a CPU set, and background memory pressure.

A profile run on a bigger host only means something if the host cannot lend the trial more than the
device has. So the cap is the kernel's, not the runtime's own bookkeeping: a cgroup v2 ``memory.max``,
else a cgroup v1 ``memory.limit_in_bytes``, else ``RLIMIT_AS`` on the worker (address space, a much
blunter instrument). Whichever is used is recorded per row (``mem_cap_mechanism``), together with the
kernel's OOM-kill counters that let a SIGKILL be told apart as an OOM kill.

Processes join their confinement themselves as the first thing they do (:func:`confine_current_process`),
before they import torch or allocate anything, so their memory is charged to the device from the start.
(File pages the host had cached already, torch's libraries say, stay charged where they were first
read, so a cgroup's usage can be below the sum of its processes' RSS.)
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Our cgroups are named with this prefix so leftovers of a killed driver can be found and removed.
CGROUP_PREFIX = "adaptive-tts-"
MECHANISMS = ("cgroup_v2", "cgroup_v1", "rlimit")
_names = itertools.count()


def host_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask, which a container or taskset narrows)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def host_memory_mb() -> float:
    """This host's physical memory: a simulated device's cap cannot bind above it."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MIB


def format_cpus(cpus: list[int] | tuple[int, ...]) -> str:
    """The kernel's cpulist format ("0-3,6"), the ``cpus`` column."""
    ranges: list[str] = []
    for _, group in itertools.groupby(enumerate(sorted(cpus)), key=lambda item: item[1] - item[0]):
        ids = [cpu for _, cpu in group]
        ranges.append(str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}")
    return ",".join(ranges)


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


_HOG_CODE = """
import ctypes, mmap, random, sys, threading
from experiments.limits import Confinement, confine_current_process
confine_current_process(Confinement.from_json(sys.argv[1]))
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: never outlive the driver
size_mb, step_lo, step_hi, seed = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
MB = 1024 * 1024
region = mmap.mmap(-1, size_mb * MB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private: DONTNEED frees
page = b"\\x01" * MB
held, target = 0, [0.0, 0.0]  # MB resident now; (mean, swing) asked for
lock, changed = threading.Lock(), threading.Event()
def hold(mb):  # make exactly `mb` MB resident: write new pages, or give pages back to the kernel
    global held
    mb = max(0, min(size_mb, int(mb)))
    with lock:
        for i in range(held, mb):
            region[i * MB:(i + 1) * MB] = page
        if mb < held:
            region.madvise(mmap.MADV_DONTNEED, mb * MB, (held - mb) * MB)
        held = mb
def schedule():  # a dynamic app: a new size within mean +- swing/2 every step_lo..step_hi seconds
    rng = random.Random(seed)
    while True:
        changed.wait(rng.uniform(step_lo, step_hi))
        changed.clear()
        mean, swing = target
        if swing > 0:
            hold(rng.uniform(mean - swing / 2, mean + swing / 2))
threading.Thread(target=schedule, daemon=True).start()
for line in sys.stdin:  # "mean swing": resize to the mean now, then move around it
    target[:] = [float(v) for v in line.split()]
    hold(target[0])
    changed.set()
    print("ready", flush=True)
"""


@dataclass
class BackgroundLoad:
    """Another "app" on the device holding resident memory in the same cgroup.

    One process serves the whole life of a device and is resized on command (:meth:`set`): starting
    a multi-GB app per level costs seconds of page faults, a resize only the difference. With a
    ``swing_mb`` > 0 its memory moves on a seeded schedule within ``mb ± swing_mb / 2`` (a new size
    every ``step_s``, drawn uniformly), like an app that opens and closes documents: it writes pages to
    grow and hands pages back to the kernel (``MADV_DONTNEED``) to shrink.
    """

    mb: float
    confinement: Confinement
    swing_mb: float = 0.0
    step_s: tuple[float, float] = (0.2, 1.0)
    seed: int = 0
    #: the most it may ever hold (its address space): the device's RAM
    size_mb: float | None = None
    process: subprocess.Popen[str] | None = field(default=None, init=False)

    def start(self) -> None:
        if self.mb <= 0 and self.swing_mb <= 0:
            return
        size = self.size_mb or self.mb + self.swing_mb
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _HOG_CODE,
                self.confinement.to_json(),
                str(int(size)),
                str(self.step_s[0]),
                str(self.step_s[1]),
                str(self.seed),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the driver only; it stops the load itself
        )
        self._command()

    def set(self, mb: float, swing_mb: float = 0.0) -> None:
        """Resize to ``mb`` MB now (and swing around it from now on)."""
        self.mb, self.swing_mb = mb, swing_mb
        if self.process is not None and self.process.poll() is None:
            try:
                self._command()
                return
            except RuntimeError as exc:
                # killed while it grew (the kernel may pick it over a worker still giving its memory
                # back): one fresh start at the new size; a second failure is the sweep's to report
                logger.warning("%s; starting it again", exc)
        elif self.process is not None:
            logger.warning("background load exited with %s; starting it again", self.process.returncode)
        self.process = None
        self.start()

    def _command(self) -> None:
        try:
            self.process.stdin.write(f"{self.mb} {self.swing_mb}\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()  # "ready", or "" if it died (say OOM-killed)
        except BrokenPipeError:
            line = ""
        if line.strip() != "ready":
            code = self.process.wait(timeout=5)
            self.process = None
            raise RuntimeError(f"background load of {self.mb:.0f} MB failed to start (exit {code})")
        swing = f", swinging {self.swing_mb:.0f} MB" if self.swing_mb else ""
        logger.info("background load holds %.0f MB%s (pid %d)", self.mb, swing, self.process.pid)

    def ensure_running(self) -> bool:
        """Restart the load if the kernel killed it instead of the worker (it is a victim of last resort:
        a worker the kernel is still tearing down is skipped, and an app growing meanwhile is next; it
        cannot be exempted without CAP_SYS_RESOURCE). Returns whether it had to."""
        if self.process is not None and self.process.poll() is not None:
            logger.warning("background load exited with %s; restarting it", self.process.returncode)
            self.process = None
            self.start()
            return True
        return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()
        self.process = None


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
        cls, profile: str, *, simulate: bool, cores: int | None, background_mb: float = 0.0, mechanism: str = "auto"
    ) -> DeviceSpec:
        """A simulated profile gets its total RAM and core count (from ``adaptive_tts``' PROFILES, the one
        source of truth; ``cores`` overrides the count) as the cap and its first ``cores`` host CPUs
        (capped by the host) as the CPU set."""
        host = host_cpus()
        if not simulate:
            return cls(profile, False, None, tuple(host), background_mb, mechanism)
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
        return cls(profile, True, mem_cap_mb, tuple(host[:cores]), background_mb, mechanism)


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

    def __enter__(self) -> Device:
        try:
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
        if (spec.profile, spec.mem_cap_mb, spec.cpus, spec.mechanism) != (
            self.spec.profile,
            self.spec.mem_cap_mb,
            self.spec.cpus,
            self.spec.mechanism,
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

    def close(self) -> None:
        """Stop the background load and remove the cgroup (workers must have exited already)."""
        if self.background is not None:
            self.background.stop()
            self.background = None
        if self.cap is not None:
            self.cap.close()
            self.cap = None
