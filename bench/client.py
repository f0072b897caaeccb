"""The client the single-request scenarios time stillframe with: one keep-alive connection through the
standard library's ``http.client``.

What a grab costs is the service's work, so the client should add as little as curl or a browser
would. httpx adds its own ~0.8-1.5 ms per request on the 2-core VMs these runs come from (request
and response models, header normalisation), as much as the whole server-side cost of an HTTP request
here: ``client_overhead`` measures both clients on ``/healthz`` in every run, and the report prints it.
The throughput scenario keeps httpx's async client (many connections at once).
"""

from __future__ import annotations

import http.client
import statistics
import time
from urllib.parse import urlencode, urlsplit

import httpx


class LeanClient:
    def __init__(self, base_url: str, timeout: float = 300) -> None:
        parts = urlsplit(base_url)
        self._host, self._port, self._timeout = parts.hostname or "127.0.0.1", parts.port or 80, timeout
        self._connection: http.client.HTTPConnection | None = None

    def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        """(status, headers, body) of a GET; reconnects once if the server closed the connection."""
        target = f"{path}?{urlencode(params)}" if params else path
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                self._connection.request("GET", target)
                response = self._connection.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.will_close:
                self.close()
            return response.status, response.headers, body
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def client_overhead(base_url: str, lean: LeanClient, requests: int = 40) -> dict[str, float]:
    """p50 ms of ``GET /healthz`` through this client and through httpx, requests interleaved."""
    samples: dict[str, list[float]] = {"lean_http_client": [], "httpx": []}
    with httpx.Client(base_url=base_url, timeout=30) as heavy:
        for _ in range(requests):
            started = time.perf_counter()
            lean.get("/healthz")
            samples["lean_http_client"].append(time.perf_counter() - started)
            started = time.perf_counter()
            heavy.get("/healthz")
            samples["httpx"].append(time.perf_counter() - started)
    return {name: round(statistics.median(values) * 1000, 3) for name, values in samples.items()}
