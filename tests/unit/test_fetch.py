"""UrlFetcher's SSRF rules, limits and error codes, against a local http.server on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from processor.errors import ProcessorError
from processor.fetch import UrlFetcher, host_allowed
from tests.corpus import png_bytes

IMAGE = png_bytes(8, 8)
MAX_BYTES = 4096
TLS_HOST = "img.facesocial.example"
assert len(IMAGE) < MAX_BYTES


@dataclass
class Server:
    """A running local server: its port, the Host headers it saw, and an event that releases slow handlers."""

    port: int
    hosts: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _make_handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def do_GET(self) -> None:
            state.hosts.append(self.headers.get("Host", ""))
            self.close_connection = True
            route = ROUTES.get(self.path.split("?", 1)[0], _not_found)
            # The client hangs up on purpose in some tests (size cap, timeout).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                route(self, state)

    return Handler


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    for name, value in {"Content-Length": str(len(body)), **named}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def _not_found(handler: BaseHTTPRequestHandler, state: Server) -> None:
    _send(handler, 404, b"nope")


def _redirect(location: str) -> Callable[[BaseHTTPRequestHandler, Server], None]:
    return lambda handler, state: _send(handler, 302, Location=location.format(port=state.port))


def _slow(handler: BaseHTTPRequestHandler, state: Server) -> None:
    state.release.wait(5)  # released at teardown, so no thread outlives the test
    _send(handler, 200, IMAGE)


def _trickle(handler: BaseHTTPRequestHandler, state: Server) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    for _ in range(100):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        if state.release.wait(0.05):
            return


def _too_long_declared(handler: BaseHTTPRequestHandler, state: Server) -> None:
    _send(handler, 200, b"\0" * 64, Content_Length=str(MAX_BYTES + 1))


def _chunked_big(handler: BaseHTTPRequestHandler, state: Server) -> None:
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for _ in range(MAX_BYTES // 512 + 2):
        handler.wfile.write(b"200\r\n" + b"\0" * 512 + b"\r\n")
    handler.wfile.write(b"0\r\n\r\n")


def _unsized_big(handler: BaseHTTPRequestHandler, state: Server) -> None:
    handler.send_response(200)
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(b"\0" * (MAX_BYTES + 1))


ROUTES: dict[str, Callable[[BaseHTTPRequestHandler, Server], None]] = {
    "/img": lambda handler, state: _send(handler, 200, IMAGE, Content_Type="image/png"),
    "/redirect-img": _redirect("/img"),
    "/redirect-abs": _redirect("http://127.0.0.1:{port}/redirect-img"),
    "/redirect-external": _redirect("http://evil.example/steal"),
    "/redirect-metadata": _redirect("http://169.254.169.254/latest/meta-data/"),
    "/redirect-file": _redirect("file:///etc/passwd"),
    "/redirect-loop": _redirect("/redirect-loop"),
    "/redirect-nowhere": lambda handler, state: _send(handler, 302),
    "/slow": _slow,
    "/trickle": _trickle,
    "/too-long-declared": _too_long_declared,
    "/chunked-big": _chunked_big,
    "/unsized-big": _unsized_big,
}


@contextlib.contextmanager
def _serving(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    state = Server(port=0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="test-http-server", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    with _serving() as state:
        yield state


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for img.facesocial.example (made with the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", f"/CN={TLS_HOST}", "-addext", f"subjectAltName=DNS:{TLS_HOST}",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with _serving(context) as state:
        yield state


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Host name → addresses for made-up names; the real resolver still answers literals and localhost."""
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in table:
            return real(host, port, *args, **kwargs)
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [
            (family[6 if ":" in ip else 4], socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port))
            for ip in table[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def fetcher(*allowlist: str, **options: Any) -> UrlFetcher:
    return UrlFetcher(list(allowlist), **{"max_bytes": MAX_BYTES, **options})


def refused(fetch: UrlFetcher, url: str) -> ProcessorError:
    with pytest.raises(ProcessorError) as caught:
        fetch.fetch(url)
    return caught.value


# --- allowlist --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowlist", "allowed"),
    [
        ("cdn.facesocial.example", ["cdn.facesocial.example"], True),
        ("CDN.FaceSocial.Example.", ["cdn.facesocial.example"], True),
        ("cdn.facesocial.example", ["CDN.facesocial.example."], True),
        ("img.cdn.facesocial.example", ["cdn.facesocial.example"], False),
        ("sub.facesocial.example", ["*.facesocial.example"], True),
        ("a.b.facesocial.example", ["*.facesocial.example"], True),
        ("facesocial.example", ["*.facesocial.example"], False),
        ("evilfacesocial.example", ["*.facesocial.example"], False),
        ("facesocial.example.evil.test", ["*.facesocial.example"], False),
        ("localhost", ["*.example"], False),
        ("127.0.0.1", ["127.0.0.1"], True),
        ("::1", ["[::1]"], True),
        ("anything.example", [], False),
        ("", ["*.example", ""], False),
    ],
)
def test_host_allowed_matches_exact_names_and_leading_wildcards(host: str, allowlist: list[str], allowed: bool) -> None:
    assert host_allowed(host, allowlist) is allowed


def test_empty_allowlist_turns_fetching_off(server: Server) -> None:
    fetch = fetcher()
    assert not fetch.enabled
    error = refused(fetch, server.url("/img"))
    assert error.code == "url_not_allowed"
    assert "IMAGE_URL_ALLOWLIST is empty" in error.message
    assert server.hosts == []


def test_allowlisted_url_returns_the_body(server: Server) -> None:
    fetch = fetcher("127.0.0.1")
    assert fetch.enabled
    assert fetch.fetch(server.url("/img?size=small")) == IMAGE


def test_host_not_on_the_allowlist_is_refused(server: Server) -> None:
    error = refused(fetcher("cdn.facesocial.example"), server.url("/img"))
    assert error.code == "url_not_allowed"
    assert "127.0.0.1" in error.message
    assert server.hosts == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/img",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "javascript:alert(1)",
        "//127.0.0.1/img",
        "http://user:pw@127.0.0.1/img",
        "http://127.0.0.1/img\r\nX-Injected: 1",
        "http://127.0.0.1:99999/img",
    ],
)
def test_non_http_schemes_and_malformed_urls_are_refused(url: str) -> None:
    assert refused(fetcher("127.0.0.1"), url).code == "url_not_allowed"


# --- resolved addresses -----------------------------------------------------------------------------------


def test_loopback_is_refused_when_only_a_wildcard_matches(server: Server, fake_dns: dict[str, list[str]]) -> None:
    fake_dns["img.facesocial.example"] = ["127.0.0.1"]
    error = refused(fetcher("*.facesocial.example"), server.url("/img", host="img.facesocial.example"))
    assert error.code == "url_not_allowed"
    assert "loopback" in error.message
    assert server.hosts == []


def test_localhost_is_refused_by_an_unrelated_wildcard(server: Server) -> None:
    assert refused(fetcher("*.example"), server.url("/img", host="localhost")).code == "url_not_allowed"


@pytest.mark.parametrize(
    "private", ["10.1.2.3", "192.168.0.9", "169.254.1.1", "fd12::1", "::ffff:127.0.0.1", "0.0.0.0"]
)
def test_any_private_address_in_the_answer_refuses_the_host(private: str, fake_dns: dict[str, list[str]]) -> None:
    fake_dns["cdn.facesocial.example"] = ["93.184.216.34", private]
    error = refused(fetcher("*.facesocial.example"), "https://cdn.facesocial.example/a.jpg")
    assert error.code == "url_not_allowed"
    assert private in error.message


def test_exact_entry_allows_a_private_address_and_connects_to_the_vetted_ip(
    server: Server, fake_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns["img.facesocial.example"] = ["127.0.0.1"]
    lookups: list[str] = []
    resolve = socket.getaddrinfo

    def counting(host: str, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    body = fetcher("img.facesocial.example").fetch(server.url("/img", host="img.facesocial.example"))
    assert body == IMAGE
    assert server.hosts == [f"img.facesocial.example:{server.port}"]  # original Host header
    # One name lookup: the connection went to the vetted address (create_connection may parse the literal).
    assert [host for host in lookups if host != "127.0.0.1"] == ["img.facesocial.example"]


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"])
def test_cloud_metadata_address_is_refused_even_when_named_exactly(url: str) -> None:
    error = refused(fetcher("169.254.169.254", "fd00:ec2::254"), url)
    assert error.code == "url_not_allowed"
    assert "metadata" in error.message


# --- redirects --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/redirect-img", "/redirect-abs"])
def test_redirects_within_the_allowlist_are_followed(server: Server, path: str) -> None:
    assert fetcher("127.0.0.1").fetch(server.url(path)) == IMAGE


@pytest.mark.parametrize("path", ["/redirect-external", "/redirect-metadata", "/redirect-file"])
def test_every_redirect_hop_is_checked_again(server: Server, path: str) -> None:
    assert refused(fetcher("127.0.0.1"), server.url(path)).code == "url_not_allowed"


def test_redirect_loop_is_capped(server: Server) -> None:
    error = refused(fetcher("127.0.0.1", max_redirects=3), server.url("/redirect-loop"))
    assert error.code == "fetch_failed"
    assert "more than 3 redirects" in error.message
    assert len(server.hosts) == 4


def test_redirect_without_location_fails(server: Server) -> None:
    assert refused(fetcher("127.0.0.1"), server.url("/redirect-nowhere")).code == "fetch_failed"


# --- responses --------------------------------------------------------------------------------------------


def test_http_error_status_is_fetch_failed_without_the_query_string(server: Server) -> None:
    error = refused(fetcher("127.0.0.1"), server.url("/missing?sig=top-secret-token"))
    assert error.code == "fetch_failed"
    assert "404" in error.message
    assert "top-secret-token" not in error.message


def test_slow_server_times_out_as_fetch_failed(server: Server) -> None:
    error = refused(fetcher("127.0.0.1", read_timeout_s=0.2), server.url("/slow"))
    assert error.code == "fetch_failed"
    assert "timed out" in error.message


def test_trickling_body_is_bounded_by_the_read_timeout(server: Server) -> None:
    error = refused(fetcher("127.0.0.1", read_timeout_s=0.3), server.url("/trickle"))
    assert error.code == "fetch_failed"
    assert "timed out" in error.message


def test_connection_refused_is_fetch_failed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the fetch: nothing listens there
    error = refused(fetcher("127.0.0.1", connect_timeout_s=1.0), f"http://127.0.0.1:{port}/img")
    assert error.code == "fetch_failed"
    assert "cannot connect" in error.message


@pytest.mark.parametrize("path", ["/too-long-declared", "/chunked-big", "/unsized-big"])
def test_bodies_over_max_bytes_are_image_too_large(server: Server, path: str) -> None:
    error = refused(fetcher("127.0.0.1"), server.url(path))
    assert error.code == "image_too_large"
    assert str(MAX_BYTES) in error.message


def test_concurrent_fetches_share_the_bounded_slots(server: Server) -> None:
    fetch = fetcher("127.0.0.1", max_concurrency=2)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(fetch.fetch(server.url("/img")))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [IMAGE] * 6
    with pytest.raises(ValueError):
        fetcher("127.0.0.1", max_concurrency=0)


# --- https ------------------------------------------------------------------------------------------------


def _trusting(fetch: UrlFetcher, cert: Path) -> UrlFetcher:
    context = ssl.create_default_context(cafile=str(cert))
    fetch.__dict__["_tls"] = context  # replaces the lazily built default context (test-only CA)
    return fetch


def test_https_uses_the_host_name_for_sni_and_verification_while_connecting_to_the_vetted_ip(
    tls_server: Server, certificate: tuple[Path, Path], fake_dns: dict[str, list[str]]
) -> None:
    fake_dns[TLS_HOST] = ["127.0.0.1"]
    fetch = _trusting(fetcher(TLS_HOST), certificate[0])
    assert fetch.fetch(f"https://{TLS_HOST}:{tls_server.port}/img") == IMAGE
    assert tls_server.hosts == [f"{TLS_HOST}:{tls_server.port}"]


def test_https_certificate_for_another_name_is_fetch_failed(
    tls_server: Server, certificate: tuple[Path, Path], fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["other.facesocial.example"] = ["127.0.0.1"]
    fetch = _trusting(fetcher("other.facesocial.example"), certificate[0])
    error = refused(fetch, f"https://other.facesocial.example:{tls_server.port}/img")
    assert error.code == "fetch_failed"
    assert tls_server.hosts == []


def test_https_untrusted_certificate_is_fetch_failed(tls_server: Server, fake_dns: dict[str, list[str]]) -> None:
    fake_dns[TLS_HOST] = ["127.0.0.1"]
    error = refused(fetcher(TLS_HOST), f"https://{TLS_HOST}:{tls_server.port}/img")
    assert error.code == "fetch_failed"
    assert "certificate" in error.message.lower()
