"""Hostile source URLs through the live app: schemes, FFmpeg pseudo-protocols, every forbidden address
form, redirects and HLS playlists into them. A real loopback canary server (the "internal service")
must see zero requests; every refusal is a clean 4xx problem; the app keeps serving good requests.

Address policy units with a resolver stub are in tests/test_ssrf.py; this is the end-to-end proof.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.hostile import assert_problem
from tests.http_server import LoopbackServer
from tests.media import make_h264_clip

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
ORIGIN_HOST = "127.0.0.2"  # the one "public" origin: allowed through STILLFRAME_ALLOWED_NETWORKS


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@dataclass
class Lab:
    client: TestClient
    canary: LoopbackServer  # 127.0.0.1: must never be reached
    canary6: LoopbackServer | None  # ::1, where the machine has IPv6
    origin: LoopbackServer  # 127.0.0.2: allowed, redirects and serves playlists
    clip: bytes

    @property
    def port(self) -> int:
        return self.canary.port

    connections: list[Any]  # every TCP connection the canaries accepted, request or not

    def canary_requests(self) -> int:
        return len(self.connections)


def _count_connections(server: LoopbackServer, seen: list[Any]) -> None:
    """Record every accepted TCP connection, before any HTTP is parsed: a connect alone is a leak
    (port scanning), even when no request follows."""
    inner = server._server
    assert inner is not None
    accept = inner.process_request

    def counted(request: Any, client_address: Any) -> None:
        seen.append(client_address)
        accept(request, client_address)

    inner.process_request = counted  # type: ignore[method-assign]


def _make_clip(path: Path) -> None:
    make_h264_clip(path, size="96x64", rate=10, seconds=2, gop=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("hostile-url-media")
    _make_clip(root / "clip.mp4")
    clip = (root / "clip.mp4").read_bytes()
    with LoopbackServer("127.0.0.1") as canary, LoopbackServer(ORIGIN_HOST) as origin:
        canary6 = LoopbackServer("::1").start() if _ipv6_loopback() else None
        try:
            # The canary holds a perfectly good video: a refusal cannot be a decode failure in disguise.
            connections: list[Any] = []
            for server in (canary, canary6):
                if server is not None:
                    _count_connections(server, connections)
                    server.add_file("/secret.mp4", clip)
                    server.add_file("/seg.ts", clip)
                    server.add_file("/child.m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg.ts\n")
            origin.add_file("/ok.mp4", clip)
            ports = [80, 443, canary.port, origin.port] + ([canary6.port] if canary6 else [])
            settings = Settings(
                media_root=root,
                workers=1,
                data_dir=tmp_path_factory.mktemp("hostile-url-data"),
                allowed_networks=[f"{ORIGIN_HOST}/32"],
                allowed_ports=ports,
                fetch_connect_timeout=1.0,
                fetch_read_timeout=2.0,
                fetch_total_timeout=5.0,
                max_redirects=3,
                decode_timeout=20.0,
            )
            with TestClient(create_app(settings), raise_server_exceptions=False) as client:
                yield Lab(client, canary, canary6, origin, clip, connections)
        finally:
            if canary6 is not None:
                canary6.stop()


@pytest.fixture(autouse=True)
def _canary_stays_silent(lab: Lab) -> Iterator[None]:
    before = lab.canary_requests()
    yield
    assert lab.canary_requests() == before == 0, f"the canary was reached: {lab.connections} {lab.canary.requests}"


def frame(lab: Lab, url: str, **params: str) -> Any:
    return lab.client.get("/v1/frame", params={"url": url, "t": "0.5", **params})


def test_the_lab_works(lab: Lab) -> None:
    """The good paths: a local clip and the allowed origin. The refusals below are not vacuous."""
    assert frame(lab, "clip.mp4").status_code == 200
    response = frame(lab, lab.origin.url("/ok.mp4"))
    assert response.status_code == 200, response.text


# ----------------------------------------------------------------------------------------- schemes

SCHEMES = [
    "file:///etc/passwd", "file://localhost/etc/passwd", "file:/etc/passwd", "FILE:///etc/passwd",
    "file:///proc/self/environ", "file://127.0.0.1/etc/passwd", "file:%2Fetc%2Fpasswd", "/etc/passwd",
    "../../../../etc/passwd", "clip.mp4/../../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd",
    "concat:clip.mp4|clip.mp4", "concatf:list.txt", "subfile:,start,0,end,0,:clip.mp4", "data:video/mp4;base64,AAAA",
    "data:,hello", "pipe:0", "pipe:", "fd:0", "crypto:clip.mp4", "cache:clip.mp4", "async:clip.mp4",
    "ftp://{canary}/x.mp4", "sftp://{canary}/x.mp4", "gopher://{canary}/_GET%20/secret.mp4", "dict://{canary}/x",
    "ldap://{canary}/x", "tftp://{canary}/x", "tcp://{canary}/secret.mp4", "udp://{canary}", "tls://{canary}",
    "unix:/var/run/docker.sock", "rtmp://{canary}/live", "rtsp://{canary}/x", "rtp://{canary}", "srt://{canary}",
    "mmsh://{canary}/x", "icecast://{canary}/x", "httpproxy://{canary}/", "hls+http://{canary}/child.m3u8",
    "hls+file:///etc/passwd", "async:http://{canary}/secret.mp4", "cache:http://{canary}/secret.mp4",
    "ffrtmphttp://{canary}/x", "javascript:alert(1)", "jar:http://{canary}/x!/y", "ws://{canary}/", "sip:x@y",
    "gs://bucket/x.mp4", "s3://bucket/x.mp4", "smb://{canary}/share/x.mp4", "zmq:tcp://{canary}",
]  # fmt: skip


@pytest.mark.parametrize("template", SCHEMES)
def test_schemes_and_pseudo_protocols_are_refused(lab: Lab, template: str) -> None:
    url = template.format(canary=f"127.0.0.1:{lab.port}")
    for response in (frame(lab, url), lab.client.post("/v1/frame", json={"url": url, "t": "0"})):
        body = assert_problem(response, statuses={400, 403, 404})
        assert body["code"] in {"source_forbidden", "invalid_parameter", "source_not_found"}, body
        assert "root:" not in response.text  # /etc/passwd never comes back


# ----------------------------------------------------------------------------------------- addresses

ADDRESS_FORMS = [
    "127.0.0.1", "localhost", "localhost.", "LOCALHOST", "127.0.0.1.", "127.1", "127.0.1", "2130706433",
    "0x7f000001", "0x7F.0.0.1", "0x7f.1", "0177.0.0.1", "0177.0000.0000.0001", "017700000001", "127.000.000.001",
    "0", "0.0.0.0", "0x0", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::127.0.0.1]", "[64:ff9b::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "[2002:7f00:0001::1]",
    "[::1]", "[::]", "[0:0:0:0:0:0:0:1]", "[::ffff:0:127.0.0.1]", "１２７.０.０.１", "127。0。0。1",
    "%31%32%37.0.0.1", "[::ffff:127.0.0.1%25lo]", "[fe80::1%25lo]", "127.0.0.1%09", "127.0.0.1%00.example.com",
]  # fmt: skip

OTHER_FORBIDDEN = [
    "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254", "169.254.170.2", "[fd00::1]",
    "[fe80::1]", "224.0.0.1", "255.255.255.255", "192.0.0.1", "198.18.0.1", "240.0.0.1", "[ff02::1]",
    "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]", "0xa9fea9fe", "2852039166", "0251.0376.0251.0376",
    "[fc00::1]", "metadata.google.internal",
]  # fmt: skip


@pytest.mark.parametrize("host", ADDRESS_FORMS)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_every_loopback_form_is_refused_and_the_canary_hears_nothing(lab: Lab, host: str, scheme: str) -> None:
    url = f"{scheme}://{host}:{lab.port}/secret.mp4"
    body = assert_problem(frame(lab, url), allowed_text=[host, url], statuses={400, 403, 502})
    assert body["code"] in {"source_forbidden", "invalid_parameter", "source_unreachable"}, body
    if body["code"] == "source_forbidden" and not host.startswith(("[", "%")) and not host[0].isdigit():
        # a name: the problem says it resolves somewhere forbidden, never where
        assert "127.0.0" not in response_text(body) and "::1" not in response_text(body), body


def response_text(body: dict[str, Any]) -> str:
    return f"{body.get('title')} {body.get('detail')}"


@pytest.mark.parametrize("host", OTHER_FORBIDDEN)
def test_private_link_local_metadata_and_reserved_ranges_are_refused(lab: Lab, host: str) -> None:
    started = time.monotonic()
    body = assert_problem(frame(lab, f"http://{host}/latest/meta-data/"), allowed_text=[host], statuses={400, 403, 502})
    assert body["code"] in {"source_forbidden", "invalid_parameter", "source_unreachable"}, body
    assert time.monotonic() - started < 3, "refused before connecting, not by a timeout"


@pytest.mark.parametrize(
    "template",
    [
        "http://user:pass@{origin}/ok.mp4", "http://{origin}@127.0.0.1:{port}/secret.mp4",
        "http://127.0.0.1:{port}#@{origin}/ok.mp4", "http://127.0.0.1:{port}\\@{origin}/ok.mp4",
        "http://{origin}/ok.mp4\r\nHost: 127.0.0.1", "http://{origin}/ok.mp4%0d%0aX-Injected:%201",
        "http://{origin}:22/ok.mp4", "http://{origin}:0/ok.mp4", "http://{origin}:65536/ok.mp4",
        "http://{origin}:99999999999/ok.mp4", "http:/{origin}/ok.mp4", "http:\\\\{origin}\\ok.mp4",
        "http://[{origin}]/ok.mp4", "http://{origin}:{port}:{port}/ok.mp4", "http://" + "a" * 300 + "/x.mp4",
        "http://{origin}/" + "x" * 9000,
    ],
)  # fmt: skip
def test_userinfo_control_characters_ports_and_malformed_urls(lab: Lab, template: str) -> None:
    origin = f"{ORIGIN_HOST}:{lab.origin.port}"
    url = template.format(origin=origin, port=lab.port)
    response = frame(lab, url)
    if response.status_code == 200:  # percent-encoded CR/LF is just a path: it must not inject a header
        assert all("x-injected" not in r.headers for r in lab.origin.requests)
        return
    body = assert_problem(response, allowed_text=[url, ORIGIN_HOST], statuses={400, 403, 404, 502})
    assert body["code"] in {"source_forbidden", "invalid_parameter", "source_unreachable", "source_not_found"}


# ----------------------------------------------------------------------------------------- redirects


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/secret.mp4", "http://localhost:{port}/secret.mp4", "http://2130706433:{port}/secret.mp4",
        "http://[::ffff:127.0.0.1]:{port}/secret.mp4", "http://[::1]:{port6}/secret.mp4", "http://0:{port}/secret.mp4",
        "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd", "/etc/passwd", "concat:a|b",
        "data:video/mp4;base64,AAAA", "gopher://127.0.0.1:{port}/x", "//127.0.0.1:{port}/secret.mp4",
        "http://user:pw@{origin}/ok.mp4",
    ],
)  # fmt: skip
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_into_forbidden_places_are_refused(lab: Lab, target: str, status: int) -> None:
    port6 = lab.canary6.port if lab.canary6 else lab.port
    location = target.format(port=lab.port, port6=port6, origin=f"{ORIGIN_HOST}:{lab.origin.port}")
    path = f"/redirect-{status}-{abs(hash(target))}.mp4"
    lab.origin.add_redirect(path, location, status=status)
    response = frame(lab, lab.origin.url(path))
    if location.startswith("/etc"):  # a relative redirect stays on the origin: its own 404
        assert_problem(response, allowed_text=[ORIGIN_HOST], statuses={404, 502})
        return
    body = assert_problem(response, allowed_text=[ORIGIN_HOST], statuses={400, 403, 502})
    assert body["code"] in {"source_forbidden", "invalid_parameter", "source_unreachable"}, body
    assert "127.0.0.1" not in response.text and "169.254" not in response.text  # hops are never echoed


def test_redirect_chains_are_capped(lab: Lab) -> None:
    for i in range(10):
        lab.origin.add_redirect(f"/hop{i}.mp4", f"/hop{i + 1}.mp4")
    lab.origin.add_file("/hop10.mp4", lab.clip)
    assert_problem(frame(lab, lab.origin.url("/hop0.mp4")), statuses={403, 502})
    lab.origin.add_redirect("/loop.mp4", "/loop.mp4")
    assert_problem(frame(lab, lab.origin.url("/loop.mp4")), statuses={403, 502})
    lab.origin.add_redirect("/one.mp4", "/hop9.mp4")  # 2 hops: under the cap of 3
    assert frame(lab, lab.origin.url("/one.mp4")).status_code == 200


# ----------------------------------------------------------------------------------------- HLS over HTTP


def _playlist(*uris: str, master: bool = False) -> bytes:
    if master:
        lines = ["#EXTM3U"] + [f"#EXT-X-STREAM-INF:BANDWIDTH=100000\n{u}" for u in uris]
    else:
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0"]
        lines += [f"#EXTINF:2.0,\n{u}" for u in uris] + ["#EXT-X-ENDLIST"]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize(
    ("name", "playlist"),
    [
        ("segment-loopback", lambda p: _playlist(f"http://127.0.0.1:{p}/seg.ts")),
        ("segment-localhost", lambda p: _playlist(f"http://localhost:{p}/seg.ts")),
        ("segment-decimal", lambda p: _playlist(f"http://2130706433:{p}/seg.ts")),
        ("segment-file", lambda p: _playlist("file:///etc/passwd")),
        ("segment-abs-path", lambda p: _playlist("/etc/passwd")),
        ("segment-concat", lambda p: _playlist("concat:a.ts|b.ts")),
        ("segment-data", lambda p: _playlist("data:video/mp2t;base64,R0AAEA==")),
        ("master-to-loopback-child", lambda p: _playlist(f"http://127.0.0.1:{p}/child.m3u8", master=True)),
        ("master-to-file-child", lambda p: _playlist("file:///etc/passwd.m3u8", master=True)),
        ("key-from-loopback", lambda p: (
            b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n"
            + f'#EXT-X-KEY:METHOD=AES-128,URI="http://127.0.0.1:{p}/key"\n'.encode()
            + b"#EXTINF:2,\nseg.ts\n#EXT-X-ENDLIST\n"
        )),
        ("map-from-loopback", lambda p: (
            b"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n"
            + f'#EXT-X-MAP:URI="http://127.0.0.1:{p}/secret.mp4"\n'.encode()
            + b"#EXTINF:2,\nseg.m4s\n#EXT-X-ENDLIST\n"
        )),
    ],
)  # fmt: skip
def test_hostile_hls_over_http_fetches_nothing_forbidden(lab: Lab, name: str, playlist: Any) -> None:
    lab.origin.add_file(f"/{name}.m3u8", playlist(lab.port), content_type="application/vnd.apple.mpegurl")
    lab.origin.add_file(f"/{name}-child.m3u8", playlist(lab.port), content_type="application/vnd.apple.mpegurl")
    body = assert_problem(frame(lab, lab.origin.url(f"/{name}.m3u8")), allowed_text=[ORIGIN_HOST])
    assert body["code"] in {
        "source_forbidden", "unsupported_media", "decode_failed", "no_video_stream", "source_unreachable",
        "invalid_parameter", "source_not_found", "no_image_at_time",
    }, body  # fmt: skip


# ----------------------------------------------------------------------------------------- afterwards


def test_jobs_refuse_hostile_sources_too(lab: Lab) -> None:
    response = lab.client.post("/v1/jobs", json={"url": f"http://127.0.0.1:{lab.port}/secret.mp4", "times": ["0"]})
    if response.status_code >= 400:
        assert_problem(response, allowed_text=["127.0.0.1"], statuses={400, 403})
        return
    assert response.status_code == 202, response.text
    job = response.json()["id"]
    deadline = time.monotonic() + 20
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = lab.client.get(f"/v1/jobs/{job}").json()
        if view["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert view["progress"]["succeeded"] == 0, view


def test_still_serving_after_the_barrage(lab: Lab) -> None:
    assert lab.client.get("/healthz").status_code == 200
    response = frame(lab, "clip.mp4", t="1.5")
    assert response.status_code == 200 and response.headers["x-actual-time"] == "1.5"


@pytest.mark.parametrize(
    "location",
    [
        "http://[::1", "http://[zz]/x.mp4", "http://[::1]]/x.mp4", "http://a b/x.mp4", "http://{origin_host}:99999/x.mp4",
        "http://{origin_host}:abc/x.mp4", "http://%zz/x.mp4", "http://",
        "http://exa\tmple.com/", "http://" + "a" * 300 + ".example/x.mp4", "http://x.example/" + "p" * 20000,
        "http://-bad-.example/x.mp4", "http://\u00ff\u00fe/x.mp4",
    ],
)  # fmt: skip
def test_an_upstreams_malformed_redirect_is_a_502_not_the_callers_400(lab: Lab, location: str) -> None:
    path = f"/malformed-{abs(hash(location))}.mp4"
    lab.origin.add_redirect(path, location.format(origin_host=ORIGIN_HOST), status=302)
    body = assert_problem(frame(lab, lab.origin.url(path)), allowed_text=[ORIGIN_HOST], statuses={502})
    assert body["code"] == "source_unreachable", body
