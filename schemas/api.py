"""Wire shapes of the HTTP API (docs/OPERATIONS.md, docs/EVENTS.md): requests, responses, errors, health."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from schemas.events import MAX_EVENT_ID_CHARS, FaceBox, ScoreFields


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class DetectRequest(BaseModel):
    """One image for POST /detect as JSON: the input envelope with `event_id` optional (generated if absent)."""

    model_config = ConfigDict(extra="ignore")

    event_id: str | SkipJsonSchema[None] = Field(
        None,
        min_length=1,
        max_length=MAX_EVENT_ID_CHARS,
        json_schema_extra=_no_default,
        description="Echoed in the result; `http-<uuid>` when absent",
    )
    post_id: str | None = None
    user_id: str | None = None
    image_b64: str | None = Field(None, description="Base64 JPEG/PNG/WebP (a `data:` URL prefix is accepted)")
    image_url: str | None = Field(None, description="Fetched only from IMAGE_URL_ALLOWLIST hosts")
    faces: list[FaceBox] | None = Field(None, description="Face boxes to score; the image's score is their max")
    metadata: dict[str, Any] | None = Field(None, description="Echoed in the result")


class DetectBatchRequest(BaseModel):
    """Several images for POST /detect/batch; each item is scored (or refused) on its own."""

    images: list[DetectRequest] = Field(min_length=1, description="At most DETECT_MAX_BATCH items")


class DetectResult(ScoreFields):
    """A /detect result: the result (docs/EVENTS.md) without the Kafka-only `source`."""


class ErrorDetail(BaseModel):
    """Why a request (or one batch item) was refused; `code` is the DLQ `error.code` for the same input."""

    code: str
    message: str


class ErrorResponse(BaseModel):
    """The body of every non-2xx response, and of a refused item in a batch."""

    error: ErrorDetail


class DetectBatchResponse(BaseModel):
    """One entry per request item, in order: a result, or the error that item would have been dead-lettered with."""

    results: list[DetectResult | ErrorResponse]


class MemoryUsage(BaseModel):
    """GPU memory of the device the session runs on; nulls when it runs on CPU or NVML is absent."""

    gpu_memory_percent: float | None = None
    used_mb: float | None = None
    total_mb: float | None = None


class KafkaHealth(BaseModel):
    """The `kafka` section of /health."""

    connected: bool
    assigned_partitions: int
    lag: int | None = None
    #: librdkafka's latest error, e.g. `_AUTHENTICATION: SASL authentication error: ...` (never a credential).
    last_error: str | None = None


class ModelHealth(BaseModel):
    """The `model` section of /health."""

    name: str | None = None
    sha256: str | None = None


class HealthResponse(BaseModel):
    """GET /health (docs/OPERATIONS.md); 200 while serving."""

    status: Literal["healthy", "degraded", "unhealthy"]
    service: str
    ready: bool
    model_loaded: bool
    gpu_available: bool
    provider: str | None = None
    variant: str | None = None
    model: ModelHealth
    memory_usage: MemoryUsage
    kafka: KafkaHealth
    error: str | None = None


class ReadyResponse(BaseModel):
    """GET /readyz: 200 once the model is warm and the consumer has joined its group, else 503."""

    ready: bool
    status: str


class AliveResponse(BaseModel):
    """GET /healthz: the process answers."""

    status: str
