"""Measurements of a process's memory, and fresh processes to measure in: the one place for both.

The estimator's calibration, the experiment harness's workers and the benchmarks all read memory here,
so "peak RSS" means one thing everywhere: the kernel's high-water mark (``VmHWM``) where Linux keeps
one, a sampler elsewhere; and "MB" is one unit everywhere, :data:`MIB` bytes. A measurement that
must not inherit another configuration's heap, threads or compiled kernels runs in a fresh
interpreter through :func:`run_probe`.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from ..units import MIB


def peak_rss_mb() -> float:
    """This process's peak resident set so far, as the kernel counts it.

    Linux: ``VmHWM``, which belongs to this process image. ``ru_maxrss`` is only the fallback (macOS):
    Linux carries it across ``execve``, so a probe started by a large parent would report the parent's
    size instead of its own.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB


def reset_peak_rss() -> str:
    """Reset the kernel's high-water mark to the current RSS (``echo 5 > /proc/self/clear_refs``), so
    that :func:`peak_rss_mb` from here on is the peak of what follows, not of the model's load. Returns
    the mechanism a row records: ``vmhwm_clear_refs``, or ``ru_maxrss`` where the mark cannot be
    reset (macOS: the peak then includes everything before)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return "ru_maxrss"
    return "vmhwm_clear_refs"


def run_probe(args: list[str], request: Any = None, *, timeout_s: float = 1800, what: str = "probe") -> Any:
    """Run ``python *args`` in a fresh interpreter, ``request`` as JSON on its stdin, and return its
    last line of output parsed as JSON.

    Why a fresh process: a peak or a start-up measured after other configurations ran in the same
    process carries their heap, arenas and compiled kernels. A failure raises ``RuntimeError`` with the
    end of the probe's stderr (``what`` names it), not a JSON error about an empty line.
    """
    done = subprocess.run(
        [sys.executable, *args],
        input=None if request is None else json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(lines[-1])


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / MIB


def anon_rss_mb() -> float:
    """This process's anonymous resident memory (Linux ``RssAnon``; RSS elsewhere): what a memory
    cgroup is sure to charge to it. Shared libraries' pages count in RSS but are charged to whichever
    cgroup first read them, so RSS alone makes a cgroup's other users look as if they moved."""
    status = Path("/proc/self/status")
    if status.exists():
        match = re.search(r"^RssAnon:\s+(\d+) kB", status.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) / 1024
    return current_rss_mb()


class AnonPeak:
    """The peak of :func:`anon_rss_mb` while running, sampled every 5 ms by a thread (the kernel keeps
    no high-water mark of anonymous memory). For measuring a start-up, which is seconds long."""

    SAMPLE_S = 0.005

    def __init__(self) -> None:
        self.peak_mb = anon_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anon-peak", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.SAMPLE_S):
            self.peak_mb = max(self.peak_mb, anon_rss_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, anon_rss_mb())
        return self.peak_mb


class PeakMeter:
    """Peak RSS of the worker during one trial.

    On Linux the kernel keeps the high-water mark (VmHWM) and ``echo 5 > /proc/self/clear_refs`` resets
    it to the current RSS, so the peak is exact and free. Elsewhere (macOS) a thread samples the RSS
    every 5 ms, which can miss a spike shorter than that; the row says which (``peak_mem_mechanism``).
    """

    SAMPLE_S = 0.005

    def __init__(self) -> None:
        try:
            self.mechanism = reset_peak_rss()
            self._read_hwm()
        except ValueError:
            self.mechanism = "rss_sampling_5ms"
        if self.mechanism != "vmhwm_clear_refs":
            self.mechanism = "rss_sampling_5ms"
        self._peak = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    @staticmethod
    def _read_hwm() -> int:
        match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        if match is None:
            raise ValueError("no VmHWM in /proc/self/status")
        return int(match.group(1)) * 1024

    def start(self) -> None:
        if self.mechanism == "vmhwm_clear_refs":
            reset_peak_rss()
            return
        process = psutil.Process()
        self._peak = process.memory_info().rss
        self._stop.clear()

        def sample() -> None:
            while not self._stop.wait(self.SAMPLE_S):
                self._peak = max(self._peak, process.memory_info().rss)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def stop_mb(self) -> float:
        if self.mechanism == "vmhwm_clear_refs":
            return self._read_hwm() / MIB
        if self._sampler is None:
            raise RuntimeError("PeakMeter.stop_mb() before start()")
        self._stop.set()
        self._sampler.join()
        return self._peak / MIB


__all__ = [
    "MIB",
    "AnonPeak",
    "PeakMeter",
    "anon_rss_mb",
    "current_rss_mb",
    "peak_rss_mb",
    "reset_peak_rss",
    "run_probe",
]
