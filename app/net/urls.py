"""URL checks: what a URL names, in every form a browser or libc would read it, against the policy.

:func:`check_url_full` parses an absolute http(s) URL strictly (refusing anything two parsers could
read differently), reads its host the way browsers do (IDNA, the odd IPv4 forms), resolves it with a
time limit and refuses it when any address it resolves to is forbidden. The answer, a
:class:`CheckedURL`, carries the addresses a connection may use, so nothing resolves the name again.

Error details are meant for clients: they name at most the host the client gave, never a resolved
address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Final

import httpx
import idna

from app.engine.errors import EngineError
from app.net.policy import FetchPolicy, IPAddress, forbidden_reason

__all__ = [
    "DEFAULT_PORTS",
    "CheckedURL",
    "Resolver",
    "check_url",
    "check_url_full",
    "display_host",
    "parse_ipv4_host",
    "system_resolver",
]

#: ``resolver(host, port)`` returns the addresses (as strings) a hostname resolves to; it raises
#: ``OSError`` (e.g. ``socket.gaierror``) when the name does not resolve.
Resolver = Callable[[str, int], Iterable[str]]

DEFAULT_PORTS: Final = {"http": 80, "https": 443}

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
    if scheme not in DEFAULT_PORTS:
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
    policy: FetchPolicy,
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
        port = DEFAULT_PORTS[scheme]
    elif _PORT_RE.match(port_text) and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise EngineError("invalid_parameter", "malformed port in URL")
    if port not in policy.allowed_ports:
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
        timeout = policy.connect_timeout
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
        if forbidden_reason(addr, policy.allowed_networks) is not None:
            if literal is not None:
                raise EngineError("source_forbidden", f"address '{shown}' is not allowed")
            raise EngineError("source_forbidden", f"host '{shown}' resolves to a forbidden address")

    # Rebuild the URL from the parts we checked, and make sure httpx reads it the same way.
    rest = rest.split("#", 1)[0]
    if not rest.startswith("/"):
        rest = "/" + rest
    port_part = "" if port == DEFAULT_PORTS[scheme] else f":{port}"
    normalised = f"{scheme}://{url_host}{port_part}{rest}"
    try:
        parsed = httpx.URL(normalised)
    except httpx.InvalidURL:
        raise EngineError("invalid_parameter", "malformed URL") from None
    seen_host = parsed.raw_host.decode("ascii").lower()
    if seen_host != host or (parsed.port or DEFAULT_PORTS[scheme]) != port or parsed.userinfo:
        raise EngineError("invalid_parameter", "ambiguous URL")
    if cache is not None and literal is None:
        cache[(host, port)] = tuple(addresses)
    return CheckedURL(url=normalised, scheme=scheme, host=host, port=port, addresses=tuple(addresses))


def check_url(url: str, policy: FetchPolicy, resolver: Resolver | None = None) -> list[IPAddress]:
    """Check ``url`` against the SSRF policy; return the addresses a connection may go to.

    See :func:`check_url_full` for the errors raised.
    """
    return list(check_url_full(url, policy, resolver).addresses)


def display_host(url: str) -> str:
    """The host as the client wrote it, for messages (best effort; never a resolved address)."""
    try:
        return _split_authority(url)[1]
    except EngineError:
        return "the source"
