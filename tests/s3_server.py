"""A real S3-API server for tests and the bench: moto's server, started as its own process on a free
loopback port, behind a small forwarding front that counts requests and bytes, can add latency per
request, and can be stopped to play a store that goes away.

Objects are put with obstore, the library the service reads them with; buckets are made with a plain
PUT (moto does not check signatures).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

# moto accepts any credentials; obstore needs some (or it asks an instance metadata service).
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


class S3Unavailable(RuntimeError):
    """moto's server cannot run here (not installed, or it did not start)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class StoreRequest:
    method: str
    path: str  # /bucket/key, without the query
    range: str | None
    body_bytes: int  # response body bytes sent back


class _Front(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: S3Server


class _FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Front
    timeout = 10

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.owner._connections.add(self.connection)

    def _forward(self) -> None:
        self.server.owner._forward(self)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


class S3Server:
    """moto's S3 server process and its counting front; ``endpoint`` is the front's URL."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.requests: list[StoreRequest] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._process: subprocess.Popen[bytes] | None = None
        self._front: _Front | None = None
        self._upstream = ""
        self._client = httpx.Client(timeout=30)
        self.endpoint = ""

    def start(self) -> S3Server:
        try:
            import moto.server  # noqa: F401  (installed with the dev extra: moto[server])
        except ImportError as exc:
            raise S3Unavailable(f"moto's server is not installed ({exc})") from exc
        port = _free_port()
        self._upstream = f"http://127.0.0.1:{port}"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **CREDENTIALS},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self._client.get(self._upstream + "/moto-api/data.json")
                break
            except httpx.HTTPError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise S3Unavailable("moto's server did not start") from None
                time.sleep(0.1)
        front = _Front(("127.0.0.1", 0), _FrontHandler)
        front.owner = self
        self._front = front
        threading.Thread(target=front.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{front.server_address[1]}"
        return self

    def go_away(self) -> None:
        """The store stops answering: the front closes, its open connections are cut, new ones refused."""
        if self._front is not None:
            self._front.shutdown()
            self._front.server_close()
            self._front = None
        for connection in list(self._connections):
            with contextlib.suppress(OSError):  # closed already
                connection.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.go_away()
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        self._client.close()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the store's content --------------------------------------------------------------------------

    def create_bucket(self, bucket: str, *, versioned: bool = False) -> None:
        self._client.put(f"{self._upstream}/{bucket}").raise_for_status()
        if versioned:
            body = b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"
            self._client.put(f"{self._upstream}/{bucket}?versioning", content=body).raise_for_status()

    def store(self, bucket: str, *, through_front: bool = False) -> Any:
        """An obstore handle on ``bucket``: straight to moto (uncounted), or through the front."""
        from obstore.store import S3Store

        return S3Store(
            bucket,
            endpoint=self.endpoint if through_front else self._upstream,
            region="us-east-1",
            access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            client_options={"allow_http": True},
        )

    def presigned_url(self, bucket: str, key: str, seconds: float = 3600) -> str:
        """A presigned GET of the object through the front (counted, with its latency): what a client
        without credentials, the ffmpeg CLI for one, can read."""
        import obstore

        return str(obstore.sign(self.store(bucket, through_front=True), "GET", key, timedelta(seconds=seconds)))

    def put(self, bucket: str, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self.store(bucket), key, data)

    # -- counting -------------------------------------------------------------------------------------

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def counts(self, path: str | None = None) -> tuple[int, int]:
        """(requests, response body bytes) so far, for ``/bucket/key`` or all."""
        with self._lock:
            chosen = [r for r in self.requests if path is None or r.path == path]
        return len(chosen), sum(r.body_bytes for r in chosen)

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        if self.latency:
            time.sleep(self.latency)
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
        try:
            upstream = self._client.request(
                handler.command, self._upstream + handler.path, headers=headers, content=body
            )
        except httpx.HTTPError:
            handler.send_error(502)
            return
        content = b"" if handler.command == "HEAD" else upstream.content
        with self._lock:
            path = handler.path.split("?", 1)[0]
            self.requests.append(StoreRequest(handler.command, path, handler.headers.get("range"), len(content)))
        handler.send_response(upstream.status_code)
        for name, value in upstream.headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                handler.send_header(name, value)
        length_header = upstream.headers.get("content-length") if handler.command == "HEAD" else str(len(content))
        handler.send_header("Content-Length", length_header or "0")
        handler.end_headers()
        if content:
            handler.wfile.write(content)
