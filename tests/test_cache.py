"""AudioCache: an LRU of PCM16 audio bounded in MB of what it really costs, whose bound the budget
manager moves at run time."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from adaptive_tts.audio import PCM16, from_pcm16, pcm16
from adaptive_tts.runtime.cache import AudioCache, entry_cost
from adaptive_tts.runtime.process import run_probe
from adaptive_tts.units import MIB


def audio(mb: float) -> np.ndarray:
    """PCM16 samples whose entry costs just under ``mb`` MB (one page is left for the key)."""
    return np.zeros((int(mb * MIB) - mmap.PAGESIZE) // 2, PCM16)


def test_lru_eviction_by_megabytes():
    cache = AudioCache(limit_mb=3)
    for name in "abc":
        assert cache.put(name, audio(1))
    assert cache.get("a") is not None  # a is now most recent
    cache.put("d", audio(1))  # evicts b, the least recently used
    assert cache.get("b") is None
    assert {k for k in "acd" if cache.get(k) is not None} == {"a", "c", "d"}
    assert cache.bytes == sum(entry_cost(k, len(audio(1))) for k in "acd")


def test_an_entry_costs_whole_pages_and_its_key():
    cache = AudioCache(limit_mb=1)
    key = AudioCache.key("Hello there.", seed=1)
    cache.put(key, np.zeros(1, PCM16))
    assert mmap.PAGESIZE + len("Hello there.") < cache.bytes == entry_cost(key, 1) < 2 * mmap.PAGESIZE
    assert entry_cost(key, mmap.PAGESIZE // 2 + 1) == entry_cost(key, 1) + mmap.PAGESIZE


def test_chunks_are_stored_as_one_pcm16_entry_in_order():
    cache = AudioCache(limit_mb=1)
    waveform = np.sin(np.linspace(0, 100, 5000, dtype=np.float32))
    chunks = [pcm16(waveform[:1000]), pcm16(waveform[1000:3500]), pcm16(waveform[3500:])]
    assert cache.put("k", chunks)
    stored = cache.get("k")
    assert stored.dtype == PCM16 and np.array_equal(stored, pcm16(waveform))
    assert np.array_equal(pcm16(from_pcm16(stored)), stored)  # a hit goes out as the same bytes


def test_float_audio_is_refused():
    with pytest.raises(TypeError, match="PCM"):
        AudioCache(limit_mb=1).put("k", np.zeros(10, np.float32))


def test_limit_moves_at_run_time_and_evicts():
    cache = AudioCache(limit_mb=4)
    for name in "abcd":
        cache.put(name, audio(1))
    cache.set_limit_mb(2)
    stats = cache.stats()
    assert stats.entries == 2 and stats.bytes <= 2 * MIB
    assert cache.get("c") is not None and cache.get("a") is None


def test_stats_clear_and_oversized_entries():
    cache = AudioCache(limit_mb=1)
    assert not cache.put("big", audio(2))
    cache.put("x", audio(0.5))
    cache.get("x")
    cache.get("y")
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)
    assert cache.clear() == entry_cost("x", len(audio(0.5)))
    assert cache.stats().entries == 0 and cache.bytes == 0


RESIDENCY_PROBE = """
import json
import numpy as np
import psutil
from adaptive_tts.audio import PCM16
from adaptive_tts.runtime.cache import AudioCache
from adaptive_tts.heap import tune_heap
tune_heap()  # the service's malloc thresholds, as in the service
process = psutil.Process()
cache = AudioCache(limit_mb=256)
rng = np.random.default_rng(0)
before = process.memory_info().rss
for i in range(300):  # 300 entries of 100-400 kB: ~75 MB
    cache.put(("text", i), rng.integers(-3000, 3000, int(rng.integers(50_000, 200_000)), dtype=PCM16))
filled = process.memory_info().rss
held = cache.bytes
freed = cache.clear()
print(json.dumps({"before": before, "filled": filled, "held": held, "freed": freed,
                  "after": process.memory_info().rss}))
"""


def test_what_the_cache_holds_is_resident_and_a_clear_gives_it_back_to_the_os():
    """Entries of a few hundred kB — what a sentence of speech is — in the cache show up in RSS as
    the cache counts them, and leave it on a clear with no help from the allocator (no ``malloc_trim``).
    Held by malloc under the engine's thresholds, the same entries stayed resident after a clear.

    Measured in a fresh interpreter: in a test process that has already freed hundreds of MB, the
    allocator hands the cache pages that are resident already, and RSS does not show what it holds."""
    m = run_probe(["-c", RESIDENCY_PROBE], what="cache residency probe")
    assert m["filled"] - m["before"] >= 0.9 * m["held"] > 60 * MIB
    assert m["freed"] == m["held"]
    assert m["filled"] - m["after"] >= 0.9 * m["freed"]


def test_cached_audio_is_read_only():
    cache = AudioCache(limit_mb=1)
    cache.put("k", audio(0.1))
    with pytest.raises(ValueError):
        cache.get("k")[0] = 1


def test_negative_limit_is_rejected():
    with pytest.raises(ValueError, match="cache limit"):
        AudioCache(limit_mb=-1)


def test_key_covers_every_setting():
    assert AudioCache.key("hi", seed=1, noise_scale=0.5) != AudioCache.key("hi", seed=2, noise_scale=0.5)
    assert AudioCache.key("hi", a=1, b=2) == AudioCache.key("hi", b=2, a=1)
