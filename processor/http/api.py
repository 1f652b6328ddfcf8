"""POST /detect and /detect/batch: request bodies into the same decode pool, batcher and session as Kafka events.

Every image is scored (or refused) exactly like a Kafka event: the same envelope rules, limits and error codes,
so a request that fails here with `image_decode_failed` would have been dead-lettered with that code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers as StarletteHeaders
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse

from processor.envelope import ENVELOPE_ALLOWANCE_BYTES, looks_like_json
from processor.errors import InvalidJson, InvalidSchema, MissingImage, ProcessorError
from processor.http.limits import ApiError, ApiLimits, error_body, read_body
from processor.inflight import Headers, InFlight
from processor.outcomes import result_fields
from schemas.api import DetectResult

if TYPE_CHECKING:
    from processor.telemetry.health import Health
    from processor.telemetry.metrics import Metrics

DetectFn = Callable[[bytes, Headers | None], "Future[InFlight]"]
JSON_HEADERS: Headers = [("content-type", b"application/json")]

# The DLQ code of a refused image → the HTTP status /detect answers with. Client input never maps to 5xx;
# inference_failed means the model itself raised or returned NaN on a decodable image.
STATUS_BY_CODE: dict[str, int] = {
    **dict.fromkeys(("invalid_json", "invalid_schema", "missing_image", "image_decode_failed", "face_out_of_bounds",
                     "url_not_allowed"), 400),
    **dict.fromkeys(("image_too_large", "image_too_many_pixels"), 413),
    "fetch_failed": 422,
    "inference_failed": 500,
}  # fmt: skip


def result_body(item: InFlight) -> dict[str, Any]:
    """A finished InFlight's reply: its DetectResult, or the ErrorResponse of its DLQ code."""
    if item.error is not None:
        return error_body(item.error.code, item.error.message)
    return DetectResult(**result_fields(item)).model_dump(mode="json", exclude_none=True)


class DetectApi:
    """The /detect endpoints: request bodies into `detect` calls, finished InFlights into replies.

    Runs on the server's event loop; the pipeline's futures are awaited, never blocked on.
    """

    def __init__(self, detect: DetectFn, health: Health, limits: ApiLimits, metrics: Metrics | None = None) -> None:
        """Serve `detect` (Processor.submit_detect) once `health` says the model is warm."""
        self.detect = detect
        self.health = health
        self.limits = limits
        self.metrics = metrics
        self.busy = 0  # requests holding a slot; only the event loop thread touches it

    async def endpoint(self, request: Request) -> JSONResponse:
        """POST /detect (one image: raw bytes, multipart `image` file or JSON envelope) and /detect/batch."""
        route = request.url.path
        try:
            response = await self._handle(request, batch=route == "/detect/batch")
        except ApiError as exc:
            response = exc.response(request)
        except ProcessorError as exc:
            response = JSONResponse(error_body(exc.code, exc.message), STATUS_BY_CODE.get(exc.code, 400))
        if self.metrics is not None:
            self.metrics.api_requests.labels(route=route, status=str(response.status_code)).inc()
        return response

    async def _handle(self, request: Request, batch: bool) -> JSONResponse:
        health = self.health
        if health.fatal or health.stopping or not health.warmed_up:
            raise ApiError(503, "not_ready", "the model is not loaded and warm yet", unread=True)
        body = await read_body(request, self.limits.max_body_bytes, self.limits.body_timeout_s)
        if self.busy >= self.limits.max_concurrent:
            raise ApiError(503, "overloaded", f"more than {self.limits.max_concurrent} concurrent /detect requests")
        self.busy += 1
        try:
            content_type = request.headers.get("content-type", "")
            if batch:
                events = await batch_events(content_type, body, self.limits.max_batch)
            else:
                events = [await single_event(content_type, body)]
            bodies = [result_body(item) for item in await self._results(events)]
        finally:
            self.busy -= 1
        self._count(request.url.path, bodies)
        if batch:
            return JSONResponse({"results": bodies})
        status = STATUS_BY_CODE.get(bodies[0]["error"]["code"], 400) if "error" in bodies[0] else 200
        return JSONResponse(bodies[0], status)

    async def _results(self, events: list[tuple[bytes, Headers]]) -> list[InFlight]:
        try:
            futures = [self.detect(value, headers) for value, headers in events]
        except RuntimeError as exc:  # not built yet, or the decode pool is shut down for draining
            raise ApiError(503, "not_ready", f"not accepting images: {exc}") from None
        # asyncio.wait never cancels on timeout: the pipeline owns these futures and finishes every one.
        _, pending = await asyncio.wait([asyncio.wrap_future(f) for f in futures], timeout=self.limits.timeout_s)
        if pending:
            raise ApiError(503, "timeout", f"no result within DETECT_TIMEOUT_S={self.limits.timeout_s}")
        return [f.result() for f in futures]

    def _count(self, route: str, bodies: list[dict[str, Any]]) -> None:
        """One count per image answered: its result label, or its error code."""
        if self.metrics is None:
            return
        for body in bodies:
            outcome = body["error"]["code"] if "error" in body else body["label"]
            self.metrics.api_images.labels(route=route, outcome=outcome).inc()


def new_event_id() -> str:
    """A fresh event id for an image that came without one."""
    return f"http-{uuid.uuid4().hex}"


def with_event_id(body: bytes, event_id: str) -> bytes:
    """Give a JSON object a leading `event_id` without parsing it.

    json.loads keeps the last duplicate key, so a client's own `event_id` wins; this saves decoding a
    27 MB envelope twice. Non-objects pass unchanged.
    """
    stripped = body.lstrip(b" \t\r\n")
    if not stripped.startswith(b"{"):
        return body
    rest = stripped[1:]
    comma = b"" if rest.lstrip(b" \t\r\n").startswith(b"}") else b","
    return b'{"event_id":' + json.dumps(event_id).encode() + comma + rest


def _kind(content_type: str, body: bytes) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        return "multipart"
    if media.endswith(("/json", "+json")) or looks_like_json(body, None):
        return "json"
    return "raw"


async def single_event(content_type: str, body: bytes) -> tuple[bytes, Headers]:
    """One /detect body → the Kafka-shaped value and headers the decode stage takes."""
    kind = _kind(content_type, body)
    if kind == "json":
        return with_event_id(body, new_event_id()), JSON_HEADERS
    if kind == "multipart":
        return form_event(await form_fields(content_type, body, max_parts=16))
    return body, [("event_id", new_event_id().encode())]


async def batch_events(content_type: str, body: bytes, max_batch: int) -> list[tuple[bytes, Headers]]:
    """A /detect/batch body → one Kafka-shaped event per item, in order."""
    kind = _kind(content_type, body)
    if kind == "multipart":
        fields = await form_fields(content_type, body, max_parts=max_batch + 8)
        files = [data for name, data in fields if name in ("images", "image")]
        events = [(data, [("event_id", new_event_id().encode())]) for data in files]
    elif kind == "json":
        events = await run_in_threadpool(_json_batch, body)  # a big body would stall every other request
    else:
        raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")
    if not events:
        raise MissingImage("the batch holds no images")
    if len(events) > max_batch:
        raise ApiError(413, "batch_too_large", f"{len(events)} images; DETECT_MAX_BATCH is {max_batch}")
    return events


def _json_batch(body: bytes) -> list[tuple[bytes, Headers]]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidJson(f"body is not valid UTF-8 JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InvalidSchema('the body must be an object {"images": [...]}')
    with_ids = [{"event_id": new_event_id(), **i} if isinstance(i, dict) else i for i in data["images"]]
    return [(json.dumps(item).encode(), JSON_HEADERS) for item in with_ids]  # a client's own event_id wins


async def form_fields(content_type: str, body: bytes, max_parts: int) -> list[tuple[str, bytes]]:
    """A multipart/form-data body (RFC 7578) → (name, bytes) per field, files and text alike.

    Starlette's parser (python-multipart underneath) reads the body already held in memory; anything it
    refuses is `invalid_schema`, the DLQ code for a malformed envelope.
    """

    async def once() -> AsyncGenerator[bytes, None]:
        yield body

    headers, most = StarletteHeaders({"content-type": content_type}), ENVELOPE_ALLOWANCE_BYTES  # per text field
    parser = MultiPartParser(headers, once(), max_files=max_parts, max_fields=max_parts, max_part_size=most)
    parser.spool_max_size = len(body) + 1  # the body is in memory already: keep files there (no /tmp writes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidSchema(f"multipart body: {exc.message}") from None
    try:
        return [
            (name, await value.read() if isinstance(value, UploadFile) else value.encode())
            for name, value in form.multi_items()
        ]
    finally:
        await form.close()


def form_event(fields: list[tuple[str, bytes]]) -> tuple[bytes, Headers]:
    """/detect form fields → an event: raw image bytes, or a JSON envelope when faces/ids/metadata come along."""
    named = dict(fields)
    image = named.pop("image", None)
    if image is None:
        raise MissingImage('multipart body has no "image" file field')
    event: dict[str, Any] = {"event_id": new_event_id()}
    for name in ("event_id", "post_id", "user_id"):
        if name in named:
            event[name] = named[name].decode("utf-8", "replace")
    for name in ("faces", "metadata"):
        if name in named:
            event[name] = _json_field(name, named[name])
    if len(event) == 1:
        return image, [("event_id", event["event_id"].encode())]
    event["image_b64"] = base64.b64encode(image).decode("ascii")
    return json.dumps(event).encode(), JSON_HEADERS


def _json_field(name: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidJson(f"form field {name} is not valid JSON: {str(exc)[:200]}") from None
