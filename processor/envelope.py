"""Turns a Kafka value into image bytes plus the event's fields (docs/EVENTS.md), refusing what breaks the rules."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import ValidationError

from processor.errors import (
    ImageDecodeFailed,
    ImageTooLarge,
    InvalidJson,
    InvalidSchema,
    MissingImage,
)
from processor.inflight import Headers, InFlight
from schemas import ImageEvent

_JSON_START = (ord("{"), ord("["))
_WHITESPACE = b" \t\r\n"
# A JSON envelope may carry this much beyond its base64 image (ids, metadata, face boxes).
ENVELOPE_ALLOWANCE_BYTES = 256 * 1024


def header_value(headers: Headers | None, name: str) -> bytes | None:
    """Last value of a header, case-insensitively (Kafka allows repeats; the last one wins)."""
    found = None
    for key, value in headers or ():
        if key.lower() == name:
            found = value
    return found


def looks_like_json(value: bytes, headers: Headers | None) -> bool:
    """True when the value is a JSON envelope: starts with `{`/`[` after whitespace, or a JSON content-type header."""
    content_type = header_value(headers, "content-type")
    if content_type is not None and b"json" in content_type.lower():
        return True
    stripped = value.lstrip(_WHITESPACE)
    return bool(stripped) and stripped[0] in _JSON_START


def open_envelope(item: InFlight, max_image_bytes: int, max_faces: int) -> tuple[bytes | None, str | None]:
    """Fill the item's event fields; return (image bytes, image url) — exactly one is set."""
    value = item.value
    if not value:
        item.event_id = _header_event_id(item)
        raise MissingImage("the message value is empty")
    if not looks_like_json(value, item.headers):
        item.event_id = _header_event_id(item)
        if len(value) > max_image_bytes:
            raise ImageTooLarge(f"image is {len(value)} bytes, MAX_IMAGE_BYTES is {max_image_bytes}")
        return value, None
    item.event_id = _header_event_id(item)
    event = _parse_event(value, max_image_bytes, max_faces)
    item.event_id = event.event_id
    item.post_id, item.user_id, item.metadata, item.faces = (
        event.post_id,
        event.user_id,
        event.metadata,
        event.faces,
    )
    if event.image_url is not None:
        return None, event.image_url
    return decode_b64(event.image_b64 or "", max_image_bytes), None


def _header_event_id(item: InFlight) -> str:
    raw = header_value(item.headers, "event_id")
    if raw:
        text = raw.decode("utf-8", errors="replace")
        if len(text) <= 256:
            return text
    return item.fallback_event_id


def _parse_event(value: bytes, max_image_bytes: int, max_faces: int) -> ImageEvent:
    # Refuse oversize envelopes before json.loads materialises them: base64 is 4/3 of the image.
    limit = max_image_bytes * 4 // 3 + ENVELOPE_ALLOWANCE_BYTES
    if len(value) > limit:
        raise ImageTooLarge(f"event is {len(value)} bytes; MAX_IMAGE_BYTES={max_image_bytes} allows {limit}")
    try:
        data: Any = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidJson(f"value is not valid UTF-8 JSON: {_short(exc)}") from None
    if not isinstance(data, dict):
        raise InvalidSchema(f"JSON value must be an object, got {type(data).__name__}")
    faces = data.get("faces")
    if isinstance(faces, list) and len(faces) > max_faces:
        raise InvalidSchema(f"{len(faces)} face boxes; at most MAX_FACES={max_faces} per event")
    try:
        return ImageEvent.model_validate(data)
    except ValidationError as exc:
        raise InvalidSchema(_schema_message(exc)) from None
    except RecursionError:
        raise InvalidSchema("JSON nested too deeply") from None


def decode_b64(text: str, max_image_bytes: int) -> bytes:
    """Base64 → bytes, judging the size from the text length first (docs/EVENTS.md)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if not text.strip():
        raise MissingImage("image_b64 is empty")
    estimated = len(text) * 3 // 4
    if estimated > max_image_bytes + 3:
        raise ImageTooLarge(f"image_b64 decodes to ~{estimated} bytes, MAX_IMAGE_BYTES is {max_image_bytes}")
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeFailed(f"image_b64 is not valid base64: {_short(exc)}") from None
    if not data:
        raise MissingImage("image_b64 decodes to no bytes")
    if len(data) > max_image_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes, MAX_IMAGE_BYTES is {max_image_bytes}")
    return data


def _schema_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _short(exc: BaseException) -> str:
    return str(exc)[:200]
