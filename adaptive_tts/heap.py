"""The process heap (glibc's malloc): tuned by one explicit call, and trimmed on demand.

:func:`tune_heap` is called by whatever is about to run syntheses (the engine, the backend, a trial
worker before its room-to-start check), as early as it can: glibc fixes the arena limit the first time
a second thread allocates, so a worker that starts its memory watch before importing torch must tune
first. Elsewhere than glibc (macOS) everything here is a no-op.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

from .units import MIB

#: glibc ``mallopt`` parameters (malloc.h) and the values set here: blocks below 32 MB (a
#: decoder chunk's activations are 2-10 MB each) come from the heap rather than fresh ``mmap`` s, and
#: up to 128 MB of freed heap stays mapped between chunks instead of going back to the kernel at every
#: ``free``. glibc's own adaptive thresholds start at 128 kB and let a decoder window's blocks go back
#: and forth to the kernel, so every chunk page-faulted its activations in again: a 280-frame bf16
#: decoder window took 28-33 ms with the defaults and 22-23 ms with these (2 threads). Free memory is
#: still returned, by ``release_free_memory`` (every few chunks of a decoder, and when the backend goes idle).
#: Setting only one of the two disables glibc's adaptation of the other: it is both or neither.
#:
#: ``M_ARENA_MAX``: glibc gives each new thread that allocates under contention a heap (arena) of its
#: own, up to 8 per core, and never frees one. A server or trial worker runs every request on a thread
#: of its own, so over a day of requests the process gathered many arenas, each keeping its own
#: fragments that ``malloc_trim`` cannot return: 12 trials of 1, 4 and 8 requests at once took a trial
#: worker's anonymous RSS after trimming from 200 to 227 MB with glibc's default, and to 205 MB with two
#: arenas (this VM, INT8). Two suffice: tensors of 32 MB or more bypass the heaps, and the compute lanes
#: spend their time in kernels, not in ``malloc``.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MALLOC_TRIM_THRESHOLD = 128 * MIB
MALLOC_MMAP_THRESHOLD = 32 * MIB
MALLOC_ARENAS = 2


#: ``malloc_trim(pad)``: 1 if it gave memory back, else 0; ``mallopt(param, value)``: 1 on success, else 0.
_MallocTrim = Callable[[int], int]
_Mallopt = Callable[[int, int], int]


def _libc_malloc() -> tuple[_MallocTrim, _Mallopt] | None:
    """glibc's ``malloc_trim`` and ``mallopt``, typed, if this process has them (Linux/glibc)."""
    try:
        libc = ctypes.CDLL(None)
        trim, mallopt = libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return trim, mallopt


_LIBC = _libc_malloc()
_tuned = False


def tune_heap() -> bool:
    """Set the thresholds and the arena cap above, once per process, unless the environment sets glibc's
    own (``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_ARENA_MAX``). Returns whether
    this process has glibc's malloc to tune."""
    global _tuned
    if _LIBC is None:
        return False
    if not _tuned:
        mallopt = _LIBC[1]
        if not any(name in os.environ for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
            mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
            mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
        if "MALLOC_ARENA_MAX" not in os.environ:
            mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        _tuned = True
    return True


def release_free_memory() -> None:
    """Hand the decoder's freed chunk memory back to the OS.

    glibc keeps freed blocks in its heaps and, with several threads allocating tens of MB per chunk,
    the heaps fragment: RSS crept up ~2 MB a chunk although nothing was live. ``malloc_trim`` releases
    the free pages, but the next chunk then faults them back in: trimming after every chunk cost 42 %
    of synthesis time, so the engine calls it every few chunks (``TRIM_EVERY_CHUNKS``).
    """
    if _LIBC is not None:
        _LIBC[0](0)


__all__ = ["release_free_memory", "tune_heap"]
