"""The project's one reader of this process's cgroups: its place in each hierarchy, and its memory cgroup.

Two consumers need ``/proc/self/cgroup``: detection, for the memory cap and working set the runtime
budgets against, and the harness's simulated devices (:mod:`experiments.limits`), which create their
capped cgroups as children of ours. One parser means both agree on which hierarchy holds the process
(a hybrid v1/v2 host lists both) and on what a line means.

Every root is injectable, so a captured container (a Docker v1 memory cgroup, a Kubernetes pod on v2)
is read by exactly the code that reads the live one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ...units import MIB
from .files import read_text

#: cgroup v1 reports "no limit" as LONG_MAX rounded down to a page (9223372036854771712); anything this
#: large is no real limit on any machine.
_UNLIMITED_BYTES = 1 << 62


@dataclass(frozen=True)
class CgroupPaths:
    """This process's path in each cgroup hierarchy, as ``/proc/self/cgroup`` lists them.

    The paths are relative to each hierarchy's mount (and to the cgroup namespace's root: inside a
    container they may read "/" or "/.." entries).
    """

    #: the path in the v2 (unified) hierarchy: its "0::" line
    v2: str | None
    #: the path in each v1 hierarchy, by controller ("memory", "cpu", "name=systemd", ...)
    v1: Mapping[str, str]


def read_cgroup_paths(proc_root: Path = Path("/proc")) -> CgroupPaths | None:
    """Parse ``<proc_root>/self/cgroup`` ("hierarchy-id:controllers:path" per line); ``None`` when it
    cannot be read (not Linux, or a procfs without cgroups).

    The kernel lists each hierarchy once, so no controller has two paths.
    """
    text = read_text(proc_root / "self" / "cgroup")
    if text is None:
        return None
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        else:
            v1.update((controller, path) for controller in controllers.split(",") if controller)
    return CgroupPaths(v2, v1)


def own_cgroup(controller: str | None, *, proc_root: Path = Path("/proc")) -> str | None:
    """This process's cgroup path: in the v1 hierarchy holding ``controller``, or in v2 for ``None``;
    ``None`` when there is no such hierarchy."""
    paths = read_cgroup_paths(proc_root)
    if paths is None:
        return None
    return paths.v2 if controller is None else paths.v1.get(controller)


@dataclass(frozen=True)
class CgroupMemory:
    """The memory cgroup the process runs in, read from the kernel's own files.

    ``usage_mb`` is the *working set* (usage minus inactive page cache), as the kubelet computes it:
    the kernel reclaims inactive file pages before it OOM-kills, so counting them would refuse work that
    fits.
    """

    version: int | None
    path: str | None
    limit_mb: float | None
    usage_mb: float | None
    #: the cgroup's directory (where a child cgroup would be created)
    directory: Path | None = None

    @property
    def available_mb(self) -> float | None:
        """Memory left under the cap, or None when the cgroup sets no cap."""
        if self.limit_mb is None:
            return None
        return max(0.0, self.limit_mb - (self.usage_mb or 0.0))


def _cgroup_value_mb(path: Path) -> float | None:
    text = read_text(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED_BYTES else value / MIB


def _inactive_file_mb(stat_path: Path, keys: tuple[str, ...]) -> float:
    text = read_text(stat_path) or ""
    stats = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    for key in keys:
        if key in stats:
            return int(stats[key]) / MIB
    return 0.0


def _cgroup_dir(base: Path, cgroup_path: str) -> Path:
    """The cgroup's directory under its mount; a path that does not resolve there (another cgroup
    namespace, "/.." entries) means the mount itself is our cgroup."""
    rel = cgroup_path.strip().lstrip("/")
    candidate = base / rel if rel and ".." not in rel.split("/") else base
    return candidate if candidate.is_dir() else base


def _hierarchical_limit_mb(base: Path, directory: Path, limit_file: str) -> float | None:
    """The tightest limit on the way from ``directory`` up to the mount: a parent's cap binds its
    children even when their own file says "max"."""
    limits: list[float] = []
    current = directory
    while True:
        limit = _cgroup_value_mb(current / limit_file)
        if limit is not None:
            limits.append(limit)
        if current == base or base not in current.parents:
            break
        current = current.parent
    return min(limits) if limits else None


def read_cgroup_memory(*, proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> CgroupMemory:
    """Read the memory cgroup of the calling process (v1 or v2) from ``<proc_root>/self/cgroup``.

    The memory controller lives on exactly one hierarchy: a v1 ``memory`` line wins when its mount
    exists (hybrid hosts like this project's VMs list a v2 ``0::`` line too, without memory in it).
    """
    paths = read_cgroup_paths(proc_root)
    if paths is None:
        return CgroupMemory(None, None, None, None)
    v1_path = paths.v1.get("memory")
    v2_path = paths.v2

    if v1_path is not None and (cgroup_root / "memory").is_dir():
        base = cgroup_root / "memory"
        directory = _cgroup_dir(base, v1_path)
        usage = _cgroup_value_mb(directory / "memory.usage_in_bytes")
        if usage is not None:
            inactive = _inactive_file_mb(directory / "memory.stat", ("total_inactive_file", "inactive_file"))
            usage = max(0.0, usage - inactive)
        limit = _hierarchical_limit_mb(base, directory, "memory.limit_in_bytes")
        return CgroupMemory(1, v1_path, limit, usage, directory)

    if v2_path is not None:
        for base in (cgroup_root, cgroup_root / "unified"):
            controllers = (read_text(base / "cgroup.controllers") or "").split()
            if "memory" not in controllers:
                continue
            directory = _cgroup_dir(base, v2_path)
            usage = _cgroup_value_mb(directory / "memory.current")
            if usage is not None:
                usage = max(0.0, usage - _inactive_file_mb(directory / "memory.stat", ("inactive_file",)))
            limit = _hierarchical_limit_mb(base, directory, "memory.max")
            return CgroupMemory(2, v2_path, limit, usage, directory)

    return CgroupMemory(None, None, None, None)


__all__ = ["CgroupMemory", "CgroupPaths", "own_cgroup", "read_cgroup_memory", "read_cgroup_paths"]
