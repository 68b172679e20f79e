"""adaptive-tts: an adaptive on-device runtime for neural text-to-speech.

The speech model lives in :mod:`adaptive_tts.voice`; the seed's runtime features in
:mod:`adaptive_tts.runtime` (hardware profiles, memory budget, quantization, CPU affinity, estimation,
monitoring, cache); :class:`SmartAdaptiveBackend` composes them and returns a :class:`Synthesis` per
request; :mod:`adaptive_tts.server` is the HTTP service over it. Dependencies point one way::

    units, audio, heap  <-  voice  <-  runtime  <-  backend  <-  CLI, service, experiments

The names below are importable from the package itself (``from adaptive_tts import
SmartAdaptiveBackend``). They load on first use, so that importing a light module (``adaptive_tts.units``,
``adaptive_tts.runtime.process``) does not load torch and the voice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Exported name -> the module that defines it.
_EXPORTS = {
    "SmartAdaptiveBackend": "adaptive_tts.backend",
    "BackendOptions": "adaptive_tts.options",
    "SynthesisRefused": "adaptive_tts.synthesis",
    "Synthesis": "adaptive_tts.synthesis",
    "SynthesisResult": "adaptive_tts.synthesis",
    "SynthesisOptions": "adaptive_tts.voice.speech",
    "SpeechEngine": "adaptive_tts.voice.speech",
    "EngineCapabilities": "adaptive_tts.voice.speech",
    "Engine": "adaptive_tts.voice.engine",
    "load_engine": "adaptive_tts.voice",
    "MemoryBudgetManager": "adaptive_tts.runtime.budget",
    "QuantizationStrategy": "adaptive_tts.runtime.quantize",
    "quantize_": "adaptive_tts.runtime.quantize",
    "CPUAffinityManager": "adaptive_tts.runtime.affinity",
    "MemoryEstimator": "adaptive_tts.runtime.estimator",
    "CalibrationStore": "adaptive_tts.runtime.estimator",
    "SystemMonitor": "adaptive_tts.runtime.monitor",
    "AudioCache": "adaptive_tts.runtime.cache",
    "HardwareProfile": "adaptive_tts.runtime.hardware",
    "detect_hardware": "adaptive_tts.runtime.hardware",
    "select_profile": "adaptive_tts.runtime.hardware",
    "create_app": "adaptive_tts.server",
}

__all__ = [
    "AudioCache",
    "BackendOptions",
    "CPUAffinityManager",
    "CalibrationStore",
    "Engine",
    "EngineCapabilities",
    "HardwareProfile",
    "MemoryBudgetManager",
    "MemoryEstimator",
    "QuantizationStrategy",
    "SmartAdaptiveBackend",
    "SpeechEngine",
    "Synthesis",
    "SynthesisOptions",
    "SynthesisRefused",
    "SynthesisResult",
    "SystemMonitor",
    "create_app",
    "detect_hardware",
    "load_engine",
    "quantize_",
    "select_profile",
]

if TYPE_CHECKING:
    from .backend import SmartAdaptiveBackend
    from .options import BackendOptions
    from .runtime.affinity import CPUAffinityManager
    from .runtime.budget import MemoryBudgetManager
    from .runtime.cache import AudioCache
    from .runtime.estimator import CalibrationStore, MemoryEstimator
    from .runtime.hardware import HardwareProfile, detect_hardware, select_profile
    from .runtime.monitor import SystemMonitor
    from .runtime.quantize import QuantizationStrategy, quantize_
    from .server import create_app
    from .synthesis import Synthesis, SynthesisRefused, SynthesisResult
    from .voice import load_engine
    from .voice.engine import Engine
    from .voice.speech import EngineCapabilities, SpeechEngine, SynthesisOptions


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adaptive_tts' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
