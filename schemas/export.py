"""JSON Schema files for downstream teams: the input event, the result, and the dead-letter record (docs/EVENTS.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from schemas.events import DeadLetter, ImageEvent, ScoreResult

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "https://facesocial.example/schemas/deepfake-processor/"

# file name → (model, mode, what it describes). "validation" for what we accept, "serialization" for what we write.
SCHEMAS: dict[str, tuple[type[BaseModel], JsonSchemaMode, str]] = {
    "image-event.schema.json": (
        ImageEvent,
        "validation",
        "Input topic (INPUT_TOPIC): a JSON envelope. Exactly one of image_b64 / image_url. A value that is not "
        "JSON is taken as raw image bytes with an `event_id` header instead.",
    ),
    "score-result.schema.json": (
        ScoreResult,
        "serialization",
        "Result topic (OUTPUT_TOPIC): exactly one per scored input event; key = the input's key, header event_id. "
        "Null fields are left out.",
    ),
    "dead-letter.schema.json": (
        DeadLetter,
        "serialization",
        "Dead-letter topic (DLQ_TOPIC): not a JSON value but a Kafka record: key and value are the input's bytes, "
        "headers carry the error and source as UTF-8 text.",
    ),
}


def schema_document(model: type[BaseModel], mode: JsonSchemaMode, description: str, file_name: str) -> dict[str, Any]:
    """One standalone JSON Schema (2020-12) with `$schema`, `$id` and local `$defs`."""
    body = model.model_json_schema(mode=mode, by_alias=True)
    return {"$schema": DIALECT, "$id": ID_BASE + file_name, **body, "description": description}


def export_schemas(directory: Path) -> list[Path]:
    """Write every schema file into `directory` (created if needed); returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, (model, mode, description) in SCHEMAS.items():
        path = directory / file_name
        document = schema_document(model, mode, description, file_name)
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written
