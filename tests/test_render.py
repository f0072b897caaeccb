"""render_frame: orientation, pixel aspect, size, colour and HDR tone mapping.

The ffmpeg CLI (imageio-ffmpeg's binary) is the oracle: ``ffmpeg -i F -frames:v 1`` autorotates with
the full display matrix (flips included), ``-noautorotate`` does not, and ``-vf scale=in_color_matrix=..
:in_range=..`` gives a reference YUV->RGB conversion. Real files come from ../shared/media (skipped
when missing); the synthetic clips below are made with the ffmpeg CLI so the suite runs without them.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from av.video.reformatter import ColorPrimaries, ColorRange, ColorTrc
from PIL import Image

from app.engine import colour
from app.engine.errors import EngineError
from app.engine.options import RenderOptions
from app.engine.render import (
    display_matrix,
    orientation_from_matrix,
    plan_layout,
    render_frame,
    sample_aspect_ratio,
    transpose_for,
)

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


# --- helpers -------------------------------------------------------------------------------------


def _ffmpeg() -> str:
    try:
        import imageio_ffmpeg

        exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        exe = shutil.which("ffmpeg") or ""
    if not exe:
        pytest.skip("ffmpeg CLI not available (pip install imageio-ffmpeg)")
    return exe


def media(name: str) -> Path:
    path = MEDIA / name
    if not path.is_file():
        pytest.skip(f"shared media corpus not found at {MEDIA} (needs {name})")
    return path


_OPEN: list[Any] = []


@pytest.fixture(autouse=True)
def _close_containers() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def first_frame(path: Path) -> tuple[av.VideoFrame, Any]:
    """The first decoded frame and its stream. The container stays open until the test ends: PyAV
    streams read their container (``sample_aspect_ratio``), and a closed one crashes the process."""
    container = av.open(str(path))
    _OPEN.append(container)
    stream = container.streams.video[0]
    return next(container.decode(stream)), stream


def ffmpeg_png(path: Path, *args: str, pre: tuple[str, ...] = ()) -> np.ndarray:
    """First frame through the ffmpeg CLI as an RGB array (``pre``: input options, ``args``: output)."""
    cmd = [_ffmpeg(), "-v", "error", *pre, "-i", str(path), "-frames:v", "1", *args]
    cmd += ["-f", "image2pipe", "-c:v", "png", "-compression_level", "0", "-"]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.asarray(Image.open(io.BytesIO(out)).convert("RGB"))


def psnr(a: np.ndarray | Image.Image, b: np.ndarray | Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert x.shape == y.shape, f"shape {x.shape} != {y.shape}"
    mse = float(np.mean((x - y) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def make_clip(tmp: Path, name: str, *, src: str, encode: list[str], pre: list[str] | None = None) -> Path:
    out = tmp / name
    cmd = [_ffmpeg(), "-v", "error", "-y", *(pre or []), "-f", "lavfi", "-i", src, "-frames:v", "1"]
    subprocess.run([*cmd, *encode, str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Synthetic one-frame clips: orientation, SAR, and colour patches with known RGB."""
    tmp = tmp_path_factory.mktemp("clips")
    # 4:4:4, so that comparisons after a transpose do not hinge on how each side sites 4:2:0 chroma.
    x264 = ["-c:v", "libx264", "-pix_fmt", "yuv444p"]
    made: dict[str, Path] = {}
    made["plain"] = make_clip(tmp, "plain.mp4", src="testsrc2=s=320x240:r=10", encode=x264)
    for name, flags in {
        "rot90_hflip": ["-display_rotation", "90", "-display_hflip"],
        "rot270": ["-display_rotation", "270"],
        "vflip": ["-display_vflip"],
    }.items():
        # The display matrix rides along a stream copy (an encode would autorotate instead).
        made[name] = tmp / f"{name}.mp4"
        cmd = [_ffmpeg(), "-v", "error", "-y", *flags, "-i", str(made["plain"]), "-c", "copy", str(made[name])]
        subprocess.run(cmd, check=True, capture_output=True)
    made["sar2"] = make_clip(tmp, "sar2.mp4", src="testsrc2=s=320x240:r=10", encode=["-vf", "setsar=2", *x264])
    yield made


# Colour patches: the clip is made from known RGB with an explicit matrix and range, losslessly
# (x264 qp 0); rendering must give the RGB back. Large flat patches keep 4:2:0 out of the way.
PATCHES = [(200, 40, 40), (40, 180, 60), (40, 60, 200), (230, 210, 40), (128, 128, 128), (20, 20, 20)]


def _patch_image(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    step = width // len(PATCHES)
    for i, rgb in enumerate(PATCHES):
        image.paste(rgb, (i * step, 0, (i + 1) * step, height))
    return image


def _patch_means(image: Image.Image) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64)
    h, w, _ = a.shape
    step = w // len(PATCHES)
    return np.array(
        [a[h // 4 : 3 * h // 4, i * step + step // 4 : (i + 1) * step - step // 4].mean(axis=(0, 1)) for i in range(6)]
    )


def make_patch_clip(tmp: Path, *, size: tuple[int, int], matrix: str, rng: str, tag: bool) -> Path:
    png = tmp / f"patches_{size[0]}.png"
    _patch_image(*size).save(png)
    out = tmp / f"patches_{size[0]}x{size[1]}_{matrix}_{rng}_{'tag' if tag else 'untagged'}.mp4"
    vf = f"scale=out_color_matrix={matrix}:out_range={rng}:flags=accurate_rnd,format=yuv420p"
    if not tag:  # the scale filter tags its output; strip it so the stream says "unspecified"
        vf += ",setparams=colorspace=unknown:color_primaries=unknown:color_trc=unknown:range=unknown"
    tags = ["-colorspace", matrix, "-color_range", rng] if tag else []
    cmd = [_ffmpeg(), "-v", "error", "-y", "-i", str(png), "-vf", vf, *tags]
    cmd += ["-c:v", "libx264", "-qp", "0", "-frames:v", "1", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


# --- orientation: pure -------------------------------------------------------------------------------

ONE = 1 << 16


@pytest.mark.parametrize(
    ("abcd", "expected"),
    [
        ((ONE, 0, 0, ONE), (0, False)),
        ((0, ONE, -ONE, 0), (90, False)),  # rotation_90.mov: FFmpeg rotation -90
        ((-ONE, 0, 0, -ONE), (180, False)),
        ((0, -ONE, ONE, 0), (270, False)),  # rotation_270.mov
        ((0, ONE, ONE, 0), (270, True)),  # rotate_and_reflect_matrix.mp4: a transpose
        ((-ONE, 0, 0, ONE), (0, True)),
        ((ONE, 0, 0, -ONE), (180, True)),
        ((0, -ONE, -ONE, 0), (90, True)),
        ((2 * ONE, 0, 0, 2 * ONE), (0, False)),  # scale is ignored
        ((32768, 56756, -56756, 32768), (90, False)),  # 60 degrees snaps to the nearest quarter turn
    ],
)
def test_orientation_from_matrix(abcd: tuple[int, int, int, int], expected: tuple[int, bool]) -> None:
    a, b, c, d = abcd
    assert orientation_from_matrix((a, b, 0, c, d, 0, 0, 0, 1 << 30)) == expected


def test_orientation_without_matrix() -> None:
    assert orientation_from_matrix(None) == (0, False)
    assert orientation_from_matrix((0,) * 9) == (0, False)


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("mirrored", [False, True])
def test_transpose_applies_the_matrix(rotation: int, mirrored: bool) -> None:
    """The Pillow operation moves every pixel where the display matrix says it goes."""
    h, w = 3, 5
    src = np.arange(h * w, dtype=np.uint8).reshape(h, w)
    op = transpose_for(rotation, mirrored)
    out = np.asarray(Image.fromarray(src).transpose(op)) if op is not None else src
    # Build the matrix for (mirror, then rotate clockwise) in FFmpeg's row-vector convention.
    flip = np.array([[-1, 0], [0, 1]]) if mirrored else np.eye(2, dtype=int)
    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[rotation]
    m = flip @ np.array([[cos, sin], [-sin, cos]])
    assert orientation_from_matrix((m[0, 0], m[0, 1], 0, m[1, 0], m[1, 1], 0, 0, 0, 1)) == (rotation, mirrored)
    # Map pixel centres through m, then shift the result into the positive quadrant.
    corners = np.array([[x, y] for y in (0, h - 1) for x in (0, w - 1)]) @ m
    offset = corners.min(axis=0)
    for y in range(h):
        for x in range(w):
            nx, ny = np.array([x, y]) @ m - offset
            assert out[ny, nx] == src[y, x]


# --- orientation: against ffmpeg ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rotation_0.mov", (0, False)),
        ("rotation_90.mov", (90, False)),
        ("rotation_180.mov", (180, False)),
        ("rotation_270.mov", (270, False)),
        ("rotate_and_reflect_matrix.mp4", (270, True)),
        ("phone_pixel7_rot180_vfr.mp4", (180, False)),
    ],
)
def test_rotation_matches_ffmpeg_autorotate(name: str, expected: tuple[int, bool]) -> None:
    path = media(name)
    frame, stream = first_frame(path)
    assert orientation_from_matrix(display_matrix(frame, stream)) == expected
    ours = render_frame(frame, RenderOptions(dynamic_range="native"), stream=stream)
    reference = ffmpeg_png(path)
    assert psnr(ours, reference) > 35
    # rotate=none is the stored picture, as ffmpeg -noautorotate shows it.
    plain = render_frame(frame, RenderOptions(rotate="none"), stream=stream)
    assert plain.size == (frame.width, frame.height)
    assert psnr(plain, ffmpeg_png(path, pre=("-noautorotate",))) > 35


def test_mirrored_matrix_is_not_just_a_rotation() -> None:
    """PyAV/FFmpeg report -90 for [0 1; 1 0]; showing it as a plain 90 degree turn would be wrong."""
    path = media("rotate_and_reflect_matrix.mp4")
    frame, stream = first_frame(path)
    assert frame.rotation == -90
    reference = ffmpeg_png(path)
    ours = render_frame(frame, RenderOptions(), stream=stream)
    assert ours.size == (720, 1080)
    assert psnr(ours, reference) > 35
    stored = render_frame(frame, RenderOptions(rotate="none"), stream=stream)
    assert psnr(stored.transpose(Image.Transpose.ROTATE_270), reference) < 20  # rotation alone


def test_phone_4k_portrait_orientation() -> None:
    frame, stream = first_frame(media("phone_4k60_rot90_vfr.mp4"))
    assert orientation_from_matrix(display_matrix(frame, stream)) == (90, False)
    assert render_frame(frame, RenderOptions(width=540), stream=stream).size == (540, 960)


@pytest.mark.parametrize("name", ["rot90_hflip", "rot270", "vflip", "plain"])
def test_synthetic_display_matrix_matches_ffmpeg(clips: dict[str, Path], name: str) -> None:
    path = clips[name]
    frame, stream = first_frame(path)
    ours = render_frame(frame, RenderOptions(), stream=stream)
    assert psnr(ours, ffmpeg_png(path)) > 35
    plain = render_frame(frame, RenderOptions(rotate="none"), stream=stream)
    assert psnr(plain, ffmpeg_png(path, pre=("-noautorotate",))) > 35
    if name != "plain":
        assert psnr(ours.resize(plain.size), plain) < 25  # the orientation really changed something


def test_mvhevc_side_data_does_not_crash() -> None:
    """Iterating this frame's side data raises ValueError inside PyAV (type 29, VIEW_ID)."""
    frame, stream = first_frame(media("mvhevc_spatial_video.mov"))
    with pytest.raises(ValueError):
        list(frame.side_data)
    assert display_matrix(frame, stream) is None
    assert colour.side_data_bytes(frame) == {}
    image = render_frame(frame, RenderOptions(width=480), stream=stream)
    assert image.size == (480, 536)


# --- pixel aspect and apertures -------------------------------------------------------------------


def test_apertures_on_sar_2x1() -> None:
    path = media("h264_sar_2x1.mp4")
    frame, stream = first_frame(path)
    assert sample_aspect_ratio(frame, stream) == 2
    sizes = {
        ap: render_frame(frame, RenderOptions(aperture=ap), stream=stream) for ap in ("encoded", "production", "clean")
    }
    assert sizes["encoded"].size == (640, 360)
    assert sizes["production"].size == (1280, 360)
    assert sizes["clean"].size == (1280, 360)
    # No clean aperture in this file (and FFmpeg already applied the bitstream cropping): the same picture.
    assert np.array_equal(np.asarray(sizes["clean"]), np.asarray(sizes["production"]))
    # Chroma siting made explicit (H.264 default, "left"); the ffmpeg 9 CLI assumes centre otherwise.
    flags = "in_chroma_loc=left:flags=bicubic+accurate_rnd+full_chroma_int"
    assert psnr(sizes["production"], ffmpeg_png(path, "-vf", f"scale=iw*sar:ih:{flags}")) > 35
    assert psnr(sizes["encoded"], ffmpeg_png(path, "-vf", f"scale={flags}")) > 35


@pytest.mark.parametrize(
    ("name", "sar", "size"),
    [
        ("h264_bpyramid_anamorphic.mp4", Fraction(64, 45), (1138, 640)),
        ("ts_no_initial_keyframe.ts", Fraction(44, 45), (626, 352)),
        ("rotation_0.mov", Fraction(1), (568, 320)),  # no SAR at all
    ],
)
def test_anamorphic_sizes(name: str, sar: Fraction, size: tuple[int, int]) -> None:
    frame, stream = first_frame(media(name))
    assert sample_aspect_ratio(frame, stream) == sar
    assert render_frame(frame, RenderOptions(aperture="production"), stream=stream).size == size


def test_synthetic_sar_and_clean_aperture(clips: dict[str, Path]) -> None:
    frame, stream = first_frame(clips["sar2"])
    assert render_frame(frame, RenderOptions(aperture="encoded"), stream=stream).size == (320, 240)
    production = render_frame(frame, RenderOptions(aperture="production"), stream=stream)
    assert production.size == (640, 240)
    # A clean aperture (top, bottom, left, right, as AV_PKT_DATA_FRAME_CROPPING) crops stored pixels
    # before the SAR correction: 320-10-30 = 280 stored columns -> 560 square ones.
    crop = (8, 16, 10, 30)
    clean = render_frame(frame, RenderOptions(aperture="clean"), stream=stream, clean_aperture=crop)
    assert clean.size == (560, 216)
    stored = render_frame(frame, RenderOptions(aperture="encoded"), stream=stream)
    expected = stored.crop((10, 8, 290, 224)).resize((560, 216), Image.Resampling.BICUBIC)
    assert psnr(clean, expected) > 35
    # production ignores it; nonsense crops are ignored.
    assert render_frame(frame, RenderOptions(aperture="production"), stream=stream, clean_aperture=crop).size == (
        640,
        240,
    )
    assert render_frame(
        frame, RenderOptions(aperture="clean"), stream=stream, clean_aperture=(200, 200, 0, 0)
    ).size == (640, 240)


def test_without_stream_sar_is_unknown(clips: dict[str, Path]) -> None:
    frame, _ = first_frame(clips["sar2"])
    assert render_frame(frame, RenderOptions(aperture="production")).size == (320, 240)


# --- size ------------------------------------------------------------------------------------------


def layout(w: int, h: int, *, sar: Fraction = Fraction(1), rotation: int = 0, **options: Any) -> Any:
    return plan_layout(w, h, sar=sar, rotation=rotation, mirrored=False, options=RenderOptions(**options))


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ({}, (1280, 720)),
        ({"width": 640}, (640, 360)),
        ({"height": 180}, (320, 180)),
        ({"width": 400, "height": 400}, (400, 225)),
        ({"width": 4000, "height": 4000}, (1280, 720)),  # contain never enlarges
        ({"width": 4000}, (1280, 720)),
        ({"width": 400, "height": 400, "fit": "cover"}, (400, 400)),
        ({"width": 4000, "height": 100, "fit": "cover"}, (4000, 100)),  # cover fills the box
        ({"width": 400, "fit": "cover"}, (400, 225)),  # one side open: contain
        ({"width": 400, "height": 400, "fit": "fill"}, (400, 400)),
        ({"width": 2000, "fit": "fill"}, (2000, 1125)),
        ({"height": 100, "fit": "fill"}, (178, 100)),
        ({"width": 400, "height": 400, "fit": "pad"}, (400, 400)),
        ({"width": 4000, "height": 4000, "fit": "pad"}, (4000, 4000)),
        ({"height": 360, "fit": "pad"}, (640, 360)),
    ],
)
def test_fit_sizes(options: dict[str, Any], size: tuple[int, int]) -> None:
    assert layout(1280, 720, **options).size == size


def test_size_comes_after_orientation_and_square_pixels() -> None:
    # 640x360 stored, SAR 2 -> 1280x360, turned 90 -> 360x1280; then the 200 box.
    plan = layout(640, 360, sar=Fraction(2), rotation=90, width=200, height=200)
    assert plan.size == (56, 200)
    assert plan.scale_to == (200, 56)  # swscale works in stored orientation


def test_fit_modes_render(clips: dict[str, Path]) -> None:
    frame, stream = first_frame(clips["plain"])  # 320x240
    sizes = {
        fit: render_frame(frame, RenderOptions(width=200, height=100, fit=fit, background="#ff0000"), stream=stream)
        for fit in ("contain", "cover", "fill", "pad")
    }
    assert sizes["contain"].size == (133, 100)
    assert sizes["cover"].size == (200, 100)
    assert sizes["fill"].size == (200, 100)
    assert sizes["pad"].size == (200, 100)
    pad = np.asarray(sizes["pad"])
    assert tuple(pad[50, 2]) == (255, 0, 0) and tuple(pad[50, 197]) == (255, 0, 0)  # side bars
    assert psnr(pad[:, 33:166], sizes["contain"]) > 40
    # cover is the centre of the picture: compare with a reference crop of the full frame.
    full = render_frame(frame, RenderOptions(), stream=stream)
    expected = full.crop((0, 40, 320, 200)).resize((200, 100), Image.Resampling.BICUBIC)
    assert psnr(sizes["cover"], expected) > 30
    # No upscaling for contain; cover/fill/pad produce the box.
    assert render_frame(frame, RenderOptions(width=1000, height=1000), stream=stream).size == (320, 240)
    big = render_frame(frame, RenderOptions(width=640, height=640, fit="cover"), stream=stream)
    assert big.size == (640, 640)
    assert psnr(big, full.crop((40, 0, 280, 240)).resize((640, 640), Image.Resampling.BICUBIC)) > 30


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "100"])
def test_bad_dimensions(bad: Any) -> None:
    with pytest.raises(EngineError) as info:
        layout(1280, 720, width=bad)
    assert info.value.code == "invalid_parameter"


def test_pixel_cap(clips: dict[str, Path]) -> None:
    frame, stream = first_frame(clips["plain"])
    with pytest.raises(EngineError) as info:
        render_frame(frame, RenderOptions(width=200, height=200, fit="fill"), stream=stream, max_output_pixels=1000)
    assert info.value.code == "invalid_parameter"
    with pytest.raises(EngineError):
        render_frame(frame, RenderOptions(), stream=stream, max_output_pixels=320 * 240 - 1)
    assert render_frame(frame, RenderOptions(), stream=stream, max_output_pixels=320 * 240).size == (320, 240)
    with pytest.raises(EngineError):
        layout(1280, 720, width=8000, height=8000, fit="pad")  # default cap is 7680x4320


@pytest.mark.parametrize(
    "options",
    [
        {"background": "not-a-colour"},
        {"fit": "stretch"},
        {"rotate": "left"},
        {"aperture": "x"},
        {"dynamic_range": "hdr"},
    ],
)
def test_bad_options(clips: dict[str, Path], options: dict[str, Any]) -> None:
    frame, stream = first_frame(clips["plain"])
    with pytest.raises(EngineError) as info:
        render_frame(frame, RenderOptions(**options), stream=stream)
    assert info.value.code == "invalid_parameter"


@pytest.mark.parametrize("background", ["rebeccapurple", "#102030", "#fff"])
def test_pad_background_names(clips: dict[str, Path], background: str) -> None:
    frame, stream = first_frame(clips["plain"])
    image = render_frame(frame, RenderOptions(width=400, height=400, fit="pad", background=background), stream=stream)
    expected = {"rebeccapurple": (102, 51, 153), "#102030": (16, 32, 48), "#fff": (255, 255, 255)}[background]
    assert image.getpixel((0, 0)) == expected


# --- colour ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "matrix", "rng", "tag"),
    [
        ((640, 360), "bt709", "tv", True),
        ((640, 360), "smpte170m", "pc", True),
        ((640, 360), "bt470bg", "tv", False),  # untagged SD: BT.601 guessed
        ((1280, 720), "bt709", "tv", False),  # untagged HD: BT.709 guessed
        ((1280, 720), "bt709", "pc", True),
    ],
)
def test_colour_patches_round_trip(tmp_path: Path, size: tuple[int, int], matrix: str, rng: str, tag: bool) -> None:
    path = make_patch_clip(tmp_path, size=size, matrix=matrix, rng=rng, tag=tag)
    frame, stream = first_frame(path)
    assert (frame.colorspace == 2) == (not tag)
    expected = np.array(PATCHES, dtype=np.float64)
    got = _patch_means(render_frame(frame, RenderOptions(), stream=stream))
    assert np.abs(got - expected).max() < 3, got.round(1)
    # The test can tell: the other matrix, or the other range, would miss by far more.
    full = ColorRange.JPEG if colour.is_full_range(frame.color_range, frame.format.name) else ColorRange.MPEG
    other_matrix = 1 if matrix != "bt709" else 6
    other_range = ColorRange.MPEG if full == ColorRange.JPEG else ColorRange.JPEG
    for colorspace, color_range in ((other_matrix, full), (frame.colorspace, other_range)):
        wrong = _retagged(frame, colorspace, color_range)
        got_wrong = _patch_means(render_frame(wrong, RenderOptions(), stream=stream))
        assert np.abs(got_wrong - expected).max() > 10


def _retagged(frame: av.VideoFrame, colorspace: int, color_range: int) -> av.VideoFrame:
    """A copy of a yuv420p frame with other colour tags (yuvj420p becomes yuv420p + the range tag)."""
    copy = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
    copy.colorspace = colorspace
    copy.color_range = color_range
    return copy


# Reference conversions with everything explicit. Chroma siting: H.264 without VUI chroma location
# means "left" (type 0) -- what libavcodec/swscale use; the ffmpeg 9 CLI would assume centre unless
# told. VP9 is centre-sited.
@pytest.mark.parametrize(
    ("name", "vf"),
    [
        ("h264_bt709_full_range.mp4", "in_color_matrix=bt709:in_range=full:in_chroma_loc=left"),
        ("h264_bt601.mov", "in_color_matrix=bt601:in_range=tv:in_chroma_loc=left"),
        ("h264_high10_10bit.mp4", "in_color_matrix=bt601:in_range=tv:in_chroma_loc=left"),  # untagged 200x200
        ("vp9_profile2_10bit.webm", "in_color_matrix=bt2020:in_range=tv:in_chroma_loc=center"),
        ("vp9_odd_dimensions_161x121.webm", "in_color_matrix=bt601:in_range=tv:in_chroma_loc=center"),
        ("editlist_negative_pts_opengop_h264.mp4", "in_color_matrix=bt601:in_range=tv"),  # 4:4:4
    ],
)
def test_colour_matches_ffmpeg_explicit_matrix(name: str, vf: str) -> None:
    path = media(name)
    frame, stream = first_frame(path)
    ours = render_frame(frame, RenderOptions(rotate="none"), stream=stream)
    assert ours.size == (frame.width, frame.height)
    reference = ffmpeg_png(
        path, "-vf", f"scale={vf}:flags=bicubic+accurate_rnd+full_chroma_int,format=rgb24", pre=("-noautorotate",)
    )
    assert psnr(ours, reference) > 35
    assert np.abs(np.asarray(ours, float).mean(axis=(0, 1)) - reference.mean(axis=(0, 1))).max() < 0.5


def test_colour_bars_matrix_and_range() -> None:
    """h264_bt709_full_range.mp4 is a colour-bar chart: per-bar colours tell matrix and range apart."""
    path = media("h264_bt709_full_range.mp4")
    frame, stream = first_frame(path)
    ours = np.asarray(render_frame(frame, RenderOptions(), stream=stream), dtype=np.float64)
    bars = [ours[400:700, x - 30 : x + 30].mean(axis=(0, 1)) for x in range(107, 1280, 213)]

    def bars_of(vf: str) -> list[np.ndarray]:
        ref = ffmpeg_png(path, "-vf", f"scale={vf}:in_chroma_loc=left:flags=bicubic+accurate_rnd,format=rgb24")
        ref = ref.astype(np.float64)
        return [ref[400:700, x - 30 : x + 30].mean(axis=(0, 1)) for x in range(107, 1280, 213)]

    right = bars_of("in_color_matrix=bt709:in_range=full")
    assert max(np.abs(a - b).max() for a, b in zip(bars, right, strict=True)) < 1.5
    wrong_matrix = bars_of("in_color_matrix=bt601:in_range=full")
    assert max(np.abs(a - b).max() for a, b in zip(bars, wrong_matrix, strict=True)) > 8
    # yuvj420p is full range by definition (ffmpeg ignores in_range=tv for it), so read the same
    # samples as limited range through our own pipeline to show the check would catch it.
    misread = _retagged(frame, 1, ColorRange.MPEG)
    wrong = np.asarray(render_frame(misread, RenderOptions(), stream=stream), dtype=np.float64)
    wrong_bars = [wrong[400:700, x - 30 : x + 30].mean(axis=(0, 1)) for x in range(107, 1280, 213)]
    assert max(np.abs(a - b).max() for a, b in zip(wrong_bars, right, strict=True)) > 8


def test_limited_range_mean_colour() -> None:
    """h264_bt601.mov is limited range: reading it as full range would shift the mean by ~5 codes."""
    path = media("h264_bt601.mov")
    frame, stream = first_frame(path)
    mean = np.asarray(render_frame(frame, RenderOptions(), stream=stream), dtype=np.float64).mean(axis=(0, 1))
    args = "in_color_matrix=bt601:in_chroma_loc=left:flags=bicubic+accurate_rnd+full_chroma_int,format=rgb24"
    right = ffmpeg_png(path, "-vf", f"scale=in_range=tv:{args}").mean(axis=(0, 1))
    wrong = ffmpeg_png(path, "-vf", f"scale=in_range=full:{args}").mean(axis=(0, 1))
    assert np.abs(mean - right).max() < 0.5
    assert np.abs(mean - wrong).max() > 3


def test_odd_dimensions_scale() -> None:
    frame, stream = first_frame(media("vp9_odd_dimensions_161x121.webm"))
    assert render_frame(frame, RenderOptions(), stream=stream).size == (161, 121)
    assert render_frame(frame, RenderOptions(width=80), stream=stream).size == (80, 60)
    assert render_frame(frame, RenderOptions(width=101, height=101, fit="cover"), stream=stream).size == (101, 101)


# --- HDR -------------------------------------------------------------------------------------------


def _hdr_frame(signal: np.ndarray, transfer: str) -> av.VideoFrame:
    """A yuv420p10le limited-range BT.2020 frame with neutral chroma and luma = ``signal`` (0..1)."""
    h, w = signal.shape
    planes = np.full((h * 3 // 2, w), 512, dtype=np.uint16)
    planes[:h] = np.round(64 + signal * 876).astype(np.uint16)
    frame = av.VideoFrame.from_ndarray(planes, format="yuv420p10le")
    frame.colorspace = 9  # BT.2020 NCL
    frame.color_range = ColorRange.MPEG
    frame.color_primaries = ColorPrimaries.BT2020
    frame.color_trc = ColorTrc.SMPTE2084 if transfer == "pq" else ColorTrc.ARIB_STD_B67
    return frame


def _grey_level(nits: float, transfer: str) -> int:
    signal = float(colour.pq_inverse_eotf(nits)) if transfer == "pq" else {26.0: 0.38, 203.0: 0.75}[nits]
    image = render_frame(_hdr_frame(np.full((16, 16), signal), transfer), RenderOptions())
    return int(np.asarray(image)[8, 8, 1])


def test_hdr_grey_levels() -> None:
    """BT.2408 levels: 18% grey is 26 nits (PQ) or 38% signal (HLG); below the EETF knee it keeps its
    light level, 26/203 of SDR white -> sRGB 100. The 1000 nit peak becomes SDR white."""
    expected_grey = round(255 * float(colour.srgb_encode(26.0 / 203.0)))
    assert expected_grey == 100
    assert abs(_grey_level(26.0, "pq") - expected_grey) <= 2
    assert abs(_grey_level(26.0, "hlg") - expected_grey) <= 2
    assert _grey_level(1000.0, "pq") >= 253
    assert _grey_level(10000.0, "pq") == 255  # above the peak: clipped, not wrapped
    # HDR reference white (203 nits) sits above the knee and is rolled off a little, not clipped.
    assert 200 < _grey_level(203.0, "pq") < 250
    assert 200 < _grey_level(203.0, "hlg") < 250


def test_hdr_ramp_is_monotonic_and_native_skips_tone_mapping() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 256), (8, 1))
    for transfer in ("pq", "hlg"):
        frame = _hdr_frame(ramp, transfer)
        sdr = np.asarray(render_frame(frame, RenderOptions()), dtype=int)[4, :, 1]
        assert np.all(np.diff(sdr) >= 0)
        assert sdr[0] <= 1 and sdr[-1] >= 253
        native = np.asarray(render_frame(frame, RenderOptions(dynamic_range="native")), dtype=int)[4, :, 1]
        assert np.abs(native - np.round(np.linspace(0, 255, 256))).max() <= 2  # plain signal, no curve


def test_hdr_saturated_colour_keeps_its_hue() -> None:
    """Pure BT.2020 red is outside BT.709: the gamut clip must keep it red, not shift it orange/pink."""
    nonlinear = float(colour.pq_inverse_eotf(100.0))
    rgb16 = np.zeros((4, 4, 3), dtype=np.uint16)
    rgb16[..., 0] = round(nonlinear * 65535)
    out = colour.tone_map_to_sdr(rgb16, transfer="pq", color_primaries=int(ColorPrimaries.BT2020), peak_nits=1000.0)
    hue, saturation, _ = (int(v) for v in np.asarray(Image.fromarray(out).convert("HSV"))[0, 0])
    # BT.2020 red lies a little towards magenta of BT.709 red, seen from D65: a hue just under 360.
    assert min(hue, 256 - hue) < 256 * 20 / 360
    assert saturation > 200
    r, g, b = (int(v) for v in out[0, 0])
    assert r > 180 and r > 3 * max(g, b)


def test_hdr_peak_from_side_data() -> None:
    mdm = bytearray(88)
    struct.pack_into("<ii", mdm, 72, 4000 * 10000, 10000)  # max luminance 4000 nits
    struct.pack_into("<i", mdm, 84, 1)
    assert colour.hdr_peak_nits({11: bytes(mdm)}, "pq") == 4000.0
    assert colour.hdr_peak_nits({11: bytes(mdm), 14: struct.pack("<II", 1500, 400)}, "pq") == 1500.0
    assert colour.hdr_peak_nits({}, "pq") == 1000.0
    assert colour.hdr_peak_nits({14: struct.pack("<II", 1500, 400)}, "hlg") == 1000.0


def _look(image: Image.Image) -> tuple[float, float, float, float]:
    """(mean saturation, luma std-dev, median luma, 1st-percentile luma), 0..255."""
    saturation = np.asarray(image.convert("HSV"), dtype=np.float64)[..., 1].mean()
    luma = np.asarray(image.convert("L"), dtype=np.float64)
    return saturation, luma.std(), float(np.median(luma)), float(np.percentile(luma, 1))


@pytest.mark.parametrize(
    "name", ["av1_hdr10_pq_portrait.mp4", "hevc_hlg10.mp4", "iphone_hevc_hlg_editlist_rot90_opengop.mp4"]
)
def test_hdr_tone_mapping_is_not_washed_out(name: str) -> None:
    frame, stream = first_frame(media(name))
    assert colour.hdr_transfer(frame.color_trc) is not None
    native = render_frame(frame, RenderOptions(dynamic_range="native"), stream=stream)
    sdr = render_frame(frame, RenderOptions(), stream=stream)
    assert sdr.size == native.size
    sat_n, std_n, _, p1_n = _look(native)
    sat_s, std_s, median_s, p1_s = _look(sdr)
    assert sat_s > 1.3 * sat_n  # colour comes back
    assert std_s > 1.1 * std_n  # contrast comes back
    assert p1_s <= p1_n  # blacks are not lifted
    assert 60 < median_s < 220  # mid-tones stay mid-tones
    assert np.percentile(np.asarray(sdr.convert("L")), 99.5) >= 240  # highlights reach white


@pytest.mark.parametrize(("transfer", "peak"), [("hlg", 1000.0), ("pq", 4000.0), ("pq", 203.0)])
def test_hdr_tone_mapping_in_blocks_and_threads_is_the_whole_picture_at_once(
    transfer: colour.Transfer, peak: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tone mapping runs in blocks of pixels, on helper threads when it may: the EETF's table
    spans the brightest pixel of the whole picture (here in the last block), so every block must
    come out exactly as the picture mapped in one piece."""
    rng = np.random.default_rng(7)
    rgb16 = (rng.random((240, 500, 3)) * 40000).astype(np.uint16)  # 120,000 pixels: four blocks
    rgb16[-1, -1] = 65535  # the peak, in the last block only
    kwargs = {"transfer": transfer, "color_primaries": int(ColorPrimaries.BT2020), "peak_nits": peak}
    in_blocks = colour.tone_map_to_sdr(rgb16, **kwargs)
    on_two_threads = colour.tone_map_to_sdr(rgb16, threads=2, **kwargs)
    monkeypatch.setattr(colour, "_BLOCK_PIXELS", 10**9)
    whole = colour.tone_map_to_sdr(rgb16, **kwargs)
    assert np.array_equal(in_blocks, whole)
    assert np.array_equal(on_two_threads, whole)


def test_the_rgb_path_gives_the_same_bytes_on_any_number_of_threads() -> None:
    """A grab renders on two cores only while the pool is idle: a scaled picture (swscale's slices) or
    a tone-mapped HDR one (blocks on helper threads) must come out byte for byte as on one core, or
    one ETag would name two images."""
    from app.engine.encode import render_and_encode
    from app.engine.options import EncodeOptions

    ramp = np.tile(np.linspace(0.0, 1.0, 640), (360, 1))
    ramp[100:200, 200:400] = 0.95  # a highlight for the EETF
    cases = [(_hdr_frame(ramp, transfer), RenderOptions()) for transfer in ("pq", "hlg")]
    sdr = av.VideoFrame.from_ndarray(np.random.default_rng(3).integers(0, 256, (360, 640, 3), dtype=np.uint8), "rgb24")
    sdr = sdr.reformat(format="yuv420p")
    cases += [(sdr, RenderOptions(width=301)), (cases[0][0], RenderOptions(width=333, height=77, fit="cover"))]
    for frame, options in cases:
        outputs = {
            threads: render_and_encode(frame, options, EncodeOptions(format="png"), threads=threads)[0]
            for threads in (1, 2, 3)
        }
        assert outputs[1] == outputs[2] == outputs[3], options
