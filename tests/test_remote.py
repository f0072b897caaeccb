"""Remote sources over the whole stack: a grab reads the index and the bytes around the target,
not the file, and a warm asset is not fetched again."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from tests.http_server import LoopbackServer
from tests.media import make_h264_clip


def fetched_bytes(server: LoopbackServer, path: str, size: int) -> int:
    total = 0
    for request in server.requests_for(path):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.range or "")
        if match is None:
            total += size  # no Range: the whole file
        else:
            start, end = int(match.group(1)), int(match.group(2) or size - 1)
            total += min(end, size - 1) - start + 1
    return total


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopbackServer, int]]:
    clip = tmp_path_factory.mktemp("remote") / "clip.mp4"
    make_h264_clip(
        clip, size="1280x720", rate=25, seconds=20, gop=50, extra=["-preset", "ultrafast", "-movflags", "+faststart"]
    )
    data = clip.read_bytes()
    with LoopbackServer() as server:
        server.add_file("/clip.mp4", data)
        yield server, len(data)


def test_grabs_fetch_the_gop_not_the_file(
    make_client: Callable[..., TestClient], remote: tuple[LoopbackServer, int]
) -> None:
    server, size = remote
    client = make_client(allowed_networks="127.0.0.0/8", allowed_ports=str(server.port))
    url = server.url("/clip.mp4")
    first = client.get("/v1/frame", params={"url": url, "t": "3.1"})
    assert first.status_code == 200, first.text
    assert first.headers["x-actual-time"] == "3.08"
    cold = fetched_bytes(server, "/clip.mp4", size)
    assert cold < size / 2, (cold, size)  # the index and one GOP's neighbourhood, not 20 s of video
    server.clear_requests()
    second = client.get("/v1/frame", params={"url": url, "t": "15.5"})
    assert second.status_code == 200 and second.headers["x-actual-time"] == "15.48"
    warm = fetched_bytes(server, "/clip.mp4", size)
    assert 0 < warm < size / 4, (warm, size)  # no second probe of the index: the asset stayed open
