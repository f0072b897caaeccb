"""Faithful output: ``dynamic_range=native`` keeps HDR as HDR (16-bit PNG with cICP, 10-bit AVIF with an
nclx ``colr`` box) or refuses formats that cannot carry it; alpha is kept where the format has it.

Every check reads the bytes back (PNG chunks, AVIF boxes, a decode through FFmpeg) instead of trusting
what the encoder was asked for.
"""

from __future__ import annotations

import io
import struct
import subprocess
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.engine import EncodeOptions, EngineError, FrameResult, GrabOptions, ImageGenerator, RenderOptions
from app.engine.colour import sdr_colour_in_hdr
from app.engine.sources import HttpSource
from tests.conftest import CORPUS
from tests.http_server import LoopbackServer
from tests.oracle import ffmpeg_exe, probe

PQ = "av1_hdr10_pq_portrait.mp4"  # AV1 10-bit, PQ, BT.2020, 720x1280
HLG = "hevc_hlg10.mp4"  # HEVC Main10, HLG, BT.2020, 1920x1080
HLG_ROTATED = "iphone_hevc_hlg_editlist_rot90_opengop.mp4"
TRC_PQ, TRC_HLG, PRIMARIES_BT2020, MATRIX_BT2020_NCL = 16, 18, 9, 9


def png_chunks(data: bytes) -> dict[bytes, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        chunks.setdefault(kind, data[at + 8 : at + 8 + length])
        at += 12 + length
    return chunks


def isobmff_box(data: bytes, kind: bytes) -> bytes:
    """The payload of the first box of that type anywhere in the file (a flat search is enough for the
    few, unique, property boxes read here)."""
    at = data.find(kind)
    assert at >= 4, f"no {kind!r} box"
    (size,) = struct.unpack(">I", data[at - 4 : at])
    return data[at + 4 : at - 4 + size]


def grab(path: Path, t: str = "0", **render: object) -> bytes:
    fmt = str(render.pop("format", "png"))
    options = GrabOptions(
        render=RenderOptions(dynamic_range="native", **render),  # type: ignore[arg-type]
        encode=EncodeOptions(format=fmt),  # type: ignore[arg-type]
    )
    with ImageGenerator(path, options) as generator:
        return generator.image_at(t).image


def decoded(data: bytes) -> av.VideoFrame:
    with av.open(io.BytesIO(data)) as container:
        return next(container.decode(video=0))


@pytest.mark.parametrize(("name", "transfer"), [(PQ, TRC_PQ), (HLG, TRC_HLG), (HLG_ROTATED, TRC_HLG)])
def test_native_png_is_16_bit_with_the_source_transfer_in_cicp(corpus: Path, name: str, transfer: int) -> None:
    data = grab(corpus / name, "0.1", width=640)
    chunks = png_chunks(data)
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour_type) == (16, 2)  # 16-bit truecolour
    # cICP: primaries, transfer, matrix (0: RGB), full range
    assert chunks[b"cICP"] == bytes([PRIMARIES_BT2020, transfer, 0, 1])
    assert b"sRGB" not in chunks and b"iCCP" not in chunks
    frame = decoded(data)
    assert frame.format.name == "rgb48be" and (frame.width, frame.height) == (width, height)
    assert int(frame.color_trc) == transfer and int(frame.color_primaries) == PRIMARIES_BT2020
    assert width <= 640


def test_native_png_matches_the_ffmpeg_cli(corpus: Path) -> None:
    """The 16-bit values are the source's PQ signal as FFmpeg converts it (no tone mapping, no 8-bit step)."""
    path = corpus / PQ
    frame = decoded(grab(path, "0")).to_ndarray().astype(np.int32)
    cli = subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(path),
            "-frames:v",
            "1",
            "-vf",
            "scale=out_range=full:flags=bicubic+accurate_rnd+full_chroma_int,format=rgb48le",
            "-f",
            "rawvideo",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    oracle = np.frombuffer(cli, "<u2").reshape(frame.shape).astype(np.int32)
    assert np.abs(frame - oracle).mean() < 64  # a quarter of a 10-bit step on average
    assert frame.max() > 255 * 257 * 0.5  # the PQ signal, not an 8-bit picture


@pytest.mark.parametrize(("name", "transfer"), [(PQ, TRC_PQ), (HLG, TRC_HLG)])
def test_native_avif_is_10_bit_with_nclx(corpus: Path, name: str, transfer: int) -> None:
    data = grab(corpus / name, "0.1", format="avif", width=480)
    colr = isobmff_box(data, b"colr")
    assert colr[:4] == b"nclx"
    primaries, trc, matrix = struct.unpack(">HHH", colr[4:10])
    assert (primaries, trc, matrix) == (PRIMARIES_BT2020, transfer, MATRIX_BT2020_NCL)
    pixi = isobmff_box(data, b"pixi")
    assert pixi[4] == 3 and set(pixi[5:8]) == {10}  # three channels of 10 bits
    frame = decoded(data)
    assert frame.format.name == "yuv420p10le" and int(frame.color_trc) == transfer


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_native_hdr_in_an_8_bit_format_is_refused(corpus: Path, fmt: str) -> None:
    with pytest.raises(EngineError) as refused:
        grab(corpus / HLG, "0", format=fmt)
    assert refused.value.code == "invalid_parameter" and "png" in str(refused.value)


def test_native_pad_fills_with_the_background_in_the_source_transfer(corpus: Path) -> None:
    frame = decoded(grab(corpus / PQ, "0", width=400, height=200, fit="pad", background="white"))
    pixels = frame.to_ndarray()
    assert pixels.shape == (200, 400, 3)
    white = sdr_colour_in_hdr((255, 255, 255), transfer="pq", color_primaries=PRIMARIES_BT2020)
    assert tuple(int(v) for v in pixels[100, 2]) == white  # the left bar is padding
    assert abs(white[0] / 65535 - 0.5806) < 0.001  # 203 nits in PQ (BT.2408 reference white)


def test_native_on_an_sdr_source_is_the_sdr_picture(corpus: Path) -> None:
    sdr = GrabOptions(encode=EncodeOptions(format="jpeg"))
    native = GrabOptions(render=RenderOptions(dynamic_range="native"), encode=EncodeOptions(format="jpeg"))
    path = corpus / "rotation_0.mov"
    with ImageGenerator(path, sdr) as one, ImageGenerator(path, native) as two:
        assert one.image_at("0").image == two.image_at("0").image


def test_api_refuses_native_hdr_as_jpeg_with_a_problem(make_client: Callable[..., TestClient], corpus: Path) -> None:
    client = make_client(media_root=str(corpus))
    refused = client.get("/v1/frame", params={"url": HLG, "t": "0", "dynamic_range": "native", "format": "jpeg"})
    assert refused.status_code == 400, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "invalid_parameter"
    png = client.get("/v1/frame", params={"url": HLG, "t": "0", "dynamic_range": "native", "format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png_chunks(png.content)[b"cICP"] == bytes([PRIMARIES_BT2020, TRC_HLG, 0, 1])


# --- alpha ------------------------------------------------------------------------------------------

# Left half opaque, right half transparent; the colour under the transparent half is the test pattern.
_SOURCE = "testsrc2=size=64x48:rate=10:duration=1"
_HALF_ALPHA = "format=rgba,geq=r='r(X,Y)':g='g(X,Y)':b='b(X,Y)':a='if(lt(X,W/2),255,0)'"


@pytest.fixture(scope="module")
def alpha_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("alpha")
    encoders = {
        "vp9.webm": ["-c:v", "libvpx-vp9", "-pix_fmt", "yuva420p", "-b:v", "1M"],
        "prores4444.mov": ["-c:v", "prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le"],
        "png.mov": ["-c:v", "png", "-pix_fmt", "rgba"],
    }
    clips = {}
    for name, codec in encoders.items():
        path = folder / name
        subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", _SOURCE, "-vf", _HALF_ALPHA, *codec, str(path)],
            check=True,
        )
        clips[name] = path
    return clips


@pytest.mark.parametrize("clip", ["vp9.webm", "prores4444.mov", "png.mov"])
@pytest.mark.parametrize("fmt", ["png", "webp", "avif"])
def test_alpha_is_kept(alpha_clips: dict[str, Path], clip: str, fmt: str) -> None:
    options = GrabOptions(encode=EncodeOptions(format=fmt))  # type: ignore[arg-type]
    with ImageGenerator(alpha_clips[clip], options) as generator:
        for t in ("0", "0.55"):  # a keyframe, and a frame decoded after a seek
            image = Image.open(io.BytesIO(generator.image_at(t).image))
            assert image.mode == "RGBA", (clip, fmt, image.mode)
            alpha = np.asarray(image)[:, :, 3].astype(int)
            assert alpha[:, :28].min() > 240 and alpha[:, 36:].max() < 15, (clip, fmt, t)


@pytest.mark.parametrize("clip", ["vp9.webm", "prores4444.mov", "png.mov"])
def test_alpha_in_jpeg_is_flattened_onto_the_background(alpha_clips: dict[str, Path], clip: str) -> None:
    options = GrabOptions(render=RenderOptions(background="#00ff00"), encode=EncodeOptions(format="jpeg", quality=95))
    with ImageGenerator(alpha_clips[clip], options) as generator:
        pixels = np.asarray(Image.open(io.BytesIO(generator.image_at("0.3").image))).astype(int)
    assert pixels.shape == (48, 64, 3)
    right = pixels[:, 40:].reshape(-1, 3).mean(axis=0)
    assert abs(right[0]) < 12 and right[1] > 240 and right[2] < 12, right  # the background shows through


def test_vp9_alpha_from_the_corpus_and_over_the_api(make_client: Callable[..., TestClient], corpus: Path) -> None:
    client = make_client(media_root=str(corpus))
    answer = client.get("/v1/frame", params={"url": "vp9_alpha.webm", "t": "2.5", "format": "png"})
    assert answer.status_code == 200, answer.text
    image = Image.open(io.BytesIO(answer.content))
    assert image.mode == "RGBA" and np.asarray(image)[:, :, 3].min() == 0  # transparent where the clip is


# --- remote answers as local ----------------------------------------------------------------------------

US = Fraction(1, 10**6)
REMOTE_CASES = [
    "avi_h264_bad_length.avi",  # AVI, H.264 with B-frames, DTS-only timing, a header length that lies
    "x264_bframes.avi",  # made below: AVI whose last frame outlasts the container's duration
    "ts_h264.ts",
    "fmp4_fragmented.mp4",
    "hevc_bframes.mp4",
    "editlist_discard.mp4",
    "vp9_odd_dimensions_161x121.webm",
]


_CLIP_25FPS = "testsrc2=size=64x48:rate=25:duration=1"
_X264_BFRAMES = ["-c:v", "libx264", "-bf", "3", "-g", "12"]  # GOPs of 12: a grab near the end seeks


@pytest.fixture(scope="module")
def remote_corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, LoopbackServer]]:
    folder = tmp_path_factory.mktemp("remote-as-local")
    made = folder / "x264_bframes.avi"
    x264 = [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", _CLIP_25FPS, *_X264_BFRAMES, str(made)]
    subprocess.run(x264, check=True)
    with LoopbackServer() as server:
        server.add_file(f"/{made.name}", made.read_bytes())
        if CORPUS.is_dir():
            for name in REMOTE_CASES:
                if (CORPUS / name).is_file():
                    server.add_file(f"/{name}", (CORPUS / name).read_bytes())
        yield folder, server


def _answer(generator: ImageGenerator, t: Fraction) -> tuple[str, Fraction | None]:
    try:
        result = generator.image_at(t)
    except EngineError as exc:
        return exc.code, None
    return "ok", result.actual_time


@pytest.mark.parametrize("name", REMOTE_CASES)
def test_a_remote_source_answers_as_the_local_file_at_every_time(
    remote_corpus: tuple[Path, LoopbackServer], name: str
) -> None:
    folder, server = remote_corpus
    local = folder / name if (folder / name).is_file() else CORPUS / name
    if not local.is_file():
        pytest.skip(f"{name} is not in the media corpus")
    policy = Settings(allowed_networks="127.0.0.0/8", allowed_ports=str(server.port)).fetch_policy()
    options = GrabOptions(render=RenderOptions(width=16), encode=EncodeOptions(format="jpeg"))
    info = probe(local)
    last = info.times[-1]
    edges = {last - US, last, last + US, info.end - US, info.end, info.end + US, last + Fraction(1, 10)}
    times = sorted({x for t in info.times for x in (t - US, t, t + US)} | edges)
    times = [t for t in times if t >= 0]

    def remote() -> ImageGenerator:
        return ImageGenerator(HttpSource(server.url(f"/{name}"), policy), options)

    with ImageGenerator(local, options) as here, remote() as there:  # warm: one asset, times in order
        differences = [(t, a, b) for t in times if (a := _answer(here, t)) != (b := _answer(there, t))]
    for t in sorted(edges):  # cold: a fresh open for each time around the end
        with ImageGenerator(local, options) as here, remote() as there:
            alone = _answer(here, t)
            if alone != (b := _answer(there, t)):
                differences.append((t, alone, b))
        # and in a batch, after a grab in the middle (what grabs queued together get): a seek to the end
        for make in (lambda: ImageGenerator(local, options), remote):
            with make() as generator:
                *_, result = generator.images_for([info.times[len(info.times) // 2], t])
            batch = ("ok", result.actual_time) if isinstance(result, FrameResult) else (result.error.code, None)
            if batch != alone:
                differences.append((t, alone, batch))
    assert not differences, differences[:5]
    with ImageGenerator(local, options) as here:  # the last frame is shown for its whole display interval
        assert _answer(here, last + US) == ("ok", last)


def test_native_hdr_with_alpha(tmp_path: Path) -> None:
    """PQ ProRes 4444 with alpha: a 16-bit RGBA PNG labelled PQ; an HDR AVIF with alpha is refused."""
    clip = tmp_path / "pq_alpha.mov"
    # (setparams: the tags reach the MOV colr box, where output options alone leave it unspecified)
    tagged = f"{_HALF_ALPHA},setparams=color_primaries=bt2020:color_trc=smpte2084:colorspace=bt2020nc"
    prores = ["-c:v", "prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le"]
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", _SOURCE, "-vf", tagged, *prores, str(clip)], check=True
    )
    data = grab(clip, "0.3")
    assert png_chunks(data)[b"cICP"] == bytes([PRIMARIES_BT2020, TRC_PQ, 0, 1])
    pixels = decoded(data)
    assert pixels.format.name == "rgba64be"
    alpha = pixels.to_ndarray()[:, :, 3]
    assert alpha[:, :28].min() > 65000 and alpha[:, 36:].max() < 1000
    with pytest.raises(EngineError) as refused:
        grab(clip, "0.3", format="avif")
    assert refused.value.code == "invalid_parameter" and "png" in str(refused.value)
