"""Address policy: which IP addresses the service may connect to, and the fetch policy it enforces.

The forbidden networks are the IANA special-purpose registries plus multicast and reserved space;
a deployment exempts its own ranges (``FetchPolicy.allowed_networks``). This module knows nothing
of URLs or HTTP: :mod:`app.net.urls` checks URLs against it, :mod:`app.net.client` connects by it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["FetchPolicy", "IPAddress", "IPNetwork", "forbidden_reason", "is_address_allowed"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FetchPolicy:
    """What a guarded fetch may do: where it may connect, how long it may take, how much it may read.

    Frozen and picklable: sources carry it into decoder processes.
    """

    allowed_networks: tuple[IPNetwork, ...]  # exempt from the forbidden networks (e.g. an internal origin)
    allowed_ports: frozenset[int]
    connect_timeout: float  # seconds, also the limit on name resolution
    read_timeout: float  # seconds between bytes (and for sending a request body)
    total_timeout: float  # seconds for a whole request, redirects and body included
    max_bytes: int  # the most bytes read from one resource
    max_redirects: int  # 0: a redirect is an error


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
