"""The body check every route runs before FastAPI parses a body: size first, then UTF-8."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from .errors import SafeJSONResponse, _too_large
from .schemas import ErrorResponse

#: Largest request body read at all. Synthesis texts are limited far below this (``max_text_length``
#: characters); the cap only keeps a hostile upload from being buffered in memory.
MAX_BODY_BYTES = 1 << 20


class CheckedBodyRoute(APIRoute):
    """Reads a route's body before FastAPI parses it, to refuse what its parsers would not: a body over
    :data:`MAX_BODY_BYTES` (413) and one that is not UTF-8 (400). Starlette decodes undecodable form
    fields as Latin-1 and would synthesize the mojibake; FastAPI reports undecodable JSON only as "There
    was an error parsing the body". The body is kept on the request as FastAPI's own docs do for custom
    request classes, so the form and JSON parsers read it from there."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                return _too_large(
                    f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}", MAX_BODY_BYTES, int(declared)
                )
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    return _too_large(f"request body exceeds {MAX_BODY_BYTES} bytes", MAX_BODY_BYTES)
                chunks.append(chunk)
            body = b"".join(chunks)
            request._body = body
            problem = _utf8_problem(body, request.headers.get("content-type", ""))
            if problem:
                return SafeJSONResponse(ErrorResponse(detail=problem).model_dump(), status_code=400)
            return await handler(request)

        return checked


def _utf8_problem(body: bytes, content_type: str) -> str | None:
    """Why ``body`` is not UTF-8 text (form fields percent-decoded), or None if it is."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"request body is not valid UTF-8: {exc.reason} (byte 0x{body[exc.start]:02x} at offset {exc.start})"
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            urllib.parse.parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            return f"a percent-encoded form field is not valid UTF-8: {exc.reason}"
    return None
