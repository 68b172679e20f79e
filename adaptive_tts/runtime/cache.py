"""AudioCache: an LRU of synthesized audio bounded in megabytes.

Repeated prompts (UI phrases, notifications) are common in on-device TTS, and a cache hit costs nothing;
but cached audio is memory the synthesis of the next request may need, so the bound is in MB and the
memory budget manager moves it at run time (:meth:`set_limit_mb`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    limit_mb: float
    hits: int
    misses: int

    def to_dict(self) -> dict:
        return {"entries": self.entries, "mb": round(self.bytes / MB, 3), "limit_mb": round(self.limit_mb, 1),
                "hits": self.hits, "misses": self.misses}


class AudioCache:
    """Thread-safe LRU of float32 waveforms keyed by text and voice settings."""

    def __init__(self, limit_mb: float) -> None:
        if limit_mb < 0:
            raise ValueError(f"cache limit must be >= 0 MB, got {limit_mb}")
        self._limit_bytes = int(limit_mb * MB)
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str, **settings: object) -> tuple:
        """A cache key: the text plus every setting that changes the audio."""
        return (text, *sorted(settings.items()))

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            audio = self._items.get(key)
            if audio is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return audio

    def put(self, key: Hashable, audio: np.ndarray) -> bool:
        """Store ``audio`` (read-only copy semantics: callers must not mutate it); False if too large."""
        size = audio.nbytes
        with self._lock:
            if size > self._limit_bytes:
                return False
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            audio.setflags(write=False)
            self._items[key] = audio
            self._bytes += size
            self._evict()
            return True

    def set_limit_mb(self, limit_mb: float) -> None:
        """Move the bound (the budget manager calls this as memory tightens or recovers)."""
        with self._lock:
            self._limit_bytes = int(max(0.0, limit_mb) * MB)
            evicted = self._evict()
        if evicted:
            logger.info("audio cache limit now %.0f MB: evicted %d entries", limit_mb, evicted)

    def clear(self) -> int:
        """Drop everything; returns the number of bytes freed."""
        with self._lock:
            freed = self._bytes
            self._items.clear()
            self._bytes = 0
            return freed

    @property
    def bytes(self) -> int:
        return self._bytes

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._items), self._bytes, self._limit_bytes / MB, self._hits, self._misses)

    def _evict(self) -> int:
        evicted = 0
        while self._bytes > self._limit_bytes and self._items:
            _, audio = self._items.popitem(last=False)
            self._bytes -= audio.nbytes
            evicted += 1
        return evicted
