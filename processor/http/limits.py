"""Reading a request within its limits, and refusing it: body size and arrival time, JSON error replies.

Shared by the /detect routes and /admin/reload; the limits are enforced while the body streams in, never
after buffering it whole.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from processor.envelope import ENVELOPE_ALLOWANCE_BYTES
from schemas.api import ErrorDetail, ErrorResponse

if TYPE_CHECKING:
    from processor.settings import Settings

# A refused body of at most this many bytes is read and dropped by uvicorn after the reply, so the client sees
# the reply instead of a reset and keeps its connection; anything bigger (or chunked) gets `Connection: close`.
DRAIN_LIMIT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """Bounds of the /detect API: body size and arrival time, batch size, wait for results, requests at once."""

    max_body_bytes: int
    max_batch: int
    timeout_s: float
    max_concurrent: int = 64
    body_timeout_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiLimits:
        """The limits the settings imply; the body ceiling is that of a Kafka JSON envelope."""
        body = int(settings.max_image_bytes) * 4 // 3 + ENVELOPE_ALLOWANCE_BYTES  # base64 is 4/3 of the image
        return cls(body, settings.detect_max_batch, settings.detect_timeout_s,
                   settings.detect_max_concurrent, settings.detect_body_timeout_s)  # fmt: skip


class ApiError(Exception):
    """A request-level refusal: an HTTP status and the `{"error": {...}}` body.

    `unread` means the request body was not (fully) read; the reply then closes the connection unless
    uvicorn can drain the rest cheaply (a declared length of at most DRAIN_LIMIT_BYTES).
    """

    def __init__(self, status: int, code: str, message: str, *, unread: bool = False,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        """Keep the reply's parts; `headers` are extra response headers (a 503 always gets `Retry-After`)."""
        super().__init__(message)
        self.status, self.code, self.message, self.unread = status, code, message, unread
        self.headers = dict(headers or {})
        if status == 503:
            self.headers.setdefault("Retry-After", "1")

    def response(self, request: Request) -> JSONResponse:
        """The JSON error reply, with `Connection: close` when an unread body must not be drained."""
        headers = dict(self.headers)
        declared = request.headers.get("content-length", "")
        if self.unread and not (declared.isdigit() and int(declared) <= DRAIN_LIMIT_BYTES):
            headers["Connection"] = "close"
        return JSONResponse(error_body(self.code, self.message), self.status, headers)


def error_body(code: str, message: str) -> dict[str, Any]:
    """The ErrorResponse body for one refusal."""
    return ErrorResponse(error=ErrorDetail(code=code, message=message)).model_dump()


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """Stream the body in, refusing it (413) once it passes `limit` and (408) once it takes over `timeout_s`.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body is counted
    as it arrives. uvicorn (h11) has already answered 400 to a malformed or negative Content-Length.
    """
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise ApiError(400, "invalid_request", f"bad Content-Length {declared[:40]!r}", unread=True)
    if declared is not None and int(declared) > limit:
        raise ApiError(413, "image_too_large", f"request body is {declared} bytes; the limit is {limit}", unread=True)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "image_too_large", f"request body passed the limit of {limit} bytes",
                                   unread=True)  # fmt: skip
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the body took over {timeout_s} s to arrive", unread=True,
                       headers={"Connection": "close"}) from None  # fmt: skip
    except ClientDisconnect:
        raise ApiError(400, "invalid_request", "the client went away before the body was in", unread=True) from None
    return b"".join(chunks)
