"""Shared fixtures: the real voice, loaded once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine():
    from adaptive_tts.voice.engine import Engine

    # fp32: the parity and exactness tests compare against onnxruntime and against other decodes at
    # 1e-3 and 1e-4, bounds set for fp32 arithmetic; the bf16 default is judged in test_compute.py
    return Engine(compute="fp32")


@pytest.fixture(scope="session")
def reference():
    from adaptive_tts.voice.reference import ReferenceEngine

    return ReferenceEngine()
