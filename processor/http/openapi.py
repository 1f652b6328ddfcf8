"""The OpenAPI 3.0 document served at GET /openapi.json, its JSON Schemas generated from the `schemas.api` models."""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from processor import SERVICE_NAME
from schemas.api import (
    AliveResponse,
    DetectBatchRequest,
    DetectBatchResponse,
    DetectRequest,
    DetectResult,
    ErrorResponse,
    HealthResponse,
    ReadyResponse,
)

REF = "#/components/schemas/{model}"
_MODELS: tuple[type[BaseModel], ...] = (
    DetectRequest, DetectBatchRequest, DetectResult, DetectBatchResponse, ErrorResponse,
    HealthResponse, ReadyResponse, AliveResponse,
)  # fmt: skip
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
_DETECT_ERRORS = {
    "400": "Refused input: invalid_json, invalid_schema, missing_image, image_decode_failed, face_out_of_bounds, "
    "url_not_allowed (the DLQ code for the same event), or invalid_request",
    "411": "length_required: a chunked body (send Content-Length)",
    "413": "image_too_large (body over MAX_IMAGE_BYTES x 4/3 + 256 KiB, refused unread), image_too_many_pixels, "
    "batch_too_large",
    "422": "fetch_failed: an allowlisted image_url could not be fetched",
    "500": "inference_failed: the model raised or returned non-finite scores on a decodable image",
    "503": "not_ready (loading, draining or failed), overloaded, or timeout (DETECT_TIMEOUT_S)",
}


def to_openapi30(schema: Any) -> Any:
    """JSON Schema 2020-12 (what pydantic emits) → the OpenAPI 3.0 dialect: nullable, boolean exclusive bounds."""
    if isinstance(schema, list):
        return [to_openapi30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: to_openapi30(v) for k, v in schema.items()}
    any_of = out.get("anyOf")
    if isinstance(any_of, list) and {"type": "null"} in any_of:
        rest = [s for s in any_of if s != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            out.update(rest[0])
        else:  # a sibling of $ref is ignored in 3.0, so keep the union and put `nullable` next to it
            out["anyOf"] = rest
        out["nullable"] = True
    for bound, keyword in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out.get(bound), bool):
            out[keyword], out[bound] = out[bound], True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out


def _components(max_batch: int) -> dict[str, Any]:
    _, top = models_json_schema([(m, "serialization") for m in _MODELS], ref_template=REF)
    schemas: dict[str, Any] = to_openapi30(top["$defs"])
    schemas["DetectBatchRequest"]["properties"]["images"]["maxItems"] = max_batch
    return schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors() -> dict[str, Any]:
    return {status: _json("ErrorResponse", text) for status, text in _DETECT_ERRORS.items()}


def _get(summary: str, ok: str, model: str, **more: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": _json(model, ok), **more}}}


def _detect_form(max_batch: int) -> dict[str, dict[str, Any]]:
    text = {"type": "string"}
    single = {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "format": "binary"},
            "faces": {**text, "description": "JSON list of face boxes"},
            "event_id": text, "post_id": text, "user_id": text,
            "metadata": {**text, "description": "JSON object, echoed"},
        },
    }  # fmt: skip
    images = {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": max_batch}
    batch = {"type": "object", "required": ["images"], "properties": {"images": images}}
    return {"single": single, "batch": batch}


def _detect_paths(max_batch: int) -> dict[str, Any]:
    form = _detect_form(max_batch)
    binary = {"schema": {"type": "string", "format": "binary"}}
    single_body = {
        "required": True,
        "content": {
            "application/json": {"schema": _ref("DetectRequest")},
            "multipart/form-data": {"schema": form["single"]},
            **{media: binary for media in _IMAGE_TYPES},
        },
    }
    batch_body = {
        "required": True,
        "content": {
            "application/json": {"schema": _ref("DetectBatchRequest")},
            "multipart/form-data": {"schema": form["batch"]},
        },
    }
    batch_errors = {**_errors(), "415": _json("ErrorResponse", "unsupported_media_type")}
    return {
        "/detect": {"post": {
            "summary": "Score one image (raw bytes, multipart `image` file, or JSON envelope)",
            "requestBody": single_body,
            "responses": {"200": _json("DetectResult", "The SPEC §5 result without `source`"), **_errors()},
        }},
        "/detect/batch": {"post": {
            "summary": f"Score up to {max_batch} images; each item is a result or an error, in order",
            "requestBody": batch_body,
            "responses": {"200": _json("DetectBatchResponse", "One entry per item"), **batch_errors},
        }},
    }  # fmt: skip


@functools.lru_cache(maxsize=4)
def _document(max_batch: int | None) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/health": _get("Service health (SPEC §7)", "Health document", "HealthResponse"),
        "/healthz": _get("Liveness", "The process answers", "AliveResponse"),
        "/readyz": _get("Readiness", "Model warm and group joined", "ReadyResponse",
                        **{"503": _json("ReadyResponse", "Not ready yet (or draining)")}),
    }  # fmt: skip
    if max_batch is not None:
        paths.update(_detect_paths(max_batch))
    return {
        "openapi": "3.0.3",
        "info": {"title": SERVICE_NAME, "version": "1", "description": "Deepfake scoring: health and /detect API"},
        "paths": paths,
        "components": {"schemas": _components(max_batch or 1)},
    }


def openapi_document(max_batch: int | None) -> dict[str, Any]:
    """The document; `max_batch=None` when the /detect API is off (then only health routes are listed)."""
    return copy.deepcopy(_document(max_batch))
