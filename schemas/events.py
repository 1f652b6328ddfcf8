"""Wire shapes (docs/EVENTS.md). Nothing else in the project defines a JSON shape."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
MAX_EVENT_ID_CHARS = 256

# Dead-letter headers, in the order they are written (docs/EVENTS.md).
DLQ_HEADERS: tuple[str, ...] = (
    "error.code",
    "error.message",
    "error.stage",
    "source.topic",
    "source.partition",
    "source.offset",
    "source.timestamp",
)


def _integer_valued(value: Any) -> int:
    # The envelope rules say "integer-valued": 10 and 10.0 pass; 10.5, NaN, "10" and booleans do not.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise ValueError("must be an integer-valued finite number")
    return int(value)


class FaceBox(BaseModel):
    """A face rectangle in pixels of the image as displayed (EXIF orientation applied)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    x: int
    y: int
    width: int = Field(gt=0)
    height: int = Field(gt=0)

    @field_validator("x", "y", "width", "height", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> int:
        return _integer_valued(value)


class ImageEvent(BaseModel):
    """A JSON input envelope. Unknown fields are ignored; exactly one of image_b64 / image_url."""

    model_config = ConfigDict(extra="ignore")

    event_id: str = Field(min_length=1, max_length=MAX_EVENT_ID_CHARS)
    post_id: str | None = None
    user_id: str | None = None
    image_b64: str | None = None
    image_url: str | None = None
    faces: list[FaceBox] | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("event_id", mode="before")
    @classmethod
    def _event_id_is_string(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("event_id must be a string")
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ImageEvent:
        if (self.image_b64 is None) == (self.image_url is None):
            raise ValueError("exactly one of image_b64 / image_url must be present")
        return self


class ModelRef(BaseModel):
    """Which model scored the event (sha256 of the loaded ONNX file added to name/variant/provider)."""

    name: str
    variant: str
    provider: str
    sha256: str | None = None


class SourceRef(BaseModel):
    """Where the input event was read from."""

    topic: str
    partition: int
    offset: int


class StageTimings(BaseModel):
    """Milliseconds spent waiting and in each stage; total runs from consume to result."""

    queue: float
    decode: float
    inference: float
    total: float


class FaceScore(BaseModel):
    """One scored face crop."""

    box: FaceBox
    fake_score: float
    label: str


class ScoreFields(BaseModel):
    """Every result field but the Kafka `source`: shared by the Kafka result and the /detect response."""

    schema_version: int = SCHEMA_VERSION
    event_id: str
    post_id: str | None = None
    user_id: str | None = None
    label: str
    is_fake: bool
    fake_score: float
    scores: dict[str, float]
    faces: list[FaceScore] | None = None
    model: ModelRef
    timings_ms: StageTimings
    metadata: dict[str, Any] | None = None
    processed_at: str


class ScoreResult(ScoreFields):
    """The result event (docs/EVENTS.md): exactly one per scored input event."""

    source: SourceRef


class DeadLetterHeaders(BaseModel):
    """The headers of a dead letter (docs/EVENTS.md), as UTF-8 text. The input's own headers come first and are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    error_code: str = Field(
        alias="error.code",
        description="Stable reason: invalid_json, invalid_schema, missing_image, image_too_large, "
        "image_too_many_pixels, image_decode_failed, face_out_of_bounds, url_not_allowed, fetch_failed, "
        "inference_failed",
    )
    error_message: str = Field(alias="error.message", description="Human-readable detail (at most 2000 bytes)")
    error_stage: str = Field(alias="error.stage", description="parse, decode, fetch or inference")
    source_topic: str = Field(alias="source.topic", description="Input topic")
    source_partition: str = Field(alias="source.partition", pattern=r"^-?[0-9]+$", description="Input partition")
    source_offset: str = Field(alias="source.offset", pattern=r"^-?[0-9]+$", description="Input offset")
    source_timestamp: str = Field(
        alias="source.timestamp", pattern=r"^([0-9]+)?$", description="Input's Kafka timestamp (ms); empty if none"
    )
    event_id: str | None = Field(None, description="The event's id when it could be read (header or envelope)")


class DeadLetter(BaseModel):
    """A dead-letter record: the input's key and value byte-for-byte, plus the error and source headers."""

    key: bytes | None = Field(description="The input's key, unchanged (null stays null)")
    value: bytes = Field(description="The input's value, unchanged (JSON envelope or raw image bytes)")
    headers: DeadLetterHeaders
