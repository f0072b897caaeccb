"""GET /v1/info: the facts of an asset, checked against the ffmpeg CLI's frames, and its HTTP rules."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.engine import ImageGenerator
from app.engine.info import describe
from app.main import create_app
from tests import oracle
from tests.media import MEDIA, make_clip, require_corpus


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    root = require_corpus()
    with TestClient(create_app(Settings(media_root=root, workers=1)), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("name", "size", "rotation", "hdr"),
    [
        ("iphone_dolbyvision_hlg_rot90.mov", (720, 1280), 90, "hlg"),  # rotated for display
        ("h264_sar_2x1.mp4", (1280, 360), 0, None),  # 640x360 stored, pixels twice as wide
        ("av1_hdr10_pq_portrait.mp4", None, None, "pq"),
    ],
)
def test_displayed_size_orientation_and_hdr(
    client: TestClient, name: str, size: tuple[int, int] | None, rotation: int | None, hdr: str | None
) -> None:
    body = client.get("/v1/info", params={"url": name}).json()
    frame = client.get("/v1/frame", params={"url": name, "t": "0"})
    # The displayed size is the size /v1/frame answers with at full size.
    assert (body["width"], body["height"]) == Image.open(io.BytesIO(frame.content)).size
    if size is not None:
        assert (body["width"], body["height"]) == size
    if rotation is not None:
        assert body["rotation"] == rotation
    assert body["hdr"] == hdr
    assert body["streams"][0]["type"] == "video"
    assert "keyframes" not in body


@pytest.mark.parametrize(
    "name",
    [
        "h264_long_6min_longgop.mp4",
        "editlist_positive_shift_start1s.mp4",
        "fmp4_fragmented.mp4",
        "av1.mkv",
        "hevc_cra_opengop.mp4",
    ],
)
def test_keyframe_times_are_the_cli_keyframes(name: str) -> None:
    path = require_corpus() / name
    expected = [frame.time for frame in oracle.probe(path).frames if frame.key]
    with ImageGenerator(path) as generator:
        info = describe(generator, keyframes=True)
    assert info.keyframes is not None
    assert [t for t in info.keyframes if t >= 0] == [t for t in expected if t >= 0]


def test_duration_and_frame_rate_of_a_synthetic_clip(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "c.mp4", fps=25, frames=50, gop=10)
    with ImageGenerator(clip) as generator:
        info = describe(generator, keyframes=True)
    assert info.duration == 2
    assert info.frame_rate == 25
    assert not info.variable_frame_rate
    assert info.keyframes == tuple(Fraction(i, 25) for i in range(0, 50, 10))
    assert not info.has_alpha


def test_variable_frame_rate_is_said(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "v.mp4", fps=25, frames=48, vfr=True)
    with ImageGenerator(clip) as generator:
        assert describe(generator).variable_frame_rate


def test_alpha_is_said(tmp_path: Path) -> None:
    clip = tmp_path / "a.mov"
    graph = "testsrc2=size=64x48:rate=5:duration=1,format=argb"
    subprocess.run(
        [oracle.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", graph, "-c:v", "qtrle", str(clip)], check=True
    )
    with ImageGenerator(clip) as generator:
        assert describe(generator).has_alpha


def test_http_rules(client: TestClient) -> None:
    params = {"url": "h264_long_6min_longgop.mp4", "keyframes": "true"}
    first = client.get("/v1/info", params=params)
    assert first.status_code == 200
    body = first.json()
    assert body["keyframes"][:2] == [0.0, pytest.approx(25 / 3, abs=1e-9)]
    assert body["duration"] == pytest.approx(362.766667)
    etag = first.headers["etag"]
    assert client.get("/v1/info", params=params, headers={"If-None-Match": etag}).status_code == 304
    assert client.get("/v1/info", params=params, headers={"If-None-Match": f'"x", W/{etag}'}).status_code == 304
    head = client.head("/v1/info", params=params)
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == etag
    for bad, code, status in [
        ({"url": "missing.mp4"}, "source_not_found", 404),
        ({"url": "MANIFEST.md"}, "unsupported_media", 422),
        ({"url": "av1.mkv", "stream": "3"}, "invalid_parameter", 400),
        ({"url": "av1.mkv", "stream": "-1"}, "invalid_parameter", 400),
        ({"url": "av1.mkv", "keyframes": "maybe"}, "invalid_parameter", 400),
        ({"url": "../etc/passwd"}, "source_forbidden", 403),
    ]:
        response = client.get("/v1/info", params=bad)
        assert response.status_code == status, (bad, response.text)
        assert response.json()["code"] == code


def test_api_keys_apply() -> None:
    settings = Settings(media_root=MEDIA, workers=1, api_keys="k" * 20)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/v1/info", params={"url": "av1.mkv"}).status_code == 401
        ok = client.get("/v1/info", params={"url": "av1.mkv"}, headers={"Authorization": "Bearer " + "k" * 20})
        assert ok.status_code == 200


def test_a_raw_stream_without_timestamps_is_described() -> None:
    with ImageGenerator(require_corpus() / "h264_interlaced_raw_annexb.h264") as generator:
        info = describe(generator, keyframes=True)
    assert (info.width, info.height, info.video_codec) == (320, 240, "h264")


def test_a_duration_the_container_does_not_state_is_read_from_the_packets(client: TestClient) -> None:
    name = "webm_vp9_no_duration_vfr.webm"
    info = oracle.probe(MEDIA / name)
    body = client.get("/v1/info", params={"url": name}).json()
    assert body["duration"] == pytest.approx(float(info.last_frame_end), abs=0.002)
    assert client.get("/v1/storyboard.json", params={"url": name, "count": "4"}).status_code == 200
    # t=auto on a raw stream (no duration at all): candidates in seconds instead of percentages
    poster = client.get("/v1/frame", params={"url": "h264_interlaced_raw_annexb.h264", "t": "auto"})
    assert poster.status_code == 200, poster.text
