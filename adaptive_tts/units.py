"""Units, defined once.

"MB" in this project — RSS, cgroup limits, budgets, weights, the audio cache, every column of the
result rows — is a mebibyte, :data:`MIB` bytes: the unit the kernel's memory counters and psutil's
byte counts divide into exactly. A weight size printed in 10^6 bytes beside an RSS in 2^20 would
disagree by 5 % for the same bytes.
"""

from __future__ import annotations

#: Bytes in the project's megabyte.
MIB = 1024 * 1024


def mib(n_bytes: float) -> float:
    """``n_bytes`` in the project's MB."""
    return n_bytes / MIB


__all__ = ["MIB", "mib"]
