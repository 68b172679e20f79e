"""Reading the kernel's pseudo-files (sysfs, procfs, cgroupfs) for detection.

Why a missing or unreadable file is ``None`` and not an error: on these filesystems absence *is* the
answer (no cpufreq driver, no memory controller, a container that hides ``/sys``), and a captured tree
holds only the files its machine had. Each caller decides what absence means for its own reading.
"""

from __future__ import annotations

from pathlib import Path


def read_text(path: Path) -> str | None:
    """The file's text, or ``None`` if it is missing or unreadable."""
    try:
        return path.read_text()
    except OSError:
        return None


def read_int(path: Path) -> int | None:
    """An integer sysfs or procfs file's value; ``None`` if it is missing or not an integer."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


__all__ = ["read_int", "read_text"]
