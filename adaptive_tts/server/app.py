"""The application: :func:`create_app`, the backend's lifetime (its lifespan), and the exception handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from ..backend import BackendOptions, SmartAdaptiveBackend, TextTooLong
from ..runtime.hardware import HardwareProfile
from .body import CheckedBodyRoute
from .errors import SafeJSONResponse, ServerBusy, _on_busy, _on_too_long, _on_unexpected, _on_validation_error
from .routes import _add_routes
from .service import SynthesisService

logger = logging.getLogger(__package__)  # the service's one logger (see errors.py)


def create_app(
    backend: SmartAdaptiveBackend | None = None,
    *,
    profile: str | HardwareProfile = "auto",
    options: BackendOptions | None = None,
    max_jobs: int = 16,
    retry_after_s: int = 5,
    warmup: bool = True,
) -> FastAPI:
    """The service as an ASGI app. Without ``backend`` one is built at start-up from ``profile`` (a name
    or a profile) and ``options`` (``quantization`` defaults to fp32) and closed at shutdown; a given
    one is used as is.

    ``max_jobs`` bounds the synthesis requests held at once (running or waiting for memory);
    ``retry_after_s`` is the ``Retry-After`` of a 503. ``warmup`` runs one short synthesis at start-up,
    so the first client does not pay torch's one-off set-up (seconds on a small CPU).
    """
    if max_jobs < 1:
        raise ValueError(f"max_jobs must be >= 1, got {max_jobs}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = backend is None
        shared: SmartAdaptiveBackend
        if backend is None:
            opts = options or BackendOptions(quantization="fp32")
            shared = await asyncio.to_thread(SmartAdaptiveBackend, profile, opts)
        else:
            shared = backend
        if warmup:
            # on every compute lane: each keeps its own compiled kernels (voice/lanes.py)
            await asyncio.to_thread(shared.lanes.each, lambda: shared.engine.synthesize("Warm up."))
        app.state.service = SynthesisService(shared, max_jobs=max_jobs, retry_after_s=retry_after_s)
        logger.info("serving voice %s on profile %s", app.state.service.voice, shared.profile.name)
        try:
            yield
        finally:
            app.state.service.shutdown()
            if owned:
                shared.close()

    app = FastAPI(
        title="adaptive-tts",
        summary="Adaptive on-device text to speech: our PyTorch VITS with memory-aware admission",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
        exception_handlers={
            RequestValidationError: _on_validation_error,
            ServerBusy: _on_busy,
            TextTooLong: _on_too_long,
            Exception: _on_unexpected,
        },
    )
    app.router.route_class = CheckedBodyRoute
    _add_routes(app)
    return app
