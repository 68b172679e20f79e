"""What the backend hands back for a request: a :class:`Synthesis` to iterate and its summary, or an
error saying why there is none (:class:`SynthesisRefused`, :class:`TextTooLong`).

A :class:`Synthesis` exists only once the request has been admitted (or answered from the cache): it
carries the plan it runs under, how long it waited, whether the cache answered, and the timings as
its chunks are taken. Callers consume it the same way — the CLI writes its chunks to a file, the
service streams them, the harness drains it into a :class:`SynthesisResult` — and nothing is
returned through arguments.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .runtime.planner import Plan
from .voice.frontend import TextError
from .voice.speech import TimedChunks

logger = logging.getLogger(__name__)


class SynthesisRefused(RuntimeError):
    """The runtime will not start this synthesis: it would not fit in memory now."""

    def __init__(self, reason: str, required_mb: float, available_mb: float, safety_margin_mb: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.required_mb = required_mb
        self.available_mb = available_mb
        self.safety_margin_mb = safety_margin_mb

    def to_dict(self) -> dict:
        return {
            "reason": self.reason,
            "required_mb": round(self.required_mb, 1),
            "available_mb": round(self.available_mb, 1),
            "safety_margin_mb": round(self.safety_margin_mb, 1),
        }


class TextTooLong(TextError):
    """The text is longer than the profile's ``max_text_length``."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"text is {length} characters; the limit on this hardware is {limit}")
        self.length = length
        self.limit = limit


@dataclass(frozen=True)
class SynthesisResult:
    """A whole utterance with its timings and the plan it ran under."""

    audio: np.ndarray
    sample_rate: int
    latency_s: float
    first_audio_s: float
    audio_s: float
    rtf: float
    text_tokens: int | None
    estimated_mb: float | None
    config: dict
    cached: bool = False
    degraded: tuple[str, ...] = field(default_factory=tuple)
    #: seconds the request waited for running jobs before it was admitted
    waited_s: float = 0.0
    #: the safety margin in force when it was admitted (None: budget off)
    safety_margin_mb: float | None = None
    #: intra-op threads of each step (a sentence's encoding, a decoder chunk), in order; empty for a
    #: cache hit. Fewer than planned where the runtime gave CPUs up to contention.
    threads_used: tuple[int, ...] = ()


class Synthesis(Iterator[np.ndarray]):
    """One admitted request's audio, chunk by chunk (float32 in [-1, 1] at ``sample_rate``).

    Iterating decodes; :meth:`close` stops early. Either way, the first of the end of the chunks, an
    error, or a close gives the request's memory reservation back, once. Chunks may be taken from
    different threads (the service steps it on a pool); a lock serializes steps and the close, since
    a generator cannot be closed while it runs.
    """

    def __init__(
        self,
        chunks: Iterator[np.ndarray],
        *,
        sample_rate: int,
        started: float,
        config: dict,
        plan: Plan | None = None,
        tokens: int | None = None,
        cached: bool = False,
        waited_s: float = 0.0,
        release: Callable[[], None] | None = None,
        threads_used: list[int] | None = None,
    ) -> None:
        self._chunks = TimedChunks(chunks, started)
        self.sample_rate = sample_rate
        #: what it runs with: engine, weight precision, threads, compute, decoder chunk
        self.config = config
        #: the planner's decision (``None``: answered from the cache)
        self.plan = plan
        #: phoneme ids of the text (``None``: answered from the cache, which does not phonemize)
        self.tokens = tokens
        self.cached = cached
        self.waited_s = waited_s
        self._release = release
        #: the threads of each step so far (the backend appends as it decodes)
        self.threads_used = threads_used if threads_used is not None else []
        self._on_done: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.done = False

    # -- chunks -------------------------------------------------------------------------------------

    def __iter__(self) -> Synthesis:
        return self

    def __next__(self) -> np.ndarray:
        with self._lock:
            if self.done:
                raise StopIteration
            try:
                return next(self._chunks)
            except BaseException:  # the end, an error, or a cancellation: the request is over
                self._finish()
                raise

    def step(self) -> np.ndarray | None:
        """The next chunk, or ``None`` at the end (for callers stepping it from a worker pool)."""
        return next(self, None)

    def close(self) -> None:
        """Stop early and give the reservation back; waits for a step running on another thread."""
        with self._lock:
            if not self.done:
                try:
                    self._chunks.close()
                finally:
                    self._finish()

    def __enter__(self) -> Synthesis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self.done and self._release is not None:
            logger.warning("a synthesis was dropped without being finished or closed; its reservation is freed now")
            self._release()

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once when the synthesis ends (finished, failed or closed)."""
        self._on_done.append(fn)

    def _finish(self) -> None:
        self.done = True
        release, self._release = self._release, None
        try:
            if release is not None:
                release()
        finally:
            for fn in self._on_done:
                fn()

    # -- what it reports ----------------------------------------------------------------------------

    @property
    def estimated_mb(self) -> float | None:
        return self.plan.estimated_mb if self.plan is not None else None

    @property
    def degraded(self) -> tuple[str, ...]:
        return self.plan.degraded if self.plan is not None else ()

    @property
    def safety_margin_mb(self) -> float | None:
        return self.plan.safety_margin_mb if self.plan is not None else None

    @property
    def first_audio_s(self) -> float | None:
        return self._chunks.first_audio_s

    @property
    def latency_s(self) -> float:
        """Seconds from the request to its last chunk (0 until then)."""
        return self._chunks.latency_s

    @property
    def samples(self) -> int:
        return self._chunks.samples

    def result(self) -> SynthesisResult:
        """Decode the rest and return the whole utterance with its timings."""
        with self:
            chunks = list(self)
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        audio_s = len(audio) / self.sample_rate
        return SynthesisResult(
            audio=audio,
            sample_rate=self.sample_rate,
            latency_s=self.latency_s,
            first_audio_s=self.first_audio_s or self.latency_s,
            audio_s=audio_s,
            rtf=self.latency_s / audio_s if audio_s else float("nan"),
            text_tokens=self.tokens,
            estimated_mb=self.estimated_mb,
            config=self.config,
            cached=self.cached,
            degraded=self.degraded,
            waited_s=self.waited_s,
            safety_margin_mb=self.safety_margin_mb,
            threads_used=tuple(self.threads_used),
        )
