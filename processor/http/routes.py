"""The ASGI app on HTTP_PORT: probes, /metrics, /openapi.json, the /detect API and /admin/reload, as Starlette routes.

Probes read the shared `Health`; nothing here blocks the event loop (the pipeline's futures are awaited, and
scrapes and reloads run in Starlette's thread pool), so a slow client or a long reload never stalls a probe.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from processor.http.api import DetectApi
from processor.http.limits import ApiError, error_body, read_body
from processor.http.openapi import openapi_document
from processor.telemetry.health import Health
from processor.telemetry.metrics import Metrics

Reloader = Callable[[Path | None, str | None], dict[str, Any]]
ADMIN_BODY_LIMIT = 64 * 1024
_ADMIN_BODY_TIMEOUT_S = 10.0
_CODES = {404: "not_found", 405: "method_not_allowed"}


def build_app(health: Health, metrics: Metrics, api: DetectApi | None = None, reload: Reloader | None = None,
              token: bytes | None = None) -> ASGIApp:  # fmt: skip
    """The HTTP service as one ASGI app.

    Args:
        health: Shared health state, read by /health and /readyz.
        metrics: Whose registry /metrics exposes.
        api: The /detect routes; None leaves them out (404) when DFP_HTTP_API=false.
        reload: Processor.reload behind POST /admin/reload; None (404) unless DFP_ADMIN_API=true.
        token: When set, /detect* and /admin/* need `Authorization: Bearer <token>`.

    Returns:
        The Starlette app, wrapped in the bearer check when a token is set.
    """

    async def health_doc(request: Request) -> JSONResponse:
        return JSONResponse(health.document())

    async def alive(request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ready": health.ready, "status": health.status()}, 200 if health.ready else 503)

    def scrape(request: Request) -> Response:  # sync: Starlette runs it in its thread pool
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return document

    routes = [Route("/health", health_doc), Route("/healthz", alive), Route("/readyz", ready),
              Route("/metrics", scrape), Route("/openapi.json", openapi)]  # fmt: skip
    if api is not None:
        routes += [Route(path, api.endpoint, methods=["POST"]) for path in ("/detect", "/detect/batch")]
    if reload is not None:
        routes.append(Route("/admin/reload", _reload_endpoint(reload), methods=["POST"]))
    max_batch = api.limits.max_batch if api is not None else 1
    document = JSONResponse(openapi_document(list(routes), max_batch, auth=token is not None))
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _server_error})
    return BearerAuth(app, token) if token is not None else app


def _reload_endpoint(reload: Reloader) -> Callable[[Request], Any]:
    async def admin_reload(request: Request) -> JSONResponse:
        """Hot swap: optional JSON {"model_dir": ..., "variant": ...}; 200 when swapped, 409 when refused."""
        try:
            raw = await read_body(request, ADMIN_BODY_LIMIT, _ADMIN_BODY_TIMEOUT_S)
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            model_dir = Path(body["model_dir"]) if body.get("model_dir") else None
            variant = str(body["variant"]) if body.get("variant") else None
        except ApiError as exc:
            return exc.response(request)
        except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError included
            return JSONResponse(error_body("invalid_request", f"reload body: {str(exc)[:200]}"), 400)
        outcome = await run_in_threadpool(reload, model_dir, variant)  # seconds of loading: off the event loop
        return JSONResponse(outcome, 200 if outcome.get("swapped") else 409)

    return admin_reload


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 as JSON ErrorResponses, with a stable `Allow` header."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if "Allow" in headers:
        headers["Allow"] = ", ".join(sorted(headers["Allow"].split(", ")))
    code = _CODES.get(exc.status_code, "invalid_request")
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(error_body(code, message), exc.status_code, headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug answers a JSON 500 (Starlette logs the traceback); never an HTML page."""
    return JSONResponse(error_body("internal_error", type(exc).__name__), 500)


class BearerAuth:
    """ASGI middleware: /detect* and /admin/* need `Authorization: Bearer <token>`; probes and /metrics stay open."""

    def __init__(self, app: ASGIApp, token: bytes) -> None:
        """Guard `app` with `token` (compared in constant time)."""
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a guarded request without the token (401 + `WWW-Authenticate: Bearer`); pass the rest on."""
        path = scope.get("path", "")
        guarded = path == "/detect" or path.startswith(("/detect/", "/admin/"))
        if scope["type"] != "http" or not guarded or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        refusal = ApiError(401, "unauthorized", "send Authorization: Bearer <DFP_API_TOKEN>", unread=True,
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        await refusal.response(Request(scope))(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False
