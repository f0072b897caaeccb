"""The guarded client: HTTP(S) requests that reach only checked addresses, within the fetch policy.

Every URL is checked (:mod:`app.net.urls`) before anything is sent. The connection then goes to one
of exactly the addresses the check accepted (the TCP layer never resolves the name again, so DNS
rebinding cannot swap in another target), while the request keeps the hostname for the ``Host``
header, TLS SNI and certificate verification. Redirects are followed by hand and each hop is checked
the same way. Timeouts and the byte cap come from the :class:`~app.net.policy.FetchPolicy`.

Error details are meant for clients: they name at most the host the client gave, never a resolved
address, an upstream body or a traceback.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Final, Self
from urllib.parse import urljoin

import certifi
import httpcore
import httpx

from app.engine.errors import EngineError
from app.net.policy import FetchPolicy, IPAddress, IPNetwork, forbidden_reason
from app.net.urls import CheckedURL, Resolver, check_url_full, display_host

__all__ = ["USER_AGENT", "FetchResponse", "GuardedClient", "fetch_bytes"]

USER_AGENT: Final = "stillframe/0.1"
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_MAX_CONNECT_ADDRESSES: Final = 4


class _Closable:
    """``with thing:`` closes it on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects only to addresses that passed the check for that (host, port); never resolves names."""

    def __init__(self, allowed_networks: Sequence[IPNetwork]) -> None:
        self._allowed = list(allowed_networks)
        self._pins: dict[tuple[str, int], tuple[IPAddress, ...]] = {}
        self._lock = threading.Lock()
        self._inner = httpcore.SyncBackend()

    def pin(self, host: str, port: int, addresses: Sequence[IPAddress]) -> None:
        with self._lock:
            self._pins[(host.lower(), port)] = tuple(addresses)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        key = host.lower()
        if key.startswith("[") and key.endswith("]"):
            key = key[1:-1]
        with self._lock:
            addresses = self._pins.get((key, port), ())
        candidates = [a for a in addresses if forbidden_reason(a, self._allowed) is None]
        if not candidates:
            raise httpcore.ConnectError("connection target was not checked")
        last: Exception | None = None
        for addr in candidates[:_MAX_CONNECT_ADDRESSES]:
            try:
                return self._inner.connect_tcp(
                    str(addr), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _PinnedTransport(httpx.HTTPTransport):
    def __init__(self, backend: _PinnedBackend, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=8,
            max_keepalive_connections=4,
            keepalive_expiry=30.0,
            http1=True,
            http2=False,
            network_backend=backend,
        )


_default_ssl_lock = threading.Lock()
_default_ssl: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    global _default_ssl
    with _default_ssl_lock:
        if _default_ssl is None:
            _default_ssl = ssl.create_default_context(cafile=certifi.where())
        return _default_ssl


def _unreachable_for(exc: httpx.HTTPError, host: str) -> EngineError:
    if isinstance(exc, httpx.TimeoutException):
        return EngineError("source_unreachable", f"timed out talking to '{host}'")
    if isinstance(exc, httpx.ConnectError):
        return EngineError("source_unreachable", f"could not connect to '{host}'")
    return EngineError("source_unreachable", f"transfer from '{host}' failed")


def _status_error(status: int, host: str) -> EngineError:
    if status in (404, 410):
        return EngineError("source_not_found", f"'{host}' answered HTTP {status}: not found")
    if status in (401, 403):
        return EngineError("source_forbidden", f"'{host}' answered HTTP {status}: access denied")
    return EngineError("source_unreachable", f"'{host}' answered HTTP {status}")


class FetchResponse(_Closable):
    """A response whose headers have arrived; the body is read with the deadline and byte cap applied."""

    def __init__(self, response: httpx.Response, url: str, host: str, deadline: float | None) -> None:
        self._response = response
        self.url = url  # final URL, after redirects
        self.host = host  # the host the client gave, for messages
        self.deadline = deadline  # time.monotonic() value, or None
        self.status_code = response.status_code
        self.headers = response.headers

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None or not value.strip().isdigit():
            return None
        return int(value.strip())

    @property
    def encoded(self) -> bool:
        """Whether the body carries a content coding (despite our ``Accept-Encoding: identity``)."""
        coding = self.headers.get("content-encoding", "").strip().lower()
        return coding not in ("", "identity")

    def iter_chunks(self, max_bytes: int, *, decoded: bool = True) -> Iterator[bytes]:
        """Body chunks; raises ``source_too_large`` past ``max_bytes`` and ``source_unreachable`` on
        timeouts (including the total deadline) and transfer errors."""
        total = 0
        source = self._response.iter_bytes() if decoded else self._response.iter_raw()
        try:
            for chunk in source:
                total += len(chunk)
                if total > max_bytes:
                    raise EngineError("source_too_large", f"the source at '{self.host}' exceeds the size limit")
                if self.deadline is not None and time.monotonic() > self.deadline:
                    raise EngineError("source_unreachable", f"timed out reading from '{self.host}'")
                if chunk:
                    yield chunk
        except httpx.HTTPError as exc:
            raise _unreachable_for(exc, self.host) from None
        except httpx.StreamError:
            raise EngineError("source_unreachable", f"transfer from '{self.host}' failed") from None

    def read(self, max_bytes: int) -> bytes:
        """The whole body (at most ``max_bytes``); closes the response."""
        try:
            return b"".join(self.iter_chunks(max_bytes))
        finally:
            self.close()

    def close(self) -> None:
        self._response.close()


class GuardedClient(_Closable):
    """A synchronous HTTP client that only talks to checked addresses (see the module docstring).

    One instance keeps one ``httpx.Client`` (connection reuse). The result of checking a host is
    remembered for the client's lifetime, so later requests to the same host reuse the same pinned
    addresses (no repeated DNS, no rebinding).
    """

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._backend = _PinnedBackend(policy.allowed_networks)
        self._checked: dict[tuple[str, int], tuple[IPAddress, ...]] = {}
        self._check_lock = threading.Lock()
        self._client = httpx.Client(
            transport=_PinnedTransport(self._backend, ssl_context or _default_ssl_context()),
            trust_env=False,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Accept": "*/*"},
        )
        self.requests_made = 0

    def check(self, url: str) -> CheckedURL:
        """Check a URL (see :func:`check_url_full`), reusing this client's earlier answer for its host."""
        with self._check_lock:
            return check_url_full(url, self.policy, self._resolver, cache=self._checked)

    def open(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        accept_statuses: Iterable[int] = (),
        max_bytes: int | None = None,
        content: bytes | None = None,
    ) -> FetchResponse:
        """Send a request, following redirects (each hop checked), and return once headers arrived.

        2xx responses (and any status in ``accept_statuses``) are returned; other statuses raise the
        matching ``EngineError``. ``content`` is the request body (e.g. a webhook's JSON). A
        ``Content-Length`` above ``max_bytes`` (default ``policy.max_bytes``) raises
        ``source_too_large`` before any body byte is read.
        """
        policy = self.policy
        host = display_host(url)
        cap = policy.max_bytes if max_bytes is None else max_bytes
        accepted = set(accept_statuses)
        deadline = time.monotonic() + policy.total_timeout
        target = self.check(url)
        hops = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineError("source_unreachable", f"timed out talking to '{host}'")
            timeout = httpx.Timeout(
                connect=min(policy.connect_timeout, remaining),
                read=min(policy.read_timeout, remaining),
                write=min(policy.read_timeout, remaining),
                pool=min(policy.connect_timeout, remaining),
            )
            self._backend.pin(target.host, target.port, target.addresses)
            try:
                request = self._client.build_request(
                    method, target.url, headers=headers, content=content, timeout=timeout
                )
                response = self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _unreachable_for(exc, host) from None
            except httpx.InvalidURL:
                if hops:  # the upstream's redirect, not the caller's URL
                    raise EngineError("source_unreachable", f"'{host}' sent an unusable redirect") from None
                raise EngineError("invalid_parameter", "malformed URL") from None
            self.requests_made += 1
            status = response.status_code
            if status in _REDIRECT_STATUSES and "location" in response.headers:
                location = response.headers["location"]
                response.close()
                hops += 1
                if hops > policy.max_redirects:
                    raise EngineError("source_unreachable", f"too many redirects from '{host}'")
                try:
                    target = self.check(urljoin(target.url, location))
                except ValueError:  # urljoin: e.g. an unclosed IPv6 host
                    raise EngineError("source_unreachable", f"'{host}' sent an unusable redirect") from None
                except EngineError as exc:
                    if exc.code == "source_forbidden":
                        raise EngineError(
                            "source_forbidden", f"'{host}' redirected to a location that is not allowed"
                        ) from None
                    raise EngineError("source_unreachable", f"'{host}' sent an unusable redirect") from None
                if status == 303 and method != "HEAD":
                    method = "GET"
                continue
            if not (200 <= status < 300 or status in accepted):
                response.close()
                raise _status_error(status, host)
            fetched = FetchResponse(response, target.url, host, deadline)
            length = fetched.content_length
            if method != "HEAD" and length is not None and length > cap:
                response.close()
                raise EngineError("source_too_large", f"the source at '{host}' exceeds the size limit")
            return fetched

    def get_bytes(self, url: str, *, max_bytes: int | None = None) -> bytes:
        """GET a whole (small) resource, e.g. an HLS playlist, within the byte cap and deadline."""
        cap = self.policy.max_bytes if max_bytes is None else max_bytes
        return self.open(url, max_bytes=cap).read(cap)

    def close(self) -> None:
        self._client.close()


def fetch_bytes(
    url: str, policy: FetchPolicy, *, max_bytes: int | None = None, resolver: Resolver | None = None
) -> bytes:
    """GET a whole resource through the guard (one-shot client)."""
    with GuardedClient(policy, resolver=resolver) as client:
        return client.get_bytes(url, max_bytes=max_bytes)
