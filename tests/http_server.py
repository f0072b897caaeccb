"""A small threaded loopback HTTP(S) server for tests.

It serves byte strings with Range support (or without, per route), redirects, arbitrary status codes,
slow, endless or lying (``Content-Length`` bigger than the body) streams, and custom handlers, and it
records every request it receives so tests can assert what was (or was not) fetched::

    with LoopbackServer() as server:
        server.add_file("/a.mp4", data)
        server.add_redirect("/old", "/a.mp4")
        url = server.url("/a.mp4")
        ...
        assert server.request_count("/a.mp4") == 1

Use :func:`loopback_server` as a fixture body (``yield from loopback_server()``) or the class directly;
:func:`serve_directory` serves a directory's files and yields the base URL.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

__all__ = ["LoopbackServer", "RecordedRequest", "Route", "loopback_server", "serve_directory"]

_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*\Z", re.IGNORECASE)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # without the query
    target: str  # as sent (path and query)
    headers: dict[str, str]  # lower-case names

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    ranges: bool = True  # honour Range on 200 responses with a body
    # streaming behaviour (used when ``stream`` is True)
    stream: bool = False
    chunk: bytes = b"x" * 1024
    interval: float = 0.0
    total: int | None = None  # None: endless
    content_length: int | None = None  # declared length (may lie); None: close-delimited body
    header_delay: float = 0.0  # wait this long before sending the status line
    handler: Callable[[BaseHTTPRequestHandler], None] | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: LoopbackServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 10  # idle keep-alive connections give up eventually

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.owner._handle(self, head=False)

    def do_HEAD(self) -> None:
        self.server.owner._handle(self, head=True)


class LoopbackServer:
    """A threaded HTTP/1.1 server on a loopback address and an ephemeral port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self._requested_port = port
        self._ssl_context = ssl_context
        self.routes: dict[str, Route] = {}
        self.requests: list[RecordedRequest] = []
        self.sni_names: list[str | None] = []
        self.directory: Path | None = None  # files under it are served (with Range) when no route matches
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        server_class = _Server6 if ":" in self.host else _Server
        server = server_class((self.host, self._requested_port), _Handler)
        server.owner = self
        if self._ssl_context is not None:
            ctx = self._ssl_context

            def remember_sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
                self.sni_names.append(name)

            ctx.sni_callback = remember_sni
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    # -- routes --------------------------------------------------------------------------------------

    def add_file(
        self,
        path: str,
        data: bytes,
        *,
        ranges: bool = True,
        etag: str | None = "auto",
        last_modified: str | None = "auto",
        content_type: str = "application/octet-stream",
        headers: dict[str, str] | None = None,
    ) -> Route:
        h = {"Content-Type": content_type}
        if etag == "auto":
            etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if etag is not None:
            h["ETag"] = etag
        if last_modified == "auto":
            last_modified = formatdate(1_700_000_000, usegmt=True)
        if last_modified is not None:
            h["Last-Modified"] = last_modified
        h.update(headers or {})
        return self.add_route(path, Route(status=200, body=data, headers=h, ranges=ranges))

    def add_redirect(self, path: str, location: str, status: int = 302) -> Route:
        return self.add_route(path, Route(status=status, headers={"Location": location}, ranges=False))

    def add_status(self, path: str, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Route:
        return self.add_route(path, Route(status=status, body=body, headers=dict(headers or {}), ranges=False))

    def add_stream(
        self,
        path: str,
        *,
        chunk: bytes = b"x" * 1024,
        interval: float = 0.0,
        total: int | None = None,
        content_length: int | None = None,
        header_delay: float = 0.0,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Route:
        """A body written ``chunk`` by ``chunk`` every ``interval`` seconds, ``total`` bytes (None: endless)."""
        route = Route(
            status=status,
            headers=dict(headers or {}),
            ranges=False,
            stream=True,
            chunk=chunk,
            interval=interval,
            total=total,
            content_length=content_length,
            header_delay=header_delay,
        )
        return self.add_route(path, route)

    def add_handler(self, path: str, handler: Callable[[BaseHTTPRequestHandler], None]) -> Route:
        return self.add_route(path, Route(handler=handler))

    def add_route(self, path: str, route: Route) -> Route:
        with self._lock:
            self.routes[path] = route
        return route

    # -- inspection ----------------------------------------------------------------------------------

    def request_count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- serving -------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = urlsplit(h.path).path
        record = RecordedRequest(h.command, path, h.path, {k.lower(): v for k, v in h.headers.items()})
        with self._lock:
            self.requests.append(record)
            route = self.routes.get(path)
        if route is None and self.directory is not None:
            route = self._directory_route(path)
        if route is None:
            self._send_simple(h, 404, b"not found", {}, head)
            return
        if route.handler is not None:
            route.handler(h)
            return
        if route.header_delay and self._stop.wait(route.header_delay):
            h.close_connection = True
            return
        if route.stream:
            self._send_stream(h, route, head)
            return
        if route.status == 200 and route.ranges:
            self._send_ranged(h, route, record.range, head)
            return
        self._send_simple(h, route.status, route.body, route.headers, head)

    def _directory_route(self, path: str) -> Route | None:
        assert self.directory is not None
        root = self.directory.resolve()
        target = (root / unquote(path).lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return None
        st = target.stat()
        headers = {
            "Content-Type": mimetypes.guess_type(target.name)[0] or "application/octet-stream",
            "ETag": f'"{st.st_size:x}-{st.st_mtime_ns:x}"',
            "Last-Modified": formatdate(st.st_mtime, usegmt=True),
        }
        return Route(status=200, body=target.read_bytes(), headers=headers, ranges=True)

    def _send_simple(
        self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str], head: bool
    ) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            self._write(h, body)

    def _send_ranged(self, h: BaseHTTPRequestHandler, route: Route, range_header: str | None, head: bool) -> None:
        body, size = route.body, len(route.body)
        headers = dict(route.headers)
        headers["Accept-Ranges"] = "bytes"
        m = _RANGE_RE.match(range_header) if range_header else None
        if m is None or (not m.group(1) and not m.group(2)):
            self._send_simple(h, 200, body, headers, head)
            return
        if m.group(1):
            first = int(m.group(1))
            last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # suffix range: the last N bytes
            n = int(m.group(2))
            first, last = max(0, size - n), size - 1
        if first >= size or last < first:
            headers["Content-Range"] = f"bytes */{size}"
            self._send_simple(h, 416, b"", headers, head)
            return
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        self._send_simple(h, 206, body[first : last + 1], headers, head)

    def _send_stream(self, h: BaseHTTPRequestHandler, route: Route, head: bool) -> None:
        h.send_response(route.status)
        for k, v in route.headers.items():
            h.send_header(k, v)
        if route.content_length is not None:
            h.send_header("Content-Length", str(route.content_length))
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        if head:
            return
        sent = 0
        while route.total is None or sent < route.total:
            piece = route.chunk if route.total is None else route.chunk[: route.total - sent]
            if not self._write(h, piece):
                break
            sent += len(piece)
            if route.interval and self._stop.wait(route.interval):
                break
            if self._stop.is_set():
                break
        h.close_connection = True

    @staticmethod
    def _write(h: BaseHTTPRequestHandler, data: bytes) -> bool:
        try:
            h.wfile.write(data)
            h.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            h.close_connection = True
            return False


def loopback_server(host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> Iterator[LoopbackServer]:
    """Fixture body: ``@pytest.fixture def server(): yield from loopback_server()``."""
    with LoopbackServer(host, ssl_context=ssl_context) as server:
        yield server


@contextmanager
def serve_directory(root: str | Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the files under ``root`` (Range, ETag, Last-Modified); yields the base URL (no trailing /)."""
    with LoopbackServer(host) as server:
        server.directory = Path(root)
        yield server.base_url
