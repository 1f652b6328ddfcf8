"""Fetch `image_url` bodies with SSRF protection: allowlisted hosts only, vetted and pinned IPs, capped size.

Every hop (the first URL and each redirect) is checked the same way: http/https, host on IMAGE_URL_ALLOWLIST,
and every address the host resolves to public, unless an exact allowlist entry names that host. The socket is
then opened to the vetted address itself, so a second DNS answer cannot swap in a private one (DNS rebinding).
Stdlib only. `fetch` blocks: call it from a worker thread, never from the consumer's poll thread.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from processor.errors import FetchFailed, ImageTooLarge, UrlNotAllowed

log = logging.getLogger(__name__)

_REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
_CHUNK_BYTES = 64 * 1024
_USER_AGENT = "deepfake-processor"
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud instance-metadata endpoints: refused even when an allowlist entry names them exactly.
_METADATA_ADDRESSES = frozenset((ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")))


def _normalize_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    return host


def host_allowed(host: str, allowlist: Sequence[str]) -> bool:
    """Whether `host` matches an entry: an exact name, or `*.suffix` for any name below suffix (not suffix itself).

    Case-insensitive; a trailing dot and IPv6 brackets are ignored on both sides.
    """
    name = _normalize_host(host)
    if not name:
        return False
    for entry in allowlist:
        pattern = _normalize_host(entry)
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
                return True
        elif pattern and name == pattern:
            return True
    return False


def _named_exactly(host: str, allowlist: Sequence[str]) -> bool:
    name = _normalize_host(host)
    return any(_normalize_host(entry) == name for entry in allowlist if not entry.strip().startswith("*"))


def _refusal_reason(address: IpAddress) -> str | None:
    """Why a resolved address must not be contacted, or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA_ADDRESSES:
        return "the cloud metadata address"
    for reason, hit in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    ):
        if hit:
            return reason
    return None


@dataclass(frozen=True, slots=True)
class _Target:
    """One vetted hop: where to connect (pinned addresses) and what to ask for."""

    scheme: str
    host: str
    port: int
    request_path: str
    addresses: tuple[str, ...]


class UrlFetcher:
    """Fetches image URLs under the allowlist and SSRF rules, with timeouts, a size cap and bounded concurrency."""

    def __init__(
        self,
        allowlist: Sequence[str],
        *,
        max_bytes: int,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        max_redirects: int = 3,
        max_concurrency: int = 8,
    ) -> None:
        if max_bytes <= 0 or connect_timeout_s <= 0 or read_timeout_s <= 0:
            raise ValueError("max_bytes and the timeouts must be positive")
        if max_redirects < 0 or max_concurrency < 1:
            raise ValueError("max_redirects must be >= 0 and max_concurrency >= 1")
        self._allowlist = tuple(entry for entry in (e.strip() for e in allowlist) if entry)
        self._max_bytes = max_bytes
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_redirects = max_redirects
        self._slots = threading.BoundedSemaphore(max_concurrency)

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext:
        # Built on first https use: loading the CA store costs tens of milliseconds. A race builds two; harmless.
        return ssl.create_default_context()

    @property
    def enabled(self) -> bool:
        """False when the allowlist is empty: every URL is then refused."""
        return bool(self._allowlist)

    def fetch(self, url: str) -> bytes:
        """Return the body at `url`, following up to max_redirects redirects, each hop re-checked.

        Raises:
            UrlNotAllowed: fetching is off, or a hop's scheme, host or resolved address is refused.
            ImageTooLarge: the body is (or declares itself) larger than max_bytes.
            FetchFailed: a timeout, connection error, non-2xx status or too many redirects.
        """
        if not self.enabled:
            raise UrlNotAllowed("image_url fetching is off (IMAGE_URL_ALLOWLIST is empty)")
        with self._slots:
            for _ in range(self._max_redirects + 1):
                target = self._vet(url)
                status, location, body = self._get(target)
                if status not in _REDIRECT_STATUSES:
                    return body
                if not location:
                    raise FetchFailed(f"{target.host}: HTTP {status} redirect without a Location")
                url = urljoin(url, location)
                log.debug("image_url redirect host=%s status=%d", target.host, status)
            raise FetchFailed(f"{target.host}: more than {self._max_redirects} redirects")

    # --- checks ------------------------------------------------------------------------------------------

    def _vet(self, url: str) -> _Target:
        # http.client would refuse these too, but its message quotes the whole URL, query string included.
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
            raise UrlNotAllowed("image_url contains whitespace or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UrlNotAllowed(f"malformed image_url ({exc})") from None
        host = _normalize_host(parts.hostname or "")
        if parts.scheme not in ("http", "https"):
            raise UrlNotAllowed(f"image_url scheme {parts.scheme!r} is not http or https (host {host!r})")
        if not host:
            raise UrlNotAllowed("image_url has no host")
        if parts.username is not None or parts.password is not None:
            raise UrlNotAllowed(f"image_url for host {host!r} carries credentials")
        if not host_allowed(host, self._allowlist):
            raise UrlNotAllowed(f"host {host!r} is not on IMAGE_URL_ALLOWLIST")
        port = port or (443 if parts.scheme == "https" else 80)
        addresses = self._resolve(host, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return _Target(parts.scheme, host, port, path, addresses)

    def _resolve(self, host: str, port: int) -> tuple[str, ...]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise FetchFailed(f"cannot resolve host {host!r}: {exc}") from None
        explicit = _named_exactly(host, self._allowlist)
        addresses: list[str] = []
        for info in infos:
            text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone index
            reason = _refusal_reason(ipaddress.ip_address(text))
            metadata = reason == "the cloud metadata address"
            if reason is not None and (metadata or not explicit):
                raise UrlNotAllowed(f"host {host!r} resolves to {text}, {reason}")
            if text not in addresses:
                addresses.append(text)
        if not addresses:
            raise FetchFailed(f"host {host!r} resolved to no addresses")
        return tuple(addresses)

    # --- transfer ----------------------------------------------------------------------------------------

    def _get(self, target: _Target) -> tuple[int, str | None, bytes]:
        """One GET on a pinned connection: (status, Location for redirects, body for 2xx)."""
        conn = self._connect(target)
        response: http.client.HTTPResponse | None = None
        try:
            conn.request(
                "GET",
                target.request_path,
                headers={"User-Agent": _USER_AGENT, "Accept": "image/*", "Connection": "close"},
            )
            response = conn.getresponse()
            if response.status in _REDIRECT_STATUSES:
                return response.status, response.getheader("Location"), b""
            if not 200 <= response.status < 300:
                reason = str(response.reason)[:64]
                raise FetchFailed(f"{target.host}: HTTP {response.status} {reason}".rstrip())
            return response.status, None, self._read_body(target, conn.pinned, response)
        except TimeoutError:
            raise FetchFailed(f"{target.host}: timed out reading the response") from None
        except (OSError, http.client.HTTPException) as exc:
            raise FetchFailed(f"{target.host}: {type(exc).__name__}: {exc}") from None
        finally:
            # With "Connection: close" http.client hands the socket to the response, so close both.
            if response is not None:
                response.close()
            conn.close()

    def _connect(self, target: _Target) -> _PinnedHTTPConnection:
        """Open a connection to the first reachable vetted address; Host header and SNI stay the host name."""
        failure = "no address"
        for address in target.addresses:
            conn = self._connection(target, address)
            try:
                conn.connect()
                return conn
            except TimeoutError:
                failure = f"timed out connecting to {address}"
            except OSError as exc:
                failure = f"cannot connect to {address}: {exc}"
            conn.close()
        raise FetchFailed(f"{target.host}: {failure}")

    def _connection(self, target: _Target, address: str) -> _PinnedHTTPConnection:
        if target.scheme == "https":
            return _PinnedHTTPSConnection(
                target.host, target.port, address, self._connect_timeout_s, self._read_timeout_s, self._tls
            )
        return _PinnedHTTPConnection(target.host, target.port, address, self._connect_timeout_s, self._read_timeout_s)

    def _read_body(self, target: _Target, sock: socket.socket | None, response: http.client.HTTPResponse) -> bytes:
        declared = response.getheader("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self._max_bytes:
            raise ImageTooLarge(
                f"{target.host}: Content-Length {int(declared)} exceeds MAX_IMAGE_BYTES {self._max_bytes}"
            )
        # read_timeout_s bounds the whole body, not each recv, so a trickling server cannot hold a worker.
        deadline = time.monotonic() + self._read_timeout_s
        body = bytearray()
        while chunk := self._read_chunk(sock, response, deadline):
            body += chunk
            if len(body) > self._max_bytes:
                raise ImageTooLarge(f"{target.host}: body exceeds MAX_IMAGE_BYTES {self._max_bytes}")
        return bytes(body)

    @staticmethod
    def _read_chunk(sock: socket.socket | None, response: http.client.HTTPResponse, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if sock is not None:
            sock.settimeout(remaining)
        return response.read1(_CHUNK_BYTES)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP connection to a vetted IP; `host` is used only for the Host header."""

    def __init__(self, host: str, port: int, address: str, connect_s: float, read_s: float) -> None:
        super().__init__(host, port, timeout=connect_s)
        self._address = address
        self._read_s = read_s
        # Kept after http.client drops `sock` (it passes the socket to the response), to tighten timeouts.
        self.pinned: socket.socket | None = None

    def connect(self) -> None:
        """Connect to the pinned address, never re-resolving the host name."""
        sock = socket.create_connection((self._address, self.port), self.timeout)
        sock.settimeout(self._read_s)
        self.sock = self.pinned = sock


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS to a vetted IP, with SNI and certificate checks against the host name."""

    default_port = http.client.HTTPS_PORT

    def __init__(
        self, host: str, port: int, address: str, connect_s: float, read_s: float, tls: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, address, connect_s, read_s)
        self._tls = tls

    def connect(self) -> None:
        """Connect to the pinned address, then handshake with SNI = host (the handshake gets the connect timeout)."""
        sock = socket.create_connection((self._address, self.port), self.timeout)
        try:
            tls_sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        tls_sock.settimeout(self._read_s)
        self.sock = self.pinned = tls_sock
