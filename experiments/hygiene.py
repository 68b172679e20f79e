"""Benchmark hygiene: what the machine was doing while a trial ran, for its row.

A latency difference means something only on a quiet machine; these columns let a reader check that it
was. Each reader is a pure function of a ``/proc`` or ``/sys`` root (tests feed captured files) and
returns ``None`` where the file is missing or unreadable — nothing here may fail a trial:

* ``loadavg_1m`` — the 1-minute load average (``os.getloadavg``; ``<proc>/loadavg`` for another root);
* ``cpu_pressure_some_avg10`` — PSI: the share (%) of the last 10 s in which some runnable task waited
  for a CPU (``<proc>/pressure/cpu``, ``some avg10=``; kernels without PSI have no file);
* ``steal_percent`` — the hypervisor's steal time as a share (%) of all CPU time over the trial, from
  ``<proc>/stat``'s ``cpu`` line read before and after it (null if no tick passed);
* ``cpu_governor`` — cpu0's cpufreq scaling governor (``performance``, ``powersave``, ...);
* ``power_source`` — ``ac`` (a Mains supply online), ``battery`` (a system battery discharging and no
  mains online) or null (no supplies, or neither is certain), from ``<sys>/class/power_supply``; on
  macOS from ``pmset -g batt``.

Load and pressure are read at the trial's start (what the trial walked into; both are moving averages,
so they include the harness's own previous trials); steal covers the trial itself. macOS has the load
average and the power source; the rest is null there.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from adaptive_tts.runtime.contention import (  # the runtime reads them too, to adapt its threads
    CpuTimes,
    read_cpu_pressure_some_avg10,
    read_cpu_times,
    steal_share,
)

logger = logging.getLogger(__name__)

PROC = Path("/proc")
SYS = Path("/sys")
#: The row columns, in schema order.
COLUMNS = ("loadavg_1m", "cpu_pressure_some_avg10", "steal_percent", "cpu_governor", "power_source")

T = TypeVar("T")


def _quietly(read: Callable[[], T]) -> T | None:
    """``read()``, or None for anything it raises (a reader must never fail a trial)."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - unreadable is null, whatever the reason
        logger.debug("hygiene reader %s: %s", getattr(read, "__name__", read), exc)
        return None


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):  # missing, no permission, PSI disabled (EOPNOTSUPP)
        return None


# -- readers -----------------------------------------------------------------------------------------------


def read_loadavg_1m(proc: Path | None = None) -> float | None:
    """The 1-minute load average: ``os.getloadavg()`` (Linux, macOS), or ``<proc>/loadavg``'s first field."""
    if proc is None:
        try:
            return float(os.getloadavg()[0])
        except (OSError, AttributeError):  # not available on this platform
            return None
    text = _text(Path(proc) / "loadavg")
    try:
        return float(text.split()[0]) if text else None
    except ValueError:
        return None


def read_cpu_governor(sysfs: Path = SYS) -> str | None:
    """cpu0's cpufreq scaling governor; None without cpufreq (many VMs, macOS)."""
    return _text(Path(sysfs) / "devices" / "system" / "cpu" / "cpu0" / "cpufreq" / "scaling_governor") or None


def read_power_source(sysfs: Path = SYS) -> str | None:
    """``ac`` if a Mains supply is online; else ``battery`` if a system battery (not a peripheral's:
    ``scope`` ``Device``) is discharging; else None."""
    root = Path(sysfs) / "class" / "power_supply"
    try:
        supplies = sorted(root.iterdir())
    except OSError:
        return None
    mains_online = discharging = False
    for supply in supplies:
        kind = _text(supply / "type")
        if kind == "Mains" and _text(supply / "online") == "1":
            mains_online = True
        elif kind == "Battery" and _text(supply / "scope") != "Device":
            discharging = discharging or _text(supply / "status") == "Discharging"
    if mains_online:
        return "ac"
    return "battery" if discharging else None


def parse_pmset(text: str) -> str | None:
    """macOS ``pmset -g batt``'s first line: "Now drawing from 'AC Power'" or "... 'Battery Power'"."""
    if "'AC Power'" in text:
        return "ac"
    if "'Battery Power'" in text:
        return "battery"
    return None


def _pmset_power_source() -> str | None:
    try:
        done = subprocess.run(["pmset", "-g", "batt"], capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_pmset(done.stdout)


def power_source(sysfs: Path = SYS) -> str | None:
    """The power source on this platform (sysfs on Linux, pmset on macOS)."""
    if sys.platform == "darwin" and Path(sysfs) == SYS:
        return _pmset_power_source()
    return read_power_source(sysfs)


# -- around a trial ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineState:
    """The hygiene columns of one trial (None: not readable here)."""

    loadavg_1m: float | None = None
    cpu_pressure_some_avg10: float | None = None
    steal_percent: float | None = None
    cpu_governor: str | None = None
    power_source: str | None = None

    def columns(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Before:
    """What :func:`before` read at a trial's start; :func:`after` completes it."""

    state: MachineState
    cpu_times: CpuTimes | None
    proc: Path


def before(proc: Path = PROC, sysfs: Path = SYS) -> Before:
    """Read the machine at a trial's start (never raises)."""
    state = MachineState(
        loadavg_1m=_quietly(lambda: read_loadavg_1m(None if Path(proc) == PROC else proc)),
        cpu_pressure_some_avg10=_quietly(lambda: read_cpu_pressure_some_avg10(proc)),
        cpu_governor=_quietly(lambda: read_cpu_governor(sysfs)),
        power_source=_quietly(lambda: power_source(sysfs)),
    )
    return Before(state, _quietly(lambda: read_cpu_times(proc)), Path(proc))


def after(start: Before) -> MachineState:
    """The trial's :class:`MachineState`: ``start``'s reads with the steal share since then (never raises)."""
    steal = _quietly(lambda: steal_share(start.cpu_times, read_cpu_times(start.proc)))
    return MachineState(**{**start.state.columns(), "steal_percent": steal})


@contextmanager
def bracket(proc: Path = PROC, sysfs: Path = SYS) -> Iterator[dict[str, Any]]:
    """``with bracket() as columns: <trial>`` — ``columns`` holds the trial's hygiene columns on exit."""
    start = before(proc, sysfs)
    columns: dict[str, Any] = dict.fromkeys(COLUMNS)
    try:
        yield columns
    finally:
        columns.update(after(start).columns())
