"""Guarded HTTP(S) fetching: the SSRF guard, pinned connections, caps, and a ranged file object.

Every URL is checked before anything is sent: scheme, credentials, port, and every address its host
resolves to. The connection then goes to one of exactly those addresses (the TCP layer never resolves
the name again, so DNS rebinding cannot swap in another target), while the request keeps the hostname
for the ``Host`` header, TLS SNI and certificate verification. Redirects are followed by hand and each
hop is checked the same way.

Error details are meant for clients: they name at most the host the client gave, never a resolved
address, an upstream body or a traceback.
"""

from __future__ import annotations

import io
import ipaddress
import re
import socket
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Final
from urllib.parse import urljoin

import certifi
import httpcore
import httpx
import idna

from app.config import IPNetwork, Settings
from app.engine.errors import EngineError

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "CheckedURL",
    "FetchResponse",
    "GuardedClient",
    "HttpRangeReader",
    "IPAddress",
    "Resolver",
    "check_url",
    "check_url_full",
    "fetch_bytes",
    "forbidden_reason",
    "is_address_allowed",
    "parse_ipv4_host",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolver(host, port)`` returns the addresses (as strings) a hostname resolves to; it raises
#: ``OSError`` (e.g. ``socket.gaierror``) when the name does not resolve.
Resolver = Callable[[str, int], Iterable[str]]

DEFAULT_BLOCK_SIZE: Final = 256 * 1024
USER_AGENT: Final = "stillframe/0.1"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_MAX_CONNECT_ADDRESSES: Final = 4

# --------------------------------------------------------------------------------------------------
# Address policy
# --------------------------------------------------------------------------------------------------


def _nets(*specs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), why) for cidr, why in specs)


# IANA special-purpose registries, plus multicast and reserved space.
_V4_FORBIDDEN: Final = _nets(
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # includes 255.255.255.255 (broadcast)
)
_V6_FORBIDDEN: Final = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments"),  # includes Teredo 2001::/32
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
_V6_GLOBAL_UNICAST: Final = ipaddress.IPv6Network("2000::/3")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_SIXTOFOUR: Final = ipaddress.IPv6Network("2002::/16")


def _in_networks(addr: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)


def forbidden_reason(addr: IPAddress, allowed_networks: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``addr`` may not be contacted, or ``None`` when it may.

    Addresses inside ``allowed_networks`` are always allowed. IPv4-mapped IPv6 (``::ffff:a.b.c.d``),
    NAT64 (``64:ff9b::/96``) and 6to4 (``2002::/16``) addresses are judged by the IPv4 address they embed.
    """
    if _in_networks(addr, allowed_networks):
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return "scoped address"
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return forbidden_reason(mapped, allowed_networks)
        if addr in _NAT64:
            inner = forbidden_reason(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF), allowed_networks)
            return None if inner is None else f"NAT64 of {inner}"
        if addr in _SIXTOFOUR:
            sixtofour = addr.sixtofour
            assert sixtofour is not None
            inner = forbidden_reason(sixtofour, allowed_networks)
            return None if inner is None else f"6to4 of {inner}"
        for net, why in _V6_FORBIDDEN:
            if addr in net:
                return why
        if addr not in _V6_GLOBAL_UNICAST:
            return "not global unicast"
    else:
        for net, why in _V4_FORBIDDEN:
            if addr in net:
                return why
    # Belt and braces: whatever this Python's ipaddress module considers non-public.
    if addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified:
        return "non-global"
    if addr.is_private or addr.is_reserved:
        return "non-global"
    return None


def is_address_allowed(addr: IPAddress, allowed_networks: Sequence[IPNetwork] = ()) -> bool:
    return forbidden_reason(addr, allowed_networks) is None


# --------------------------------------------------------------------------------------------------
# URL checking
# --------------------------------------------------------------------------------------------------

_SCHEME_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_DEC_RE: Final = re.compile(r"[0-9]+\Z")
_OCT_RE: Final = re.compile(r"0[0-7]*\Z")
_HEX_RE: Final = re.compile(r"0[xX][0-9a-fA-F]*\Z")
_HOSTNAME_RE: Final = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?\Z")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}\Z")


def _bad_url_char(ch: str) -> bool:
    o = ord(ch)
    return o <= 0x20 or 0x7F <= o <= 0x9F or ch == "\\" or ch.isspace()


def _ipv4_number(part: str) -> int | None:
    if _HEX_RE.match(part):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part[0] == "0":
        return int(part[1:], 8) if _OCT_RE.match(part) else None
    if _DEC_RE.match(part):
        return int(part)
    return None


def parse_ipv4_host(host: str) -> ipaddress.IPv4Address | None:
    """Parse ``host`` the way browsers (WHATWG URL) and libc ``inet_aton`` read IPv4 addresses.

    Accepts the odd forms (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``, a trailing dot).
    Returns ``None`` when ``host`` is a domain name, and raises ``ValueError`` when it ends in a number
    but is not a valid address (browsers refuse those too).
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    last = parts[-1]
    if not (_DEC_RE.match(last) or _HEX_RE.match(last)):
        try:  # whatever libc would still read as an address
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None
    if len(parts) > 4:
        raise ValueError("too many parts in IPv4 address")
    numbers = [_ipv4_number(p) for p in parts]
    values: list[int] = []
    for n in numbers:
        if n is None:
            raise ValueError("malformed IPv4 address")
        values.append(n)
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise ValueError("IPv4 address out of range")
    value = values[-1]
    for i, n in enumerate(values[:-1]):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed the guard: normalised, with the addresses a connection may use."""

    url: str  # normalised: canonical host (IPv4 in dotted form), no fragment, path at least "/"
    scheme: str
    host: str  # ASCII hostname or IP literal without brackets; what Host/SNI carry
    port: int
    addresses: tuple[IPAddress, ...]


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the system's ``getaddrinfo`` (TCP), returning address strings."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def _resolve_with_timeout(resolver: Resolver, host: str, port: int, timeout: float) -> list[str]:
    """Run a (possibly blocking) resolver with a time limit; ``getaddrinfo`` has none of its own."""
    result: list[str] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            result.extend(str(a) for a in resolver(host, port))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=work, name="stillframe-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError("name resolution timed out")
    if error:
        raise error[0]
    return result


def _parse_address(text: str) -> IPAddress | None:
    """An address string from a resolver; a scope (``%eth0``) makes it scoped, which is refused."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _split_authority(url: str) -> tuple[str, str, str, str]:
    """(scheme, host, port string, rest) of an absolute http(s) URL, refusing anything ambiguous."""
    if not url:
        raise EngineError("invalid_parameter", "the URL is empty")
    if any(_bad_url_char(c) for c in url):
        raise EngineError("invalid_parameter", "the URL contains whitespace, control characters or '\\'")
    m = _SCHEME_RE.match(url)
    if not m:
        raise EngineError("invalid_parameter", "not an absolute URL")
    scheme = m.group(1).lower()
    if scheme not in _DEFAULT_PORTS:
        raise EngineError("source_forbidden", f"URL scheme '{scheme}' is not allowed; use http or https")
    after = url[m.end() :]
    if not after.startswith("//"):
        raise EngineError("invalid_parameter", "malformed URL: expected '//' after the scheme")
    after = after[2:]
    end = len(after)
    for sep in "/?#":
        i = after.find(sep)
        if i != -1:
            end = min(end, i)
    authority, rest = after[:end], after[end:]
    if "@" in authority:
        raise EngineError("source_forbidden", "URLs with credentials (user:password@) are not allowed")
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise EngineError("invalid_parameter", "malformed URL: unterminated IPv6 address")
        host, tail = authority[1:close], authority[close + 1 :]
        if tail and not tail.startswith(":"):
            raise EngineError("invalid_parameter", "malformed URL authority")
        port = tail[1:]
        if not host or "%" in host:
            raise EngineError("invalid_parameter", "malformed or scoped IPv6 address in URL")
        host = "[" + host + "]"
    else:
        host, _, port = authority.partition(":")
    if not host:
        raise EngineError("invalid_parameter", "the URL has no host")
    return scheme, host, port, rest


def check_url_full(
    url: str,
    settings: Settings,
    resolver: Resolver | None = None,
    *,
    cache: MutableMapping[tuple[str, int], tuple[IPAddress, ...]] | None = None,
) -> CheckedURL:
    """Check ``url`` against the SSRF policy and return it normalised with its permitted addresses.

    Raises ``EngineError``: ``invalid_parameter`` for malformed URLs, ``source_forbidden`` for policy
    refusals (scheme, credentials, port, any forbidden address), ``source_unreachable`` when the host
    does not resolve. With ``cache``, a host name already resolved (and accepted) is not resolved
    again: its earlier addresses are re-checked and reused, which keeps later connections pinned.
    """
    scheme, raw_host, port_text, rest = _split_authority(url)

    # Port
    if port_text == "":
        port = _DEFAULT_PORTS[scheme]
    elif _PORT_RE.match(port_text) and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise EngineError("invalid_parameter", "malformed port in URL")
    if port not in settings.allowed_ports:
        raise EngineError("source_forbidden", f"port {port} is not allowed")

    # Host: IPv6 literal, IPv4 in any form libc/browsers accept, or a domain name.
    addresses: list[IPAddress]
    literal: IPAddress | None = None
    if raw_host.startswith("["):
        try:
            literal = ipaddress.IPv6Address(raw_host[1:-1])
        except ValueError:
            raise EngineError("invalid_parameter", "malformed IPv6 address in URL") from None
        host = literal.compressed
        url_host = f"[{host}]"
    else:
        host = raw_host
        if not host.isascii():
            try:  # IDNA with UTS #46 mapping, as browsers do (this folds full-width digits and dots too)
                host = idna.encode(host, uts46=True).decode("ascii")
            except (idna.IDNAError, UnicodeError, ValueError):
                raise EngineError("invalid_parameter", "malformed host name in URL") from None
        host = host.lower()
        try:
            v4 = parse_ipv4_host(host)
        except ValueError:
            raise EngineError("invalid_parameter", "malformed IPv4 address in URL") from None
        if v4 is not None:
            literal = v4
            host = str(v4)
        elif not _HOSTNAME_RE.match(host) or len(host) > 253:
            raise EngineError("invalid_parameter", "malformed host name in URL")
        url_host = host
    shown = raw_host if raw_host.isascii() else host  # for messages: what the client wrote

    if literal is not None:
        addresses = [literal]
    elif cache is not None and (host, port) in cache:
        addresses = list(cache[(host, port)])
    else:
        timeout = settings.fetch_connect_timeout
        try:
            found = _resolve_with_timeout(resolver or system_resolver, host.rstrip("."), port, timeout)
        except TimeoutError:
            raise EngineError("source_unreachable", f"resolving host '{shown}' timed out") from None
        except (OSError, UnicodeError, ValueError):
            raise EngineError("source_unreachable", f"could not resolve host '{shown}'") from None
        addresses = []
        for text in found:
            addr = _parse_address(text)
            if addr is None:
                raise EngineError("source_forbidden", f"host '{shown}' resolves to a forbidden address")
            if addr not in addresses:
                addresses.append(addr)
        if not addresses:
            raise EngineError("source_unreachable", f"could not resolve host '{shown}'")

    for addr in addresses:
        if forbidden_reason(addr, settings.allowed_networks) is not None:
            if literal is not None:
                raise EngineError("source_forbidden", f"address '{shown}' is not allowed")
            raise EngineError("source_forbidden", f"host '{shown}' resolves to a forbidden address")

    # Rebuild the URL from the parts we checked, and make sure httpx reads it the same way.
    rest = rest.split("#", 1)[0]
    if not rest.startswith("/"):
        rest = "/" + rest
    port_part = "" if port == _DEFAULT_PORTS[scheme] else f":{port}"
    normalised = f"{scheme}://{url_host}{port_part}{rest}"
    try:
        parsed = httpx.URL(normalised)
    except httpx.InvalidURL:
        raise EngineError("invalid_parameter", "malformed URL") from None
    seen_host = parsed.raw_host.decode("ascii").lower()
    if seen_host != host or (parsed.port or _DEFAULT_PORTS[scheme]) != port or parsed.userinfo:
        raise EngineError("invalid_parameter", "ambiguous URL")
    if cache is not None and literal is None:
        cache[(host, port)] = tuple(addresses)
    return CheckedURL(url=normalised, scheme=scheme, host=host, port=port, addresses=tuple(addresses))


def check_url(url: str, settings: Settings, resolver: Resolver | None = None) -> list[IPAddress]:
    """Check ``url`` against the SSRF policy; return the addresses a connection may go to.

    See :func:`check_url_full` for the errors raised.
    """
    return list(check_url_full(url, settings, resolver).addresses)


def _host_of(url: str) -> str:
    """The host as the client wrote it, for messages (best effort; never a resolved address)."""
    try:
        return _split_authority(url)[1]
    except EngineError:
        return "the source"


# --------------------------------------------------------------------------------------------------
# Pinned transport
# --------------------------------------------------------------------------------------------------


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


class FetchResponse:
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

    def __enter__(self) -> FetchResponse:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class GuardedClient:
    """A synchronous HTTP client that only talks to checked addresses (see the module docstring).

    One instance keeps one ``httpx.Client`` (connection reuse). The result of checking a host is
    remembered for the client's lifetime, so later requests to the same host reuse the same pinned
    addresses (no repeated DNS, no rebinding).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self._resolver = resolver
        self._backend = _PinnedBackend(settings.allowed_networks)
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
            return check_url_full(url, self.settings, self._resolver, cache=self._checked)

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
        ``Content-Length`` above ``max_bytes`` (default
        ``settings.max_source_bytes``) raises ``source_too_large`` before any body byte is read.
        """
        settings = self.settings
        host = _host_of(url)
        cap = settings.max_source_bytes if max_bytes is None else max_bytes
        accepted = set(accept_statuses)
        deadline = time.monotonic() + settings.fetch_total_timeout
        target = self.check(url)
        hops = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineError("source_unreachable", f"timed out talking to '{host}'")
            timeout = httpx.Timeout(
                connect=min(settings.fetch_connect_timeout, remaining),
                read=min(settings.fetch_read_timeout, remaining),
                write=min(settings.fetch_read_timeout, remaining),
                pool=min(settings.fetch_connect_timeout, remaining),
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
                raise EngineError("invalid_parameter", "malformed URL") from None
            self.requests_made += 1
            status = response.status_code
            if status in _REDIRECT_STATUSES and "location" in response.headers:
                location = response.headers["location"]
                response.close()
                hops += 1
                if hops > settings.max_redirects:
                    raise EngineError("source_unreachable", f"too many redirects from '{host}'")
                try:
                    target = self.check(urljoin(target.url, location))
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
        cap = self.settings.max_source_bytes if max_bytes is None else max_bytes
        return self.open(url, max_bytes=cap).read(cap)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> GuardedClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def fetch_bytes(
    url: str, settings: Settings, *, max_bytes: int | None = None, resolver: Resolver | None = None
) -> bytes:
    """GET a whole resource through the guard (one-shot client)."""
    with GuardedClient(settings, resolver=resolver) as client:
        return client.get_bytes(url, max_bytes=max_bytes)


# --------------------------------------------------------------------------------------------------
# Ranged file object
# --------------------------------------------------------------------------------------------------

_CONTENT_RANGE_RE: Final = re.compile(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*\Z", re.IGNORECASE)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """(first, last, total) from a Content-Range header; None for parts absent or ``*``."""
    if value is None:
        return None, None, None
    m = _CONTENT_RANGE_RE.match(value)
    if not m:
        return None, None, None
    first = int(m.group(1)) if m.group(1) is not None else None
    last = int(m.group(2)) if m.group(2) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return first, last, total


class HttpRangeReader(io.RawIOBase):
    """A read-only, seekable binary file over a remote URL, fetched with HTTP Range requests.

    Reads are served from block-aligned fetches (``block_size``, default 256 KiB) kept in a small LRU,
    so a demuxer's many small reads become few requests; sequential reading grows a readahead window
    up to ``max_readahead_blocks``. ``requests_made`` and ``bytes_fetched`` count the traffic.

    If the server ignores ``Range`` (answers 200 with the whole body) the body is spooled to a
    temporary file as far as reads need it, within ``settings.max_source_bytes``.
    """

    def __init__(
        self,
        url: str,
        settings: Settings,
        *,
        client: GuardedClient | None = None,
        resolver: Resolver | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        cache_blocks: int = 32,
        max_readahead_blocks: int = 8,
    ) -> None:
        super().__init__()
        if block_size <= 0 or cache_blocks <= 0 or max_readahead_blocks <= 0:
            raise ValueError("block_size, cache_blocks and max_readahead_blocks must be positive")
        self.url = url
        self.settings = settings
        self.block_size = block_size
        self.cache_blocks = cache_blocks
        self.max_readahead_blocks = max_readahead_blocks
        self.requests_made = 0
        self.bytes_fetched = 0
        self.size: int | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.content_type: str | None = None
        self.final_url = url
        self.supports_ranges = True
        self._host = _host_of(url)
        self._owns_client = client is None
        self._client = client if client is not None else GuardedClient(settings, resolver=resolver)
        self._pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._next_sequential_block = -1
        self._streak = 0
        # fallback (no range support)
        self._spool: IO[bytes] | None = None
        self._spooled = 0
        self._stream: FetchResponse | None = None
        self._chunks: Iterator[bytes] | None = None
        self._stream_done = False
        self._stream_error: EngineError | None = None
        self._network_time = 0.0
        try:
            self._open_first()
        except BaseException:
            self._release()
            raise

    # -- setup ---------------------------------------------------------------------------------------

    def _open_first(self) -> None:
        first_len = self.block_size
        response = self._client.open(
            self.url,
            headers={"Range": f"bytes=0-{first_len - 1}"},
            accept_statuses=(416,),
            max_bytes=self.settings.max_source_bytes,
        )
        self.requests_made += 1
        self.final_url = response.url
        self.etag = response.headers.get("etag")
        self.last_modified = response.headers.get("last-modified")
        self.content_type = response.headers.get("content-type")
        if response.status_code == 206:
            try:
                data, total = self._consume_range(response, 0, first_len - 1)
            finally:
                response.close()
            self.size = total
            self._store(0, data)
            self._next_sequential_block = -(-len(data) // self.block_size)
        elif response.status_code == 416:
            response.close()
            _, _, total = _parse_content_range(response.headers.get("content-range"))
            if total != 0:
                raise EngineError("source_unreachable", f"'{self._host}' rejected a range request")
            self.size = 0
        elif response.status_code == 200:
            self.supports_ranges = False
            self._stream = response
            self._chunks = response.iter_chunks(self.settings.max_source_bytes)
            response.deadline = None  # we account network time ourselves: decoding may be slow
            self._spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 (closed in close())
            if not response.encoded:
                self.size = response.content_length
            if self.size == 0:
                self._finish_stream()
        else:
            response.close()
            raise EngineError(
                "source_unreachable", f"'{self._host}' answered HTTP {response.status_code} to a range request"
            )

    def _consume_range(self, response: FetchResponse, first: int, last: int) -> tuple[bytes, int | None]:
        """Validate a 206 answer for ``bytes=first-last`` and read its body. Returns (data, total)."""
        if response.encoded:
            raise EngineError("source_unreachable", f"'{self._host}' sent an encoded range response")
        got_first, got_last, total = _parse_content_range(response.headers.get("content-range"))
        if got_first != first or got_last is None or got_last < first or got_last > last:
            raise EngineError("source_unreachable", f"'{self._host}' sent an unexpected byte range")
        if total is not None and got_last >= total:
            raise EngineError("source_unreachable", f"'{self._host}' sent an unexpected byte range")
        expected = got_last - first + 1
        if self.bytes_fetched + expected > self.settings.max_source_bytes:
            raise EngineError("source_too_large", f"the source at '{self._host}' exceeds the size limit")
        parts: list[bytes] = []
        got = 0
        for chunk in response.iter_chunks(expected, decoded=False):
            parts.append(chunk)
            got += len(chunk)
        if got != expected:
            raise EngineError("source_unreachable", f"transfer from '{self._host}' was cut short")
        self.bytes_fetched += got
        return b"".join(parts), total

    # -- block cache ---------------------------------------------------------------------------------

    def _store(self, start: int, data: bytes) -> dict[int, bytes]:
        """Split ``data`` (starting at block-aligned ``start``) into blocks and cache them."""
        bs = self.block_size
        out: dict[int, bytes] = {}
        for off in range(0, len(data), bs):
            idx = (start + off) // bs
            block = data[off : off + bs]
            out[idx] = block
            self._blocks[idx] = block
            self._blocks.move_to_end(idx)
        while len(self._blocks) > self.cache_blocks:
            self._blocks.popitem(last=False)
        return out

    def _fetch_blocks(self, first_block: int, last_block: int) -> dict[int, bytes]:
        bs = self.block_size
        start = first_block * bs
        end = (last_block + 1) * bs - 1
        if self.size is not None:
            end = min(end, self.size - 1)
        if end < start:
            return {}
        if self.bytes_fetched + (end - start + 1) > self.settings.max_source_bytes:
            raise EngineError("source_too_large", f"the source at '{self._host}' exceeds the size limit")
        response = self._client.open(
            self.final_url,
            headers={"Range": f"bytes={start}-{end}"},
            accept_statuses=(416,),
            max_bytes=self.settings.max_source_bytes,
        )
        self.requests_made += 1
        try:
            if response.status_code == 416:
                _, _, total = _parse_content_range(response.headers.get("content-range"))
                if total is not None and (self.size is None or total == self.size) and start >= total:
                    self.size = total
                    return {}
                raise EngineError("source_unreachable", f"the source at '{self._host}' changed while reading")
            if response.status_code != 206:
                raise EngineError("source_unreachable", f"the source at '{self._host}' changed while reading")
            etag = response.headers.get("etag")
            if self.etag is not None and etag is not None and etag != self.etag:
                raise EngineError("source_unreachable", f"the source at '{self._host}' changed while reading")
            data, total = self._consume_range(response, start, end)
        finally:
            response.close()
        if total is not None and self.size is not None and total != self.size:
            raise EngineError("source_unreachable", f"the source at '{self._host}' changed while reading")
        if self.size is None and total is not None:
            self.size = total
        return self._store(start, data)

    def _read_ranged(self, start: int, n: int) -> bytes:
        if self.size is not None:
            n = min(n, self.size - start)
        if n <= 0:
            return b""
        bs = self.block_size
        first, last = start // bs, (start + n - 1) // bs
        have: dict[int, bytes] = {}
        idx = first
        while idx <= last:
            cached = self._blocks.get(idx)
            if cached is not None:
                self._blocks.move_to_end(idx)
                have[idx] = cached
                idx += 1
                continue
            run_end = idx
            while run_end + 1 <= last and (run_end + 1) not in self._blocks:
                run_end += 1
            # Readahead: grow the window while the reader keeps going forward block after block.
            if idx == self._next_sequential_block:
                self._streak = min(self._streak + 1, 16)
            else:
                self._streak = 0
            extra = min(self.max_readahead_blocks, 2**self._streak) - (run_end - idx + 1)
            fetch_end = run_end
            while extra > 0 and (fetch_end + 1) not in self._blocks:
                if self.size is not None and (fetch_end + 1) * bs >= self.size:
                    break
                fetch_end += 1
                extra -= 1
            got = self._fetch_blocks(idx, fetch_end)
            self._next_sequential_block = fetch_end + 1
            for i in range(idx, run_end + 1):
                if i not in got:
                    break  # end of file
                have[i] = got[i]
            idx = run_end + 1
        pieces: list[bytes] = []
        pos = start
        remaining = n
        while remaining > 0:
            block = have.get(pos // bs)
            piece = b"" if block is None else block[pos % bs : pos % bs + remaining]
            if not piece:
                break  # end of file
            pieces.append(piece)
            pos += len(piece)
            remaining -= len(piece)
        return b"".join(pieces)

    # -- fallback: sequential spool ------------------------------------------------------------------

    def _finish_stream(self) -> None:
        self._stream_done = True
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._chunks = None
        if self.size is None or self.size != self._spooled:
            if self.size is not None and self._spooled < self.size:
                raise EngineError("source_unreachable", f"transfer from '{self._host}' was cut short")
            self.size = self._spooled

    def _fill(self, upto: int | None) -> None:
        """Spool the body until at least ``upto`` bytes are held (``None``: to the end)."""
        assert self._spool is not None
        if self._stream_error is not None:
            raise self._stream_error  # a failed stream stays failed: never pass a truncated body as EOF
        if self._stream_done:
            return
        started = time.monotonic()
        try:
            while upto is None or self._spooled < upto:
                assert self._chunks is not None
                if self._network_time + (time.monotonic() - started) > self.settings.fetch_total_timeout:
                    raise EngineError("source_unreachable", f"timed out reading from '{self._host}'")
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._finish_stream()
                    return
                self._spool.seek(self._spooled)
                self._spool.write(chunk)
                self._spooled += len(chunk)
                self.bytes_fetched += len(chunk)
        except EngineError as exc:
            self._stream_error = exc
            if self._stream is not None:
                self._stream.close()
            raise
        finally:
            self._network_time += time.monotonic() - started

    def _read_spooled(self, start: int, n: int) -> bytes:
        assert self._spool is not None
        self._fill(start + n)
        end = min(start + n, self._spooled)
        if end <= start:
            return b""
        self._spool.seek(start)
        return self._spool.read(end - start)

    # -- file API ------------------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            if self.size is None and self._spool is not None:
                self._fill(None)
            if self.size is None:
                raise OSError("size of the remote file is unknown")
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError("negative seek position")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()  # type: ignore[attr-defined]
        if size is None or size < 0:
            if self.size is None and self._spool is not None:
                self._fill(None)
            if self.size is None:
                raise OSError("size of the remote file is unknown")
            size = max(0, self.size - self._pos)
        if size == 0:
            return b""
        ranged = self._spool is None
        data = self._read_ranged(self._pos, size) if ranged else self._read_spooled(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _release(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._blocks.clear()
        if self._owns_client:
            self._client.close()

    def close(self) -> None:
        if not self.closed:
            try:
                self._release()
            finally:
                super().close()
