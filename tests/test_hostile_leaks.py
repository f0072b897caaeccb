"""Nothing leaks between callers: by default no ``Server-Timing`` tells a caller whether another one
had the asset open (``open``) or the image made (``cache``); an operator may turn it on."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.media import make_h264_clip


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("leak-media")
    make_h264_clip(root / "clip.mp4", size="64x48", rate=10, seconds=2, gop=5)
    return root


def _client(media_root: Path, **settings: object) -> TestClient:
    data = Path(tempfile.mkdtemp(prefix="stillframe-leaks-"))
    return TestClient(create_app(Settings(media_root=media_root, workers=1, data_dir=data, **settings)))


def test_no_server_timing_by_default(media_root: Path) -> None:
    with _client(media_root) as client:
        for params in ({"url": "clip.mp4", "t": "1"}, {"url": "clip.mp4", "t": "1"}, {"url": "clip.mp4", "t": "0.5"}):
            for response in (client.get("/v1/frame", params=params), client.post("/v1/frame", json=params)):
                assert response.status_code == 200
                assert "server-timing" not in response.headers, response.headers


def test_server_timing_when_the_operator_asks_for_it(media_root: Path) -> None:
    with _client(media_root, server_timing=True) as client:
        first = client.get("/v1/frame", params={"url": "clip.mp4", "t": "1"})
        assert "decode" in first.headers["server-timing"]
        assert client.get("/v1/frame", params={"url": "clip.mp4", "t": "1"}).headers["server-timing"] == "cache;dur=0"
