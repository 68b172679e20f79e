"""CPU contention: how many other tasks compete for this process's CPUs right now, and how many compute
threads a synthesis step should use because of it.

Why: every parallel region of a convolution ends in a barrier, so a step runs at the pace of its
slowest thread. When a busy process shares a core with one of our threads, the scheduler preempts that
thread for whole timeslices while the others wait at the barrier, and a step's time becomes the sum of
those waits: with 2 threads on 2 cores (``python -m experiments.bench_contention``, 300 characters, an
AMX Xeon), involuntary context switches per synthesis went from 95 quiet to 3672-7998 beside busy
processes, and at four busy processes the fixed 2 threads took 4.21 s where adapted ones took 3.20 s.
With only as many threads as there are cores nobody else wants,
no thread waits for a preempted sibling; the one that shares a core still gets its fair share of it.

What is read, in order of preference:

* Linux: the number of runnable tasks right now (the 4th field of ``/proc/loadavg``, which counts
  every CPU's run queue), less this process's own runnable threads (``/proc/self/task/*/stat``), capped
  by how many CPUs other tasks kept busy over the last moment (busy CPU time in ``/proc/stat`` less this
  process's own CPU time, over at least :data:`BUSY_SPAN_S`). The CPU pressure
  (``/proc/pressure/cpu``, ``some avg10``) and steal time are reported beside it, not decided on: both
  are averages over seconds, too slow for a decoder chunk.
* elsewhere (macOS): the 1-minute load average less this process's threads, a coarse stand-in.

Why the cap: in an idle trial worker (Linux 6.18) the run queue held one task more than all the
runnable threads ``/proc`` showed, in most steps' readings, and 28 % of the affinity ablation's trials
ran some step on one thread of two (+5.7 % in RTF against the same runtime without the feature). A
step's reading comes right after this process's threads handed work over and blocked, and the count is
what a scheduler that keeps a sleeping task queued for a while gives (Linux 6.12's EEVDF dequeues a
task that sleeps with negative lag only later; ``/proc`` shows it sleeping). CPU time is not fooled by
it: a queued sleeper spends none, a busy app its share.

A reading is instantaneous: a transient task (a kernel worker, a monitor thread) shows up in one
reading and not the next, and one reading in 20-40 misses a busy process (the run queue read a
moment before it was counted). So :class:`ContentionWatch` decides on the median count of its last three
readings, which passes over a single one either way, and a busy app runnable in all of them costs a
thread by the second. A request's first step decides on readings of its own, :data:`CONFIRM_GAP_S`
apart (:meth:`ContentionWatch.choose`): its first reading nearly always holds the client that just
sent the request (200 requests over a pipe to a quiet process: the requester was runnable in 195
first readings, and in 0-3 readings taken 0.5-1 ms later), and the readings before the request
describe the machine before it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Readings a decision takes the median count of (one per synthesis step).
WINDOW = 3
#: Readings older than this no longer count (seconds): after a pause, decide on what is there now.
MAX_AGE_S = 2.0
#: Seconds between the readings a step takes when it has fewer than :data:`WINDOW` recent ones (see
#: the module's docstring): a client blocks on its answer within microseconds of sending a request; a
#: busy app stays.
CONFIRM_GAP_S = 0.001
#: Seconds of CPU time accounting the busy-CPU cap is taken over, at least: ``/proc/stat`` counts in
#: ticks of 10 ms, so over 0.1 s on 2 CPUs a tick is 0.05 of a CPU.
BUSY_SPAN_S = 0.1
#: Seconds the busy-CPU cap may look back at most: a request after a longer pause counts the run queue
#: alone. Why this short: over a pause the CPU time mixes the pause in, and a load that started during
#: it reads as a fraction of a CPU. With 10 s, the first request after a busy process appeared ran its
#: first steps on both threads beside it (``bench_contention``, opening round at 1 busy process: 7.5 s
#: against 3.2-3.5 s for the rounds after; 5.3 s with 1 s; the rest: see :func:`busy_tasks` and
#: :meth:`ContentionWatch.choose`).
BUSY_MAX_AGE_S = 1.0
#: The part of a CPU, beyond whole ones, that others' CPU time must reach to count as a task (see
#: :func:`busy_tasks`).
BUSY_PART_TASK = 0.25


@dataclass(frozen=True)
class ContentionReading:
    """One look at the CPUs: ``runnable_others`` tasks besides this process's own want a CPU now
    (None where unreadable), of the ``cpus`` this process may run on (see the module's docstring for
    how it is counted)."""

    runnable_others: float | None
    cpus: int
    source: str
    pressure_some_avg10: float | None = None
    steal_percent: float | None = None
    load_1m: float | None = None
    #: the two counts ``runnable_others`` is the smaller of (Linux): other tasks in the run queue now,
    #: and CPUs other tasks kept busy over the last :data:`BUSY_SPAN_S` or more (None without that much
    #: accounting, or none younger than :data:`BUSY_MAX_AGE_S`, behind it)
    queued_others: float | None = None
    busy_others: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op threads a step runs with, out of the ``planned`` ones, and why."""

    threads: int
    planned: int
    reason: str
    reading: ContentionReading | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def thread_ladder(planned: int) -> list[int]:
    """The thread counts a step may run with out of ``planned``, fewest first: ``planned`` halved
    until one (8: 1, 2, 4, 8; 6: 1, 3, 6).

    Why a ladder and not every count: oneDNN compiles its kernels per thread count, and the first step
    at a count the warm-up had not compiled paid for it (300 characters beside 2 busy processes, bf16:
    4.0-4.2 s at a first 1-thread request against 1.6 s after). A few rungs can each be compiled at
    start-up (:meth:`~adaptive_tts.backend.SmartAdaptiveBackend.warm_up_to`); every count from 1 to 10
    could not."""
    if planned < 1:
        raise ValueError(f"planned threads must be >= 1, got {planned}")
    rungs = {1}
    while planned > 1:
        rungs.add(planned)
        planned //= 2
    return sorted(rungs)


def threads_for(planned: int, cpus: int, runnable_others: float | None) -> int:
    """Threads for a step: the largest rung of :func:`thread_ladder` no more than the CPUs other tasks
    leave free, at least one. Unknown contention keeps the plan."""
    if planned < 1 or cpus < 1:
        raise ValueError(f"planned threads and cpus must be >= 1, got {planned} and {cpus}")
    if runnable_others is None:
        return planned
    free = math.floor(cpus - runnable_others + 0.5)  # 0.4 of a task (a load average) is not a task
    return max(rung for rung in thread_ladder(planned) if rung <= max(1, free))


# -- parsing (pure: fed captured files in tests) ---------------------------------------------------------


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):  # missing, no permission, PSI disabled (EOPNOTSUPP)
        return None


def parse_loadavg(text: str) -> tuple[float, int]:
    """The 1-minute load and the runnable count of ``/proc/loadavg`` ("0.52 0.40 0.31 3/412 9876")."""
    fields = text.split()
    if len(fields) < 4 or "/" not in fields[3]:
        raise ValueError(f"not /proc/loadavg: {text!r}")
    return float(fields[0]), int(fields[3].split("/")[0])


def read_cpu_pressure_some_avg10(proc: Path = Path("/proc")) -> float | None:
    """``some avg10=`` of ``<proc>/pressure/cpu`` (percent), None without PSI."""
    text = _text(Path(proc) / "pressure" / "cpu")
    if not text:
        return None
    for line in text.splitlines():
        kind, *fields = line.split() or [""]
        if kind == "some":
            values = dict(field.split("=", 1) for field in fields if "=" in field)
            try:
                return float(values["avg10"])
            except (KeyError, ValueError):
                return None
    return None


@dataclass(frozen=True)
class CpuTimes:
    """The aggregate ``cpu`` line of ``/proc/stat``, in ticks: steal, idle (with iowait) and the total
    of all CPU time."""

    steal: int
    total: int
    idle: int

    @property
    def busy(self) -> int:
        """Ticks some task (or the hypervisor: steal) held a CPU."""
        return self.total - self.idle


def read_cpu_times(proc: Path = Path("/proc")) -> CpuTimes | None:
    """``<proc>/stat``'s ``cpu`` line. The total is user + nice + system + idle + iowait + irq + softirq +
    steal; guest and guest_nice are already counted in user and nice, so they are not added again."""
    text = _text(Path(proc) / "stat")
    if not text:
        return None
    for line in text.splitlines():
        name, *fields = line.split() or [""]
        if name == "cpu":
            try:
                ticks = [int(f) for f in fields[:8]]
            except ValueError:
                return None
            if len(ticks) < 8:  # a kernel without steal accounting
                return None
            return CpuTimes(steal=ticks[7], total=sum(ticks), idle=ticks[3] + ticks[4])
    return None


def steal_share(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """Steal as a percentage of all CPU time between two reads; None without both, or without a tick
    between them (or with counters that went backwards, as some hypervisors' steal has)."""
    if before is None or after is None:
        return None
    steal, total = after.steal - before.steal, after.total - before.total
    if total <= 0 or steal < 0:
        return None
    return 100.0 * steal / total


def busy_others(before: CpuTimes, after: CpuTimes, own_cpu_s: float, wall_s: float, tick_hz: float) -> float | None:
    """CPUs that tasks other than this process kept busy between two ``/proc/stat`` reads ``wall_s``
    apart, in which this process spent ``own_cpu_s`` of CPU time; None without time between them or
    with counters that went backwards."""
    ticks = after.busy - before.busy
    if wall_s <= 0 or ticks < 0 or after.total <= before.total:
        return None
    return max(0.0, (ticks / tick_hz - own_cpu_s) / wall_s)


def busy_tasks(busy: float) -> int:
    """Tasks that ``busy`` CPUs of others' CPU time stand for: whole CPUs, and one more for a part of at
    least :data:`BUSY_PART_TASK` of a CPU.

    Why not ``busy`` as it is: a load that started within the accounting span reads as the part of the
    span it ran. A busy process resumed ~60 ms before a request read 0.42 of a CPU over 145 ms, too
    little to cost a thread, and the request's first step ran on both threads beside it: 4 s for a step
    that takes 0.1 s (``bench_contention``, a step log of its opening round at 1 busy process).
    A queued task that spends no CPU time, the case the cap is for, reads below the part."""
    whole = math.floor(busy)
    return whole + (1 if busy - whole >= BUSY_PART_TASK else 0)


def task_state(stat: str) -> str:
    """The state letter of a ``/proc/<pid>/task/<tid>/stat`` line (after the parenthesised name, which
    may itself contain spaces and parentheses)."""
    return stat[stat.rindex(")") + 2]


def count_running(stats: Iterable[str]) -> int:
    """How many of the given task stat lines are running or runnable (state ``R``)."""
    return sum(1 for stat in stats if task_state(stat) == "R")


# -- reading ---------------------------------------------------------------------------------------------


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class CPUContention:
    """Reads :class:`ContentionReading` s from ``proc`` (Linux) or the load average elsewhere.

    ``proc`` is a directory laid out like ``/proc`` (a captured tree in tests); ``self_dir`` is this
    process's entry in it."""

    def __init__(
        self,
        proc: Path = Path("/proc"),
        *,
        self_dir: Path | None = None,
        cpus: Callable[[], int] = _usable_cpus,
        loadavg: Callable[[], tuple[float, float, float]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        own_cpu_s: Callable[[], float] = time.process_time,
    ) -> None:
        self.proc = proc
        self.self_dir = self_dir or proc / "self"
        self._cpus = cpus
        self._loadavg = loadavg or (os.getloadavg if hasattr(os, "getloadavg") else None)
        self._linux = (proc / "loadavg").is_file()
        self._clock = clock
        self._own_cpu_s = own_cpu_s
        self._tick_hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        #: (clock, /proc/stat, own CPU seconds) of recent readings: the newest is steal's starting point,
        #: the oldest the busy-CPU cap's
        self._accounts: deque[tuple[float, CpuTimes, float]] = deque()
        self._lock = threading.Lock()

    def _own_running(self) -> int:
        stats = []
        try:
            tasks = list((self.self_dir / "task").iterdir())
        except OSError:
            return 1  # at least the reading thread itself
        for task in tasks:
            try:
                stats.append((task / "stat").read_text())
            except OSError:  # the thread exited meanwhile
                continue
        return max(1, count_running(stats))

    def _cpu_accounts(self) -> tuple[float | None, float | None]:
        """Steal since the previous reading (%) and the CPUs other tasks kept busy since the newest
        earlier reading at least :data:`BUSY_SPAN_S` old, if it is no older than :data:`BUSY_MAX_AGE_S`;
        None for what the readings before cannot tell."""
        times, now, own = read_cpu_times(self.proc), self._clock(), self._own_cpu_s()
        with self._lock:
            if times is None:
                return None, None
            share = steal_share(self._accounts[-1][1] if self._accounts else None, times)
            while len(self._accounts) > 1 and now - self._accounts[1][0] >= BUSY_SPAN_S:
                self._accounts.popleft()  # the second oldest is old enough: the oldest is not needed
            age = now - self._accounts[0][0] if self._accounts else None
            start = self._accounts[0] if age is not None and BUSY_SPAN_S <= age <= BUSY_MAX_AGE_S else None
            self._accounts.append((now, times, own))
        busy = None if start is None else busy_others(start[1], times, own - start[2], now - start[0], self._tick_hz)
        return None if share is None else round(share, 1), None if busy is None else round(busy, 2)

    def read(self) -> ContentionReading:
        cpus = self._cpus()
        if self._linux:
            try:
                load_1m, running = parse_loadavg((self.proc / "loadavg").read_text())
            except (OSError, ValueError) as exc:
                logger.debug("no run queue reading: %s", exc)
                return ContentionReading(None, cpus, "unreadable")
            pressure = read_cpu_pressure_some_avg10(self.proc)
            queued = float(max(0, running - self._own_running()))
            steal, busy = self._cpu_accounts()
            if busy is None:
                return ContentionReading(queued, cpus, "run queue", pressure, steal, load_1m, queued)
            others = min(queued, float(busy_tasks(busy)))
            return ContentionReading(others, cpus, "run queue, CPU time", pressure, steal, load_1m, queued, busy)
        if self._loadavg is not None:
            average = self._loadavg()[0]
            others = max(0.0, average - threading.active_count())
            return ContentionReading(round(others, 2), cpus, "load average", load_1m=average)
        return ContentionReading(None, cpus, "unreadable")


def _median_others(readings: list[ContentionReading]) -> float | None:
    """The median readable count of other runnable tasks among ``readings`` (the lower of the middle
    two of an even number; None: none readable)."""
    counts = sorted(r.runnable_others for r in readings if r.runnable_others is not None)
    return counts[(len(counts) - 1) // 2] if counts else None


class ContentionWatch:
    """Chooses a step's thread count from the median contention of its last :data:`WINDOW` readings.

    Thread-safe: compute lanes ask from their own threads."""

    def __init__(
        self,
        contention: CPUContention | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.contention = contention or CPUContention()
        self._clock = clock
        self._sleep = sleep
        self._recent: deque[tuple[float, ContentionReading]] = deque(maxlen=WINDOW)
        self._lock = threading.Lock()
        self.last: ThreadChoice | None = None

    def choose(self, planned: int, *, first_step: bool = False) -> ThreadChoice:
        """The threads for the step about to run; the readings join the window.

        A request's ``first_step`` decides on readings of its own: :data:`WINDOW` of them,
        :data:`CONFIRM_GAP_S` apart. Why: the readings before a request describe the machine before
        it, and a busy app that started between two requests met the previous one's quiet readings
        (0.1 s old), which kept both threads beside it; so did one reading that missed the app, when
        the window's smallest count decided. Beside one busy process such a first step took 4 s
        instead of 0.1 s (``bench_contention``, 300 characters)."""
        return self._decide(planned, record=True, first_step=first_step)

    def preview(self, planned: int) -> ThreadChoice:
        """What :meth:`choose` would answer now, leaving the window as it is (a status poll must not
        stand in for a step's reading)."""
        return self._decide(planned, record=False)

    def _decide(self, planned: int, *, record: bool, first_step: bool = False) -> ThreadChoice:
        now = self._clock()
        with self._lock:
            fresh = [] if first_step else [r for t, r in self._recent if now - t <= MAX_AGE_S]
        readings = [self.contention.read()]
        # A window's worth to decide on: after a pause, or at a request's first step, the missing
        # readings are taken now, a moment apart.
        while len(fresh) + len(readings) < WINDOW:
            self._sleep(CONFIRM_GAP_S)
            readings.append(self.contention.read())
        reading = readings[-1]
        others = _median_others([*fresh, *readings][-WINDOW:])
        with self._lock:
            if record:
                self._recent.extend((now, r) for r in readings)
            threads = threads_for(planned, reading.cpus, others)
            if others is None:
                reason = f"contention unreadable ({reading.source}): the planned {planned} thread(s)"
            elif threads < planned:
                reason = (
                    f"{others:g} other runnable task(s) on {reading.cpus} CPU(s) ({reading.source}): "
                    f"{threads} of {planned} thread(s), so that no thread waits on one preempted"
                )
            else:
                reason = f"{others:g} other runnable task(s) on {reading.cpus} CPU(s): all {planned} planned thread(s)"
            choice = ThreadChoice(threads, planned, reason, reading)
            if not record:
                return choice
            previous, self.last = self.last, choice
        if previous is None or previous.threads != choice.threads:
            logger.info("compute threads: %s", reason)
        return choice


__all__ = [
    "BUSY_MAX_AGE_S",
    "BUSY_PART_TASK",
    "BUSY_SPAN_S",
    "CONFIRM_GAP_S",
    "MAX_AGE_S",
    "WINDOW",
    "CPUContention",
    "ContentionReading",
    "ContentionWatch",
    "ThreadChoice",
    "CpuTimes",
    "busy_others",
    "busy_tasks",
    "count_running",
    "parse_loadavg",
    "read_cpu_pressure_some_avg10",
    "read_cpu_times",
    "steal_share",
    "task_state",
    "thread_ladder",
    "threads_for",
]
