"""Error types and the app's exception handlers: every error is a JSON body with ``detail``.

A 503 (:class:`ServerBusy`) carries ``Retry-After``; a text too long (``TextTooLong``) is a 413 with
the limit; a validation error is a 422 that does not echo the request's input; anything unexpected is
a logged 500.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..backend import SynthesisRefused, TextTooLong
from ..voice.frontend import TextError
from .schemas import BusyResponse, RefusalModel, TooLargeResponse

#: The service's one logger, named for the package as before it was split into modules.
logger = logging.getLogger(__package__)


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped. A validation error quotes the request's field names, and a JSON
    ``"\\ud800"`` escape makes a lone surrogate that UTF-8 cannot encode: the default would answer 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class ServerBusy(Exception):
    """503: the queue is full, or memory refused the request (``refusal`` set)."""

    def __init__(self, detail: str, retry_after_s: int, refusal: SynthesisRefused | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.refusal = refusal


def _too_large(detail: str, limit: int, length: int | None = None) -> SafeJSONResponse:
    body = TooLargeResponse(detail=detail, limit=limit, length=length)
    return SafeJSONResponse(body.model_dump(exclude_none=True), status_code=413)


def _field_error(field: str, exc: TextError) -> RequestValidationError:
    """A text the phonemizer rejects ("nothing speakable") reads like any other invalid field."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": str(exc)}])


async def _on_validation_error(request: Request, exc: RequestValidationError) -> SafeJSONResponse:
    return SafeJSONResponse({"detail": jsonable_encoder([_plain(e) for e in exc.errors()])}, status_code=422)


def _plain(error: dict) -> dict:
    """A validation error without the offending input (FastAPI's default echoes it back: up to a
    megabyte of text per error) and without exception objects in its context (``msg`` says the same)."""
    plain = {k: v for k, v in error.items() if k not in ("input", "ctx")}
    ctx = {k: v for k, v in error.get("ctx", {}).items() if not isinstance(v, BaseException)}
    return {**plain, "ctx": ctx} if ctx else plain


async def _on_too_long(request: Request, exc: TextTooLong) -> SafeJSONResponse:
    return _too_large(str(exc), exc.limit, exc.length)


async def _on_busy(request: Request, exc: ServerBusy) -> SafeJSONResponse:
    body = BusyResponse(
        detail=exc.detail,
        retry_after_s=exc.retry_after_s,
        refusal=RefusalModel(**exc.refusal.to_dict()) if exc.refusal else None,
    )
    return SafeJSONResponse(
        body.model_dump(exclude_none=True), status_code=503, headers={"Retry-After": str(exc.retry_after_s)}
    )


async def _on_unexpected(request: Request, exc: Exception) -> SafeJSONResponse:
    logger.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return SafeJSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)
