"""Animated previews: every frame identified against the ffmpeg CLI's frame on screen at its tick, the
timing exact on the GIF and WebP clocks, and the bounds."""

from __future__ import annotations

import io
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageSequence

from app.config import Settings
from app.main import create_app
from tests import oracle
from tests.media import make_clip


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("animated")
    make_clip(root / "clip.mp4", fps=25, frames=100, gop=12, bframes=2)
    make_clip(root / "vfr.mp4", fps=25, frames=60, gop=12, vfr=True)
    make_clip(root / "edit.mp4", fps=25, frames=60, gop=12, start=1.5)
    return root


@pytest.fixture(scope="module")
def client(media: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(media_root=media, workers=1)), raise_server_exceptions=False) as client:
        yield client


def _frames(data: bytes) -> list[tuple[np.ndarray, int]]:
    with Image.open(io.BytesIO(data)) as animation:
        return [
            (np.asarray(frame.convert("RGB")), int(frame.info.get("duration", 0)))
            for frame in ImageSequence.Iterator(animation)
        ]


@pytest.mark.parametrize("image_format", ["gif", "webp"])
@pytest.mark.parametrize(
    ("name", "start", "end", "fps"),
    [("clip.mp4", "1", "3", 10), ("clip.mp4", "0.5", "1.5", 30), ("vfr.mp4", "0", "2", 10)],
)
def test_each_frame_is_the_one_on_screen(
    client: TestClient, media: Path, image_format: str, name: str, start: str, end: str, fps: int
) -> None:
    info = oracle.probe(media / name)
    params = {"url": name, "start": start, "end": end, "fps": str(fps)}
    response = client.get(f"/v1/animated.{image_format}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"image/{image_format}"
    ticks = [Fraction(start) + Fraction(k, fps) for k in range(round((Fraction(end) - Fraction(start)) * fps))]
    assert response.headers["x-frame-count"] == str(len(ticks))
    # The distinct frames on screen at the ticks, in order, each from its first tick.
    expected: list[tuple[int, Fraction]] = []
    for tick in ticks:
        index = info.frame_at(tick)
        assert index is not None
        if not expected or expected[-1][0] != index:
            expected.append((index, tick))
    frames = _frames(response.content)
    assert len(frames) == len(expected)
    pixels = oracle.decode_frames(info, range(len(info.frames)), (192, 108))
    candidates = {i: oracle.lumas(rgb) for i, rgb in pixels.items()}
    clock = 0
    ends = [tick for _, tick in expected[1:]] + [Fraction(end)]
    for (picture, duration), (index, tick), until in zip(frames, expected, ends, strict=True):
        scores = {i: oracle.luma_psnr(oracle.lumas(picture), lumas) for i, lumas in candidates.items()}
        assert max(scores, key=lambda i: scores[i]) == index, (tick, index)
        clock += duration
        unit = 10 if image_format == "gif" else 1
        assert abs(clock - round((until - Fraction(start)) * 1000)) <= unit  # no drift on the format's clock


def test_edit_list_shift(client: TestClient, media: Path) -> None:
    info = oracle.probe(media / "edit.mp4")
    response = client.get("/v1/animated.webp", params={"url": "edit.mp4", "start": "0.2", "end": "0.6", "fps": "5"})
    first = info.frame_at(Fraction(1, 5))
    assert first is not None
    assert Fraction(response.headers["x-actual-time"]) == info.times[first]


def test_bounds(client: TestClient) -> None:
    for params, parameter in [
        ({"end": "11"}, "end"),
        ({"fps": "31"}, "fps"),
        ({"fps": "0"}, "fps"),
        ({"width": "641"}, "width"),
        ({"height": "10"}, "height"),
        ({"start": "2", "end": "1"}, "end"),
        ({"start": "9"}, "end"),
        ({"start": "x"}, "start"),
    ]:
        response = client.get("/v1/animated.gif", params={"url": "clip.mp4", **params})
        assert response.status_code == 400, (params, response.text)
        assert response.json()["parameter"] == parameter
    assert client.get("/v1/animated.png", params={"url": "clip.mp4"}).status_code == 400
    assert client.get("/v1/animated.gif", params={"url": "nope.mp4"}).json()["code"] == "source_not_found"


def test_defaults_and_caching(client: TestClient) -> None:
    response = client.get("/v1/animated.gif", params={"url": "clip.mp4"})
    assert response.headers["x-frame-count"] == "30"  # 3 s at 10 fps
    frames = _frames(response.content)
    assert frames[0][0].shape[:2] == (108, 192)  # never upscaled
    etag = response.headers["etag"]
    again = client.get("/v1/animated.gif", params={"url": "clip.mp4"}, headers={"If-None-Match": etag})
    assert again.status_code == 304
