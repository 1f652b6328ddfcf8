"""HTTP surface on HTTP_PORT: /health (seed-shaped JSON), /healthz, /readyz, /metrics — served off the Kafka thread."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processor import SERVICE_NAME
from processor.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class Health:
    """What the processor knows about itself; written by the pipeline, read by HTTP handlers."""

    model_loaded: bool = False
    warmed_up: bool = False
    joined_group: bool = False
    kafka_connected: bool = False
    stopping: bool = False
    fatal: str | None = None
    gpu_available: bool = False
    provider: str | None = None
    variant: str | None = None
    model_name: str | None = None
    model_sha256: str | None = None
    assigned_partitions: int = 0
    lag: int | None = None
    memory: dict[str, float | None] = field(
        default_factory=lambda: {"gpu_memory_percent": None, "used_mb": None, "total_mb": None}
    )

    @property
    def ready(self) -> bool:
        return self.model_loaded and self.warmed_up and self.joined_group and not self.stopping and not self.fatal

    def status(self) -> str:
        if self.fatal or not self.model_loaded:
            return "unhealthy"
        return "healthy" if self.ready and self.kafka_connected else "degraded"

    def document(self) -> dict[str, Any]:
        return {
            "status": self.status(),
            "service": SERVICE_NAME,
            "ready": self.ready,
            "model_loaded": self.model_loaded,
            "gpu_available": self.gpu_available,
            "provider": self.provider,
            "variant": self.variant,
            "model": {"name": self.model_name, "sha256": self.model_sha256},
            "memory_usage": dict(self.memory),
            "kafka": {
                "connected": self.kafka_connected,
                "assigned_partitions": self.assigned_partitions,
                "lag": self.lag,
            },
            "error": self.fatal,
        }


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
        else:
            self._json(404, {"error": {"code": "not_found", "message": f"no route {path}"}})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)


class HttpServer(ThreadingHTTPServer):
    """stdlib threading server in a daemon thread: a slow scrape never blocks the Kafka loop."""

    daemon_threads = True

    def __init__(self, host: str, port: int, health: Health, metrics: Metrics) -> None:
        super().__init__((host, port), _Handler)
        self.health = health
        self.metrics = metrics
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
