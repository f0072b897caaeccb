"""Options for one grab, independent of how they arrived (query string, JSON body, CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

Rotate = Literal["auto", "none"]
Aperture = Literal["clean", "production", "encoded"]
Fit = Literal["contain", "cover", "fill", "pad"]
DynamicRange = Literal["sdr", "native"]
ImageFormat = Literal["jpeg", "png", "webp", "avif"]

CONTENT_TYPES: dict[str, str] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
}


@dataclass(frozen=True)
class RenderOptions:
    """How a decoded frame becomes a picture.

    ``width``/``height`` are a maximum size as in AVAssetImageGenerator.maximumSize: with
    ``fit=contain`` the picture fits inside, keeps its aspect and is never upscaled.
    """

    rotate: Rotate = "auto"
    aperture: Aperture = "clean"
    width: int | None = None
    height: int | None = None
    fit: Fit = "contain"
    background: str = "black"  # fill colour for fit=pad
    dynamic_range: DynamicRange = "sdr"


# Encoder effort, the deployment's choice (Settings), not the client's. Measured over the real-media
# corpus (bench/README; `make bench` sweeps both): WebP method 2 is much faster than libwebp's default
# 4 for a few percent more bytes; AVIF speed 9 would be faster than 8 but as large as WebP, and size is
# what AVIF is asked for.
DEFAULT_WEBP_METHOD = 2
DEFAULT_AVIF_SPEED = 8


@dataclass(frozen=True)
class EncodeOptions:
    format: ImageFormat = "jpeg"
    quality: int | None = None  # None: the format's sensible default
    webp_method: int = DEFAULT_WEBP_METHOD  # libwebp 0 (fastest) .. 6
    avif_speed: int = DEFAULT_AVIF_SPEED  # libavif 0 .. 10 (fastest)


@dataclass(frozen=True)
class GrabOptions:
    """Everything that decides which frame is chosen and how it is delivered.

    Tolerances are seconds; ``None`` means infinite. The default is exact (0, 0): unlike
    AVAssetImageGenerator, whose default tolerance is infinite.
    """

    tolerance_before: Fraction | None = Fraction(0)
    tolerance_after: Fraction | None = Fraction(0)
    stream: int | None = None  # index among the video streams; None picks the default one
    render: RenderOptions = field(default_factory=RenderOptions)
    encode: EncodeOptions = field(default_factory=EncodeOptions)


@dataclass(frozen=True)
class SourceLimits:
    """What a source may be before we decode it: each breach is refused with its own code."""

    max_pixels: int = 7680 * 4320  # 8K UHD: width x height of the video stream
    max_duration: Fraction = Fraction(24 * 3600)
    max_streams: int = 64
