"""Busy background processes on a simulated device's CPUs: the browser and the editor beside the voice.

``workload.background_cpu = N`` starts N processes that each spin one core at 100 % in the device's CPU
set, as N busy apps would. They are started once per device and held stopped (``SIGSTOP``) except while
one of that device's trials runs (:meth:`CPULoad.running`): an interleaved sweep keeps the devices of all
its conditions open at once, and one condition's load must not land on another condition's trials.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from experiments.limits.cgroups import Confinement

logger = logging.getLogger(__name__)

_SPIN_CODE = """
import ctypes, sys
from experiments.limits import Confinement, confine_current_process
confine_current_process(Confinement.from_json(sys.argv[1]))
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: never outlive the driver
print("ready", flush=True)
while True:
    pass
"""


@dataclass
class CPULoad:
    """``count`` busy processes confined like the device's workers (its CPU set)."""

    count: int
    confinement: Confinement
    processes: list[subprocess.Popen[str]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(
                f"workload.background_cpu must be a whole number of busy processes >= 0, got {self.count!r}"
            )

    def start(self) -> None:
        """Start the processes, each stopped as soon as it has confined itself."""
        for _ in range(self.count):
            process = subprocess.Popen(
                [sys.executable, "-c", _SPIN_CODE, self.confinement.to_json()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,  # Ctrl-C reaches the driver only; it stops the load itself
            )
            self.processes.append(process)
            if process.stdout.readline().strip() != "ready":
                self.stop()
                raise RuntimeError(f"a busy background process failed to start (exit {process.wait(timeout=5)})")
            os.kill(process.pid, signal.SIGSTOP)
        if self.count:
            logger.info("background CPU load: %d busy process(es), held until a trial runs", self.count)

    def _signal(self, sig: signal.Signals) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, sig)

    @contextmanager
    def running(self) -> Iterator[None]:
        """The processes spin for the duration of the ``with`` block, and are stopped again after it."""
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"a busy background process exited ({process.returncode})")
        self._signal(signal.SIGCONT)
        try:
            yield
        finally:
            self._signal(signal.SIGSTOP)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.processes = []


__all__ = ["CPULoad"]
