"""Hostile media through the live app: every corrupt or truncated file of the shared corpus, and files
made here with the ffmpeg CLI (random and bit-flipped bytes, truncated copies, pixel bombs, a ten-hour
file, many streams, hostile HLS playlists). Each gets an image (when the file is genuinely fine) or a
clean 4xx problem, never a 5xx; no problem leaks a path, an address or an FFmpeg message; and the
server keeps serving good requests throughout.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.conftest import CORPUS
from tests.hostile import assert_problem, assert_served_or_problem
from tests.http_server import LoopbackServer

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
MAX_SOURCE_PIXELS = 1280 * 720  # the app under attack: small limits, so breaches are cheap to make
MAX_DURATION = 2 * 3600
MAX_STREAMS = 32

# The damaged members of the shared corpus (../shared/media).
CORPUS_DAMAGED = [
    "corrupt_decord.mp4",
    "corrupt_h264_invalid_nalu.mp4",
    "corrupt_malformed_free_box.mp4",
    "corrupt_mdat_too_long.mp4",
    "corrupt_mpeg_ps_with_junk.mpg",
    "corrupt_vp9_invalid_bitstream.webm",
    "mp4_annexb_h264_truncated.mp4",
    "ts_truncated_1mib_no_aud.ts",
    "avi_h264_bad_length.avi",
]
TIMES = ("0", "0.5", "50%", "99999")


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True, timeout=120)


# ------------------------------------------------------------------------------------------ making files


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Every baseline JPEG frame header (SOF0) in ``data`` claims ``width`` x ``height``."""
    out = bytearray(data)
    start = 0
    while (i := out.find(b"\xff\xc0\x00\x11\x08", start)) >= 0:
        out[i + 5 : i + 9] = struct.pack(">HH", height, width)
        start = i + 9
    assert start, "no SOF0 found"
    return bytes(out)


def _patch_png_size(data: bytes, width: int, height: int) -> bytes:
    """Every PNG header (IHDR) in ``data`` claims ``width`` x ``height``, with a valid CRC."""
    out = bytearray(data)
    start = 0
    while (i := out.find(b"IHDR", start)) >= 0:
        body = bytearray(out[i + 4 : i + 17])
        body[0:8] = struct.pack(">II", width, height)
        out[i + 4 : i + 17] = body
        out[i + 17 : i + 21] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)))
        start = i + 21
    assert start, "no IHDR found"
    return bytes(out)


def _bitflip(data: bytes, seed: int, flips: int, skip: int = 0) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(flips):
        i = rng.randrange(skip, len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _playlist(*uris: str, master: bool = False) -> str:
    if master:
        return "#EXTM3U\n" + "".join(f"#EXT-X-STREAM-INF:BANDWIDTH=100000\n{u}\n" for u in uris)
    body = "".join(f"#EXTINF:1.0,\n{u}\n" for u in uris)
    return f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n{body}#EXT-X-ENDLIST\n"


def make_media(root: Path, canary_port: int) -> dict[str, str]:
    """Write the hostile files under ``root``; returns name -> what it is."""
    made: dict[str, str] = {}

    def note(name: str, what: str) -> None:
        made[name] = what

    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10:duration=3", "-c:v", "libx264", "-g", "10",
           "-pix_fmt", "yuv420p", str(root / "good.mp4"))  # fmt: skip
    ffmpeg("-i", str(root / "good.mp4"), "-c", "copy", str(root / "good.mkv"))
    ffmpeg("-i", str(root / "good.mp4"), "-c", "copy", str(root / "good.ts"))
    good = {ext: (root / f"good.{ext}").read_bytes() for ext in ("mp4", "mkv", "ts")}

    # random bytes, empty and tiny files, text and HTML in video clothing
    rng = random.Random(4)
    for ext in ("mp4", "mkv", "ts", "avi", "flv", "h264", "m3u8", "mov"):
        (root / f"random.{ext}").write_bytes(rng.randbytes(48 * 1024))
        note(f"random.{ext}", "48 KiB of random bytes")
    (root / "empty.mp4").write_bytes(b"")
    (root / "one-byte.mp4").write_bytes(b"\x00")
    (root / "ftyp-only.mp4").write_bytes(good["mp4"][:32])
    (root / "html.mp4").write_bytes(b"<!doctype html><html><body>not a video</body></html>\n" * 20)
    (root / "zeros.ts").write_bytes(b"\x00" * 65536)
    (root / "sync-bytes-only.ts").write_bytes(b"\x47" + b"\xff" * 187 * 1 + (b"\x47" + b"\x00" * 187) * 300)
    for name, what in [
        ("empty.mp4", "0 bytes"),
        ("one-byte.mp4", "1 byte"),
        ("ftyp-only.mp4", "first 32 bytes"),
        ("html.mp4", "HTML"),
        ("zeros.ts", "zeros"),
        ("sync-bytes-only.ts", "TS sync bytes, no data"),
    ]:
        note(name, what)  # fmt: skip

    # bit-flipped and truncated copies of real clips
    for ext, data in good.items():
        for seed in range(3):
            name = f"flipped-{seed}.{ext}"
            (root / name).write_bytes(_bitflip(data, seed, flips=40))
            note(name, f"good.{ext} with 40 bits flipped anywhere")
        name = f"flipped-payload.{ext}"
        (root / name).write_bytes(_bitflip(data, 99, flips=200, skip=len(data) // 4))
        note(name, f"good.{ext} with 200 bits flipped past the first quarter")
        for percent in (1, 10, 50, 90):
            name = f"truncated-{percent}.{ext}"
            (root / name).write_bytes(data[: len(data) * percent // 100])
            note(name, f"good.{ext} cut at {percent}%")

    # pixel bombs: tiny streams whose frames claim 16384x16384 (the container says 16x16)
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x16:rate=5:duration=1", "-c:v", "mjpeg", str(root / "mjpeg.mkv"))
    (root / "bomb-mjpeg.mkv").write_bytes(_patch_jpeg_size((root / "mjpeg.mkv").read_bytes(), 16384, 16384))
    note("bomb-mjpeg.mkv", "MJPEG in MKV, each frame claiming 16384x16384")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x16:rate=5:duration=1", "-c:v", "png", str(root / "png.mkv"))
    (root / "bomb-png.mkv").write_bytes(_patch_png_size((root / "png.mkv").read_bytes(), 16384, 16384))
    note("bomb-png.mkv", "PNG in MKV, each frame claiming 16384x16384")
    (root / "bomb-png-huge.mkv").write_bytes(_patch_png_size((root / "png.mkv").read_bytes(), 65535, 65535))
    note("bomb-png-huge.mkv", "PNG in MKV, each frame claiming 65535x65535")
    # honest but over STILLFRAME_MAX_SOURCE_PIXELS
    ffmpeg("-f", "lavfi", "-i", "color=black:size=1920x1088:rate=5:duration=0.4", "-c:v", "libx264",
           "-preset", "ultrafast", str(root / "over-limit.mp4"))  # fmt: skip
    note("over-limit.mp4", "1920x1088, over the source pixel limit")

    # ten hours in 1.5 KB (one frame an hour), and 40 video streams
    ffmpeg("-f", "lavfi", "-i", "color=black:size=16x16:rate=1/3600:duration=36000", "-c:v", "libx264",
           "-preset", "ultrafast", str(root / "ten-hours.mkv"))  # fmt: skip
    note("ten-hours.mkv", "10 hours long, over the duration limit")
    maps = [arg for _ in range(40) for arg in ("-map", "0:v")]
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x16:rate=5:duration=1", *maps, "-c:v", "libx264",
           "-preset", "ultrafast", str(root / "forty-streams.mkv"))  # fmt: skip
    note("forty-streams.mkv", "40 video streams, over the stream limit")

    # hostile HLS playlists served from the media root
    (root / "hls").mkdir()
    ffmpeg("-i", str(root / "good.mp4"), "-c", "copy", "-f", "hls", "-hls_time", "1", "-hls_list_size", "0",
           str(root / "hls" / "good.m3u8"))  # fmt: skip
    segment = sorted((root / "hls").glob("*.ts"))[0].name
    canary = f"http://127.0.0.1:{canary_port}"
    playlists = {
        "passwd.m3u8": _playlist("file:///etc/passwd"),
        "passwd-host.m3u8": _playlist("file://localhost/etc/passwd"),
        "abs-path.m3u8": _playlist("/etc/passwd"),
        "dotdot.m3u8": _playlist("../../../../../../../../etc/passwd"),
        "loopback.m3u8": _playlist(f"{canary}/seg.ts"),
        "loopback-decimal.m3u8": _playlist(f"http://2130706433:{canary_port}/seg.ts"),
        "mixed.m3u8": _playlist(segment, f"{canary}/seg.ts", "file:///etc/passwd"),
        "concat.m3u8": _playlist(f"concat:{segment}|{segment}"),
        "data.m3u8": _playlist("data:video/mp2t;base64,R0AAEA=="),
        "pipe.m3u8": _playlist("pipe:0"),
        "master-evil.m3u8": _playlist("loopback.m3u8", master=True),
        "master-passwd.m3u8": _playlist("passwd.m3u8", master=True),
        "master-file.m3u8": _playlist("file:///etc/evil.m3u8", master=True),
        "master-loopback.m3u8": _playlist(f"{canary}/child.m3u8", master=True),
        "key-loopback.m3u8": (
            f'#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=AES-128,URI="{canary}/key"\n'
            f"#EXTINF:1,\n{segment}\n#EXT-X-ENDLIST\n"
        ),
        "key-passwd.m3u8": (
            '#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-KEY:METHOD=AES-128,URI="file:///etc/passwd"\n'
            f"#EXTINF:1,\n{segment}\n#EXT-X-ENDLIST\n"
        ),
        "map-loopback.m3u8": (
            f'#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:1\n#EXT-X-MAP:URI="{canary}/init.mp4"\n'
            f"#EXTINF:1,\n{segment}\n#EXT-X-ENDLIST\n"
        ),
        "self-loop.m3u8": _playlist("self-loop.m3u8", master=True),
        "live.m3u8": f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{segment}\n",  # no ENDLIST: live
        "empty.m3u8": "#EXTM3U\n",
    }
    for name, text in playlists.items():
        (root / "hls" / name).write_text(text)
        note(f"hls/{name}", "hostile HLS playlist")
    os.symlink("/etc/passwd", root / "hls" / "link.ts")
    (root / "hls" / "symlink.m3u8").write_text(_playlist("link.ts"))
    note("hls/symlink.m3u8", "HLS segment that is a symlink out of the media root")
    (root / "hls" / "hls-as.mp4").write_text(_playlist("file:///etc/passwd"))
    note("hls/hls-as.mp4", "a hostile playlist named .mp4")
    # other playlist-like formats FFmpeg could follow: none is an accepted demuxer
    (root / "list.ffconcat").write_text("ffconcat version 1.0\nfile /etc/passwd\nfile good.mp4\n")
    note("list.ffconcat", "ffconcat list naming /etc/passwd")
    (root / "list.mp4").write_text("ffconcat version 1.0\nfile /etc/passwd\n")
    note("list.mp4", "ffconcat list named .mp4")
    (root / "manifest.mpd").write_text(
        '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        'mediaPresentationDuration="PT1S"><Period><AdaptationSet mimeType="video/mp4"><Representation id="1" '
        f'bandwidth="1" width="16" height="16"><BaseURL>{canary}/secret.mp4</BaseURL></Representation>'
        "</AdaptationSet></Period></MPD>\n"
    )
    note("manifest.mpd", "DASH manifest pointing at the canary")
    (root / "sdp.mp4").write_text(
        f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video {canary_port} RTP/AVP 96\n"
    )
    note("sdp.mp4", "SDP session description pointing at the canary")
    return made


# ------------------------------------------------------------------------------------------ the app


@dataclass
class Lab:
    client: TestClient
    root: Path
    files: dict[str, str]
    canary: LoopbackServer
    connections: list[Any]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("hostile-media")
    with LoopbackServer("127.0.0.1") as canary:
        connections: list[Any] = []
        inner = canary._server
        assert inner is not None
        accept = inner.process_request

        def counted(request: Any, client_address: Any) -> None:
            connections.append(client_address)
            accept(request, client_address)

        inner.process_request = counted  # type: ignore[method-assign]
        files = make_media(root, canary.port)
        if CORPUS.is_dir():
            for name in CORPUS_DAMAGED:
                if (CORPUS / name).is_file():
                    (root / "corpus").mkdir(exist_ok=True)
                    (root / "corpus" / name).write_bytes((CORPUS / name).read_bytes())
        settings = Settings(
            media_root=root,
            workers=1,
            data_dir=tmp_path_factory.mktemp("hostile-media-data"),
            allowed_ports=[80, 443, canary.port],
            max_source_pixels=MAX_SOURCE_PIXELS,
            max_duration=MAX_DURATION,
            max_streams=MAX_STREAMS,
            decode_timeout=5.0,  # what a runaway decode costs here
            fetch_connect_timeout=1.0,
            fetch_total_timeout=5.0,
        )
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield Lab(client, root, files, canary, connections)
    assert connections == [], f"the canary was reached: {connections}"


def grab(lab: Lab, url: str, t: str = "0.5", **params: str) -> Any:
    return lab.client.get("/v1/frame", params={"url": url, "t": t, **params})


def assert_still_serving(lab: Lab) -> None:
    response = grab(lab, "good.mp4", "1.2")
    assert response.status_code == 200, f"a good request failed after the attack: {response.text}"
    assert response.headers["x-actual-time"] == "1.2"


def attack(lab: Lab, name: str, times: tuple[str, ...] = TIMES) -> set[int]:
    statuses = {assert_served_or_problem(grab(lab, name, t)) for t in times}
    assert_still_serving(lab)
    return statuses


# ------------------------------------------------------------------------------------------ the corpus


@pytest.mark.parametrize("name", CORPUS_DAMAGED)
def test_damaged_corpus_files(lab: Lab, name: str) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"shared media corpus not found at {CORPUS}: damaged real files not attacked")
    if not (lab.root / "corpus" / name).is_file():
        pytest.skip(f"{name} is not in the shared corpus at {CORPUS}")
    attack(lab, f"corpus/{name}")


# ------------------------------------------------------------------------------------------ made here

GARBAGE = [
    "random.mp4", "random.mkv", "random.ts", "random.avi", "random.flv", "random.h264", "random.m3u8", "random.mov",
    "empty.mp4", "one-byte.mp4", "ftyp-only.mp4", "html.mp4", "zeros.ts", "sync-bytes-only.ts",
]  # fmt: skip


@pytest.mark.parametrize("name", GARBAGE)
def test_garbage_is_unsupported_media(lab: Lab, name: str) -> None:
    for t in ("0", "50%"):
        body = assert_problem(grab(lab, name, t), statuses={422})
        assert body["code"] in {"unsupported_media", "no_video_stream", "decode_failed", "no_image_at_time"}, body
    assert_still_serving(lab)


DAMAGED = [
    f"{kind}.{ext}"
    for ext in ("mp4", "mkv", "ts")
    for kind in ("flipped-0", "flipped-1", "flipped-2", "flipped-payload",
                 "truncated-1", "truncated-10", "truncated-50", "truncated-90")
]  # fmt: skip


@pytest.mark.parametrize("name", DAMAGED)
def test_bit_flipped_and_truncated_copies(lab: Lab, name: str) -> None:
    attack(lab, name)


@pytest.mark.parametrize("name", ["bomb-mjpeg.mkv", "bomb-png.mkv", "bomb-png-huge.mkv"])
def test_pixel_bombs_are_refused_before_decoding(lab: Lab, name: str) -> None:
    for t in ("0", "0.5"):
        body = assert_problem(grab(lab, name, t), statuses={422})
        assert body["code"] in {"source_too_many_pixels", "decode_failed", "unsupported_media"}, body
    assert_still_serving(lab)


def test_frame_size_over_the_limit(lab: Lab) -> None:
    body = assert_problem(grab(lab, "over-limit.mp4", "0"), statuses={422})
    assert body["code"] == "source_too_many_pixels"
    assert_still_serving(lab)


def test_ten_hour_file_is_over_the_duration_limit(lab: Lab) -> None:
    for t in ("0", "5:00:00", "50%"):
        body = assert_problem(grab(lab, "ten-hours.mkv", t), statuses={422})
        assert body["code"] == "source_too_long", body
    assert_still_serving(lab)


def test_forty_streams_are_over_the_stream_limit(lab: Lab) -> None:
    for params in ({}, {"stream": "39"}):
        body = assert_problem(grab(lab, "forty-streams.mkv", "0", **params), statuses={422})
        assert body["code"] == "source_too_many_streams", body
    assert_still_serving(lab)


def test_good_hls_from_the_media_root_works(lab: Lab) -> None:
    response = grab(lab, "hls/good.m3u8", "1.5")
    assert response.status_code == 200, response.text


HOSTILE_HLS = [
    "passwd.m3u8", "passwd-host.m3u8", "abs-path.m3u8", "dotdot.m3u8", "loopback.m3u8", "loopback-decimal.m3u8",
    "mixed.m3u8", "concat.m3u8", "data.m3u8", "pipe.m3u8", "master-evil.m3u8", "master-passwd.m3u8",
    "master-file.m3u8", "master-loopback.m3u8", "key-loopback.m3u8", "key-passwd.m3u8", "map-loopback.m3u8",
    "self-loop.m3u8", "empty.m3u8", "symlink.m3u8", "hls-as.mp4", "live.m3u8",
]  # fmt: skip


@pytest.mark.parametrize("name", HOSTILE_HLS)
def test_hostile_hls_playlists(lab: Lab, name: str) -> None:
    for t in ("0",) if name in ("self-loop.m3u8", "live.m3u8") else ("0", "2.5"):
        response = grab(lab, f"hls/{name}", t)
        if name == "mixed.m3u8" and t == "0" and response.status_code == 200:
            continue  # its first segment is fine; the forbidden ones must never be read
        if name == "live.m3u8":
            # A live playlist of one real segment: the frame from what is there, quickly, not a wait
            # for segments that never come.
            assert response.status_code == 200, response.text
            assert float(response.headers["x-actual-time"]) == 0
            continue
        body = assert_problem(response, statuses={403, 404, 422})
        assert "root:" not in response.text
        assert body["code"] in {
            "source_forbidden", "source_not_found", "unsupported_media", "no_video_stream", "decode_failed",
            "no_image_at_time", "invalid_parameter",
        }, body  # fmt: skip
    assert_still_serving(lab)


@pytest.mark.parametrize("name", ["list.ffconcat", "list.mp4", "manifest.mpd", "sdp.mp4"])
def test_other_playlist_formats_are_not_demuxed(lab: Lab, name: str) -> None:
    body = assert_problem(grab(lab, name, "0"), statuses={422})
    assert body["code"] in {"unsupported_media", "no_video_stream"}, body
    assert_still_serving(lab)


def test_a_burst_of_hostile_requests_leaves_the_server_serving(lab: Lab) -> None:
    from concurrent.futures import ThreadPoolExecutor

    names = ["random.mp4", "flipped-0.mp4", "bomb-png.mkv", "truncated-50.mkv", "hls/passwd.m3u8", "good.mp4"] * 3
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda n: grab(lab, n, "0.5").status_code, names))
    assert all(s < 500 for s in statuses), statuses
    assert_still_serving(lab)
