"""`image_url` events through a real processor against a local HTTP server: allowlist, SSRF guard, redirects, size cap.

The server listens on 127.0.0.1 only. "127.0.0.1" is allowlisted by exact name (an exact entry may name a private
address on purpose); `*.0.0.2` stands in for a wildcard entry whose name resolves to loopback, which must be refused
(wildcards never unlock private addresses). No DNS is needed: every host here is an address or /etc/hosts' localhost.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.brokers import Cluster, TopicFactory
from tests.corpus import jpeg_bytes
from tests.integration.conftest import ProcessorFactory
from tests.procs import event_id_of, headers_of, processor_env, produce_values, read_until_ids

pytestmark = pytest.mark.slow

MAX_IMAGE_BYTES = 64 * 1024
IMAGE = jpeg_bytes(64, 64)


class ImageServer(ThreadingHTTPServer):
    """Serves a JPEG, a 404, redirects and oversize bodies; records each request's (Host, path)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str]] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: ImageServer

    def do_GET(self) -> None:
        self.server.requests.append((self.headers.get("Host", ""), self.path))
        port = self.server.port
        routes: dict[str, Any] = {
            "/img.jpg": (200, IMAGE),
            "/redirect-here": (302, f"http://127.0.0.1:{port}/img.jpg"),
            "/redirect-away": (302, f"http://localhost:{port}/img.jpg"),
            "/big": (200, b"\xff" * (MAX_IMAGE_BYTES * 3)),
        }
        if self.path == "/big-chunked":  # no Content-Length: the cap must hold while streaming
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\xff" * 16384
            for _ in range(MAX_IMAGE_BYTES * 3 // len(chunk)):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        status, payload = routes.get(self.path, (404, b"not found"))
        self.send_response(status)
        if status == 302:
            self.send_header("Location", payload)
            payload = b""
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    thread = threading.Thread(target=server.serve_forever, name="image-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_image_url_is_fetched_only_from_allowlisted_hosts_within_the_size_cap(
    tansu: Cluster,
    topic_factory: TopicFactory,
    group_id: str,
    processor_factory: ProcessorFactory,
    image_server: ImageServer,
) -> None:
    base = f"http://127.0.0.1:{image_server.port}"
    expected = {  # event id -> (image_url, None for a result or the dead letter's error.code)
        "ok": (f"{base}/img.jpg", None),
        "redirect-to-allowed-host": (f"{base}/redirect-here", None),
        "host-not-on-allowlist": (f"http://localhost:{image_server.port}/img.jpg", "url_not_allowed"),
        "not-found": (f"{base}/missing.jpg", "fetch_failed"),
        "redirect-to-host-not-on-allowlist": (f"{base}/redirect-away", "url_not_allowed"),
        "too-large-declared": (f"{base}/big", "image_too_large"),
        "too-large-streamed": (f"{base}/big-chunked", "image_too_large"),
        "wildcard-resolving-to-loopback": (f"http://127.0.0.2:{image_server.port}/img.jpg", "url_not_allowed"),
        "file-scheme": ("file:///etc/passwd", "url_not_allowed"),
        "cloud-metadata": ("http://169.254.169.254/latest/meta-data/", "url_not_allowed"),
    }
    bootstrap = tansu.bootstrap
    inp, out, dlq = (topic_factory(bootstrap, 1, prefix) for prefix in ("in", "out", "dlq"))
    produce_values(bootstrap, inp, [json.dumps({"event_id": e, "image_url": u}).encode() for e, (u, _) in
                                    expected.items()])  # fmt: skip
    env = processor_env(bootstrap, inp, out, dlq, group_id, IMAGE_URL_ALLOWLIST="127.0.0.1,*.0.0.2",
                        MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES), FETCH_TIMEOUT_S="5")  # fmt: skip
    proc = processor_factory(env, name="url")
    messages = read_until_ids(bootstrap, [out, dlq], 1, set(expected), timeout_s=60, settle_s=0.5)
    got = {event_id_of(m): None if m.topic() == out else headers_of(m)["error.code"] for m in messages}
    print(f"\nFIGURE url-fetch: {got}")
    assert len(messages) == len(expected)
    assert got == {e: code for e, (_, code) in expected.items()}
    hosts = {host for host, _ in image_server.requests}
    assert hosts == {f"127.0.0.1:{image_server.port}"}, f"a refused host was contacted: {hosts}"
    assert proc.stop() == 0
