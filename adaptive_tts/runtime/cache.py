"""AudioCache: an LRU of synthesized audio bounded in megabytes of what it really costs.

Repeated prompts (UI phrases, notifications) are common in on-device TTS, and a cache hit costs nothing;
but cached audio is memory the synthesis of the next request may need, so the bound is in MB and the
memory budget manager moves it at run time (:meth:`set_limit_mb`).

Entries are 16-bit PCM — what every output format carries — in anonymous memory mappings of their own,
outside malloc's heaps. Why: float32 entries cost twice the memory for nothing a client receives, and
entries allocated by ``malloc`` landed in the heap arenas of whichever worker thread synthesized them,
among that thread's freed decoder buffers. There a dropped entry stayed resident until the next
``malloc_trim`` (a ``/cache/clear`` of 339 MB left RSS unchanged), and the heap could not shrink past
entries still live. A mapping of its own costs its pages, which is what an entry is charged, and an
entry evicted or cleared is unmapped: the OS gets its pages back at once.
"""

from __future__ import annotations

import logging
import mmap
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from ..audio import PCM16
from ..units import MIB, mib

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    limit_mb: float
    hits: int
    misses: int

    def to_dict(self) -> dict:
        return {
            "entries": self.entries,
            "mb": round(self.bytes / MIB, 3),
            "limit_mb": round(self.limit_mb, 1),
            "hits": self.hits,
            "misses": self.misses,
        }


def entry_cost(key: Hashable, samples: int) -> int:
    """Bytes an entry of ``samples`` PCM16 samples under ``key`` holds: its mapping's whole pages, plus
    the key (the text, and the settings beside it)."""
    pages = -(-max(1, samples * PCM16.itemsize) // mmap.PAGESIZE) * mmap.PAGESIZE
    parts = key if isinstance(key, tuple) else (key,)
    return pages + sys.getsizeof(key) + sum(sys.getsizeof(part) for part in parts)


class AudioCache:
    """Thread-safe LRU of 16-bit PCM audio keyed by text and voice settings."""

    def __init__(self, limit_mb: float) -> None:
        if limit_mb < 0:
            raise ValueError(f"cache limit must be >= 0 MB, got {limit_mb}")
        self._limit_bytes = int(limit_mb * MIB)
        self._items: OrderedDict[Hashable, tuple[np.ndarray, int]] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str, **settings: object) -> tuple:
        """A cache key: the text plus every setting that changes the audio."""
        return (text, *sorted(settings.items()))

    def get(self, key: Hashable) -> np.ndarray | None:
        """The PCM16 samples stored under ``key`` (read-only), or None."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return entry[0]

    def put(self, key: Hashable, pieces: Sequence[np.ndarray]) -> bool:
        """Store the PCM16 samples ``pieces`` (one array, or the chunks of one utterance in order) as one
        entry; False if it is larger than the limit, or the OS has no mapping to give."""
        arrays = [pieces] if isinstance(pieces, np.ndarray) else list(pieces)
        if any(a.dtype != PCM16 for a in arrays):
            raise TypeError(f"the audio cache stores {PCM16} PCM samples, got {[str(a.dtype) for a in arrays]}")
        samples = sum(len(a) for a in arrays)
        cost = entry_cost(key, samples)
        if cost > self._limit_bytes:  # a read without the lock: the limit only decides whether to try
            return False
        try:
            # private: a shared anonymous mapping would be counted as shared memory, not the process's own
            buffer = mmap.mmap(-1, max(1, samples * PCM16.itemsize), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as exc:  # out of address space or mappings (vm.max_map_count): just do not cache
            logger.warning("audio cache: no mapping for a %d-sample entry (%s); not cached", samples, exc)
            return False
        audio = np.frombuffer(buffer, PCM16, count=samples)
        if arrays:
            np.concatenate(arrays, out=audio)
        audio.setflags(write=False)
        with self._lock:
            if cost > self._limit_bytes:
                return False
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (audio, cost)
            self._bytes += cost
            self._evict()
            return True

    def set_limit_mb(self, limit_mb: float) -> None:
        """Move the bound (the budget manager calls this as memory tightens or recovers)."""
        with self._lock:
            self._limit_bytes = int(max(0.0, limit_mb) * MIB)
            evicted = self._evict()
        if evicted:
            logger.info("audio cache limit now %.0f MB: evicted %d entries", limit_mb, evicted)

    def clear(self) -> int:
        """Drop everything; returns the number of bytes freed. An entry's mapping is unmapped as soon as
        no response is still sending it."""
        with self._lock:
            freed = self._bytes
            self._items.clear()
            self._bytes = 0
            return freed

    @property
    def bytes(self) -> int:
        """What the entries cost: whole pages of PCM16 samples plus their keys."""
        return self._bytes

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._items), self._bytes, mib(self._limit_bytes), self._hits, self._misses)

    def _evict(self) -> int:
        evicted = 0
        while self._bytes > self._limit_bytes and self._items:
            _, (_, cost) = self._items.popitem(last=False)
            self._bytes -= cost
            evicted += 1
        return evicted
