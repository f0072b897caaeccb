"""The SSRF guard: URL and address policy (unit, injected resolver) and end to end on loopback servers."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.engine.errors import EngineError
from app.engine.sources import SourcePolicy, resolve_source
from app.net.client import GuardedClient, fetch_bytes
from app.net.policy import FetchPolicy, forbidden_reason
from app.net.ranged import HttpRangeReader
from app.net.urls import check_url, check_url_full, parse_ipv4_host
from tests.http_server import LoopbackServer, loopback_server

SECRET = b"SECRET-UPSTREAM-BODY"


def make_policy(**overrides: Any) -> FetchPolicy:
    values: dict[str, Any] = {
        "allowed_networks": [],
        "allowed_ports": [80, 443],
        "fetch_connect_timeout": 1.0,
        "fetch_read_timeout": 1.0,
        "fetch_total_timeout": 3.0,
        "max_redirects": 5,
    }
    values.update(overrides)
    return Settings(**values).fetch_policy()


class TableResolver:
    """An injected resolver: a fixed table, counting calls; unknown names fail like getaddrinfo."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> Iterable[str]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


def no_dns(host: str, port: int) -> Iterable[str]:
    raise AssertionError(f"resolver called for {host!r}")


def expect_error(code: str, fn: Any, *args: Any, **kwargs: Any) -> EngineError:
    with pytest.raises(EngineError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


def loopback_policy(server: LoopbackServer, **overrides: Any) -> FetchPolicy:
    values: dict[str, Any] = {"allowed_networks": ["127.0.0.0/8"], "allowed_ports": [server.port]}
    values.update(overrides)
    return make_policy(**values)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    yield from loopback_server()


# --------------------------------------------------------------------------------------------------
# Unit: addresses
# --------------------------------------------------------------------------------------------------

FORBIDDEN_LITERALS = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "0.0.0.0",
    "0.1.2.3",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",  # broadcast
    "192.0.0.8",
    "192.0.2.1",  # documentation
    "198.51.100.7",
    "203.0.113.9",
    "198.18.0.1",  # benchmarking
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[febf::1]",
    "[fc00::1]",
    "[fd12:3456::1]",
    "[ff02::1]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "[::ffff:a9fe:a9fe]",  # mapped 169.254.169.254
    "[::127.0.0.1]",  # IPv4-compatible (deprecated)
    "[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
    "[64:ff9b::127.0.0.1]",
    "[2002:7f00:1::1]",  # 6to4 of 127.0.0.1
    "[2002:c0a8:101::]",  # 6to4 of 192.168.1.1
    "[2001:db8::1]",  # documentation
    "[2001::1]",  # Teredo
    "[100::1]",  # discard
    "[fec0::1]",  # site-local
]


@pytest.mark.parametrize("host", FORBIDDEN_LITERALS)
def test_forbidden_literal_addresses(host: str) -> None:
    err = expect_error("source_forbidden", check_url, f"http://{host}/x", make_policy(), no_dns)
    assert "not allowed" in err.detail


ODD_FORMS = [
    "2130706433",  # decimal
    "0x7f000001",  # hex
    "0X7F000001",
    "0177.0.0.1",  # octal
    "0177.0000.0000.0001",
    "127.1",  # short
    "127.0.1",
    "0x7f.1",
    "0x7f.0.0.0x1",
    "017700000001",  # octal, one part
    "127.0.0.1.",  # trailing dot
    "0",  # 0.0.0.0
    "0x0",
    "167772161",  # 10.0.0.1
    "0xa9fea9fe",  # 169.254.169.254
    "0251.0376.0251.0376",
    "169.16689662",  # 169.254.169.254
]


@pytest.mark.parametrize("host", ODD_FORMS)
def test_odd_ipv4_forms_are_normalised_and_refused(host: str) -> None:
    addr = parse_ipv4_host(host)
    assert addr is not None
    assert forbidden_reason(addr) is not None
    expect_error("source_forbidden", check_url, f"http://{host}/", make_policy(), no_dns)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("1.2.3.4.", "1.2.3.4"),
        ("0x5db8d822", "93.184.216.34"),
        ("93.0xb8.55330", "93.184.216.34"),
        ("example.com", None),
        ("1.2.3.a", None),
        ("mp4", None),
    ],
)
def test_parse_ipv4_host(host: str, expected: str | None) -> None:
    got = parse_ipv4_host(host)
    assert (None if got is None else str(got)) == expected


@pytest.mark.parametrize("host", ["1.2.3.256", "1.2.3.4.5", "1.0xg.1", "09.1.1.1", "256.1.1.1", "1.2.65536"])
def test_malformed_numeric_hosts_are_invalid(host: str) -> None:
    expect_error("invalid_parameter", check_url, f"http://{host}/", make_policy(), no_dns)


def test_full_width_digits_fold_to_loopback() -> None:
    expect_error("source_forbidden", check_url, "http://１２７.０.０.１/", make_policy(), no_dns)


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "64:ff9b::5db8:d822", "2002:5db8:d822::1", "::ffff:8.8.8.8"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


def test_public_literal_and_hostname_pass() -> None:
    policy = make_policy()
    assert check_url("http://93.184.216.34/a.mp4", policy, no_dns) == [ipaddress.ip_address("93.184.216.34")]
    resolver = TableResolver({"media.example": ["93.184.216.34", "2606:2800:220:1::248"]})
    got = check_url("https://media.example/a.mp4?x=1#frag", policy, resolver)
    assert [str(a) for a in got] == ["93.184.216.34", "2606:2800:220:1::248"]
    full = check_url_full("https://Media.Example/a.mp4?x=1#frag", policy, resolver)
    assert full.url == "https://media.example/a.mp4?x=1"
    assert (full.host, full.port) == ("media.example", 443)


def test_one_bad_record_among_good_ones_is_refused() -> None:
    resolver = TableResolver({"mixed.example": ["93.184.216.34", "8.8.8.8", "10.0.0.7", "1.1.1.1"]})
    err = expect_error("source_forbidden", check_url, "http://mixed.example/", make_policy(), resolver)
    assert "10.0.0.7" not in err.detail
    assert "mixed.example" in err.detail


@pytest.mark.parametrize("record", ["::1", "fe80::1%eth0", "::ffff:192.168.0.1", "not-an-ip"])
def test_bad_v6_and_garbage_records_are_refused(record: str) -> None:
    resolver = TableResolver({"v6.example": ["2606:4700:4700::1111", record]})
    expect_error("source_forbidden", check_url, "http://v6.example/", make_policy(), resolver)


def test_allowed_networks_exempt_only_their_ranges() -> None:
    policy = make_policy(allowed_networks=["10.0.0.0/8", "fd00::/8"])
    assert check_url("http://10.1.2.3/", policy, no_dns)
    assert check_url("http://[::ffff:10.1.2.3]/", policy, no_dns)
    assert check_url("http://[fd00::5]/", policy, no_dns)
    expect_error("source_forbidden", check_url, "http://192.168.1.1/", policy, no_dns)
    expect_error("source_forbidden", check_url, "http://127.0.0.1/", policy, no_dns)
    resolver = TableResolver({"intra.example": ["10.9.9.9", "192.168.0.9"]})
    expect_error("source_forbidden", check_url, "http://intra.example/", policy, resolver)


def test_resolution_failure_is_unreachable_and_names_only_the_host() -> None:
    err = expect_error("source_unreachable", check_url, "http://nowhere.example/", make_policy(), TableResolver({}))
    assert "nowhere.example" in err.detail


def test_internal_addresses_never_appear_in_details() -> None:
    resolver = TableResolver({"intranet.example": ["10.1.2.3"]})
    err = expect_error("source_forbidden", check_url, "http://intranet.example/", make_policy(), resolver)
    assert "10.1.2.3" not in err.detail


def test_slow_resolver_times_out() -> None:
    def slow(host: str, port: int) -> Iterable[str]:
        time.sleep(2)
        return ["93.184.216.34"]

    start = time.monotonic()
    expect_error("source_unreachable", check_url, "http://slow.example/", make_policy(fetch_connect_timeout=0.2), slow)
    assert time.monotonic() - start < 1.5


# --------------------------------------------------------------------------------------------------
# Unit: URL syntax
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.mp4",
        "file:///etc/passwd",
        "gopher://example.com/",
        "data:video/mp4;base64,AAAA",
        "concat:a.mp4|b.mp4",
        "rtmp://example.com/live",
        "tcp://example.com:80",
        "javascript:alert(1)",
    ],
)
def test_other_schemes_are_forbidden(url: str) -> None:
    expect_error("source_forbidden", check_url, url, make_policy(), no_dns)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@example.com/a.mp4",
        "http://user@example.com/a.mp4",
        "http://example.com@127.0.0.1/",
        "http://:@example.com/",
        "https://a%40b@example.com/",
    ],
)
def test_userinfo_is_rejected(url: str) -> None:
    err = expect_error("source_forbidden", check_url, url, make_policy(), no_dns)
    assert "credentials" in err.detail


@pytest.mark.parametrize(
    "url",
    [
        "http://exa\nmple.com/",
        "http://example.com/a\r\nX-Injected: 1",
        "http://example.com/\ta.mp4",
        "http://example.com/a b.mp4",
        " http://example.com/",
        "http://example.com/\x00",
        "http://example.com/\x7f",
        "http://example.com\\@127.0.0.1/",
        "http://example.com/\u2028",
        "http://example.com/\x85",
    ],
)
def test_control_characters_and_whitespace_are_rejected(url: str) -> None:
    expect_error("invalid_parameter", check_url, url, make_policy(), no_dns)


@pytest.mark.parametrize(
    "url", ["http:///x", "http://", "http:example.com", "http://[::1/", "http://ex%41mple.com/", "http://a..b/", "//x/"]
)
def test_malformed_urls_are_invalid(url: str) -> None:
    expect_error("invalid_parameter", check_url, url, make_policy(), no_dns)


def test_scoped_ipv6_literal_is_refused() -> None:
    with pytest.raises(EngineError):
        check_url("http://[fe80::1%25eth0]/", make_policy(), no_dns)


@pytest.mark.parametrize(
    "url", ["http://93.184.216.34:8080/", "https://93.184.216.34:8443/", "http://93.184.216.34:22/"]
)
def test_ports_outside_the_allow_list_are_forbidden(url: str) -> None:
    err = expect_error("source_forbidden", check_url, url, make_policy(), no_dns)
    assert "port" in err.detail


@pytest.mark.parametrize("url", ["http://93.184.216.34:0/", "http://93.184.216.34:65536/", "http://93.184.216.34:8x/"])
def test_bad_ports_are_invalid(url: str) -> None:
    expect_error("invalid_parameter", check_url, url, make_policy(allowed_ports=[80, 0, 65536]), no_dns)


def test_default_and_explicit_ports() -> None:
    policy = make_policy(allowed_ports=[443, 8443])
    assert check_url("https://93.184.216.34/", policy, no_dns)
    assert check_url("https://93.184.216.34:8443/", policy, no_dns)
    expect_error("source_forbidden", check_url, "http://93.184.216.34/", policy, no_dns)  # 80 not allowed


# --------------------------------------------------------------------------------------------------
# End to end: loopback servers
# --------------------------------------------------------------------------------------------------


def test_canary_loopback_refused_without_any_request(server: LoopbackServer) -> None:
    server.add_file("/a.bin", b"hello")
    policy = make_policy(allowed_ports=[server.port])  # port allowed, address not
    for host in ("127.0.0.1", "2130706433", "0x7f.1", "127.1", "[::ffff:127.0.0.1]"):
        url = f"http://{host}:{server.port}/a.bin"
        expect_error("source_forbidden", fetch_bytes, url, policy)
        expect_error("source_forbidden", resolve_source, url, SourcePolicy(fetch=policy))
        expect_error("source_forbidden", HttpRangeReader, url, policy)
    resolver = TableResolver({"localhost.example": ["127.0.0.1"]})
    expect_error(
        "source_forbidden", fetch_bytes, f"http://localhost.example:{server.port}/a.bin", policy, resolver=resolver
    )
    assert server.request_count() == 0


def test_allowed_network_and_port_work(server: LoopbackServer) -> None:
    server.add_file("/a.bin", b"hello world")
    policy = loopback_policy(server)
    assert fetch_bytes(server.url("/a.bin"), policy) == b"hello world"
    # odd forms are normalised to the address they mean, and that is where the connection goes
    assert fetch_bytes(f"http://2130706433:{server.port}/a.bin", policy) == b"hello world"
    assert server.request_count("/a.bin") == 2
    (req,) = server.requests_for("/a.bin")[:1]
    assert req.headers["accept-encoding"] == "identity"


def test_allowed_network_must_match_exactly(server: LoopbackServer) -> None:
    server.add_file("/a.bin", b"x")
    expect_error(
        "source_forbidden",
        fetch_bytes,
        server.url("/a.bin"),
        loopback_policy(server, allowed_networks=["127.0.0.2/32"]),
    )
    expect_error("source_forbidden", fetch_bytes, server.url("/a.bin"), loopback_policy(server, allowed_ports=[80]))
    assert server.request_count() == 0


def test_connection_is_pinned_to_checked_address_and_keeps_host(server: LoopbackServer) -> None:
    server.add_file("/a.bin", b"pinned")
    resolver = TableResolver({"media.test": ["127.0.0.1"]})
    policy = loopback_policy(server)
    with GuardedClient(policy, resolver=resolver) as client:
        assert client.get_bytes(f"http://media.test:{server.port}/a.bin") == b"pinned"
        assert client.get_bytes(f"http://media.test:{server.port}/a.bin") == b"pinned"
    assert resolver.calls == ["media.test"]  # resolved once, then reused: no second lookup to rebind
    for req in server.requests_for("/a.bin"):
        assert req.headers["host"] == f"media.test:{server.port}"


def test_rebinding_to_forbidden_address_is_refused(server: LoopbackServer) -> None:
    server.add_file("/a.bin", b"x")
    answers = [["127.0.0.1"], ["127.0.0.1", "10.0.0.1"]]

    def rebinding(host: str, port: int) -> Iterable[str]:
        return answers.pop(0)

    policy = loopback_policy(server, allowed_networks=["127.0.0.1/32"])
    url = f"http://rebind.test:{server.port}/a.bin"
    assert fetch_bytes(url, policy, resolver=rebinding) == b"x"
    expect_error("source_forbidden", fetch_bytes, url, policy, resolver=rebinding)
    assert server.request_count() == 1


def test_redirect_to_forbidden_address_is_refused(server: LoopbackServer) -> None:
    try:
        canary = LoopbackServer("127.0.0.2").start()
    except OSError:
        pytest.skip("cannot bind 127.0.0.2")
    try:
        canary.add_file("/secret", b"internal")
        server.add_redirect("/go", f"http://127.0.0.2:{canary.port}/secret")
        policy = make_policy(allowed_networks=["127.0.0.1/32"], allowed_ports=[server.port, canary.port])
        err = expect_error("source_forbidden", fetch_bytes, server.url("/go"), policy)
        assert "127.0.0.2" not in err.detail
        expect_error("source_forbidden", HttpRangeReader, server.url("/go"), policy)
        assert server.request_count("/go") == 2
        assert canary.request_count() == 0
    finally:
        canary.stop()


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://0x7f000002/",
        "file:///etc/passwd",
        "ftp://example.com/",
        "http://evil.test/",
        "http://user:pw@127.0.0.1/",
    ],
)
def test_redirect_targets_are_checked(server: LoopbackServer, location: str) -> None:
    server.add_redirect("/go", location)
    resolver = TableResolver({"evil.test": ["10.0.0.1"]})
    policy = make_policy(allowed_networks=["127.0.0.1/32"], allowed_ports=[80, server.port])
    err = expect_error("source_forbidden", fetch_bytes, server.url("/go"), policy, resolver=resolver)
    assert "10.0.0.1" not in err.detail and "169.254" not in err.detail


def test_ipv6_loopback_end_to_end() -> None:
    try:
        v6 = LoopbackServer("::1").start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        v6.add_file("/a.bin", b"six")
        url = v6.url("/a.bin")
        expect_error("source_forbidden", fetch_bytes, url, make_policy(allowed_ports=[v6.port]))
        assert v6.request_count() == 0
        policy = make_policy(allowed_networks=["::1/128"], allowed_ports=[v6.port])
        assert fetch_bytes(url, policy) == b"six"
        resolver = TableResolver({"six.test": ["::1"]})
        assert fetch_bytes(f"http://six.test:{v6.port}/a.bin", policy, resolver=resolver) == b"six"
    finally:
        v6.stop()


def test_redirect_to_port_not_allowed(server: LoopbackServer) -> None:
    server.add_redirect("/go", "http://127.0.0.1:1/")
    expect_error("source_forbidden", fetch_bytes, server.url("/go"), loopback_policy(server))


def test_redirect_chain_within_cap_is_followed(server: LoopbackServer) -> None:
    server.add_file("/final", b"done")
    server.add_redirect("/r1", "/r2", status=301)
    server.add_redirect("/r2", server.url("/r3"), status=307)
    server.add_redirect("/r3", "final", status=308)
    assert fetch_bytes(server.url("/r1"), loopback_policy(server, max_redirects=3)) == b"done"
    expect_error("source_unreachable", fetch_bytes, server.url("/r1"), loopback_policy(server, max_redirects=2))


def test_redirect_loop_hits_the_cap(server: LoopbackServer) -> None:
    server.add_redirect("/loop", "/loop")
    err = expect_error("source_unreachable", fetch_bytes, server.url("/loop"), loopback_policy(server, max_redirects=3))
    assert "redirect" in err.detail
    assert server.request_count("/loop") == 4


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, "source_not_found"),
        (410, "source_not_found"),
        (401, "source_forbidden"),
        (403, "source_forbidden"),
        (400, "source_unreachable"),
        (418, "source_unreachable"),
        (429, "source_unreachable"),
        (500, "source_unreachable"),
        (502, "source_unreachable"),
        (503, "source_unreachable"),
    ],
)
def test_upstream_status_mapping(server: LoopbackServer, status: int, code: str) -> None:
    server.add_status("/s", status, body=SECRET + b" at 10.0.0.1")
    err = expect_error(code, fetch_bytes, server.url("/s"), loopback_policy(server))
    assert "SECRET" not in err.detail and "10.0.0.1" not in err.detail
    expect_error(code, HttpRangeReader, server.url("/s"), loopback_policy(server))


def test_connection_refused_is_unreachable_without_leaking_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resolver = TableResolver({"media.test": ["127.0.0.1"]})
    policy = make_policy(allowed_networks=["127.0.0.0/8"], allowed_ports=[port])
    err = expect_error("source_unreachable", fetch_bytes, f"http://media.test:{port}/a", policy, resolver=resolver)
    assert "127.0.0.1" not in err.detail
    assert "media.test" in err.detail


def test_content_length_over_cap_refused_before_body(server: LoopbackServer) -> None:
    # Declares 10 MB, then trickles: only refusing on the header returns quickly.
    server.add_stream("/big", content_length=10_000_000, chunk=b"x" * 100, interval=0.5)
    policy = loopback_policy(server, max_source_bytes=1_000_000)
    start = time.monotonic()
    expect_error("source_too_large", fetch_bytes, server.url("/big"), policy)
    expect_error("source_too_large", HttpRangeReader, server.url("/big"), policy)  # server ignores Range
    assert time.monotonic() - start < 0.8


def test_endless_body_stops_at_the_cap(server: LoopbackServer) -> None:
    server.add_stream("/endless", chunk=b"y" * 65536)
    policy = loopback_policy(server, max_source_bytes=1_000_000)
    start = time.monotonic()
    expect_error("source_too_large", fetch_bytes, server.url("/endless"), policy)
    with HttpRangeReader(server.url("/endless"), policy) as reader:
        assert not reader.supports_ranges
        assert reader.read(1000) == b"y" * 1000
        expect_error("source_too_large", reader.seek, 0, 2)
        expect_error("source_too_large", reader.read)  # still failed: not a short file
        assert reader.bytes_fetched <= 1_000_000 + 65536
    assert time.monotonic() - start < 3


def test_slow_body_hits_the_deadline(server: LoopbackServer) -> None:
    server.add_stream("/slow", chunk=b"z" * 10, interval=0.05)  # never stalls long enough for the read timeout
    policy = loopback_policy(server, fetch_read_timeout=0.5, fetch_total_timeout=1.0)
    start = time.monotonic()
    err = expect_error("source_unreachable", fetch_bytes, server.url("/slow"), policy)
    assert "timed out" in err.detail
    assert time.monotonic() - start < 2.0
    start = time.monotonic()
    with HttpRangeReader(server.url("/slow"), policy) as reader:
        expect_error("source_unreachable", reader.read)
    assert time.monotonic() - start < 2.0


def test_silent_server_hits_the_read_timeout(server: LoopbackServer) -> None:
    server.add_stream("/silent", header_delay=30)
    policy = loopback_policy(server, fetch_read_timeout=0.3, fetch_total_timeout=5.0)
    start = time.monotonic()
    expect_error("source_unreachable", fetch_bytes, server.url("/silent"), policy)
    assert time.monotonic() - start < 1.5


# --------------------------------------------------------------------------------------------------
# TLS: the connection goes to the pinned address, SNI and certificate checks use the hostname
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=stillframe test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=media.test")
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:media.test\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return {"ca": d / "ca.pem", "cert": d / "leaf.pem", "key": d / "leaf.key"}


def test_tls_uses_hostname_for_sni_and_verification(tls_files: dict[str, Path]) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls_files["cert"], tls_files["key"])
    client_ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
    with LoopbackServer(ssl_context=server_ctx) as tls_server:
        tls_server.add_file("/a.bin", b"secure bytes")
        resolver = TableResolver({"media.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        policy = loopback_policy(tls_server)
        with GuardedClient(policy, resolver=resolver, ssl_context=client_ctx) as client:
            assert client.get_bytes(f"https://media.test:{tls_server.port}/a.bin") == b"secure bytes"
            assert tls_server.sni_names == ["media.test"]
            assert tls_server.requests_for("/a.bin")[0].headers["host"] == f"media.test:{tls_server.port}"
            # same address, a name the certificate does not cover: verification fails
            expect_error("source_unreachable", client.get_bytes, f"https://other.test:{tls_server.port}/a.bin")
            # and the IP literal is not in the certificate either
            expect_error("source_unreachable", client.get_bytes, f"https://127.0.0.1:{tls_server.port}/a.bin")
        assert tls_server.request_count() == 1
