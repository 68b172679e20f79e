"""The voice: Piper's VITS network in PyTorch (:mod:`.vits`), its weights (:mod:`.weights`), the
espeak front end (:mod:`.frontend`), our engine (:mod:`.engine`), Piper's onnxruntime graph as the
reference (:mod:`.reference`), and what both engines are to the runtime (:mod:`.speech`).

Nothing here imports :mod:`adaptive_tts.runtime` or anything above it.
"""

from __future__ import annotations

from .engine import Engine
from .reference import ReferenceEngine
from .speech import EngineCapabilities, SpeechEngine, SynthesisOptions, TimedChunks

#: The engines by name, for configuration files and the CLI. onnxruntime itself is loaded only when a
#: reference session is made: a process running our engine does not pay its memory.
ENGINES: dict[str, type[Engine] | type[ReferenceEngine]] = {"torch": Engine, "reference": ReferenceEngine}


def engine_capabilities(name: str) -> EngineCapabilities:
    """What the engine called ``name`` declares it can do, without loading it."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: use {' or '.join(ENGINES)}")
    return ENGINES[name].capabilities


def load_engine(name: str = "torch", num_threads: int | None = None, compute: str = "auto") -> SpeechEngine:
    """Our engine (``torch``) or Piper's onnxruntime graph (``reference``) for the bundled voice;
    ``compute`` applies to engines that can compute in more than fp32 (ours)."""
    engine_capabilities(name)
    if ENGINES[name] is Engine:
        return Engine(num_threads=num_threads, compute=compute)
    return ReferenceEngine(num_threads=num_threads)


__all__ = [
    "ENGINES",
    "Engine",
    "EngineCapabilities",
    "ReferenceEngine",
    "SpeechEngine",
    "SynthesisOptions",
    "TimedChunks",
    "engine_capabilities",
    "load_engine",
]
