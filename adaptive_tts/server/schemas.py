"""Request and response models: what the routes read and answer, typed for validation and OpenAPI.

The hardware payload's nested models and the selected configuration are built from the runtime's
dataclasses (:func:`_payload_model`, descriptions from the fields' metadata), so each dataclass stays
the one definition of its payload.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from ..runtime.contention import ContentionReading
from ..runtime.hardware import EstimateDefaults, HardwareInfo, MemoryBudget, QuantizationConfig, SelectedConfiguration
from ..voice.frontend import validate_text


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
    fields: dict[str, Any] = {
        f.name: (
            hints[f.name],
            Field(
                ... if f.default is dataclasses.MISSING else f.default,
                description=f.metadata.get("description"),
            ),
        )
        for f in dataclasses.fields(source)
    }
    return create_model(name, __base__=_Payload, **fields, **extra)


if TYPE_CHECKING:
    # Built at run time from their dataclasses, which a type checker cannot follow: statically each is an
    # open payload (its fields are checked by pydantic and the OpenAPI schema, not by mypy).
    HardwareInfoModel: TypeAlias = _Payload
    MemoryBudgetModel: TypeAlias = _Payload
    QuantizationModel: TypeAlias = _Payload
    EstimationDefaultsModel: TypeAlias = _Payload
    RuntimeConfigModel: TypeAlias = _Payload
    ContentionReadingModel: TypeAlias = _Payload
else:
    HardwareInfoModel = _payload_model(
        "HardwareInfoModel",
        HardwareInfo,
        total_ram_gb=(float, ...),
        effective_memory_mb=(float, ...),
        performance_cores=(int, ...),
        efficiency_cores=(int, ...),
    )
    MemoryBudgetModel = _payload_model("MemoryBudgetModel", MemoryBudget)
    QuantizationModel = _payload_model("QuantizationModel", QuantizationConfig)
    EstimationDefaultsModel = _payload_model("EstimationDefaultsModel", EstimateDefaults)
    RuntimeConfigModel = _payload_model("RuntimeConfigModel", SelectedConfiguration)
    ContentionReadingModel = _payload_model("ContentionReadingModel", ContentionReading)


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
    required_mb: float = Field(
        description="what the process must still allocate: the estimate less its resident memory"
    )
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


class ComputeThreadsModel(_Payload):
    adaptive: bool = Field(description="whether each synthesis step's threads follow CPU contention (affinity on)")
    threads: int = Field(description="the intra-op threads the next step would run with")
    planned: int = Field(description="the configuration's threads, used when no other task holds a CPU")
    reason: str
    reading: ContentionReadingModel | None = None


class SystemStatusResponse(_Payload):
    resources: ResourcesModel
    throttling_risk: ThrottlingRiskModel
    memory_budget_safe: bool
    recommended_action: str
    running_jobs: int = Field(description="syntheses the backend has admitted and not finished")
    cache: CacheStatsModel | None = None
    queue: QueueModel
    compute_threads: ComputeThreadsModel


class OptimizeResponse(_Payload):
    status: Literal["optimal", "adjusted"]
    message: str | None = None
    config: RuntimeConfigModel | None = None
    previous_config: RuntimeConfigModel | None = None
    new_config: RuntimeConfigModel | None = None
    reasons: list[str] | None = None
    compute_threads: ComputeThreadsModel | None = None
    freed_rss_mb: float = Field(
        description="the process's RSS before less after: the cache emptied and free "
        "memory returned to the OS (measured; syntheses running at the "
        "same time move it too)"
    )


class CacheClearResponse(_Payload):
    status: Literal["cleared"]
    freed_mb: float = Field(description="what the audio cache held")
    freed_rss_mb: float = Field(
        description="the process's RSS before less after: the cache emptied and free "
        "memory returned to the OS (measured; syntheses running at the "
        "same time move it too)"
    )


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
    voice: str = Field(
        "alloy",
        description="any name is accepted (OpenAI's, or this voice's own name as "
        "/health reports it); the loaded voice speaks either way",
    )
    response_format: Literal["wav", "pcm"] = Field(
        "wav",
        description="wav: 16-bit mono WAV; pcm: raw 16-bit little-endian mono samples at the "
        "voice's rate (X-Sample-Rate, 22050 Hz for this voice, not OpenAI's 24000). "
        "flac, mp3, opus and aac are not offered: they need an encoder this server "
        "does not depend on",
    )
    speed: float = Field(
        1.0, ge=0.25, le=4.0, allow_inf_nan=False, description="speaking rate; the model's length_scale is 1 / speed"
    )
    stream: bool = Field(
        False,
        description="send audio as it is synthesized (WAV header with an unknown length, "
        "then PCM) instead of all at once with its length",
    )


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
