"""uvicorn serving the HTTP app in a named daemon thread, off the Kafka thread; the main thread keeps the signals."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from starlette.types import ASGIApp

from processor.errors import ConfigError
from processor.http.api import DetectApi, DetectFn
from processor.http.limits import ApiLimits
from processor.http.routes import Reloader, build_app
from processor.settings import Settings
from processor.telemetry.health import Health
from processor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

# An idle keep-alive connection is closed after this long; requests in between are served as usual.
KEEP_ALIVE_S = 5
# Request line plus headers bigger than this is a 400 (h11 would otherwise buffer up to its 16 KiB default anyway).
MAX_HEADER_BYTES = 16 * 1024
_STOP_S = 5.0


def bearer_token(settings: Settings) -> bytes | None:
    """DFP_API_TOKEN, or the contents of DFP_API_TOKEN_FILE read now (whitespace stripped); None when neither is set.

    Raises:
        ConfigError: Both are set, the file cannot be read, or the token is empty.
    """
    if settings.api_token is not None and settings.api_token_file is not None:
        raise ConfigError("set DFP_API_TOKEN or DFP_API_TOKEN_FILE, not both")
    if settings.api_token is not None:
        token = settings.api_token.get_secret_value().strip()
    elif settings.api_token_file is not None:
        try:
            token = settings.api_token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"DFP_API_TOKEN_FILE cannot be read: {exc}") from None
    else:
        return None
    if not token:
        raise ConfigError("DFP_API_TOKEN / DFP_API_TOKEN_FILE holds an empty token")
    return token.encode()


class HttpServer:
    """The listening socket (bound at construction, so the port is known and taken early) and its uvicorn thread."""

    def __init__(self, host: str, port: int, app: ASGIApp, keep_alive_s: int = KEEP_ALIVE_S) -> None:
        """Bind `host:port` (port 0 picks a free one) for `app`; serving starts with `start()`."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(2048)  # a burst of /detect clients must queue, not be refused
        config = uvicorn.Config(
            app, http="h11", loop="asyncio", ws="none", lifespan="off", log_config=None, log_level="warning",
            access_log=False, proxy_headers=False, server_header=False, timeout_keep_alive=keep_alive_s,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_graceful_shutdown=int(_STOP_S),
        )  # fmt: skip
        # Not in the main thread, so uvicorn installs no signal handlers: SIGTERM stays the processor's.
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, args=([self._socket],), name="http", daemon=True)

    @classmethod
    def from_settings(cls, settings: Settings, health: Health, metrics: Metrics, detect: DetectFn,
                      reload: Reloader) -> HttpServer:  # fmt: skip
        """The server the settings describe: /detect when DFP_HTTP_API, /admin/reload when DFP_ADMIN_API, the token."""
        api = DetectApi(detect, health, ApiLimits.from_settings(settings), metrics) if settings.http_api else None
        app = build_app(health, metrics, api, reload if settings.admin_api else None, bearer_token(settings))
        return cls(settings.http_host, settings.http_port, app)

    @property
    def port(self) -> int:
        """The bound port (the one picked when 0 was asked for)."""
        return int(self._socket.getsockname()[1])

    def start(self, timeout_s: float = 10.0) -> None:
        """Serve in the `http` thread; return once uvicorn is up (connections made before then wait in the backlog).

        Raises:
            RuntimeError: uvicorn did not come up within `timeout_s`.
        """
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        log.info("http listening", extra={"host": self._socket.getsockname()[0], "port": self.port})

    def stop(self) -> None:
        """Stop accepting, finish (or after a few seconds cancel) requests in progress, and join the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(_STOP_S + 2.0)
        self._socket.close()
