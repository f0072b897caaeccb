"""GET/POST /v1/frame over HTTP: headers, negotiation, caching, and every problem code."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imageio_ffmpeg
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.errors import PROBLEM_CODES
from app.main import create_app
from tests.media import DAMAGED, UNDECODABLE, make_h264_clip

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A media root with clips made here: 25 fps H.264 with B-frames, audio only, and junk."""
    root = tmp_path_factory.mktemp("media")
    run = ["-hide_banner", "-loglevel", "error", "-y"]
    make_h264_clip(root / "clip.mp4", size="320x240", rate=25, seconds=4, gop=25, extra=["-bf", "2"])
    subprocess.run(
        [FFMPEG, *run, "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(root / "audio.m4a")], check=True
    )
    (root / "notes.txt").write_text("not a video\n" * 100)
    (root / "sub").mkdir()
    (root / "sub" / "clip.mp4").write_bytes((root / "clip.mp4").read_bytes())
    return root


@pytest.fixture(scope="module")
def client(media_root: Path) -> Iterator[TestClient]:
    settings = Settings(media_root=media_root, workers=1, server_timing=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def assert_problem(response: object, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"].startswith("application/problem+json")  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"] == f"/problems/{code}"
    assert body["title"]
    return body  # type: ignore[no-any-return]


def test_get_frame_headers_and_image(client: TestClient) -> None:
    response = client.get("/v1/frame", params={"url": "clip.mp4", "t": "1.03"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-actual-time"] == "1"  # frames at 0.04 s steps: 1.00 is on screen at 1.03
    assert response.headers["x-requested-time"] == "1.03"
    value, timescale = map(int, response.headers["x-actual-time-rational"].split("/"))
    assert value / timescale == 1
    assert response.headers["etag"].startswith('"') and not response.headers["etag"].startswith("W/")
    assert "max-age" in response.headers["cache-control"]
    assert response.headers["vary"] == "Accept"
    timing = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    assert {"decode", "render", "encode", "pool"} <= set(timing) and all(float(v) >= 0 for v in timing.values())
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.size == (320, 240)


def test_exact_frame_times_and_rationals(client: TestClient) -> None:
    for t, actual in [("0", "0"), ("0.04", "0.04"), ("0.0399999", "0"), ("1/25", "0.04"), ("50%", "2"), ("4", "3.96")]:
        response = client.get("/v1/frame", params={"url": "clip.mp4", "t": t, "format": "png"})
        assert response.status_code == 200, (t, response.text)
        assert response.headers["x-actual-time"] == actual, t


def test_post_frame_json_body(client: TestClient) -> None:
    response = client.post("/v1/frame", json={"url": "sub/clip.mp4", "t": "1001/25000", "format": "png", "width": 160})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-actual-time"] == "0.04"
    assert "vary" not in response.headers
    assert Image.open(io.BytesIO(response.content)).size == (160, 120)
    # A JSON number is read by its shortest decimal form, not its binary float value.
    response = client.post("/v1/frame", json={"url": "clip.mp4", "t": 0.04})
    assert response.headers["x-actual-time"] == "0.04"


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("image/avif,image/webp,*/*", "image/jpeg"),  # a browser's default: the fast format
        ("image/avif,image/jpeg;q=0.8", "image/avif"),
        ("image/webp,image/png;q=0.8", "image/webp"),
        ("image/png", "image/png"),
        ("*/*", "image/jpeg"),
        (None, "image/jpeg"),
    ],
)
def test_format_negotiation(client: TestClient, accept: str | None, content_type: str) -> None:
    headers = {"Accept": accept} if accept else {}
    response = client.get("/v1/frame", params={"url": "clip.mp4", "t": "1"}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["vary"] == "Accept"


def test_encoder_effort_is_the_deployments_and_part_of_the_etag(client: TestClient, media_root: Path) -> None:
    """``STILLFRAME_WEBP_METHOD`` reaches the decoder worker's encoder (other bytes than the default's)
    and changes WebP's ETag (a strong validator promises the bytes); JPEG's stays as it was."""
    params = {"url": "clip.mp4", "t": "1"}
    default_webp = client.get("/v1/frame", params={**params, "format": "webp"})
    default_jpeg = client.get("/v1/frame", params={**params, "format": "jpeg"})
    settings = Settings(media_root=media_root, workers=1, webp_method=6)
    with TestClient(create_app(settings), raise_server_exceptions=False) as other:
        webp = other.get("/v1/frame", params={**params, "format": "webp"})
        jpeg = other.get("/v1/frame", params={**params, "format": "jpeg"})
    assert webp.status_code == default_webp.status_code == 200
    assert webp.content != default_webp.content
    assert webp.headers["etag"] != default_webp.headers["etag"]
    assert jpeg.content == default_jpeg.content and jpeg.headers["etag"] == default_jpeg.headers["etag"]


def test_if_none_match_answers_304(client: TestClient) -> None:
    first = client.get("/v1/frame", params={"url": "clip.mp4", "t": "2"})
    etag = first.headers["etag"]
    again = client.get("/v1/frame", params={"url": "clip.mp4", "t": "2"}, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["etag"] == etag
    other = client.get("/v1/frame", params={"url": "clip.mp4", "t": "2.5"}, headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag
    for listed in (f'"nope" , W/{etag}', "*"):  # compared weakly (RFC 9110), in a list, or any
        weak = client.get("/v1/frame", params={"url": "clip.mp4", "t": "2"}, headers={"If-None-Match": listed})
        assert weak.status_code == 304, listed


def test_repeat_is_served_from_the_image_cache(client: TestClient) -> None:
    params = {"url": "clip.mp4", "t": "3.3", "format": "webp"}
    first = client.get("/v1/frame", params=params)
    again = client.get("/v1/frame", params=params)
    assert "decode" in first.headers["server-timing"]
    assert again.headers["server-timing"] == "cache;dur=0"
    assert again.content == first.content
    for name in ("etag", "x-actual-time", "x-actual-time-rational", "content-type"):
        assert again.headers[name] == first.headers[name]


def test_identical_requests_in_flight_share_one_decode(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    make_h264_clip(tmp_path / "long-gop.mp4", size="1280x720", rate=25, seconds=8, gop=250)
    client = make_client(media_root=tmp_path)
    pool = client.app.state.pool  # type: ignore[attr-defined]
    before = pool.submitted
    with ThreadPoolExecutor(4) as executor:
        responses = list(
            executor.map(lambda _: client.get("/v1/frame", params={"url": "long-gop.mp4", "t": "7.9"}), range(4))
        )
    assert all(r.status_code == 200 for r in responses)
    assert len({r.content for r in responses}) == 1
    assert pool.submitted - before == 1


def test_tolerance_returns_keyframe(client: TestClient) -> None:
    response = client.get("/v1/frame", params={"url": "clip.mp4", "t": "1.9", "tolerance": "inf"})
    assert response.status_code == 200
    assert response.headers["x-actual-time"] == "2"  # keyframes every 25 frames: 1 s and 2 s; 2 is nearer


# ---------------------------------------------------------------- every problem code, by a real request


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"url": "clip.mp4", "t": "abc"}, "invalid_parameter"),
        ({"url": "clip.mp4", "t": "1", "width": "0"}, "invalid_parameter"),
        ({"url": "clip.mp4", "t": "1", "fit": "squash"}, "invalid_parameter"),
        ({"url": "clip.mp4", "t": "1", "tolerance": "-1"}, "invalid_parameter"),
        ({"url": "clip.mp4", "t": "1", "bogus": "1"}, "invalid_parameter"),
        ({"t": "1"}, "invalid_parameter"),
        ({"url": "clip.mp4", "t": "4.5"}, "no_image_at_time"),
        ({"url": "clip.mp4", "t": "-0.5"}, "no_image_at_time"),
        ({"url": "missing.mp4", "t": "0"}, "source_not_found"),
        ({"url": "../etc/passwd", "t": "0"}, "source_forbidden"),
        ({"url": "file:///etc/passwd", "t": "0"}, "source_forbidden"),
        ({"url": "http://127.0.0.1/x.mp4", "t": "0"}, "source_forbidden"),
        ({"url": "http://169.254.169.254/latest/meta-data", "t": "0"}, "source_forbidden"),
        ({"url": "concat:clip.mp4|clip.mp4", "t": "0"}, "source_forbidden"),
        ({"url": "notes.txt", "t": "0"}, "unsupported_media"),
        ({"url": "audio.m4a", "t": "0"}, "no_video_stream"),
    ],
)
def test_problem_codes(client: TestClient, params: dict[str, str], code: str) -> None:
    response = client.get("/v1/frame", params=params)
    body = assert_problem(response, PROBLEM_CODES[code].status, code)
    assert "Traceback" not in str(body) and "/tmp" not in str(body)


def test_no_media_root_means_no_local_files(make_client: Callable[..., TestClient]) -> None:
    response = make_client().get("/v1/frame", params={"url": "clip.mp4", "t": "0"})
    assert_problem(response, 403, "source_forbidden")


def test_decode_failed_on_a_stream_that_never_decodes(make_client: Callable[..., TestClient], corpus: Path) -> None:
    response = make_client(media_root=corpus).get(
        "/v1/frame", params={"url": "corrupt_vp9_invalid_bitstream.webm", "t": "0.5"}
    )
    assert_problem(response, 422, "decode_failed")


def test_source_unreachable_and_too_large(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    from tests.http_server import serve_directory  # the loopback Range server shared with the fetch tests

    (tmp_path / "big.bin").write_bytes(b"\0" * 200_000)
    with serve_directory(tmp_path) as base:
        port = int(base.rsplit(":", 1)[1].split("/")[0])
        client = make_client(allowed_networks="127.0.0.0/8", allowed_ports=str(port), max_source_bytes=1000)
        assert_problem(client.get("/v1/frame", params={"url": f"{base}/big.bin"}), 422, "source_too_large")
        assert_problem(client.get("/v1/frame", params={"url": f"{base}/absent.mp4"}), 404, "source_not_found")
    client = make_client(allowed_networks="127.0.0.0/8", allowed_ports=str(port))
    assert_problem(
        client.get("/v1/frame", params={"url": f"http://127.0.0.1:{port}/gone.mp4"}), 502, "source_unreachable"
    )


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v2/nothing"), 404, "not_found")
    assert_problem(client.delete("/v1/frame"), 405, "method_not_allowed")


def test_health(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


# ---------------------------------------------------------------- hostile and broken files in the corpus

# Damaged, undecodable and truncated corpus files, and the corpus's own non-video sidecars.
BROKEN = sorted(
    UNDECODABLE
    | DAMAGED
    | {"mp4_annexb_h264_truncated.mp4", "ts_truncated_1mib_no_aud.ts"}
    | {"MANIFEST.md", "provenance.json", "h264_interlaced_raw_annexb.h264.md5"}
)


@pytest.mark.parametrize("name", BROKEN)
def test_broken_and_non_video_files_never_500(make_client: Callable[..., TestClient], corpus: Path, name: str) -> None:
    client = make_client(media_root=corpus)
    for t in ("0", "0.5", "50%", "99999"):
        response = client.get("/v1/frame", params={"url": name, "t": t})
        assert response.status_code < 500, (name, t, response.text)
        if response.status_code != 200:
            assert response.headers["content-type"].startswith("application/problem+json")
    assert client.get("/healthz").status_code == 200
