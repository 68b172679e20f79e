"""glibc's heap as the runtime tunes it: eight threads allocating at once share two arenas."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adaptive_tts.heap import MALLOC_ARENAS, tune_heap

# Eight threads each hold 2000 blocks of 4 kB (above pymalloc's limit: malloc's) at the same moment,
# then glibc prints one "Arena N:" block per arena to stderr.
PROGRAM = """
import ctypes, sys, threading
if sys.argv[1] == "tune":
    from adaptive_tts.heap import tune_heap
    tune_heap()
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    held = [bytearray(4096) for _ in range(2000)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    return sum(1 for line in run.stderr.splitlines() if line.startswith("Arena "))


@pytest.mark.skipif(not tune_heap(), reason="not glibc's malloc")
def test_tuned_threads_share_two_arenas_where_glibc_alone_gives_each_its_own():
    assert _arenas("tune") == MALLOC_ARENAS
    assert _arenas("plain") > MALLOC_ARENAS + 2  # the control: without the cap, glibc makes one per thread
