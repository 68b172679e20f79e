"""AudioCache: an LRU bounded in MB whose bound the budget manager moves at run time."""

from __future__ import annotations

import numpy as np
import pytest

from adaptive_tts.runtime.cache import MB, AudioCache


def audio(mb: float) -> np.ndarray:
    return np.zeros(int(mb * MB) // 4, np.float32)


def test_lru_eviction_by_megabytes():
    cache = AudioCache(limit_mb=3)
    for name in "abc":
        assert cache.put(name, audio(1))
    assert cache.get("a") is not None  # a is now most recent
    cache.put("d", audio(1))  # evicts b, the least recently used
    assert cache.get("b") is None
    assert {k for k in "acd" if cache.get(k) is not None} == {"a", "c", "d"}
    assert cache.bytes == 3 * (int(MB) // 4) * 4


def test_limit_moves_at_run_time_and_evicts():
    cache = AudioCache(limit_mb=4)
    for name in "abcd":
        cache.put(name, audio(1))
    cache.set_limit_mb(2)
    stats = cache.stats()
    assert stats.entries == 2 and stats.bytes <= 2 * MB
    assert cache.get("c") is not None and cache.get("a") is None


def test_stats_clear_and_oversized_entries():
    cache = AudioCache(limit_mb=1)
    assert not cache.put("big", audio(2))
    cache.put("x", audio(0.5))
    cache.get("x")
    cache.get("y")
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)
    assert cache.clear() == audio(0.5).nbytes
    assert cache.stats().entries == 0 and cache.bytes == 0


def test_cached_audio_is_read_only():
    cache = AudioCache(limit_mb=1)
    cache.put("k", audio(0.1))
    with pytest.raises(ValueError):
        cache.get("k")[0] = 1.0


def test_negative_limit_is_rejected():
    with pytest.raises(ValueError, match="cache limit"):
        AudioCache(limit_mb=-1)


def test_key_covers_every_setting():
    assert AudioCache.key("hi", seed=1, noise_scale=0.5) != AudioCache.key("hi", seed=2, noise_scale=0.5)
    assert AudioCache.key("hi", a=1, b=2) == AudioCache.key("hi", b=2, a=1)
