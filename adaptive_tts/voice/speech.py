"""What a speech engine is, to the rest of the runtime: options, declared capabilities, a protocol.

Our PyTorch engine (:class:`~adaptive_tts.voice.engine.Engine`) and Piper's onnxruntime graph
(:class:`~adaptive_tts.voice.reference.ReferenceEngine`) both satisfy :class:`SpeechEngine`. The
backend plans by what an engine *declares* (:class:`EngineCapabilities`: can it decode in chunks,
which weight precisions it runs, whether it has kernels to compile ahead) and never by its name, so a
third engine needs no branch anywhere above this module.

This module imports neither engine: both import it, which is what keeps them free of a cycle.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from .frontend import Frontend, Sentence
    from .vits import VitsModel


@dataclass(frozen=True)
class SynthesisOptions:
    """How to synthesize. ``None`` scales take the voice config's defaults.

    ``chunk_length`` is in latent frames (``hop_length`` = 256 samples each); ``None`` decodes each
    sentence in one pass. ``first_chunk_length`` lets the first chunk be shorter so the first audio
    comes sooner.
    """

    noise_scale: float | None = None
    length_scale: float | None = None
    noise_w: float | None = None
    seed: int | None = None
    chunk_length: int | None = None
    first_chunk_length: int | None = None

    def __post_init__(self) -> None:
        for name in ("noise_scale", "noise_w"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.length_scale is not None and self.length_scale <= 0:
            raise ValueError(f"length_scale must be > 0, got {self.length_scale}")
        for name in ("chunk_length", "first_chunk_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 frame, got {value}")


def voice_defaults(voice_config: dict) -> SynthesisOptions:
    """The voice config's inference scales (Piper's own defaults where the config has none)."""
    inference = voice_config.get("inference", {})
    return SynthesisOptions(
        noise_scale=float(inference.get("noise_scale", 0.667)),
        length_scale=float(inference.get("length_scale", 1.0)),
        noise_w=float(inference.get("noise_w", 0.8)),
    )


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do, declared by the engine and read by the planner.

    ``chunking``: decodes a sentence in windows of latent frames (memory flat in the text's length);
    without it a sentence is one pass and no chunk length is planned. ``precisions``: the weight
    precisions it can run, most precise first; lowering them is the planner's last resort before a
    refusal. ``warm_up``: it compiles kernels per input length, which a service pays at start-up
    instead of in its first requests. ``computes``: the arithmetic precisions it can run in.
    ``step_threads``: ``set_num_threads`` is cheap and applies to the calling thread, so the runtime
    may change it between two steps of a synthesis (on the lane that runs them) as contention changes.
    """

    chunking: bool
    precisions: tuple[str, ...]
    warm_up: bool
    #: what it can multiply in (``fp32``; ``bf16`` too where the engine converts its networks)
    computes: tuple[str, ...] = ("fp32",)
    step_threads: bool = False

    def runs(self, precision: str) -> bool:
        return precision in self.precisions


@runtime_checkable
class SpeechEngine(Protocol):
    """Text or phonemized sentences → audio chunks (float32 in [-1, 1]) for one voice."""

    name: str
    capabilities: EngineCapabilities
    #: what the engine multiplies in (``fp32`` or ``bf16``)
    compute: str
    sample_rate: int
    frontend: Frontend
    defaults: SynthesisOptions
    voice_config: dict

    def resolve(self, options: SynthesisOptions | None = None, **overrides: object) -> SynthesisOptions: ...

    def stream(
        self, text: str, options: SynthesisOptions | None = None, **overrides: object
    ) -> Iterator[np.ndarray]: ...

    def stream_sentences(self, sentences: list[Sentence], opts: SynthesisOptions) -> Iterator[np.ndarray]: ...

    def synthesize(self, text: str, options: SynthesisOptions | None = None, **overrides: object) -> np.ndarray: ...

    def warm_up(self, chunk_length: int | None) -> float: ...

    def set_num_threads(self, num_threads: int) -> None: ...


class QuantizableEngine(SpeechEngine, Protocol):
    """An engine whose weights the runtime lowers in place (``capabilities.precisions`` past fp32)."""

    model: VitsModel


class BaseEngine:
    """What both engines implement the same way: options resolved against the voice's defaults, a
    stream of a text through its sentences, and a whole waveform from the stream's chunks."""

    defaults: SynthesisOptions
    frontend: Frontend

    def stream_sentences(self, sentences: list[Sentence], opts: SynthesisOptions) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def resolve(self, options: SynthesisOptions | None = None, **overrides: object) -> SynthesisOptions:
        """Options with the voice's defaults filled in for unset scales."""
        opts = replace(options or SynthesisOptions(), **overrides)  # type: ignore[arg-type]
        return replace(
            opts,
            noise_scale=self.defaults.noise_scale if opts.noise_scale is None else opts.noise_scale,
            length_scale=self.defaults.length_scale if opts.length_scale is None else opts.length_scale,
            noise_w=self.defaults.noise_w if opts.noise_w is None else opts.noise_w,
        )

    def stream(self, text: str, options: SynthesisOptions | None = None, **overrides: object) -> Iterator[np.ndarray]:
        """Yield audio chunks as they are made, sentence after sentence."""
        return self.stream_sentences(self.frontend.sentences(text), self.resolve(options, **overrides))

    def synthesize(self, text: str, options: SynthesisOptions | None = None, **overrides: object) -> np.ndarray:
        """Whole waveform (float32 in [-1, 1]) of ``text``; sentences are concatenated."""
        chunks = list(self.stream(text, options, **overrides))
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


class TimedChunks(Iterator[np.ndarray]):
    """Audio chunks with the timings their consumer sees: seconds to the first chunk and to the last,
    from ``started`` (now, unless given), and the samples so far.

    The timings are the consumer's because they are taken as chunks are handed over: what a listener
    waits for, including any time the consumer spends between chunks.
    """

    def __init__(self, chunks: Iterator[np.ndarray], started: float | None = None) -> None:
        self._chunks = chunks
        self.started = time.perf_counter() if started is None else started
        self.first_audio_s: float | None = None
        self.latency_s = 0.0
        self.samples = 0
        self.done = False

    def __iter__(self) -> TimedChunks:
        return self

    def __next__(self) -> np.ndarray:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            if not self.done:
                self.done = True
                self.latency_s = time.perf_counter() - self.started
            raise
        if self.first_audio_s is None:
            self.first_audio_s = time.perf_counter() - self.started
        self.samples += len(chunk)
        return chunk

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
