"""Synchronous scoring API: POST /detect and /detect/batch, fed into the same decode pool, batcher and session as Kafka.

Every image is scored (or refused) exactly like a Kafka event: the same envelope rules, limits and error codes,
so a request that fails here with `image_decode_failed` would have been dead-lettered with that code.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from email.message import Message
from io import BufferedIOBase
from typing import TYPE_CHECKING, Any

from processor.envelope import ENVELOPE_ALLOWANCE_BYTES, looks_like_json
from processor.errors import InvalidJson, InvalidSchema, MissingImage, ProcessorError
from processor.http.multipart import Part, parse_form
from processor.inflight import Headers, InFlight
from processor.outcomes import result_fields
from processor.settings import Settings
from schemas.api import DetectResult, ErrorDetail, ErrorResponse

if TYPE_CHECKING:
    from processor.telemetry.health import Health
    from processor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

DetectFn = Callable[[bytes, Headers | None], "Future[InFlight]"]
ROUTES = ("/detect", "/detect/batch")
JSON_HEADERS: Headers = [("content-type", b"application/json")]
# Concurrent requests held at once; each may hold a body of up to the request limit in memory.
MAX_CONCURRENT_REQUESTS = 64

# The DLQ code of a refused image → the HTTP status /detect answers with. Client input never maps to 5xx;
# inference_failed means the model itself raised or returned NaN on a decodable image.
STATUS_BY_CODE: dict[str, int] = {
    "invalid_json": 400,
    "invalid_schema": 400,
    "missing_image": 400,
    "image_decode_failed": 400,
    "face_out_of_bounds": 400,
    "url_not_allowed": 400,
    "image_too_large": 413,
    "image_too_many_pixels": 413,
    "fetch_failed": 422,
    "inference_failed": 500,
}


class ApiError(Exception):
    """A request-level refusal: HTTP status plus the `{"error": {...}}` body. `unread` = the body was not read."""

    def __init__(self, status: int, code: str, message: str, *, unread: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.unread = status, code, message, unread


@dataclass(slots=True)
class Reply:
    """What the HTTP handler sends. `close` asks it to drop the connection (a request body was left unread)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


@dataclass(frozen=True, slots=True)
class ApiLimits:
    max_body_bytes: int
    max_batch: int
    timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiLimits:
        # The same ceiling as a Kafka JSON envelope: base64 is 4/3 of the image, plus room for ids and faces.
        body = int(settings.max_image_bytes) * 4 // 3 + ENVELOPE_ALLOWANCE_BYTES
        return cls(max_body_bytes=body, max_batch=settings.detect_max_batch, timeout_s=settings.detect_timeout_s)


def error_body(code: str, message: str) -> dict[str, Any]:
    return ErrorResponse(error=ErrorDetail(code=code, message=message)).model_dump()


def new_event_id() -> str:
    return f"http-{uuid.uuid4().hex}"


def with_event_id(body: bytes, event_id: str) -> bytes:
    """Give a JSON object a leading `event_id` without parsing it: json.loads keeps the last duplicate key,
    so a client's own `event_id` wins. Saves decoding a 27 MB envelope twice; non-objects pass unchanged."""
    stripped = body.lstrip(b" \t\r\n")
    if not stripped.startswith(b"{"):
        return body
    rest = stripped[1:]
    comma = b"" if rest.lstrip(b" \t\r\n").startswith(b"}") else b","
    return b'{"event_id":' + json.dumps(event_id).encode() + comma + rest


class DetectApi:
    """Turns request bodies into `submit_sync` calls and finished InFlights into replies. Thread-safe."""

    def __init__(self, detect: DetectFn, health: Health, limits: ApiLimits, metrics: Metrics | None = None) -> None:
        self.detect = detect
        self.health = health
        self.limits = limits
        self.metrics = metrics
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)

    def handle(self, path: str, headers: Message, rfile: BufferedIOBase) -> Reply:
        """One POST to a /detect route. Never raises: every failure becomes a JSON error reply."""
        reply = self._handle(path, headers, rfile)
        if self.metrics is not None:
            self.metrics.api_requests.labels(route=path, status=str(reply.status)).inc()
        return reply

    def _handle(self, path: str, headers: Message, rfile: BufferedIOBase) -> Reply:
        if self.health.fatal or self.health.stopping or not self.health.warmed_up:
            return _error_reply(ApiError(503, "not_ready", "the model is not loaded and warm yet", unread=True))
        if not self._slots.acquire(blocking=False):
            return _error_reply(ApiError(503, "overloaded", "too many concurrent /detect requests", unread=True))
        try:
            body = read_body(headers, rfile, self.limits.max_body_bytes)
            if path == "/detect":
                return self._single(headers, body)
            return self._batch(headers, body)
        except ApiError as exc:
            return _error_reply(exc)
        except ProcessorError as exc:
            return Reply(STATUS_BY_CODE.get(exc.code, 400), error_body(exc.code, exc.message))
        finally:
            self._slots.release()

    def _single(self, headers: Message, body: bytes) -> Reply:
        value, item_headers = single_event(headers, body, self.limits.max_batch)
        item = self._wait([self._submit(value, item_headers)])[0]
        reply_body = error_body(item.error.code, item.error.message) if item.error else result_body(item)
        self._count("/detect", [reply_body])
        status = STATUS_BY_CODE.get(item.error.code, 400) if item.error else 200
        return Reply(status, reply_body)

    def _batch(self, headers: Message, body: bytes) -> Reply:
        events = batch_events(headers, body, self.limits.max_batch)
        items = self._wait([self._submit(value, item_headers) for value, item_headers in events])
        results = [error_body(i.error.code, i.error.message) if i.error else result_body(i) for i in items]
        self._count("/detect/batch", results)
        return Reply(200, {"results": results})

    def _count(self, route: str, bodies: list[dict[str, Any]]) -> None:
        """One count per image answered: its result label, or its error code."""
        if self.metrics is None:
            return
        for body in bodies:
            outcome = body["error"]["code"] if "error" in body else body["label"]
            self.metrics.api_images.labels(route=route, outcome=outcome).inc()

    def _submit(self, value: bytes, headers: Headers) -> Future[InFlight]:
        try:
            return self.detect(value, headers)
        except RuntimeError as exc:  # not built yet, or the decode pool is shut down for draining
            raise ApiError(503, "not_ready", f"not accepting images: {exc}") from None

    def _wait(self, futures: list[Future[InFlight]]) -> list[InFlight]:
        deadline = time.monotonic() + self.limits.timeout_s
        try:
            return [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except FutureTimeout:
            raise ApiError(503, "timeout", f"no result within DETECT_TIMEOUT_S={self.limits.timeout_s}") from None


def _error_reply(exc: ApiError) -> Reply:
    extra = {"Retry-After": "1"} if exc.status == 503 else {}
    return Reply(exc.status, error_body(exc.code, exc.message), headers=extra, close=exc.unread)


def result_body(item: InFlight) -> dict[str, Any]:
    return DetectResult(**result_fields(item)).model_dump(mode="json", exclude_none=True)


def read_body(headers: Message, rfile: BufferedIOBase, limit: int) -> bytes:
    """The request body, refused (413) from Content-Length alone when it is over the limit."""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        raise ApiError(411, "length_required", "send a Content-Length (chunked bodies are not accepted)", unread=True)
    raw = headers.get("Content-Length")
    try:
        length = int(raw) if raw is not None else 0
    except ValueError:
        length = -1
    if length < 0:
        raise ApiError(400, "invalid_request", f"bad Content-Length {raw!r}", unread=True)
    if length > limit:
        raise ApiError(413, "image_too_large", f"request body is {length} bytes; the limit is {limit}", unread=True)
    body = rfile.read(length) if length else b""
    if len(body) != length:
        raise ApiError(400, "invalid_request", f"body ended after {len(body)} of {length} bytes", unread=True)
    return body


def _kind(headers: Message, body: bytes) -> str:
    content_type = headers.get_content_type() if headers.get("Content-Type") else ""
    if content_type == "multipart/form-data":
        return "multipart"
    if content_type.endswith(("/json", "+json")) or looks_like_json(body, None):
        return "json"
    return "raw"


def single_event(headers: Message, body: bytes, max_parts: int) -> tuple[bytes, Headers]:
    """One /detect body → the Kafka-shaped value and headers the decode stage takes."""
    kind = _kind(headers, body)
    if kind == "json":
        return with_event_id(body, new_event_id()), JSON_HEADERS
    if kind == "multipart":
        return form_event(parse_form(body, _boundary(headers), max_parts + 8))
    return body, [("event_id", new_event_id().encode())]


def batch_events(headers: Message, body: bytes, max_batch: int) -> list[tuple[bytes, Headers]]:
    """A /detect/batch body → one Kafka-shaped event per item, in order."""
    kind = _kind(headers, body)
    if kind == "multipart":
        parts = parse_form(body, _boundary(headers), max_batch + 8)
        files = [p.data for p in parts if p.name in ("images", "image")]
        events = [(data, [("event_id", new_event_id().encode())]) for data in files]
    elif kind == "json":
        events = [(json.dumps(_with_id(item)).encode(), JSON_HEADERS) for item in _batch_items(body)]
    else:
        raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")
    if not events:
        raise MissingImage("the batch holds no images")
    if len(events) > max_batch:
        raise ApiError(413, "batch_too_large", f"{len(events)} images; DETECT_MAX_BATCH is {max_batch}")
    return events


def _batch_items(body: bytes) -> list[Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidJson(f"body is not valid UTF-8 JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InvalidSchema('the body must be an object {"images": [...]}')
    items: list[Any] = data["images"]
    return items


def _with_id(item: Any) -> Any:
    if isinstance(item, dict) and "event_id" not in item:
        return {"event_id": new_event_id(), **item}
    return item


def _boundary(headers: Message) -> str:
    boundary = headers.get_param("boundary")
    return boundary if isinstance(boundary, str) else ""


def form_event(parts: list[Part]) -> tuple[bytes, Headers]:
    """/detect form fields → an event: raw image bytes, or a JSON envelope when faces/ids/metadata come along."""
    fields = {p.name: p.data for p in parts}
    image = fields.pop("image", None)
    if image is None:
        raise MissingImage('multipart body has no "image" file field')
    event: dict[str, Any] = {"event_id": new_event_id()}
    for name in ("event_id", "post_id", "user_id"):
        if name in fields:
            event[name] = _text(name, fields[name])
    for name in ("faces", "metadata"):
        if name in fields:
            event[name] = _json_field(name, fields[name])
    if len(event) == 1:
        return image, [("event_id", event["event_id"].encode())]
    event["image_b64"] = base64.b64encode(image).decode("ascii")
    return json.dumps(event).encode(), JSON_HEADERS


def _text(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSchema(f"form field {name} is not UTF-8 text") from None


def _json_field(name: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidJson(f"form field {name} is not valid JSON: {str(exc)[:200]}") from None
