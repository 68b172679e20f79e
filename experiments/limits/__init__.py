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

Workers and background apps import this package before they confine themselves, so none of its modules
imports ``adaptive_tts``, psutil or torch at module level (the few uses are inside functions).

* :mod:`.cgroups`: memory caps (cgroup v2, v1, ``RLIMIT_AS``), OOM-kill counters, and a process's
  confinement (:class:`Confinement`, :func:`confine_current_process`);
* :mod:`.cpus`: the host's CPU set and the cpulist format;
* :mod:`.background`: background apps, static or dynamic memory hogs started as subprocesses;
* :mod:`.cpuload`: busy background processes in the device's CPU set, spinning only while a trial runs;
* :mod:`.device`: :class:`DeviceSpec` and the live :class:`Device`.
"""

from experiments.limits.background import BackgroundLoad
from experiments.limits.cgroups import (
    CGROUP_PREFIX,
    MECHANISMS,
    MIB,
    Confinement,
    MemoryCap,
    confine_current_process,
    create_memory_cap,
    global_oom_kills,
)
from experiments.limits.cgroups import _mount_point as _mount_point  # private; tests/conftest.py imports it
from experiments.limits.cpuload import CPULoad
from experiments.limits.cpus import format_cpus, host_cpus
from experiments.limits.device import Device, DeviceSpec, host_memory_mb

__all__ = [
    "CGROUP_PREFIX",
    "MECHANISMS",
    "MIB",
    "BackgroundLoad",
    "CPULoad",
    "Confinement",
    "Device",
    "DeviceSpec",
    "MemoryCap",
    "confine_current_process",
    "create_memory_cap",
    "format_cpus",
    "global_oom_kills",
    "host_cpus",
    "host_memory_mb",
]
