"""Streaming keeps memory flat: peak RSS of a 1000-character sentence vs a 100-character one.

Each measurement is a fresh process (peak RSS is per process), so the numbers are the kernel's, not
an estimate. The allocator makes a single process's peak vary by a few percent from run to run (which
arena a worker thread's temporaries land in), so each side is the median of five processes.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from texts import LONG_UNPUNCTUATED

# VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, so a child of a large pytest process
# would report the parent's size.
PROBE = """
import sys
from adaptive_tts.runtime.estimator import peak_rss_mb
from adaptive_tts.voice.engine import Engine
text = sys.stdin.read()
engine = Engine(num_threads=2)
for _ in engine.stream(text, chunk_length=256):
    pass
print(peak_rss_mb())
"""


def peak_rss_mb(text: str, runs: int = 5) -> float:
    return statistics.median(_peak_rss_once(text) for _ in range(runs))


def _peak_rss_once(text: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE], input=text, capture_output=True, text=True,
                         timeout=300, check=True, cwd=Path(__file__).parent)
    return float(out.stdout.strip().splitlines()[-1])


def test_peak_rss_does_not_grow_with_utterance_length():
    short = LONG_UNPUNCTUATED[:100].rsplit(" ", 1)[0]
    long = LONG_UNPUNCTUATED[:1000]
    assert len(long) >= 990
    small, large = peak_rss_mb(short), peak_rss_mb(long)
    print(f"peak RSS: 100 chars {small:.0f} MB, 1000 chars {large:.0f} MB, ratio {large / small:.3f}")
    assert large <= 1.05 * small
