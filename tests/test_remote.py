"""Remote sources over the whole stack: a grab reads the index and the bytes around the target,
not the file, and a warm asset is not fetched again."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from tests.http_server import LoopbackServer
from tests.media import ffmpeg_exe, make_h264_clip


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


def test_a_remote_matroska_keyframe_grab_reads_the_cues_not_the_gops(
    make_client: Callable[..., TestClient], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Matroska's Cues list its keyframes: the nearest one to t is found there, and the grab fetches
    around that keyframe, not the GOPs between the keyframes on either side of t."""
    clip = tmp_path_factory.mktemp("remote-mkv") / "clip.mkv"
    make_h264_clip(clip, size="1280x720", rate=25, seconds=20, gop=125, extra=["-preset", "ultrafast"])
    data = clip.read_bytes()
    with LoopbackServer() as server:
        server.add_file("/clip.mkv", data)
        client = make_client(allowed_networks="127.0.0.0/8", allowed_ports=str(server.port))
        url = server.url("/clip.mkv")
        # (11.1 s lands on the keyframe of the grab before: its image again, nothing fetched)
        for t, keyframe, most in (("6.1", "5", 0.15), ("8.6", "10", 0.1), ("11.1", "10", 0.01)):
            server.clear_requests()
            response = client.get("/v1/frame", params={"url": url, "t": t, "tolerance": "inf"})
            assert response.status_code == 200, response.text
            assert response.headers["x-actual-time"] == keyframe, t
            fetched = fetched_bytes(server, "/clip.mkv", len(data))
            assert fetched <= most * len(data), (t, fetched, len(data))  # a GOP is 1/4 of the file


def test_remote_hls_live_and_finished_give_the_same_frames(
    make_client: Callable[..., TestClient], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An HLS playlist over HTTP, as finished (VOD) and as live (the same segments, no #EXT-X-ENDLIST):
    both answer every time alike, in an order that seeks back into segments already read, and the live
    one without waiting for more segments."""
    folder = tmp_path_factory.mktemp("remote-hls")
    source = make_h264_clip(folder / "source.mp4", size="320x180", rate=25, seconds=8, gop=25)
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(source), "-c", "copy", "-f", "hls",
         "-hls_time", "2", "-hls_playlist_type", "vod", str(folder / "vod.m3u8")],
        check=True,
    )  # fmt: skip
    vod = (folder / "vod.m3u8").read_text()
    with LoopbackServer() as server:
        for path in folder.glob("*.ts"):
            server.add_file(f"/{path.name}", path.read_bytes())
        server.add_file("/vod.m3u8", vod.encode(), content_type="application/vnd.apple.mpegurl")
        live = vod.replace("#EXT-X-ENDLIST", "").replace("#EXT-X-PLAYLIST-TYPE:VOD", "")
        server.add_file("/live.m3u8", live.encode(), content_type="application/vnd.apple.mpegurl")
        client = make_client(allowed_networks="127.0.0.0/8", allowed_ports=str(server.port))
        for t in ("5.1", "2.3", "5.5", "0", "7.9"):
            answers = []
            for name in ("vod", "live"):
                started = time.monotonic()
                response = client.get("/v1/frame", params={"url": server.url(f"/{name}.m3u8"), "t": t})
                assert response.status_code == 200, (name, t, response.text)
                assert time.monotonic() - started < 5, (name, t)  # no reload interval sat out
                answers.append((response.headers["x-actual-time"], response.content))
            assert answers[0] == answers[1], t
            assert abs(float(answers[0][0]) - float(t)) < 0.05, (t, answers[0][0])
