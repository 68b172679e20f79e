"""Streaming keeps memory flat: peak RSS of a 1000-character sentence vs a 100-character one.

The kernel's high-water mark (VmHWM) is reset before each synthesis (``/proc/self/clear_refs``), and both
texts run in the same warmed-up process, short one first: from one process to the next the allocator
places a worker thread's temporaries differently and a fresh process's peak varies by up to ~10 %,
which would drown the effect measured here. A one-pass decode of the long sentence peaks at ~3x the
short one (see ``experiments.regression``), so the bound still catches any loss of streaming. The
figure is the median of five processes.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from texts import LONG_UNPUNCTUATED

PROBE = """
import sys
from pathlib import Path
from adaptive_tts.runtime.estimator import peak_rss_mb
from adaptive_tts.voice.engine import Engine
short, long = sys.stdin.read().split("\\n", 1)
engine = Engine(num_threads=2)
for _ in engine.stream("Warming up.", chunk_length=256):
    pass
peaks = []
for text in (short, long):
    Path("/proc/self/clear_refs").write_text("5")
    for _ in engine.stream(text, chunk_length=256):
        pass
    peaks.append(peak_rss_mb())
print(*peaks)
"""


def peaks_mb(short: str, long: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", PROBE], input=f"{short}\n{long}", capture_output=True,
                         text=True, timeout=300, check=True, cwd=Path(__file__).parent)
    small, large = out.stdout.strip().splitlines()[-1].split()
    return float(small), float(large)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's clear_refs to reset VmHWM")
def test_peak_rss_does_not_grow_with_utterance_length():
    short = LONG_UNPUNCTUATED[:100].rsplit(" ", 1)[0]
    long = LONG_UNPUNCTUATED[:1000]
    assert len(long) >= 990 and "\n" not in long
    runs = [peaks_mb(short, long) for _ in range(5)]
    ratio = statistics.median(large / small for small, large in runs)
    print(f"peak RSS (short, long) per process: {runs}; median ratio {ratio:.3f}")
    assert ratio <= 1.05
