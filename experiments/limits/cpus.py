"""The CPUs of a simulated device: the host's CPU set and its kernel cpulist format."""

from __future__ import annotations

import itertools
import os


def host_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask, which a container or taskset narrows)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def format_cpus(cpus: list[int] | tuple[int, ...]) -> str:
    """The kernel's cpulist format ("0-3,6"), the ``cpus`` column."""
    ranges: list[str] = []
    for _, group in itertools.groupby(enumerate(sorted(cpus)), key=lambda item: item[1] - item[0]):
        ids = [cpu for _, cpu in group]
        ranges.append(str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}")
    return ",".join(ranges)
