"""Synthesis jobs: the shared backend, its worker threads, the bound on requests held at once, and the
streamed response that closes its synthesis whatever ends it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..backend import SmartAdaptiveBackend, SynthesisRefused, TextTooLong
from ..synthesis import Synthesis
from ..voice.frontend import TextError
from ..voice.speech import SynthesisOptions
from .errors import ServerBusy, _field_error
from .schemas import QueueModel

logger = logging.getLogger(__package__)  # the service's one logger (see errors.py)


class SynthesisService:
    """The shared backend, its worker threads, and the bound on synthesis requests held at once."""

    def __init__(self, backend: SmartAdaptiveBackend, *, max_jobs: int, retry_after_s: int) -> None:
        self.backend = backend
        self.max_jobs = max_jobs
        self.retry_after_s = retry_after_s
        voice = backend.engine.voice_config
        self.voice = f"{voice['language']['code']}-{voice['dataset']}-{voice['audio']['quality']}"
        # A held job has at most one step running, plus a close waiting for it when its client left:
        # two threads per job means no step or close ever queues behind another job's work.
        self._executor = ThreadPoolExecutor(max_workers=2 * max_jobs, thread_name_prefix="synthesis")
        self._lock = threading.Lock()
        self._held = 0

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._held

    def queue(self) -> QueueModel:
        return QueueModel(in_flight=self.in_flight, max_jobs=self.max_jobs)

    def _release(self) -> None:
        with self._lock:
            self._held -= 1

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def start(self, text: str, options: SynthesisOptions, field: str) -> Synthesis:
        """Hold a slot and admit the request — on a worker, since admission may wait for memory —
        before any header is sent.

        Raises :class:`ServerBusy` (queue full, or memory refused), :class:`TextTooLong`, and
        ``RequestValidationError`` naming ``field`` for a text with nothing speakable in it.
        """
        with self._lock:
            full = self._held >= self.max_jobs
            if not full:
                self._held += 1
        if full:
            logger.info("refused: %d synthesis requests already held", self.max_jobs)
            raise ServerBusy(
                f"server busy: {self.max_jobs} synthesis requests are already running or waiting; retry later",
                self.retry_after_s,
            )
        admitted: Future[Synthesis] = self._executor.submit(self.backend.stream, text, options)
        try:
            synthesis = await asyncio.wrap_future(admitted)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):  # shutdown while admitting: close it once admitted
                admitted.add_done_callback(_close_admitted)
            self._release()
            if isinstance(exc, SynthesisRefused):
                logger.info("refused by the memory budget: %s", exc.reason)
                raise ServerBusy(
                    f"not enough memory to synthesize now: {exc.reason}", self.retry_after_s, exc
                ) from None
            if isinstance(exc, TextError) and not isinstance(exc, TextTooLong):
                raise _field_error(field, exc) from None
            raise
        synthesis.add_done_callback(self._release)
        return synthesis

    def discard(self, synthesis: Synthesis) -> None:
        """Close ``synthesis`` on a worker without waiting (callable where awaiting is not possible)."""
        if not synthesis.done:
            self._executor.submit(synthesis.close)

    async def chunks(self, synthesis: Synthesis) -> AsyncIterator[np.ndarray]:
        while (chunk := await self._run(synthesis.step)) is not None:
            yield chunk

    async def drain(self, synthesis: Synthesis) -> list[np.ndarray]:
        try:
            return await self._run(lambda: list(synthesis))
        finally:
            self.discard(synthesis)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _close_admitted(admitted: Future[Synthesis]) -> None:
    if not admitted.cancelled() and admitted.exception() is None:
        admitted.result().close()


class AudioStream(StreamingResponse):
    """A streamed synthesis. Whatever ends the response — the last chunk, an error, a client that went
    away (Starlette then cancels the body mid-``await``) — closes the synthesis, so its reservation is
    freed and its slot released even if the body iterator never ran."""

    media_type = "audio/wav"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str | None = None,
        *,
        service: SynthesisService,
        synthesis: Synthesis,
    ) -> None:
        super().__init__(content, status_code, headers, media_type)
        self._service = service
        self._synthesis = synthesis

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._service.discard(self._synthesis)
