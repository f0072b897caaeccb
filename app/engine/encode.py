"""Encode a rendered picture (JPEG / PNG / WebP / AVIF) and pick the format from an Accept header.

Settings favour latency: a frame grab is made once per request, so encoder effort that saves a few
percent of bytes is not worth its time (measurements: bench/README.md).
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np
from PIL import Image

import app.engine.hdrencode as hdrencode
import app.engine.yuvencode as yuvencode
from app.engine.colour import hdr_transfer
from app.engine.errors import InvalidParameter
from app.engine.options import CONTENT_TYPES, EncodeOptions, RenderOptions
from app.engine.render import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    FrameMetadata,
    parse_background,
    plan_frame,
    render_frame,
    render_native_hdr,
)

AVIF_THREADS = 2

DEFAULT_QUALITY: dict[str, int] = {
    "jpeg": 85,  # libjpeg-turbo, 4:2:0: visually clean, far smaller than q95
    "webp": 80,
    "avif": 60,  # AVIF's scale runs lower than JPEG's for the same look; 60 ~ JPEG 85
}

# Preference among formats a client accepts equally: the smallest files first. PNG is last because a
# lossless video frame is several times larger than any of the others for no visible gain.
_PREFERENCE = ("avif", "webp", "jpeg", "png")
_DEFAULT_FORMAT = "jpeg"
# A client that only says image/* or */* may predate WebP/AVIF: rank by how universal the format is.
_WILDCARD_ORDER = ("avif", "webp", "png", "jpeg")


def _quality(options: EncodeOptions) -> int | None:
    quality = options.quality
    if quality is None:
        return None
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InvalidParameter(f"quality must be an integer from 1 to 100, got {quality!r}", parameter="quality")
    return quality


def render_and_encode(
    frame: av.VideoFrame,
    render: RenderOptions,
    encode: EncodeOptions,
    *,
    stream: Any = None,
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
    clean_aperture: Sequence[int] | None = None,
    metadata: FrameMetadata | None = None,
    threads: int = 1,
) -> tuple[bytes, tuple[int, int], dict[str, float]]:
    """A decoded frame rendered per ``render`` and encoded per ``encode``: (data, (width, height),
    seconds spent in "render" and "encode"). ``threads``: cores the YUV paths and HDR tone mapping may use.

    A JPEG or a WebP is made straight from the frame's YUV planes where that gives the same picture
    (see ``yuvencode``: most requests, at a fraction of the cost); everything else goes through RGB.
    HDR with ``dynamic_range=native`` stays HDR, in 16 bits (see ``hdrencode``). A frame with alpha keeps
    it in PNG, WebP and AVIF; JPEG gets it flattened onto ``background``.
    ``metadata``: the stream's side data, read once per asset (see ``FrameMetadata``).
    """
    started = time.perf_counter()
    metadata = metadata or FrameMetadata.of(frame)
    layout, region = plan_frame(
        frame,
        render,
        stream=stream,
        max_output_pixels=max_output_pixels,
        clean_aperture=clean_aperture,
        metadata=metadata,
    )
    if render.dynamic_range == "native" and hdr_transfer(int(frame.color_trc)) is not None:
        _quality(encode)
        hdrencode.check_hdr_format(encode)  # before any pixel is made
        pixels = render_native_hdr(frame, render, plan=(layout, region), threads=threads)
        rendered = time.perf_counter()
        data = hdrencode.encode_hdr(
            pixels, encode, color_primaries=int(frame.color_primaries), color_trc=int(frame.color_trc)
        )
        return (
            data,
            (pixels.shape[1], pixels.shape[0]),
            {"render": rendered - started, "encode": time.perf_counter() - rendered},
        )
    if encode.format in ("jpeg", "webp") and yuvencode.can_encode(frame, layout, region, render.dynamic_range):
        quality = _quality(encode) or DEFAULT_QUALITY[encode.format]
        try:
            if encode.format == "jpeg":
                data, rendered = yuvencode.encode_jpeg(frame, layout, quality, threads=threads)
            else:
                data, rendered = yuvencode.encode_webp(frame, layout, quality, encode.webp_method, threads=threads)
            return data, layout.size, {"render": rendered - started, "encode": time.perf_counter() - rendered}
        except (av.FFmpegError, ValueError):
            pass  # a pixel format swscale or libjpeg will not take this way: the RGB path may still manage
    image = render_frame(frame, render, metadata=metadata, plan=(layout, region), threads=threads)
    if image.mode == "RGBA" and encode.format == "jpeg":
        opaque = Image.new("RGB", image.size, parse_background(render.background))
        opaque.paste(image, mask=image.getchannel("A"))
        image = opaque
    rendered = time.perf_counter()
    data = encode_image(image, encode)
    return data, image.size, {"render": rendered - started, "encode": time.perf_counter() - rendered}


def encode_image(image: Image.Image, options: EncodeOptions) -> bytes:
    """The picture encoded as ``options.format``. ``quality`` (1..100) applies to the lossy formats;
    PNG is lossless and ignores it (a valid value is still required)."""
    fmt = options.format
    if fmt not in CONTENT_TYPES:
        raise InvalidParameter(f"format must be one of {', '.join(CONTENT_TYPES)}, got {fmt!r}", parameter="format")
    quality = _quality(options)
    if image.mode not in ("RGB", "L", "RGBA") or (image.mode == "RGBA" and fmt == "jpeg"):
        image = image.convert("RGB")

    params: dict[str, Any]
    if fmt == "jpeg":
        # optimize=False: Huffman optimisation costs much more time than the few bytes it saves are worth.
        params = {"quality": quality or DEFAULT_QUALITY["jpeg"], "subsampling": "4:2:0", "optimize": False}
        pil_format = "JPEG"
    elif fmt == "png":
        return _png(image)
    elif fmt == "webp":
        params = {"quality": quality or DEFAULT_QUALITY["webp"], "method": options.webp_method}
        pil_format = "WEBP"
    else:
        # libavif (aom) through Pillow, on a fixed number of threads: aom's bitstream depends on it (and
        # Pillow's default is the machine's core count), while an ETag promises the same bytes on every
        # machine and under any load. Two: nearly twice as fast as one.
        params = {
            "quality": quality or DEFAULT_QUALITY["avif"],
            "speed": options.avif_speed,
            "subsampling": "4:2:0",
            "max_threads": AVIF_THREADS,
        }
        pil_format = "AVIF"

    buffer = io.BytesIO()
    image.save(buffer, pil_format, **params)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    """PNG (8-bit RGB, RGBA or grey) through FFmpeg's encoder: Paeth prediction on every row, zlib level 1
    (several times faster than the default 6). Faster than Pillow's level 1 on real frames (its
    adaptive filters cost as much as the compression) for about as many bytes."""
    pixels = np.asarray(image)
    frame = av.VideoFrame.from_ndarray(pixels, format={"RGB": "rgb24", "RGBA": "rgba"}.get(image.mode, "gray"))
    frame.pts = 0
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = image.width, image.height, frame.format.name
    codec.time_base = Fraction(1, 1)
    codec.options = {"pred": "paeth", "compression_level": "1"}
    return b"".join(bytes(packet) for packet in (*codec.encode(frame), *codec.encode(None)))


def _parse_accept(header: str) -> list[tuple[str, str, float]]:
    """[(type, subtype, q)] from an Accept header; malformed entries are skipped."""
    ranges: list[tuple[str, str, float]] = []
    for item in header.split(","):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        if "/" not in media:
            continue
        main, _, sub = media.partition("/")
        main, sub = main.strip(), sub.strip()
        if not main or not sub or (main == "*" and sub != "*"):
            continue
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also rejects NaN
                    q = 0.0
        ranges.append((main, sub, q))
    return ranges


def negotiate_format(accept_header: str | None) -> str:
    """Pick jpeg/png/webp/avif for an HTTP Accept header (RFC 9110 section 12.5.1).

    Each format gets the q of the most specific range that matches it (``image/webp`` over
    ``image/*`` over ``*/*``); q=0 means "not acceptable". JPEG comes first wherever a wildcard
    accepts it: browsers' default ``Accept`` headers list what they can show (AVIF, WebP, then
    ``image/*`` at a lower q), not what they would rather wait for, and a 4K AVIF or WebP takes
    several times as long to encode as the JPEG. A client that names ``image/jpeg`` itself is taken
    at its word. Otherwise the highest q wins; among equals JPEG, then a format the client named
    explicitly beats one it only reached through a wildcard, then the order is
    avif, webp, jpeg, png; among wildcard-only matches (``*/*``, ``image/*``) it is jpeg, png, webp,
    avif, since such a client may predate the newer formats. No header, or nothing acceptable, gives
    jpeg as well: a picture the client may not have asked for beats a 406 for a frame grab (the API
    layer may choose otherwise).
    """
    if not accept_header or not accept_header.strip():
        return _DEFAULT_FORMAT
    ranges = _parse_accept(accept_header)
    best: tuple[float, bool, int, int] | None = None
    choice = _DEFAULT_FORMAT
    for index, fmt in enumerate(_PREFERENCE):
        main, sub = CONTENT_TYPES[fmt].split("/")
        match: tuple[int, float] | None = None  # (specificity, q)
        for r_main, r_sub, q in ranges:
            if (r_main, r_sub) == (main, sub):
                specificity = 2
            elif r_main == main and r_sub == "*":
                specificity = 1
            elif r_main == "*" and r_sub == "*":
                specificity = 0
            else:
                continue
            if match is None or specificity > match[0] or (specificity == match[0] and q > match[1]):
                match = (specificity, q)
        if match is None or match[1] <= 0.0:
            continue
        explicit = 1 if match[0] == 2 else 0
        if fmt == "jpeg" and not explicit:
            return "jpeg"
        # Explicit matches follow _PREFERENCE; wildcard-only ones the most widely supported first.
        order = -index if explicit else _WILDCARD_ORDER.index(fmt)
        key = (match[1], fmt == "jpeg", explicit, order)
        if best is None or key > best:
            best, choice = key, fmt
    return choice
