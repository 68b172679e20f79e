"""HTTP service: the seed's API over one shared SmartAdaptiveBackend, plus OpenAI's speech endpoint.

One model is loaded at start-up and every request shares it. What may run is decided in two places:

* the server holds at most ``max_jobs`` synthesis requests at once (admitted, or waiting for memory);
  one more is answered 503 with ``Retry-After`` at once, so a burst cannot pile up threads and sockets;
* the backend's budget manager and estimator decide, for each held request, whether it runs now, waits
  for running jobs to free memory (up to ``BackendOptions.wait_timeout_s``), or is refused — a refusal
  (:class:`~adaptive_tts.backend.SynthesisRefused`) is also a 503 with ``Retry-After`` and the numbers.

The backend's ``stream()`` admits a request and returns its :class:`~adaptive_tts.synthesis.Synthesis`
before any audio is decoded, so a refusal or a bad text becomes a JSON error before response headers
are sent, not a broken stream. Admission and every chunk run on a worker thread (synthesis is CPU-bound
and would stall the event loop, and with it ``/health`` and ``/system-status``), and whatever ends a
response — the last chunk, an error, a client that went away — closes the synthesis, which releases the
job's memory reservation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import typing
import urllib.parse
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Form, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from starlette.types import Receive, Scope, Send

from .audio import to_pcm16, wav_header
from .backend import BackendOptions, SmartAdaptiveBackend, SynthesisRefused, TextTooLong
from .runtime.hardware import EstimateDefaults, HardwareInfo, HardwareProfile, MemoryBudget, QuantizationConfig
from .synthesis import Synthesis
from .voice.speech import SynthesisOptions
from .voice.frontend import TextError, validate_text

logger = logging.getLogger(__name__)

#: Largest request body read at all. Synthesis texts are limited far below this (``max_text_length``
#: characters); the cap only keeps a hostile upload from being buffered in memory.
MAX_BODY_BYTES = 1 << 20
#: ``/estimate-memory`` answers for texts beyond ``max_text_length`` (that is its point: "too long?"),
#: but phonemizing is not free, so it stops at this multiple of the limit.
ESTIMATE_LENGTH_FACTOR = 10


# ------------------------------------------------------------------------------------------------
# Request and response models
# ------------------------------------------------------------------------------------------------


def _speakable(text: str) -> str:
    """Empty, whitespace-only and control-character texts fail validation like any other bad field."""
    return validate_text(text)  # TextError is a ValueError: pydantic reports it as a field error


SpeakableText = Annotated[str, AfterValidator(_speakable)]


class _Payload(BaseModel):
    """A backend payload: typed where the seed documents it, open to fields the runtime adds later."""

    model_config = ConfigDict(extra="allow")


def _payload_model(name: str, source: type, **extra: Any) -> type[_Payload]:
    """A response model with the fields of the runtime's dataclass ``source``, typed as there, plus
    ``extra`` (name: (type, default)) for what its ``to_dict`` adds: the dataclass stays the one
    definition of the payload, and the model types it for OpenAPI."""
    hints = typing.get_type_hints(source)
    fields = {f.name: (hints[f.name], ... if f.default is dataclasses.MISSING else f.default)
              for f in dataclasses.fields(source)}
    return create_model(name, __base__=_Payload, **fields, **extra)


HardwareInfoModel = _payload_model("HardwareInfoModel", HardwareInfo, total_ram_gb=(float, ...),
                                   effective_memory_mb=(float, ...), performance_cores=(int, ...),
                                   efficiency_cores=(int, ...))
MemoryBudgetModel = _payload_model("MemoryBudgetModel", MemoryBudget)
QuantizationModel = _payload_model("QuantizationModel", QuantizationConfig)
EstimationDefaultsModel = _payload_model("EstimationDefaultsModel", EstimateDefaults)


class RuntimeConfigModel(_Payload):
    chunk_length: int = Field(description="decoder chunk in latent frames (256 samples each)")
    num_threads: int
    cache_limit: float = Field(description="audio cache limit, MB")
    max_text_length: int = Field(description="longest text /tts accepts, in characters")
    quantization: str
    compute: str = Field(description="what the engine multiplies in: fp32, or bf16 on CPUs with native bf16")


class RuntimeFeaturesModel(_Payload):
    budget: bool
    affinity: bool
    estimation: bool
    cache: bool


class HardwareResponse(_Payload):
    hardware: HardwareInfoModel
    profile: str
    memory_budget: MemoryBudgetModel
    quantization: QuantizationModel
    estimation_defaults: EstimationDefaultsModel
    selected_configuration: RuntimeConfigModel
    runtime_features: RuntimeFeaturesModel
    engine: str


class EstimateModel(_Payload):
    estimated_mb: float
    required_mb: float = Field(description="what the process must still allocate: the estimate less its "
                                           "resident memory")
    available_mb: float
    safe: bool
    text_tokens: int
    text_length: int
    calibrated: bool
    configuration: str


class EstimateResponse(_Payload):
    status: Literal["ok", "warning"]
    estimate: EstimateModel
    recommendation: str


class ResourcesModel(_Payload):
    cpu_percent: float
    memory_percent: float
    memory_available_gb: float
    gpu_util: float | None = None


class ThrottlingRiskModel(_Payload):
    memory_critical: bool
    cpu_maxed: bool
    thermal_likely: bool
    thermal_signal: str


class CacheStatsModel(_Payload):
    entries: int
    mb: float
    limit_mb: float
    hits: int
    misses: int


class QueueModel(BaseModel):
    in_flight: int = Field(description="synthesis requests held now: running, waiting for memory, or streaming")
    max_jobs: int = Field(description="requests held at once; one more is refused with 503 at once")


class SystemStatusResponse(_Payload):
    resources: ResourcesModel
    throttling_risk: ThrottlingRiskModel
    memory_budget_safe: bool
    recommended_action: str
    running_jobs: int = Field(description="syntheses the backend has admitted and not finished")
    cache: CacheStatsModel | None = None
    queue: QueueModel


class OptimizeResponse(_Payload):
    status: Literal["optimal", "adjusted"]
    message: str | None = None
    config: RuntimeConfigModel | None = None
    previous_config: RuntimeConfigModel | None = None
    new_config: RuntimeConfigModel | None = None
    reasons: list[str] | None = None
    freed_rss_mb: float = Field(description="the process's RSS before less after: the cache emptied and free "
                                              "memory returned to the OS (measured; syntheses running at the "
                                              "same time move it too)")


class CacheClearResponse(_Payload):
    status: Literal["cleared"]
    freed_mb: float = Field(description="what the audio cache held")
    freed_rss_mb: float = Field(description="the process's RSS before less after: the cache emptied and free "
                                              "memory returned to the OS (measured; syntheses running at the "
                                              "same time move it too)")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    voice: str
    sample_rate: int
    queue: QueueModel


class SpeechRequest(BaseModel):
    """OpenAI's ``POST /v1/audio/speech`` body. Fields OpenAI has and this server does not use (such as
    ``instructions``) are ignored, so existing clients work unchanged."""

    input: SpeakableText = Field(description="text to speak: at most max_text_length characters (GET /hardware)")
    model: str = Field("tts-1", description="accepted and ignored: the server runs its one loaded voice")
    voice: str = Field("alloy", description="any name is accepted (OpenAI's, or this voice's own name as "
                                            "/health reports it); the loaded voice speaks either way")
    response_format: Literal["wav", "pcm"] = Field(
        "wav", description="wav: 16-bit mono WAV; pcm: raw 16-bit little-endian mono samples at the "
                           "voice's rate (X-Sample-Rate, 22050 Hz for this voice, not OpenAI's 24000). "
                           "flac, mp3, opus and aac are not offered: they need an encoder this server "
                           "does not depend on")
    speed: float = Field(1.0, ge=0.25, le=4.0, allow_inf_nan=False,
                         description="speaking rate; the model's length_scale is 1 / speed")
    stream: bool = Field(False, description="send audio as it is synthesized (WAV header with an unknown length, "
                                            "then PCM) instead of all at once with its length")


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong, in words")


class TooLargeResponse(ErrorResponse):
    limit: int = Field(description="the limit: characters for a text, bytes for a request body")
    length: int | None = Field(None, description="the request's size in the same unit, where known")


class RefusalModel(BaseModel):
    reason: str
    required_mb: float
    available_mb: float
    safety_margin_mb: float


class BusyResponse(ErrorResponse):
    retry_after_s: int = Field(description="seconds to wait before retrying (also the Retry-After header)")
    refusal: RefusalModel | None = Field(None, description="the memory numbers, when memory refused the request")


_BAD_BODY = {400: {"model": ErrorResponse, "description": "unreadable body: not UTF-8, or malformed form data"},
             413: {"model": TooLargeResponse, "description": "text or body too long"}}
_SYNTHESIS_ERRORS = {**_BAD_BODY, 503: {"model": BusyResponse, "description": "busy or not enough memory now"}}


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


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
    body = BusyResponse(detail=exc.detail, retry_after_s=exc.retry_after_s,
                        refusal=RefusalModel(**exc.refusal.to_dict()) if exc.refusal else None)
    return SafeJSONResponse(body.model_dump(exclude_none=True), status_code=503,
                            headers={"Retry-After": str(exc.retry_after_s)})


async def _on_unexpected(request: Request, exc: Exception) -> SafeJSONResponse:
    logger.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return SafeJSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500)


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
                return _too_large(f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}",
                                  MAX_BODY_BYTES, int(declared))
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


# ------------------------------------------------------------------------------------------------
# Synthesis jobs
# ------------------------------------------------------------------------------------------------


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
            raise ServerBusy(f"server busy: {self.max_jobs} synthesis requests are already running or "
                             "waiting; retry later", self.retry_after_s)
        admitted: Future[Synthesis] = self._executor.submit(self.backend.stream, text, options)
        try:
            synthesis = await asyncio.wrap_future(admitted)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):  # shutdown while admitting: close it once admitted
                admitted.add_done_callback(_close_admitted)
            self._release()
            if isinstance(exc, SynthesisRefused):
                logger.info("refused by the memory budget: %s", exc.reason)
                raise ServerBusy(f"not enough memory to synthesize now: {exc.reason}", self.retry_after_s,
                                 exc) from None
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

    def __init__(self, content: AsyncIterator[bytes], status_code: int = 200, headers: dict[str, str] | None = None,
                 media_type: str | None = None, *, service: SynthesisService, synthesis: Synthesis) -> None:
        super().__init__(content, status_code, headers, media_type)
        self._service = service
        self._synthesis = synthesis

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._service.discard(self._synthesis)


# ------------------------------------------------------------------------------------------------
# The application
# ------------------------------------------------------------------------------------------------


async def _service(request: Request) -> SynthesisService:
    # async: a sync dependency would wait for a thread-pool slot, and /health must answer without one
    return request.app.state.service


Service = Annotated[SynthesisService, Depends(_service)]

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_AUDIO = {"content": {"audio/wav": _BINARY}, "description": "16-bit mono WAV"}
_SPEECH_AUDIO = {"content": {"audio/wav": _BINARY, "audio/pcm": _BINARY},
                 "description": "WAV, or raw 16-bit little-endian mono PCM at X-Sample-Rate"}


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
        if owned:
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


def _add_routes(app: FastAPI) -> None:
    @app.post("/tts", response_class=Response, responses={200: _AUDIO, **_SYNTHESIS_ERRORS},
              summary="Synthesize text to WAV, streamed as it is synthesized")
    async def tts(
        service: Service,
        text: Annotated[SpeakableText, Form(description="text to speak, at most max_text_length characters "
                                                        "(GET /hardware); longer is a 413")],
        length_scale: Annotated[float | None, Form(ge=0.25, le=4.0, allow_inf_nan=False,
                                                   description="> 1 speaks slower")] = None,
        noise_scale: Annotated[float | None, Form(ge=0.0, le=2.0, allow_inf_nan=False)] = None,
        noise_w: Annotated[float | None, Form(ge=0.0, le=2.0, allow_inf_nan=False)] = None,
        seed: Annotated[int | None, Form(ge=0, lt=2**32, description="fixes the noise: same seed, same audio")] = None,
    ) -> AudioStream:
        """The WAV header says "unknown length" and PCM chunks follow as the decoder produces them.
        Admission happens before the first byte: a refusal is a 503 JSON with `Retry-After`."""
        options = SynthesisOptions(noise_scale=noise_scale, length_scale=length_scale, noise_w=noise_w, seed=seed)
        return await _streamed(service, text, options, "text", "audio/wav", wav=True)

    @app.post("/v1/audio/speech", responses={200: _SPEECH_AUDIO, **_SYNTHESIS_ERRORS},
              response_class=Response, summary="OpenAI-compatible speech synthesis")
    async def openai_speech(service: Service, speech: SpeechRequest) -> Response:
        """Accepts OpenAI's request body. `model` and `voice` are accepted whatever they say: one voice
        is loaded (its name is in `/health` and the `X-Voice` header)."""
        options = SynthesisOptions(length_scale=1.0 / speech.speed)
        wav = speech.response_format == "wav"
        media = "audio/wav" if wav else "audio/pcm"
        if speech.stream:
            return await _streamed(service, speech.input, options, "input", media, wav=wav)
        synthesis = await service.start(speech.input, options, "input")
        pcm = [to_pcm16(c) for c in await service.drain(synthesis)]
        if wav:  # the body is joined once: a header prepended to the joined PCM copied it again
            pcm.insert(0, wav_header(service.backend.sample_rate, sum(map(len, pcm))))
        return Response(b"".join(pcm), media_type=media, headers=_audio_headers(service, synthesis))

    @app.get("/hardware", response_model=HardwareResponse, summary="Detected hardware and the configuration chosen")
    def hardware(service: Service) -> dict:
        return service.backend.hardware()

    @app.post("/estimate-memory", response_model=EstimateResponse, responses=_BAD_BODY,
              summary="Pre-synthesis memory estimate of a text")
    def estimate_memory(
        service: Service,
        text: Annotated[SpeakableText, Form(description="the text /tts would be given; may exceed "
                                                        f"max_text_length, up to {ESTIMATE_LENGTH_FACTOR} times it")],
    ) -> Response | dict:
        limit = service.backend.config.max_text_length * ESTIMATE_LENGTH_FACTOR
        if len(text) > limit:
            return _too_large(f"text is {len(text)} characters; estimates stop at {limit}", limit, len(text))
        try:
            return service.backend.estimate(text)
        except TextError as exc:
            raise _field_error("text", exc) from None

    @app.get("/system-status", response_model=SystemStatusResponse,
             summary="Resources, throttling risk, recommended action, running jobs")
    def system_status(service: Service) -> dict:
        return {**service.backend.system_status(), "queue": service.queue()}

    @app.post("/optimize-for-hardware", response_model=OptimizeResponse, response_model_exclude_none=True,
              summary="Clear caches, return free memory to the OS, re-read resources, adjust the "
                      "configuration if needed")
    def optimize_for_hardware(service: Service) -> dict:
        return service.backend.optimize_for_hardware()

    @app.post("/cache/clear", response_model=CacheClearResponse,
              summary="Empty the audio cache and return free memory to the OS")
    def clear_cache(service: Service) -> dict:
        return service.backend.clear_cache()

    @app.get("/health", summary="Liveness: answers without touching the model")
    async def health(service: Service) -> HealthResponse:
        return HealthResponse(status="ok", voice=service.voice, sample_rate=service.backend.sample_rate,
                              queue=service.queue())


def _audio_headers(service: SynthesisService, synthesis: Synthesis) -> dict[str, str]:
    """What a client may want to know about how its audio was made; never echoes request input."""
    headers = {"X-Sample-Rate": str(service.backend.sample_rate), "X-Voice": service.voice,
               "X-Cache": "hit" if synthesis.cached else "miss"}
    if synthesis.estimated_mb is not None:
        headers["X-Estimated-MB"] = f"{synthesis.estimated_mb:.0f}"
    if synthesis.degraded:
        headers["X-Degraded"] = "; ".join(synthesis.degraded)
    return headers


async def _streamed(service: SynthesisService, text: str, options: SynthesisOptions, field: str, media: str,
                    *, wav: bool) -> AudioStream:
    synthesis = await service.start(text, options, field)

    async def body() -> AsyncIterator[bytes]:
        header = wav_header(service.backend.sample_rate) if wav else b""
        async for chunk in service.chunks(synthesis):
            yield header + to_pcm16(chunk)  # the header goes out with the first audio, not before it
            header = b""
        if header:
            yield header

    try:
        return AudioStream(body(), headers=_audio_headers(service, synthesis), media_type=media, service=service,
                           synthesis=synthesis)
    except BaseException:
        service.discard(synthesis)  # from here on the response closes it; until then, this does
        raise
