"""The HTTP front door under hostile clients: real sockets against the real uvicorn server on 127.0.0.1.

The app is the service's own (probes, /detect, limits) with a fake pipeline behind /detect, so no broker or
model is needed: what is under test is the server, its limits and its slots.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import pytest

from processor.errors import FetchFailed
from processor.http.api import DetectApi
from processor.http.limits import ApiLimits
from processor.http.routes import build_app
from processor.http.server import HttpServer
from processor.inflight import Headers, InFlight
from processor.telemetry.health import Health
from processor.telemetry.metrics import Metrics

LIMIT = 64 * 1024
SLOW_CLIENTS = 200
Reply = tuple[int, dict[str, str], bytes]


class Pipeline:
    """A fake submit_detect: every image is refused with fetch_failed (422), at once or when the test says."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.pending: list[Future[InFlight]] = []
        self.lock = threading.Lock()

    def __call__(self, value: bytes, headers: Headers | None) -> Future[InFlight]:
        future: Future[InFlight] = Future()
        with self.lock:
            self.pending.append(future)
        if not self.hold:
            self.release()
        return future

    def release(self) -> None:
        with self.lock:
            futures, self.pending = self.pending, []
        for future in futures:
            item = InFlight("http", -1, -1, None, b"", None, None)
            item.error = FetchFailed("fake pipeline")
            future.set_result(item)


@contextmanager
def serving(pipeline: Pipeline, limits: ApiLimits, keep_alive_s: int = 5) -> Iterator[tuple[HttpServer, DetectApi]]:
    health = Health(model_loaded=True, warmed_up=True, joined_group=True)
    api = DetectApi(pipeline, health, limits, Metrics())
    server = HttpServer("127.0.0.1", 0, build_app(health, api.metrics or Metrics(), api), keep_alive_s)
    server.start()
    try:
        yield server, api
    finally:
        server.stop()
        pipeline.release()


def poll_until(check: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw(port: int, data: bytes) -> tuple[socket.socket, Reply]:
    """Send `data` as is; return the still-open socket and the reply it got."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return sock, (resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@contextmanager
def slow_clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` sockets: a third idle, a third stuck in their headers, a third trickling a /detect body."""
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(sock)
            if i % 3 == 1:
                sock.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nX-Slow: a")
            elif i % 3 == 2:
                sock.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        for sock in socks[2::3]:  # a second trickle, so every body is mid-read on the server
            sock.sendall(b"y" * 10)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def timed(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, float]:
    start = time.perf_counter()
    status = call(port, method, path, body, {"Content-Type": "image/jpeg"})[0]
    return status, (time.perf_counter() - start) * 1000


def test_200_idle_and_trickling_connections_do_not_stop_probes_or_detect() -> None:
    limits = ApiLimits(LIMIT, 4, 10.0, max_concurrent=2, body_timeout_s=60.0)
    with serving(Pipeline(), limits) as (server, api):
        alone = [timed(server.port, "GET", "/healthz")[1] for _ in range(3)]
        with slow_clients(server.port, SLOW_CLIENTS):
            answers = {path: timed(server.port, method, path, b"\xff\xd8" if method == "POST" else None)
                       for method, path in (("GET", "/healthz"), ("GET", "/readyz"), ("POST", "/detect"))}  # fmt: skip
            # Trickling bodies are not in yet, so they hold no slot: /detect is scored (422 from the fake pipeline).
            assert {path: status for path, (status, _) in answers.items()} == {"/healthz": 200, "/readyz": 200,
                                                                               "/detect": 422}  # fmt: skip
            assert api.busy == 0
        print(f"\n/healthz alone: {min(alone):.1f} ms; with {SLOW_CLIENTS} slow connections open: " + ", ".join(
            f"{path} {ms:.1f} ms" for path, (_, ms) in answers.items()))  # fmt: skip


def test_a_body_slower_than_the_body_timeout_is_408_and_closed() -> None:
    limits = ApiLimits(LIMIT, 4, 10.0, body_timeout_s=0.3)
    with serving(Pipeline(), limits) as (server, api):
        start = time.perf_counter()
        sock, (status, headers, body) = raw(server.port, b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Length: 100"
                                                         b"\r\n\r\n" + b"x" * 10)  # fmt: skip
        print(f"\n408 after {(time.perf_counter() - start) * 1000:.0f} ms (body timeout 300 ms)")
        assert (status, json.loads(body)["error"]["code"], headers["connection"]) == (408, "request_timeout", "close")
        assert closed_by_server(sock)
        sock.close()
        assert api.busy == 0


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout() -> None:
    with serving(Pipeline(), ApiLimits(LIMIT, 4, 10.0), keep_alive_s=1) as (server, _):
        sock, (status, headers, _) = raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.perf_counter()
        try:
            assert status == 200 and "close" not in headers.get("connection", "")
            assert closed_by_server(sock)  # recv blocks until the server closes (the socket's own timeout is 10 s)
            print(f"\nidle keep-alive connection closed after {(time.perf_counter() - start) * 1000:.0f} ms")
        finally:
            sock.close()


def test_oversized_headers_are_refused_400_and_closed() -> None:
    with serving(Pipeline(), ApiLimits(LIMIT, 4, 10.0)) as (server, _):
        sock, (status, _, _) = raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 64 * 1024)
        assert status == 400 and closed_by_server(sock)
        sock.close()
        assert call(server.port, "GET", "/healthz")[0] == 200


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "12, 13"])
def test_an_invalid_or_negative_content_length_is_400_and_nothing_is_read(length: str) -> None:
    with serving(Pipeline(), ApiLimits(LIMIT, 4, 10.0)) as (server, api):
        sock, (status, _, _) = raw(server.port, f"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                                                "\r\nxyz".encode())  # fmt: skip
        assert status == 400 and closed_by_server(sock)
        sock.close()
        assert api.metrics is not None and api.busy == 0


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def test_a_chunked_body_is_read_up_to_the_limit_and_refused_413_past_it() -> None:
    with serving(Pipeline(), ApiLimits(LIMIT, 4, 10.0)) as (server, _):
        head = b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock, (status, _, _) = raw(server.port, head + chunked(b"x" * (LIMIT // 2), b"x" * (LIMIT // 2)))
        assert status == 422  # read whole and handed to the (fake) pipeline
        sock.close()
        sock, (status, headers, body) = raw(server.port, head + chunked(b"x" * LIMIT, b"x"))
        assert (status, json.loads(body)["error"]["code"], headers["connection"]) == (413, "image_too_large", "close")
        sock.close()


def test_a_declared_length_over_the_limit_is_413_before_any_body_is_read() -> None:
    with serving(Pipeline(), ApiLimits(LIMIT, 4, 10.0)) as (server, api):
        # 1 GiB declared, no body sent: the reply comes from the header alone and the connection is closed.
        sock, (status, headers, _) = raw(server.port, b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                                      b"1073741824\r\n\r\n")  # fmt: skip
        assert (status, headers["connection"]) == (413, "close") and closed_by_server(sock)
        sock.close()
        # Just over the limit and sent in full: refused too, but drained, so the connection serves the next request.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("POST", "/detect", body=b"x" * (LIMIT + 1))
            first = conn.getresponse()
            first.read()
            conn.request("GET", "/healthz")
            assert (first.status, conn.getresponse().status) == (413, 200)
        finally:
            conn.close()
        assert api.busy == 0


def test_more_concurrent_requests_than_slots_is_503_overloaded_with_retry_after() -> None:
    pipeline = Pipeline(hold=True)
    with serving(pipeline, ApiLimits(LIMIT, 4, 30.0, max_concurrent=2)) as (server, api):
        replies: list[Reply] = []
        workers = [threading.Thread(target=lambda: replies.append(call(server.port, "POST", "/detect", b"x")),
                                    name=f"client-{i}") for i in range(2)]  # fmt: skip
        for worker in workers:
            worker.start()
        poll_until(lambda: len(pipeline.pending) == 2, "both requests to hold a slot")
        status, headers, body = call(server.port, "POST", "/detect", b"x")
        assert (status, json.loads(body)["error"]["code"], headers["retry-after"]) == (503, "overloaded", "1")
        assert call(server.port, "GET", "/readyz")[0] == 200  # probes need no slot
        pipeline.release()
        for worker in workers:
            worker.join(10)
        assert [r[0] for r in replies] == [422, 422] and api.busy == 0
        pipeline.hold = False
        assert call(server.port, "POST", "/detect", b"x")[0] == 422


def test_the_server_runs_in_a_named_thread_leaves_signals_alone_and_stops_with_connections_open() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with serving(Pipeline(), ApiLimits(LIMIT, 4, 10.0)) as (server, _), slow_clients(server.port, 30):
        assert any(t.name == "http" and t.daemon for t in threading.enumerate())
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        server.stop()
        assert not any(t.name == "http" for t in threading.enumerate())
