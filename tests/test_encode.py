"""encode_image and negotiate_format."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from app.engine.encode import DEFAULT_QUALITY, encode_image, negotiate_format
from app.engine.errors import EngineError
from app.engine.options import EncodeOptions

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"

SIGNATURES = {
    "jpeg": lambda b: b[:3] == b"\xff\xd8\xff",
    "png": lambda b: b[:8] == b"\x89PNG\r\n\x1a\n",
    "webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
    "avif": lambda b: b[4:8] == b"ftyp" and b"avif" in b[8:32],
}


def picture(width: int = 320, height: int = 240) -> Image.Image:
    """A smooth gradient with some detail: compresses like a video frame, not like noise."""
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    b = ((np.sin(x / 7.0) * np.cos(y / 5.0) + 1) * 127).astype(np.uint8)
    return Image.fromarray(np.stack([r, g, b], axis=2), "RGB")


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif"])
def test_each_format_round_trips(fmt: Any) -> None:
    image = picture()
    data = encode_image(image, EncodeOptions(format=fmt))
    assert SIGNATURES[fmt](data)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    assert decoded.size == image.size
    a = np.asarray(decoded.convert("RGB"), dtype=np.float64)
    mse = np.mean((a - np.asarray(image, dtype=np.float64)) ** 2)
    if fmt == "png":
        assert mse == 0
    else:
        assert 10 * np.log10(255**2 / mse) > 30


def test_jpeg_defaults() -> None:
    data = encode_image(picture(), EncodeOptions(format="jpeg"))
    decoded = Image.open(io.BytesIO(data))
    assert isinstance(decoded, JpegImagePlugin.JpegImageFile)
    assert JpegImagePlugin.get_sampling(decoded) == 2  # 4:2:0
    assert "progression" not in decoded.info
    assert DEFAULT_QUALITY["jpeg"] == 85


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_quality_changes_size(fmt: Any) -> None:
    image = picture(640, 480)
    low = encode_image(image, EncodeOptions(format=fmt, quality=10))
    high = encode_image(image, EncodeOptions(format=fmt, quality=95))
    assert len(low) < len(high)


@pytest.mark.parametrize(
    ("fmt", "field", "fast", "slow"), [("webp", "webp_method", 0, 6), ("avif", "avif_speed", 10, 6)]
)
def test_encoder_effort_reaches_the_encoder(fmt: Any, field: str, fast: int, slow: int) -> None:
    """The effort knobs change the encode (and each result decodes); the default is the documented one."""
    image = picture(320, 240)
    default = encode_image(image, EncodeOptions(format=fmt))
    quick = encode_image(image, EncodeOptions(format=fmt, **{field: fast}))
    thorough = encode_image(image, EncodeOptions(format=fmt, **{field: slow}))
    assert quick != thorough
    assert default == encode_image(image, EncodeOptions(format=fmt, **{field: getattr(EncodeOptions(), field)}))
    for data in (quick, thorough):
        assert Image.open(io.BytesIO(data)).size == (320, 240)


@pytest.mark.parametrize("quality", [0, 101, -5, 1.5, True, "80"])
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_bad_quality(fmt: Any, quality: Any) -> None:
    with pytest.raises(EngineError) as info:
        encode_image(picture(16, 16), EncodeOptions(format=fmt, quality=quality))
    assert info.value.code == "invalid_parameter"


@pytest.mark.parametrize("quality", [1, 100])
def test_quality_bounds_are_valid(quality: int) -> None:
    assert encode_image(picture(16, 16), EncodeOptions(format="jpeg", quality=quality))


def test_bad_format() -> None:
    with pytest.raises(EngineError) as info:
        encode_image(picture(16, 16), EncodeOptions(format="gif"))  # type: ignore[arg-type]
    assert info.value.code == "invalid_parameter"


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "I;16"])
def test_other_modes(mode: str) -> None:
    image = picture(32, 16).convert(mode) if mode != "I;16" else Image.new("I;16", (32, 16), 1000)
    for fmt in ("jpeg", "png", "webp"):
        data = encode_image(image, EncodeOptions(format=fmt))  # type: ignore[arg-type]
        assert Image.open(io.BytesIO(data)).size == (32, 16)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "jpeg"),
        ("", "jpeg"),
        ("*/*", "jpeg"),
        ("image/*", "jpeg"),
        ("image/png", "png"),
        ("image/webp", "webp"),
        ("IMAGE/WEBP", "webp"),
        ("image/avif", "avif"),
        # Chrome / Firefox / Safari <img> requests: JPEG, the fast one, where it is as welcome
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", "jpeg"),
        ("image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5", "jpeg"),
        (
            "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,image/*;q=0.8",
            "jpeg",
        ),
        ("image/avif,image/webp,*/*;q=0.8", "jpeg"),
        ("image/avif, image/jpeg;q=0.8", "avif"),  # JPEG named and ranked lower: taken at its word
        ("image/webp,*/*", "jpeg"),
        ("image/avif;q=0.5, image/webp", "webp"),
        ("image/webp;q=0.5, image/jpeg;q=0.9", "jpeg"),
        ("image/jpeg;q=0.9, image/png", "png"),
        ("image/*, image/jpeg;q=0", "png"),  # wildcard-only: most compatible first
        ("image/webp;q=0, */*", "jpeg"),
        ("image/*;q=0.1, image/webp;q=0.2", "jpeg"),
        ("image/webp, image/png;q=0.2", "webp"),
        ("text/html", "jpeg"),  # nothing acceptable: still a picture
        ("*/*;q=0", "jpeg"),
        ("image/webp;q=abc", "jpeg"),  # a broken q means "not acceptable"
        ("image/webp;q=2", "jpeg"),
        ("garbage;;;, ,", "jpeg"),
        ("image/webp ; q=0.7 , image/avif ; q=0.6", "webp"),
        ("image/webp;charset=x;q=1.0", "webp"),
    ],
)
def test_negotiate_format(header: str | None, expected: str) -> None:
    assert negotiate_format(header) == expected


@pytest.mark.parametrize(("mode", "size"), [("RGB", (641, 361)), ("L", (33, 17)), ("RGB", (1, 1))])
def test_png_is_lossless_in_every_mode_it_takes(mode: str, size: tuple[int, int]) -> None:
    """PNG goes through FFmpeg's encoder (Paeth prediction): every pixel comes back, odd sizes included."""
    image = picture(*size).convert(mode)
    data = encode_image(image, EncodeOptions(format="png"))
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == mode and decoded.size == size
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


@pytest.mark.parametrize("cores", [1, 2, 8])
def test_avif_bytes_do_not_depend_on_the_machines_cores(cores: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """aom's bitstream depends on its thread count, and Pillow's default is the core count: the ETag's
    promise (same options, same bytes) holds only with the threads fixed."""
    from PIL import AvifImagePlugin

    image = picture(320, 240)
    reference = encode_image(image, EncodeOptions(format="avif"))
    monkeypatch.setattr(AvifImagePlugin, "_get_default_max_threads", lambda: cores)
    assert encode_image(image, EncodeOptions(format="avif")) == reference
