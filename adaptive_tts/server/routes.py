"""The routes: the seed's endpoints and OpenAI's ``POST /v1/audio/speech``, over the app's one
:class:`~adaptive_tts.server.service.SynthesisService`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import Response

from ..audio import to_pcm16, wav_header
from ..synthesis import Synthesis
from ..voice.frontend import TextError
from ..voice.speech import SynthesisOptions
from .errors import _field_error, _too_large
from .schemas import (
    BusyResponse,
    CacheClearResponse,
    ErrorResponse,
    EstimateResponse,
    HardwareResponse,
    HealthResponse,
    OptimizeResponse,
    SpeakableText,
    SpeechRequest,
    SystemStatusResponse,
    TooLargeResponse,
)
from .service import AudioStream, SynthesisService

#: ``/estimate-memory`` answers for texts beyond ``max_text_length`` (that is its point: "too long?"),
#: but phonemizing is not free, so it stops at this multiple of the limit.
ESTIMATE_LENGTH_FACTOR = 10


async def _service(request: Request) -> SynthesisService:
    # async: a sync dependency would wait for a thread-pool slot, and /health must answer without one
    return request.app.state.service


Service = Annotated[SynthesisService, Depends(_service)]

_BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
_AUDIO: dict[str, Any] = {"content": {"audio/wav": _BINARY}, "description": "16-bit mono WAV"}
_SPEECH_AUDIO: dict[str, Any] = {
    "content": {"audio/wav": _BINARY, "audio/pcm": _BINARY},
    "description": "WAV, or raw 16-bit little-endian mono PCM at X-Sample-Rate",
}
_BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "unreadable body: not UTF-8, or malformed form data"},
    413: {"model": TooLargeResponse, "description": "text or body too long"},
}
_SYNTHESIS_ERRORS: dict[int | str, dict[str, Any]] = {
    **_BAD_BODY,
    503: {"model": BusyResponse, "description": "busy or not enough memory now"},
}


def _add_routes(app: FastAPI) -> None:
    @app.post(
        "/tts",
        response_class=Response,
        responses={200: _AUDIO, **_SYNTHESIS_ERRORS},
        summary="Synthesize text to WAV, streamed as it is synthesized",
    )
    async def tts(
        service: Service,
        text: Annotated[
            SpeakableText,
            Form(description="text to speak, at most max_text_length characters (GET /hardware); longer is a 413"),
        ],
        length_scale: Annotated[
            float | None, Form(ge=0.25, le=4.0, allow_inf_nan=False, description="> 1 speaks slower")
        ] = None,
        noise_scale: Annotated[float | None, Form(ge=0.0, le=2.0, allow_inf_nan=False)] = None,
        noise_w: Annotated[float | None, Form(ge=0.0, le=2.0, allow_inf_nan=False)] = None,
        seed: Annotated[int | None, Form(ge=0, lt=2**32, description="fixes the noise: same seed, same audio")] = None,
    ) -> AudioStream:
        """The WAV header says "unknown length" and PCM chunks follow as the decoder produces them.
        Admission happens before the first byte: a refusal is a 503 JSON with `Retry-After`."""
        options = SynthesisOptions(noise_scale=noise_scale, length_scale=length_scale, noise_w=noise_w, seed=seed)
        return await _streamed(service, text, options, "text", "audio/wav", wav=True)

    @app.post(
        "/v1/audio/speech",
        responses={200: _SPEECH_AUDIO, **_SYNTHESIS_ERRORS},
        response_class=Response,
        summary="OpenAI-compatible speech synthesis",
    )
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

    @app.post(
        "/estimate-memory",
        response_model=EstimateResponse,
        responses=_BAD_BODY,
        summary="Pre-synthesis memory estimate of a text",
    )
    def estimate_memory(
        service: Service,
        text: Annotated[
            SpeakableText,
            Form(
                description="the text /tts would be given; may exceed "
                f"max_text_length, up to {ESTIMATE_LENGTH_FACTOR} times it"
            ),
        ],
    ) -> Response | dict:
        limit = service.backend.config.max_text_length * ESTIMATE_LENGTH_FACTOR
        if len(text) > limit:
            return _too_large(f"text is {len(text)} characters; estimates stop at {limit}", limit, len(text))
        try:
            return service.backend.estimate(text)
        except TextError as exc:
            raise _field_error("text", exc) from None

    @app.get(
        "/system-status",
        response_model=SystemStatusResponse,
        summary="Resources, throttling risk, recommended action, running jobs",
    )
    def system_status(service: Service) -> dict:
        return {**service.backend.system_status(), "queue": service.queue()}

    @app.post(
        "/optimize-for-hardware",
        response_model=OptimizeResponse,
        response_model_exclude_none=True,
        summary="Clear caches, return free memory to the OS, re-read resources, adjust the configuration if needed",
    )
    def optimize_for_hardware(service: Service) -> dict:
        return service.backend.optimize_for_hardware()

    @app.post(
        "/cache/clear",
        response_model=CacheClearResponse,
        summary="Empty the audio cache and return free memory to the OS",
    )
    def clear_cache(service: Service) -> dict:
        return service.backend.clear_cache()

    @app.get("/health", summary="Liveness: answers without touching the model")
    async def health(service: Service) -> HealthResponse:
        return HealthResponse(
            status="ok", voice=service.voice, sample_rate=service.backend.sample_rate, queue=service.queue()
        )


def _audio_headers(service: SynthesisService, synthesis: Synthesis) -> dict[str, str]:
    """What a client may want to know about how its audio was made; never echoes request input."""
    headers = {
        "X-Sample-Rate": str(service.backend.sample_rate),
        "X-Voice": service.voice,
        "X-Cache": "hit" if synthesis.cached else "miss",
    }
    if synthesis.estimated_mb is not None:
        headers["X-Estimated-MB"] = f"{synthesis.estimated_mb:.0f}"
    if synthesis.degraded:
        headers["X-Degraded"] = "; ".join(synthesis.degraded)
    return headers


async def _streamed(
    service: SynthesisService, text: str, options: SynthesisOptions, field: str, media: str, *, wav: bool
) -> AudioStream:
    synthesis = await service.start(text, options, field)

    async def body() -> AsyncIterator[bytes]:
        header = wav_header(service.backend.sample_rate) if wav else b""
        async for chunk in service.chunks(synthesis):
            yield header + to_pcm16(chunk)  # the header goes out with the first audio, not before it
            header = b""
        if header:
            yield header

    try:
        return AudioStream(
            body(), headers=_audio_headers(service, synthesis), media_type=media, service=service, synthesis=synthesis
        )
    except BaseException:
        service.discard(synthesis)  # from here on the response closes it; until then, this does
        raise
