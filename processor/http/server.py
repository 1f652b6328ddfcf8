"""HTTP surface on HTTP_PORT: /health, /healthz, /readyz, /metrics, /openapi.json, /detect — off the Kafka thread."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processor.http.api import ROUTES, DetectApi
from processor.http.openapi import openapi_document
from processor.telemetry.health import Health
from processor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Reloader = Callable[[Path | None, str | None], dict[str, Any]]
_ADMIN_BODY_LIMIT = 64 * 1024
# After refusing a body unread, read (and drop) this much of it, so the client sees the reply instead of a reset.
_DISCARD_BYTES = 4 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    server: HttpServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        health = self.server.health
        if path == "/health":
            self._json(200, health.document())
        elif path == "/healthz":
            self._json(200, {"status": "alive"})
        elif path == "/readyz":
            self._json(200 if health.ready else 503, {"ready": health.ready, "status": health.status()})
        elif path == "/metrics":
            self._send(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/openapi.json":
            api = self.server.api
            self._json(200, openapi_document(api.limits.max_batch if api else None))
        elif path in _detect_routes(self.server):
            self._json(405, _error("method_not_allowed", f"{path} takes POST"), {"Allow": "POST"})
        else:
            self._json(404, _error("not_found", f"no route {path}"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/admin/reload" and self.server.reload is not None:
            self._admin_reload(self.server.reload)
            return
        api = self.server.api
        if api is None or path not in _detect_routes(self.server):
            self._refuse_unread(404, _error("not_found", f"no route POST {path}"))
            return
        reply = api.handle(path, self.headers, self.rfile)
        if reply.close:
            self._refuse_unread(reply.status, reply.body, reply.headers)
        else:
            self._json(reply.status, reply.body, reply.headers)

    def _admin_reload(self, reload: Reloader) -> None:
        """Hot swap (DFP_ADMIN_API=true): optional JSON {"model_dir": ..., "variant": ...}; 409 when refused."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > _ADMIN_BODY_LIMIT:
            self._refuse_unread(413, _error("invalid_request", "reload body too large"))
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            model_dir = Path(body["model_dir"]) if body.get("model_dir") else None
            variant = str(body["variant"]) if body.get("variant") else None
        except (ValueError, TypeError) as exc:
            self._json(400, _error("invalid_request", f"reload body: {exc}"))
            return
        outcome = reload(model_dir, variant)
        self._json(200 if outcome.get("swapped") else 409, outcome)

    def _not_allowed(self) -> None:
        """Other methods get a JSON 405, not the stdlib's HTML 501 (a 5xx that a client's mistake must not cause)."""
        allow = "POST" if self.path.split("?", 1)[0] in _detect_routes(self.server) else "GET"
        self._refuse_unread(405, _error("method_not_allowed", f"{self.command} is not served"), {"Allow": allow})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _not_allowed

    def _refuse_unread(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.close_connection = True
        self._json(status, body, headers)
        self._discard_body()

    def _discard_body(self) -> None:
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        declared = self.headers.get("Content-Length") or "0"
        left = _DISCARD_BYTES if chunked else min(_DISCARD_BYTES, int(declared) if declared.isdigit() else 0)
        try:
            self.connection.settimeout(1.0)
            while left > 0 and (chunk := self.rfile.read1(min(left, 65536))):
                left -= len(chunk)
        except OSError:
            pass  # the client gave up or stalled: closing is all that is left to do

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _detect_routes(server: HttpServer) -> tuple[str, ...]:
    return ROUTES if server.api is not None else ()


class HttpServer(ThreadingHTTPServer):
    """stdlib threading server in a daemon thread: a slow scrape never blocks the Kafka loop."""

    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of /detect clients would be refused or reset.
    request_queue_size = 128

    def __init__(self, host: str, port: int, health: Health, metrics: Metrics) -> None:
        super().__init__((host, port), _Handler)
        self.health = health
        self.metrics = metrics
        self.api: DetectApi | None = None  # the /detect routes; None (404) when DFP_HTTP_API=false
        self.reload: Reloader | None = None  # POST /admin/reload; None (404) unless DFP_ADMIN_API=true
        self._thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("http listening", extra={"host": self.server_address[0], "port": self.port})

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
