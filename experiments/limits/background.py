"""Background apps of a simulated device: a subprocess holding resident memory in the device's cgroup."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass, field

from experiments.limits.cgroups import Confinement

logger = logging.getLogger(__name__)

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
