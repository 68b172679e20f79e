"""adaptive-tts: an adaptive on-device runtime for neural text-to-speech.

The speech model lives in :mod:`adaptive_tts.voice`; the seed's runtime features (hardware profiles,
memory budget, quantization, CPU affinity, estimation, monitoring, cache) in :mod:`adaptive_tts.runtime`;
:class:`adaptive_tts.backend.SmartAdaptiveBackend` composes them.
"""

__version__ = "0.1.0"
