"""Pydantic models of every event on the wire: the input envelope, the scored result, the dead-letter headers."""

from __future__ import annotations

from schemas.events import (
    DLQ_HEADERS,
    SCHEMA_VERSION,
    DeadLetter,
    DeadLetterHeaders,
    FaceBox,
    FaceScore,
    ImageEvent,
    ModelRef,
    ScoreResult,
    SourceRef,
    StageTimings,
)

__all__ = [
    "DLQ_HEADERS",
    "SCHEMA_VERSION",
    "DeadLetter",
    "DeadLetterHeaders",
    "FaceBox",
    "FaceScore",
    "ImageEvent",
    "ModelRef",
    "ScoreResult",
    "SourceRef",
    "StageTimings",
]
