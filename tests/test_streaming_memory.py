"""Streaming keeps memory flat: peak RSS of a 1000-character sentence vs a 100-character one.

The kernel's high-water mark (VmHWM) is reset before each synthesis (``/proc/self/clear_refs``), and both
texts run in the same warmed-up process, short one first: from one process to the next the allocator
places a worker thread's temporaries differently and a fresh process's peak varies by up to ~10 %,
which would drown the effect measured here. A one-pass decode of the long sentence peaks at ~3x the
short one (see ``experiments.regression``), so the bound still catches any loss of streaming. The
figure is the median of five processes.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from texts import LONG_UNPUNCTUATED

PROBE = """
import sys
from pathlib import Path
from adaptive_tts.runtime.process import peak_rss_mb
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
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        input=f"{short}\n{long}",
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=Path(__file__).parent,
    )
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


KERNEL_CACHE_PROBE = """
import json, psutil, torch
from adaptive_tts.heap import release_free_memory
from adaptive_tts.voice.engine import Engine
engine = Engine(num_threads=2)
z = torch.randn(1, engine.model.config.hidden_channels, 320)

def growth_mb(lengths):
    release_free_memory()
    before = psutil.Process().memory_info().rss
    for frames in lengths:
        engine.model.decode(z[:, :, :frames], padded_to=engine._decode_length(frames))
    release_free_memory()
    return (psutil.Process().memory_info().rss - before) / 2**20

first, then = range(101, 321, 5), range(103, 320, 5)  # 44 window lengths each, none in both
with torch.inference_mode():
    engine.model.decode(z[:, :, :100], padded_to=engine._decode_length(100))
    print(json.dumps({
        "compute": engine.compute,
        "padded": len({engine._decode_length(f) for f in first}),
        "first_mb": growth_mb(first),
        "then_mb": growth_mb(then),
    }))
"""


def test_compiled_kernels_do_not_grow_with_every_new_length():
    """oneDNN compiles and caches kernels per input shape. The engine pads decoder windows to a few
    lengths, so meeting ever new sentence lengths (a service) does not grow the process: once the
    padded lengths are compiled, 44 lengths never seen before add nothing. What the padded lengths
    cost depends on the kernels: measured over the first 44 lengths (8 padded), fp32 +85-93 MB (~11 MB
    a length; unpadded +273 MB with the engine's cache bound and +441 MB with oneDNN's default one),
    bf16 on an AMX Xeon +352 MB (~44 MB a length: its kernels hold weights reordered per shape)."""
    out = subprocess.run(
        [sys.executable, "-c", KERNEL_CACHE_PROBE], capture_output=True, text=True, timeout=300, check=True
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"RSS growth over decoder window lengths: {probe}")
    assert probe["then_mb"] < 20  # new lengths, known padded sizes: no new kernels
    per_length_mb = 150 / 8 if probe["compute"] == "fp32" else 60
    assert probe["first_mb"] < per_length_mb * probe["padded"]
