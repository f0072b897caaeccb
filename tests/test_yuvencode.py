"""JPEG and WebP straight from the YUV planes (app/engine/yuvencode.py) against the RGB path they stand
in for.

The RGB path (``render_frame``, then Pillow's encoder) is checked against the ffmpeg CLI in
test_render.py; here the fast paths must give the same picture as that path: the same colours (known
RGB patches, every matrix and range), the same orientation and size, and pixels within the codec's own
noise.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
import simplejpeg
from av.video.reformatter import ColorRange
from PIL import Image

from app.engine import yuvencode
from app.engine.encode import encode_image, render_and_encode
from app.engine.options import EncodeOptions, RenderOptions
from app.engine.render import plan_frame, render_frame
from tests.media import require_corpus
from tests.test_render import (
    PATCHES,
    _patch_means,
    clips,
    ffmpeg_png,
    first_frame,
    make_clip,
    make_patch_clip,
    psnr,
)

__all__ = ["clips"]  # the module-scoped fixture, shared with test_render

JPEG = EncodeOptions(format="jpeg")


def _decoded(data: bytes, image_format: str = "JPEG") -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == image_format
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def _webp_fast(frame: av.VideoFrame, stream: object, options: RenderOptions, quality: int = 80) -> np.ndarray:
    layout, region = plan_frame(frame, options, stream=stream)
    assert yuvencode.can_encode(frame, layout, region, options.dynamic_range)
    return _decoded(yuvencode.encode_webp(frame, layout, quality, 2)[0], "WEBP")


def _webp_slow(frame: av.VideoFrame, stream: object, options: RenderOptions, quality: int = 80) -> np.ndarray:
    image = render_frame(frame, options, stream=stream)
    return _decoded(encode_image(image, EncodeOptions(format="webp", quality=quality)), "WEBP")


def _fast(frame: av.VideoFrame, stream: object, options: RenderOptions, quality: int = 85) -> bytes:
    layout, region = plan_frame(frame, options, stream=stream)
    assert yuvencode.can_encode(frame, layout, region, options.dynamic_range)
    return yuvencode.encode_planes(yuvencode.jfif_frame_planes(frame, layout), quality)


def _slow(frame: av.VideoFrame, stream: object, options: RenderOptions, quality: int = 85) -> bytes:
    return encode_image(render_frame(frame, options, stream=stream), EncodeOptions(format="jpeg", quality=quality))


@pytest.mark.parametrize(
    ("size", "matrix", "rng", "tag"),
    [
        ((640, 360), "bt709", "tv", True),
        ((640, 360), "smpte170m", "pc", True),  # JFIF itself: the planes go out untouched
        ((640, 360), "bt470bg", "tv", False),  # untagged SD: BT.601 guessed
        ((1280, 720), "bt709", "tv", False),  # untagged HD: BT.709 guessed
        ((1280, 720), "bt709", "pc", True),
        ((640, 360), "bt2020nc", "tv", True),
    ],
)
def test_colour_patches(tmp_path: Path, size: tuple[int, int], matrix: str, rng: str, tag: bool) -> None:
    frame, stream = first_frame(make_patch_clip(tmp_path, size=size, matrix=matrix, rng=rng, tag=tag))
    expected = np.array(PATCHES, dtype=np.float64)
    got = _patch_means(Image.fromarray(_decoded(_fast(frame, stream, RenderOptions(), quality=95)).astype(np.uint8)))
    assert np.abs(got - expected).max() < 3, got.round(1)
    # The test can tell: read with another matrix or range, the same planes miss by far more.
    full = ColorRange.JPEG if frame.color_range == ColorRange.JPEG or frame.format.name == "yuvj420p" else 1
    other_matrix = 6 if matrix in ("bt709", "bt2020nc") else 1  # BT.601 is the one furthest from both
    for colorspace, color_range in ((other_matrix, full), (frame.colorspace, 3 - full)):
        wrong = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
        wrong.colorspace, wrong.color_range = colorspace, color_range
        got_wrong = _patch_means(
            Image.fromarray(_decoded(_fast(wrong, stream, RenderOptions(), quality=95)).astype(np.uint8))
        )
        assert np.abs(got_wrong - expected).max() > 10


@pytest.mark.parametrize(
    ("matrix", "rng", "tag"),
    [("bt709", "tv", True), ("smpte170m", "tv", True), ("smpte170m", "pc", True), ("bt2020nc", "tv", True)],
)
def test_webp_colour_patches(tmp_path: Path, matrix: str, rng: str, tag: bool) -> None:
    """WebP from the planes in VP8's YCbCr (BT.601, limited range; BT.601 limited goes out untouched):
    within 3 codes of each patch (a full-range source loses a little to VP8's limited range: Pillow's
    WebP of the RGB picture misses by as much), and no further off than that."""
    frame, stream = first_frame(make_patch_clip(tmp_path, size=(640, 360), matrix=matrix, rng=rng, tag=tag))
    expected = np.array(PATCHES, dtype=np.float64)

    def error(decoded: np.ndarray) -> float:
        return float(np.abs(_patch_means(Image.fromarray(decoded.astype(np.uint8))) - expected).max())

    fast = error(_webp_fast(frame, stream, RenderOptions(), quality=95))
    assert fast <= 3
    assert fast <= error(_webp_slow(frame, stream, RenderOptions(), quality=95)) + 0.5


@pytest.mark.parametrize("name", ["plain", "rot90_hflip", "rot270", "vflip"])
def test_webp_is_the_picture_of_the_rgb_path(clips: dict[str, Path], name: str) -> None:
    """Orientation and colours, against Pillow's WebP of the rendered frame (the same libwebp settings)."""
    frame, stream = first_frame(clips[name])
    options = RenderOptions(aperture="encoded")
    fast, slow = _webp_fast(frame, stream, options), _webp_slow(frame, stream, options)
    assert fast.shape == slow.shape
    assert psnr(fast, slow) > 30
    assert np.abs(fast.mean(axis=(0, 1)) - slow.mean(axis=(0, 1))).max() < 1.5


def test_webp_from_ten_bit_planes_and_its_effort(tmp_path: Path) -> None:
    path = make_clip(
        tmp_path, "ten.mp4", src="testsrc2=s=320x240:r=10", encode=["-c:v", "libx264", "-pix_fmt", "yuv420p10le"]
    )
    frame, stream = first_frame(path)
    assert psnr(_webp_fast(frame, stream, RenderOptions()), _webp_slow(frame, stream, RenderOptions())) > 28
    layout = plan_frame(frame, RenderOptions(), stream=stream)[0]
    quick, thorough = (yuvencode.encode_webp(frame, layout, 80, method)[0] for method in (0, 6))
    assert quick != thorough  # the method reaches libwebp
    data, _, timings = render_and_encode(frame, RenderOptions(), EncodeOptions(format="webp"), stream=stream)
    assert data == yuvencode.encode_webp(frame, layout, 80, EncodeOptions().webp_method)[0]  # render_and_encode's path
    assert timings["render"] > 0 and timings["encode"] > 0


@pytest.mark.parametrize(
    "name",
    [
        "hevc_cra_opengop.mp4",  # 1080p HEVC, yuvj420p (BT.601 full range)
        "phone_pixel7_rot180_vfr.mp4",  # phone footage, turned
        "h264_bt709_full_range.mp4",
        "ts_mpeg2_1080p.ts",
        "hevc_bframes.mp4",
        "webm_vp9_no_duration_vfr.webm",
    ],
)
def test_webp_from_planes_on_real_media(name: str) -> None:
    """On real footage the planes give the RGB path's picture in about its bytes (0.97-1.05x measured
    on these; the benchmark's synthetic pattern, whose per-pixel chroma noise the RGB path smooths
    away, is the exception, see bench/README)."""
    with av.open(str(require_corpus() / name)) as container:
        stream = container.streams.video[0]
        frame = next(itertools.islice(container.decode(stream), 5, None))  # a few frames in
        layout, region = plan_frame(frame, RenderOptions(), stream=stream)
        assert yuvencode.can_encode(frame, layout, region, "sdr")
        fast = yuvencode.encode_webp(frame, layout, 80, 2)[0]
        slow = encode_image(render_frame(frame, RenderOptions(), stream=stream), EncodeOptions(format="webp"))
    assert 0.9 < len(fast) / len(slow) < 1.1
    assert psnr(_decoded(fast, "WEBP"), _decoded(slow, "WEBP")) > 33


@pytest.mark.parametrize("name", ["plain", "rot90_hflip", "rot270", "vflip", "sar2"])
def test_same_picture_as_the_rgb_path(clips: dict[str, Path], name: str) -> None:
    """Orientation (rotations and mirrors on the planes) from 4:4:4 input."""
    frame, stream = first_frame(clips[name])
    options = RenderOptions(aperture="encoded")  # stored pixels: a SAR would ask for scaling
    fast, slow = _decoded(_fast(frame, stream, options)), _decoded(_slow(frame, stream, options))
    assert fast.shape == slow.shape
    assert psnr(fast, slow) > 30
    assert np.abs(fast.mean(axis=(0, 1)) - slow.mean(axis=(0, 1))).max() < 1.5


@pytest.mark.parametrize("size", ["320x240", "160x90", "98x64"])
def test_as_close_to_ffmpeg_as_the_rgb_path(tmp_path: Path, size: str) -> None:
    """Against the ffmpeg CLI's own conversion (explicit matrix, range and chroma siting), the JPEG
    from the planes is no worse than the JPEG from RGB."""
    w, h = (int(v) for v in size.split("x"))
    src = f"testsrc2=s={w + 1}x{h + 1}:r=10,crop={w}:{h}:exact=1"  # testsrc2 itself makes even sizes only
    path = make_clip(tmp_path, f"s{size}.avi", src=src, encode=["-c:v", "mpeg4", "-q:v", "2"])
    frame, stream = first_frame(path)
    assert (frame.width, frame.height, frame.format.name) == (w, h, "yuv420p")
    vf = "scale=in_color_matrix=bt601:in_range=tv:in_chroma_loc=left:flags=bicubic+accurate_rnd+full_chroma_int"
    reference = ffmpeg_png(path, "-vf", f"{vf},format=rgb24")
    fast, slow = _decoded(_fast(frame, stream, RenderOptions())), _decoded(_slow(frame, stream, RenderOptions()))
    assert fast.shape == slow.shape == (h, w, 3)
    assert psnr(fast, reference) > psnr(slow, reference) - 0.5


@pytest.mark.parametrize("size", ["161x121", "97x64", "96x63"])
def test_odd_sizes_take_the_rgb_path(tmp_path: Path, size: str) -> None:
    """swscale stretches an odd size's ceil(w/2) chroma samples over w pixels where JPEG sites them
    every two: the RGB path keeps such frames as the ffmpeg CLI shows them."""
    w, h = (int(v) for v in size.split("x"))
    src = f"testsrc2=s={w + 1}x{h + 1}:r=10,crop={w}:{h}:exact=1"
    frame, stream = first_frame(make_clip(tmp_path, f"s{size}.avi", src=src, encode=["-c:v", "mpeg4"]))
    assert (frame.width, frame.height) == (w, h)
    layout, region = plan_frame(frame, RenderOptions(), stream=stream)
    assert not yuvencode.can_encode(frame, layout, region, "sdr")
    data, out_size, _ = render_and_encode(frame, RenderOptions(), JPEG, stream=stream)
    assert out_size == (w, h) and _decoded(data).shape == (h, w, 3)


def test_ten_bit_sdr(tmp_path: Path) -> None:
    path = make_clip(
        tmp_path, "ten.mp4", src="testsrc2=s=320x240:r=10", encode=["-c:v", "libx264", "-pix_fmt", "yuv420p10le"]
    )
    frame, stream = first_frame(path)
    assert frame.format.name == "yuv420p10le"
    fast, slow = _decoded(_fast(frame, stream, RenderOptions())), _decoded(_slow(frame, stream, RenderOptions()))
    assert psnr(fast, slow) > 28
    assert np.abs(fast.mean(axis=(0, 1)) - slow.mean(axis=(0, 1))).max() < 1.5


@pytest.mark.parametrize("transpose", list(Image.Transpose))
def test_plane_transposes_match_pillow(transpose: Image.Transpose) -> None:
    plane = np.random.default_rng(1).integers(0, 256, (5, 7), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(plane).transpose(transpose))
    assert np.array_equal(yuvencode._PLANE_TRANSPOSES[transpose](plane), expected)


def _yuv420p_frame(y: np.ndarray, u: np.ndarray, v: np.ndarray, pix_fmt: str = "yuv420p") -> av.VideoFrame:
    frame = av.VideoFrame(y.shape[1], y.shape[0], pix_fmt)
    for plane, values in zip(frame.planes, (y, u, v), strict=True):
        rows = np.frombuffer(memoryview(plane), values.dtype).reshape(plane.height, -1)
        rows[:, : plane.width] = values
    return frame


def _yuv_matrix(kr: float, kb: float) -> np.ndarray:
    """RGB -> (Y, Pb, Pr), Y in [0, 1] and Pb, Pr in [-0.5, 0.5]."""
    kg = 1.0 - kr - kb
    return np.array(
        [
            [kr, kg, kb],
            [-kr / (2 * (1 - kb)), -kg / (2 * (1 - kb)), 0.5],
            [0.5, -kg / (2 * (1 - kr)), -kb / (2 * (1 - kr))],
        ]
    )


# (swscale's matrix number, Kr, Kb) of every matrix the planes may come in
_MATRICES = [(1, 0.2126, 0.0722), (5, 0.299, 0.114), (4, 0.30, 0.11), (7, 0.212, 0.087), (9, 0.2627, 0.0593)]


@pytest.mark.parametrize(("colorspace", "kr", "kb"), _MATRICES)
@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize("depth", [8, 10])
def test_conversion_matches_the_matrix(colorspace: int, kr: float, kb: float, full_range: bool, depth: int) -> None:
    """The filter's conversion against the same maths in float64, over every 8-bit chroma code pair (in
    steps of 4 at 10 bits, straight from the 10-bit codes) and luma at both ends of its range: within
    one code, one correction per 2x2 block."""
    step = 1 << (depth - 8)
    dtype = np.uint8 if depth == 8 else np.uint16
    u, v = np.meshgrid(np.arange(0, 256 * step, step, dtype=dtype), np.arange(0, 256 * step, step, dtype=dtype))
    rows, cols = u.shape
    for luma in (16, 126, 235):
        y = np.full((rows * 2, cols * 2), luma * step, dtype=dtype)
        frame = _yuv420p_frame(y, u, v, "yuv420p" if depth == 8 else "yuv420p10le")
        jy, jcb, jcr = yuvencode._planes(yuvencode.bt601_frame(frame, colorspace, full_range))
        scale, black = (255.0 * step if depth == 8 else 1023.0, 0) if full_range else (219.0 * step, 16 * step)
        chroma_scale = (255.0 * step if depth == 8 else 1023.0) if full_range else 224.0 * step
        centre = 128.0 * step
        ypbpr = np.stack(
            [np.full(u.shape, (luma * step - black) / scale), (u - centre) / chroma_scale, (v - centre) / chroma_scale]
        )
        ref = _yuv_matrix(0.299, 0.114) @ np.linalg.inv(_yuv_matrix(kr, kb)) @ ypbpr.reshape(3, -1)
        ref_y, ref_cb, ref_cr = (
            np.clip(np.round(ref[i] * 255 + (0, 128, 128)[i]), 0, 255).reshape(u.shape) for i in range(3)
        )
        assert np.abs(jcb.astype(float) - ref_cb).max() <= 1
        assert np.abs(jcr.astype(float) - ref_cr).max() <= 1
        assert np.abs(jy[0::2, 0::2].astype(float) - ref_y).max() <= 1
        assert np.array_equal(jy[0::2, 0::2], jy[1::2, 1::2])  # one correction per 2x2 block


def test_conversions_kept_per_size_give_what_a_fresh_one_gives() -> None:
    """Sizes and matrices taken in turns (a graph is kept per size, matrix, range and threads), and
    from two threads at once: every picture converts as it does alone."""
    rng = np.random.default_rng(3)
    cases = []
    for height, width in ((64, 96), (2, 2), (66, 98), (720, 1280)):
        y = rng.integers(0, 256, (height, width), dtype=np.uint8)
        u, v = (rng.integers(0, 256, (height // 2, width // 2), dtype=np.uint8) for _ in range(2))
        for colorspace, full in ((1, False), (9, True)):
            frame = _yuv420p_frame(y, u, v)
            alone = [
                p.copy()
                for p in yuvencode._planes(
                    yuvencode._Conversion(width, height, "yuv420p", colorspace, full, True, 1, None)(frame)
                )
            ]
            cases.append((frame, colorspace, full, alone))

    def convert_all(threads: int) -> bool:
        return all(
            all(
                np.array_equal(a, b)
                for a, b in zip(
                    yuvencode._planes(yuvencode.bt601_frame(f, c, full, threads=threads)), alone, strict=True
                )
            )
            for _ in range(3)
            for f, c, full, alone in cases
        )

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(convert_all, (1, 2)))


def test_render_and_encode_picks_the_path(clips: dict[str, Path]) -> None:
    """JPEG of a plain layout comes from the planes; pad, cover crops and other formats from RGB."""
    frame, stream = first_frame(clips["plain"])
    plain, _ = plan_frame(frame, RenderOptions(), stream=stream)
    assert yuvencode.can_encode(frame, plain, None, "sdr")
    for options in (
        RenderOptions(width=100, height=100, fit="pad"),
        RenderOptions(width=100, height=100, fit="cover"),
        RenderOptions(width=100, height=100, fit="fill"),
    ):
        layout, region = plan_frame(frame, options, stream=stream)
        assert not yuvencode.can_encode(frame, layout, region, "sdr")
        data, size, _ = render_and_encode(frame, options, JPEG, stream=stream)
        assert size == (100, 100) and _decoded(data).shape == (100, 100, 3)
    rgb = av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint8), format="rgb24")
    layout, region = plan_frame(rgb, RenderOptions())
    assert not yuvencode.can_encode(rgb, layout, region, "sdr")
    data, size, timings = render_and_encode(frame, RenderOptions(), JPEG, stream=stream)
    assert size == (320, 240) and set(timings) == {"render", "encode"}
    assert psnr(_decoded(data), _decoded(_slow(frame, stream, RenderOptions()))) > 30


def test_hdr_to_sdr_takes_the_tone_mapping_path() -> None:
    frame = av.VideoFrame.from_ndarray(np.full((24, 16), 512, dtype=np.uint16), format="yuv420p10le")
    frame.color_trc = 16  # PQ
    layout, region = plan_frame(frame, RenderOptions())
    assert not yuvencode.can_encode(frame, layout, region, "sdr")
    assert yuvencode.can_encode(frame, layout, region, "native")


def test_render_and_encode_with_threads_gives_the_same_bytes(clips: dict[str, Path]) -> None:
    with av.open(str(clips["plain"])) as container:
        frame = next(container.decode(video=0))
    big = frame.reformat(width=1280, height=720, format="yuv420p")  # big enough to be cut into bands
    one = render_and_encode(big, RenderOptions(), EncodeOptions(format="jpeg"), threads=1)
    two = render_and_encode(big, RenderOptions(), EncodeOptions(format="jpeg"), threads=2)
    assert one[1] == two[1] == (1280, 720)
    assert one[0] == two[0]


def _random_frame(width: int, height: int, pix_fmt: str, colorspace: int, color_range: int, seed: int) -> av.VideoFrame:
    rng = np.random.default_rng(seed)
    # smooth ramps plus noise (what a JPEG of a video frame looks like to the encoder), at 8 bits
    ramp = np.add.outer(np.arange(height) // 3, np.arange(width) // 5)
    y = ((ramp + rng.integers(0, 40, (height, width))) % 220 + 16).astype(np.uint8)
    u = rng.integers(60, 200, (height // 2, width // 2), dtype=np.uint8)
    v = np.ascontiguousarray(y[::2, ::2] // 2 + 64)
    frame = _yuv420p_frame(y, u, v).reformat(format=pix_fmt) if pix_fmt != "yuv420p" else _yuv420p_frame(y, u, v)
    frame.colorspace, frame.color_range = colorspace, color_range
    return frame


@pytest.mark.parametrize(
    ("width", "height", "pix_fmt", "colorspace", "color_range"),
    [
        (1920, 1080, "yuv420p", 1, 1),  # BT.709 limited: the common case
        (1000, 1002, "yuv420p", 9, 2),  # padded lines, a height not whole MCU rows, BT.2020 full
        (1280, 720, "yuvj420p", 5, 2),  # already JFIF: halves of the decoder's own planes
        (1280, 720, "yuv420p10le", 1, 1),  # 10-bit, straight into the filter
        (1280, 720, "yuv422p", 1, 1),  # through swscale first
        (640, 512, "yuv420p", 1, 1),  # just big enough to be cut
        (640, 510, "yuv420p", 1, 1),  # just too small: one piece
    ],
)
def test_jpeg_converted_half_by_half_is_the_jpeg_of_the_converted_picture(
    width: int, height: int, pix_fmt: str, colorspace: int, color_range: int
) -> None:
    """``encode_jpeg`` on two cores converts and encodes each half on its own: the bytes are those of the
    whole picture converted, then encoded (on one core or two), and a turned picture goes the whole way."""
    frame = _random_frame(width, height, pix_fmt, colorspace, color_range, seed=width + height)
    plain = plan_frame(frame, RenderOptions())[0]
    expected = yuvencode.encode_planes(yuvencode.jfif_frame_planes(frame, plain), 85)
    for threads in (1, 2, 3):
        data, converted_at = yuvencode.encode_jpeg(frame, plain, 85, threads=threads)
        assert data == expected, threads
        assert converted_at <= time.perf_counter()
    turned = dataclasses.replace(plain, transpose=Image.Transpose.ROTATE_90, size=(height, width))
    rotated = yuvencode.encode_planes(yuvencode.jfif_frame_planes(frame, turned), 85)
    assert yuvencode.encode_jpeg(frame, turned, 85, threads=2)[0] == rotated
    assert Image.open(io.BytesIO(rotated)).size == (height, width)


@pytest.mark.parametrize(
    ("pix_fmt", "eligible"),
    [
        ("yuv420p", True),
        ("yuvj420p", True),
        ("yuv422p", True),
        ("yuv444p10le", True),
        ("nv12", True),
        ("p010le", True),
        ("gray", False),
        ("yuva420p", False),
        ("gbrp", False),
        ("rgb24", False),
        ("xyz12le", False),
        ("bayer_rggb8", False),
        ("pal8", False),
    ],
)
def test_which_pixel_formats_take_the_planes(pix_fmt: str, eligible: bool) -> None:
    frame = av.VideoFrame(64, 48, pix_fmt)
    layout, region = plan_frame(frame, RenderOptions())
    assert yuvencode.can_encode(frame, layout, region, "sdr") is eligible
    if eligible:
        _decoded(_fast(frame, None, RenderOptions()))  # and they do convert


@pytest.mark.parametrize(("height", "width"), [(1080, 1920), (720, 1280), (2160, 3840), (1000, 1002), (544, 80)])
def test_a_jpeg_encoded_in_halves_decodes_to_the_same_pixels(height: int, width: int) -> None:
    """Two halves joined at a restart marker: every decoder sees the picture of one whole encode."""
    rng = np.random.default_rng(height)
    # smooth gradients plus noise: DC predictions that differ across the cut, some 0xFF bytes
    ramp = np.add.outer(np.arange(height) // 3, np.arange(width) // 5).astype(np.uint8)
    y = (ramp + rng.integers(0, 40, (height, width))).astype(np.uint8)
    u = rng.integers(60, 200, (height // 2, width // 2), dtype=np.uint8)
    v = np.ascontiguousarray(ramp[::2, ::2])
    whole = bytes(simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=85))
    halves = yuvencode.encode_planes((y, u, v), 85, threads=2)
    assert halves == yuvencode.encode_planes((y, u, v), 85)  # the bytes do not depend on the threads
    assert halves != whole and len(halves) - len(whole) < 64  # really joined, and no bigger to speak of
    for decode in (
        lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),  # libjpeg(-turbo)
        lambda data: next(av.open(io.BytesIO(data), format="jpeg_pipe").decode(video=0)).to_ndarray(),  # FFmpeg
    ):
        assert np.array_equal(decode(halves), decode(whole))


def test_small_pictures_are_encoded_whole() -> None:
    y = np.zeros((200, 320), np.uint8)
    u = v = np.full((100, 160), 128, np.uint8)
    assert yuvencode.encode_planes((y, u, v), 85, threads=2) == yuvencode.encode_planes((y, u, v), 85)
