"""Shared fixtures: the real voice, loaded once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine():
    from adaptive_tts.voice.engine import Engine

    return Engine()


@pytest.fixture(scope="session")
def reference():
    from adaptive_tts.voice.reference import ReferenceEngine

    return ReferenceEngine()
