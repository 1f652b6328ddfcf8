"""GET /openapi.json: an OpenAPI 3.1 document built from the app's routes and the pydantic models of `schemas.api`.

3.1 takes JSON Schema 2020-12, which is what pydantic emits, so the models go in unchanged (as FastAPI does).
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Route

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
_MODELS = (DetectRequest, DetectBatchRequest, DetectResult, DetectBatchResponse, ErrorResponse, HealthResponse,
           ReadyResponse, AliveResponse)  # fmt: skip
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
_DETECT_ERRORS = {
    "400": "Refused input: invalid_json, invalid_schema, missing_image, image_decode_failed, face_out_of_bounds, "
    "url_not_allowed (the DLQ code for the same event), or invalid_request",
    "408": "request_timeout: the body took longer than DETECT_BODY_TIMEOUT_S to arrive",
    "413": "image_too_large (body over MAX_IMAGE_BYTES x 4/3 + 256 KiB), image_too_many_pixels, batch_too_large",
    "415": "unsupported_media_type (/detect/batch takes JSON or multipart only)",
    "422": "fetch_failed: an allowlisted image_url could not be fetched",
    "500": "inference_failed: the model raised or returned non-finite scores on a decodable image",
    "503": "not_ready (loading, draining or failed), overloaded (DETECT_MAX_CONCURRENT), or timeout (DETECT_TIMEOUT_S)",
}


def _json(model: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


def _detect_body(model: str, form: dict[str, Any], raw: bool) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": REF.format(model=model)}},
        "multipart/form-data": {"schema": {"type": "object", **form}},
    }
    return {"required": True, "content": {**content, **({m: binary for m in _IMAGE_TYPES} if raw else {})}}


def _operations(max_batch: int, auth: bool) -> dict[str, dict[str, Any]]:
    """Every documented operation by path; a route that is not mounted is left out of the document."""
    text, file = {"type": "string"}, {"type": "string", "format": "binary"}
    fields = {"image": file, **dict.fromkeys(("faces", "event_id", "post_id", "user_id", "metadata"), text)}
    single_form = {"required": ["image"], "properties": fields}
    batch_form = {
        "required": ["images"],
        "properties": {"images": {"type": "array", "items": file, "maxItems": max_batch}},
    }
    errors = {status: _json("ErrorResponse", why) for status, why in _DETECT_ERRORS.items()}
    if auth:
        errors["401"] = _json("ErrorResponse", "unauthorized: no or a wrong `Authorization: Bearer` token")
    secured: dict[str, Any] = {"security": [{"bearer": []}]} if auth else {}
    return {
        "/health": {"summary": "Service health", "responses": {"200": _json("HealthResponse", "Health document")}},
        "/healthz": {"summary": "Liveness", "responses": {"200": _json("AliveResponse", "The process answers")}},
        "/readyz": {"summary": "Readiness", "responses": {"200": _json("ReadyResponse", "Model warm, group joined"),
                                                          "503": _json("ReadyResponse", "Not ready (or draining)")}},
        "/detect": {"summary": "Score one image (raw bytes, multipart `image` file, or JSON envelope)", **secured,
                    "requestBody": _detect_body("DetectRequest", single_form, raw=True),
                    "responses": {"200": _json("DetectResult", "The Kafka result without `source`"), **errors}},
        "/detect/batch": {"summary": f"Score up to {max_batch} images; each item is a result or an error, in order",
                          **secured, "requestBody": _detect_body("DetectBatchRequest", batch_form, raw=False),
                          "responses": {"200": _json("DetectBatchResponse", "One entry per item"), **errors}},
    }  # fmt: skip


def openapi_document(routes: list[BaseRoute], max_batch: int, auth: bool) -> dict[str, Any]:
    """The document for the mounted `routes`: paths from the route table, schemas from the pydantic models.

    Args:
        routes: The Starlette app's routes; only documented ones that are mounted appear.
        max_batch: DETECT_MAX_BATCH, the `maxItems` of a batch.
        auth: Whether /detect needs a bearer token (adds the scheme and the 401 reply).

    Returns:
        The OpenAPI 3.1 document as a JSON-ready dict.
    """
    operations = _operations(max_batch, auth)
    paths = {
        route.path: {method.lower(): operations[route.path] for method in sorted((route.methods or set()) - {"HEAD"})}
        for route in routes
        if isinstance(route, Route) and route.path in operations
    }
    _, top = models_json_schema([(m, "serialization") for m in _MODELS], ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]
    schemas["DetectBatchRequest"]["properties"]["images"]["maxItems"] = max_batch
    components: dict[str, Any] = {"schemas": schemas}
    if auth:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    description = "Deepfake scoring: health and the /detect API"
    return {"openapi": "3.1.0", "info": {"title": SERVICE_NAME, "version": "1", "description": description},
            "paths": paths, "components": components}  # fmt: skip
