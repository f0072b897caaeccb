"""Storyboards: every tile identified against the ffmpeg CLI's frames, the VTT read by a real WebVTT
parser, and the HTTP rules (signed sheet URLs, caching, bounds)."""

from __future__ import annotations

import io
import itertools
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webvtt
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from tests import oracle
from tests.media import MEDIA, make_clip, require_corpus

API_KEY = "storyboard-test-key-0123456789"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("boards")
    make_clip(root / "clip.mp4", fps=25, frames=100, gop=12, bframes=2)  # 4 s, keyframes every 0.48 s
    return root


@pytest.fixture(scope="module")
def client(media: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(media_root=media, workers=1)), raise_server_exceptions=False) as client:
        yield client


def _expected(info: oracle.OracleInfo, t: Fraction, tolerance: str) -> Fraction:
    """The frame /v1/frame gives for ``t``: on screen at t (exact), or the nearest keyframe (inf)."""
    if tolerance == "0":
        index = info.frame_at(t)
        assert index is not None
        return info.times[index]
    keys = [frame.time for frame in info.frames if frame.key]
    best = min(abs(k - t) for k in keys)
    candidates = [k for k in keys if abs(k - t) == best]
    return candidates[0] if len(candidates) == 1 else Fraction(-1)  # a tie: either answer is right


def _check_times(info: oracle.OracleInfo, document: dict[str, Any], tolerance: str) -> None:
    for tile in document["tiles"]:
        requested, actual = Fraction(tile["requested_time"]), Fraction(tile["actual_time_rational"])
        expected = _expected(info, requested, tolerance)
        if expected == -1:
            assert any(frame.key and frame.time == actual for frame in info.frames)
        else:
            assert abs(actual - expected) <= info.slack, (tile, expected)


@pytest.mark.parametrize("tolerance", ["0", "inf"])
def test_every_tile_is_the_cli_frame(client: TestClient, media: Path, tolerance: str) -> None:
    info = oracle.probe(media / "clip.mp4")
    params = {"url": "clip.mp4", "count": "17", "tolerance": tolerance, "tile_width": "192", "columns": "5"}
    document = client.get("/v1/storyboard.json", params=params).json()
    assert (document["tile_width"], document["tile_height"], document["rows"]) == (192, 108, 4)
    _check_times(info, document, tolerance)
    sheet = client.get("/v1/storyboard.png", params=params)
    assert sheet.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(sheet.content)).convert("RGB"))
    frames = oracle.decode_frames(info, range(len(info.frames)), (192, 108))
    for tile in document["tiles"]:
        x, y = tile["x"], tile["y"]
        cut = oracle.lumas(picture[y : y + 108, x : x + 192])
        scores = {i: oracle.luma_psnr(cut, oracle.lumas(rgb)) for i, rgb in frames.items()}
        best = max(scores, key=lambda i: scores[i])
        assert info.times[best] == Fraction(tile["actual_time_rational"]), (tile, best, scores[best])
        assert scores[best] > oracle.PSNR_FLOOR


def test_vtt_is_valid_gapless_and_its_urls_work(client: TestClient) -> None:
    response = client.get("/v1/storyboard.vtt", params={"url": "clip.mp4", "interval": "0.5", "format": "webp"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/vtt")
    cues = webvtt.from_string(response.text).captions
    assert len(cues) == 8
    assert cues[0].start == "00:00:00.000" and cues[-1].end == "00:00:04.000"
    assert all(a.end == b.start for a, b in itertools.pairwise(cues))
    sheets = {cue.text.split("#")[0] for cue in cues}
    assert len(sheets) == 1
    sheet_url = sheets.pop()
    assert sheet_url.startswith("/v1/storyboard.webp?")
    sheet = client.get(sheet_url)
    assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/webp"
    width, height = Image.open(io.BytesIO(sheet.content)).size
    for cue in cues:
        x, y, w, h = (int(v) for v in cue.text.split("#xywh=")[1].split(","))
        assert x + w <= width and y + h <= height and (w, h) == (160, 90)


def test_default_spacing_and_caps(client: TestClient) -> None:
    document = client.get("/v1/storyboard.json", params={"url": "clip.mp4"}).json()
    assert len(document["tiles"]) == 50  # a short video: about 50 tiles
    assert document["tiles"][-1]["end"] == 4.0
    for params, parameter in [
        ({"count": "0"}, "count"),
        ({"count": "100000"}, "count"),
        ({"interval": "0.001"}, "interval"),
        ({"interval": "0"}, "interval"),
        ({"interval": "abc"}, "interval"),
        ({"interval": "1", "count": "3"}, "count"),
        ({"tile_width": "8"}, "tile_width"),
        ({"tile_width": "1280", "count": "400"}, "tile_width"),
        ({"start": "5"}, "end"),
        ({"tolerance": "-1"}, "tolerance"),
        ({"columns": "0"}, "columns"),
    ]:
        response = client.get("/v1/storyboard.json", params={"url": "clip.mp4", **params})
        assert response.status_code == 400, (params, response.text)
        assert response.json()["code"] == "invalid_parameter"
        assert response.json()["parameter"] == parameter, params
    assert client.get("/v1/storyboard.jpg", params={"url": "missing.mp4"}).json()["code"] == "source_not_found"


def test_caching(client: TestClient) -> None:
    for path in ("/v1/storyboard.vtt", "/v1/storyboard.json", "/v1/storyboard.jpg"):
        first = client.get(path, params={"url": "clip.mp4", "count": "4"})
        assert first.status_code == 200 and first.headers["cache-control"]
        etag = first.headers["etag"]
        again = client.get(path, params={"url": "clip.mp4", "count": "4"}, headers={"If-None-Match": "W/" + etag})
        assert again.status_code == 304
        head = client.head(path, params={"url": "clip.mp4", "count": "4"})
        assert head.status_code == 200 and head.headers["etag"] == etag and head.content == b""


def test_sheet_urls_are_signed_when_keys_are_on(media: Path) -> None:
    settings = Settings(media_root=media, workers=1, api_keys=API_KEY, url_signing_keys="web:" + "s" * 32)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        params = {"url": "clip.mp4", "count": "3"}
        assert client.get("/v1/storyboard.vtt", params=params).status_code == 401
        vtt = client.get("/v1/storyboard.vtt", params=params, headers={"Authorization": f"Bearer {API_KEY}"})
        sheet_url = webvtt.from_string(vtt.text).captions[0].text.split("#")[0]
        assert "sig=" in sheet_url and "kid=web" in sheet_url
        assert client.get(sheet_url).status_code == 200  # no key: the signature lets an <img> in
        assert client.get(sheet_url.replace("count=3", "count=4")).json()["code"] == "signature_invalid"


@pytest.mark.parametrize(
    "name",
    [
        "iphone_hevc_hlg_editlist_rot90_opengop.mp4",  # rotated, HDR, edit list, open GOP
        "android_slow_motion_vfr.mp4",  # variable frame rate
        "editlist_positive_shift_start1s.mp4",
        "h264_long_6min_longgop.mp4",  # long GOP
    ],
)
@pytest.mark.parametrize("tolerance", ["0", "inf"])
def test_real_media_tiles_are_the_cli_frames(name: str, tolerance: str) -> None:
    require_corpus()
    info = oracle.probe(MEDIA / name)
    with TestClient(create_app(Settings(media_root=MEDIA, workers=1)), raise_server_exceptions=False) as client:
        response = client.get("/v1/storyboard.json", params={"url": name, "count": "9", "tolerance": tolerance})
        assert response.status_code == 200, response.text
        _check_times(info, response.json(), tolerance)


def test_tiles_past_the_video_show_its_last_frame(media: Path, client: TestClient) -> None:
    """A container whose audio runs on after the picture: the cues there show the last frame."""
    clip = media / "audio_longer.mp4"
    subprocess.run(
        [oracle.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=192x108:r=25:d=2",
         "-f", "lavfi", "-i", "sine=d=3", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
         "-c:a", "aac", str(clip)],
        check=True,
    )  # fmt: skip
    info = oracle.probe(clip)
    document = client.get("/v1/storyboard.json", params={"url": clip.name, "count": "6", "tolerance": "0"})
    assert document.status_code == 200, document.text
    tiles = document.json()["tiles"]
    assert tiles[-1]["end"] == pytest.approx(float(info.end), abs=0.05) and tiles[-1]["end"] > 2.5
    assert Fraction(tiles[-1]["actual_time_rational"]) == info.times[-1]
    assert client.get("/v1/animated.gif", params={"url": clip.name, "start": "1.5", "end": "3"}).status_code == 200
