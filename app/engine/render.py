"""Turn one decoded ``av.VideoFrame`` into a ``PIL.Image`` the way a player would show it.

Order of operations (the order matters, and is AVAssetImageGenerator's):

1. clean aperture crop (stored pixels), when one is known;
2. square pixels (``aperture`` production/clean: display width = round(width * SAR));
3. orientation from the display matrix (``rotate=auto``), rotations *and* mirroring;
4. size: ``width``/``height`` are a maximum box; ``fit`` decides what happens inside it.

Colour conversion (matrix, range, chroma upsampling, HDR tone mapping) is in ``colour``; swscale does
the conversion and, on the common path, the resampling of steps 2 and 4 in the same pass (cheaper than
converting at full size and resizing in Pillow, and cheaper than a Pillow resize alone). Orientation is
applied afterwards with a lossless Pillow transpose.

About the apertures in FFmpeg terms: libavcodec already applies the *bitstream* cropping (H.264/HEVC
SPS conformance window, AV1 render size...) when decoding (``apply_cropping`` defaults to on), so the
frame PyAV hands over never includes those padding rows; "encoded" here therefore means "stored pixels,
no SAR correction". A container-level clean aperture (MP4/MOV ``clap``, Matroska PixelCrop) is exported
by FFmpeg 7.1+ only as stream side data (AV_PKT_DATA_FRAME_CROPPING) and is *not* applied by the
decoder; PyAV 18.1 has no way to read a stream's coded side data, so ``render_frame`` takes it as the
``clean_aperture`` argument from whoever can read it. Without one, clean and production are identical.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypedDict, Unpack

import av
import numpy as np
from av.video.reformatter import ColorRange, Interpolation
from PIL import Image, ImageColor

import app.engine.colour as colour
from app.engine.errors import EngineError, InvalidParameter
from app.engine.options import RenderOptions

DEFAULT_MAX_OUTPUT_PIXELS = 7680 * 4320

# Bicubic with accurate rounding and full horizontal chroma interpolation: the same result as the
# ffmpeg CLI's ``scale=flags=bicubic+accurate_rnd+full_chroma_int`` (bit-identical in tests). swscale's
# default (bilinear, fast path) is much faster at full size but shares one chroma sample between two
# output pixels, which smears coloured edges (30 dB PSNR on colour bars against 49 dB).
SCALE_FLAGS = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
# Same size, 8-bit out: the filter only upsamples chroma, where bilinear matches bicubic's colours
# (the colour tests hold) in less time.
SAME_SIZE_FLAGS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
_RESAMPLE = Image.Resampling.BICUBIC

# Sample aspect ratios outside this range are treated as damaged metadata and ignored.
_SAR_MIN = Fraction(1, 10)
_SAR_MAX = Fraction(10)

_AV_FRAME_DATA_DISPLAYMATRIX = 6

_VALID = {
    "rotate": ("auto", "none"),
    "aperture": ("clean", "production", "encoded"),
    "fit": ("contain", "cover", "fill", "pad"),
    "dynamic_range": ("sdr", "native"),
}


# --- orientation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameMetadata:
    """What a frame's side data says about showing it: the display matrix (see ``display_matrix``)
    and every entry's raw bytes by AVFrameSideDataType number (HDR mastering display, light level).

    Read it once per asset and pass it to ``plan_frame`` / ``render_frame``: decoders attach the same
    stream side data to every frame, and PyAV 18.1's side-data wrappers form a reference cycle with
    the frame, which keeps the frame's buffers (MiBs) alive until the garbage collector's next full
    pass: read per grab, a decoder worker grew by hundreds of MiB over a few thousand grabs.
    """

    matrix: tuple[int, ...] | None
    side_data: dict[int, bytes]

    @classmethod
    def of(cls, frame: av.VideoFrame) -> FrameMetadata:
        side_data = colour.side_data_bytes(frame)
        raw = side_data.get(_AV_FRAME_DATA_DISPLAYMATRIX)
        if raw is not None and len(raw) >= 36:
            return cls(tuple(struct.unpack("=9i", raw[:36])), side_data)
        # None, or PyAV could not wrap the entries (see display_matrix): the rotation is still there
        return cls(_matrix_from_rotation(frame), side_data)


def display_matrix(frame: av.VideoFrame, stream: Any = None) -> tuple[int, ...] | None:
    """The frame's 3x3 display matrix as 9 int32 (a, b, u, c, d, v, x, y, w; a-d, x, y in 16.16
    fixed point, u, v, w in 2.30), or None when it has none.

    FFmpeg (7+) decoders copy the stream's display matrix (MP4/MOV ``tkhd``, Matroska projection...)
    onto every frame as DISPLAYMATRIX side data, so the frame is the place to read it; ``stream`` is
    accepted for callers that have one but PyAV 18.1 cannot read a stream's coded side data anyway.
    PyAV raises while wrapping side data types newer than its enum (MV-HEVC frames carry type 29):
    then only ``frame.rotation`` (read by PyAV straight from the raw side data) is left, which loses
    any mirroring but keeps the rotation. (Reads the side data: see ``FrameMetadata`` on its cost.)
    """
    del stream  # see docstring
    return FrameMetadata.of(frame).matrix


def _matrix_from_rotation(frame: av.VideoFrame) -> tuple[int, ...] | None:
    try:
        ccw = int(frame.rotation)  # degrees counter-clockwise, FFmpeg's convention
    except Exception:
        return None
    if ccw % 360 == 0:
        return None
    return _rotation_matrix(-ccw)


def _rotation_matrix(degrees_clockwise: int) -> tuple[int, ...]:
    """The display matrix FFmpeg's av_display_rotation_set writes for a clockwise rotation."""
    one = 1 << 16
    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees_clockwise % 360]
    return (cos * one, sin * one, 0, -sin * one, cos * one, 0, 0, 0, 1 << 30)


# Each orientation is "mirror left-right (if mirrored), then turn clockwise by the angle".
_TRANSPOSES: dict[tuple[int, bool], Image.Transpose | None] = {
    (0, False): None,
    (90, False): Image.Transpose.ROTATE_270,  # Pillow's ROTATE_n turn counter-clockwise
    (180, False): Image.Transpose.ROTATE_180,
    (270, False): Image.Transpose.ROTATE_90,
    (0, True): Image.Transpose.FLIP_LEFT_RIGHT,
    (90, True): Image.Transpose.TRANSVERSE,
    (180, True): Image.Transpose.FLIP_TOP_BOTTOM,
    (270, True): Image.Transpose.TRANSPOSE,
}


def orientation_from_matrix(matrix: Sequence[int] | None) -> tuple[int, bool]:
    """(rotation in degrees clockwise, mirrored) for a display matrix: the picture is mirrored
    left-right first when ``mirrored``, then turned clockwise by the rotation.

    The whole 2x2 part is read, so a matrix with a negative determinant comes out mirrored
    (``[0, 1; 1, 0]``, a transpose, is (270, True): what ``ffmpeg`` autorotate shows, where
    ``av_display_rotation_get`` alone would report a plain 90 degree turn). Scale is ignored, and an
    angle that is not a multiple of 90 degrees snaps to the nearest one.
    """
    if matrix is None or len(matrix) < 5:
        return 0, False
    a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
    if abs(a) + abs(d) == 0 and abs(b) + abs(c) == 0:
        return 0, False
    det = a * d - b * c
    mirrored = det < 0
    # Undo the mirror (negate the x row) to get a pure rotation, then snap its angle.
    if mirrored:
        a, b = -a, -b
    angle = math.degrees(math.atan2(b, a))  # clockwise in image coordinates (y down)
    rotation = round(angle / 90.0) % 4 * 90
    return rotation, mirrored


def transpose_for(rotation: int, mirrored: bool) -> Image.Transpose | None:
    """The Pillow transpose that applies an orientation from ``orientation_from_matrix``."""
    return _TRANSPOSES[(rotation % 360, mirrored)]


# --- pixel aspect --------------------------------------------------------------------------------


def _as_sar(value: Any) -> Fraction | None:
    if value is None:
        return None
    try:
        sar = Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if sar <= 0 or not (_SAR_MIN <= sar <= _SAR_MAX):
        return None
    return sar


def sample_aspect_ratio(frame: av.VideoFrame, stream: Any = None) -> Fraction:
    """The pixel aspect ratio to show the frame with; 1 when unknown (0/1, 0/0, None) or absurd.

    Same precedence as FFmpeg's av_guess_sample_aspect_ratio (what the ffmpeg CLI uses): the
    container's (MP4 ``pasp``...) first, via ``stream.sample_aspect_ratio``, then the frame's (PyAV 18.1
    does not expose it yet; read when it does), then the codec context's (H.264 VUI...).
    """
    sources = (
        stream,
        frame,
        getattr(stream, "codec_context", None) if stream is not None else None,
    )
    for source in sources:
        if source is None:
            continue
        try:
            sar = _as_sar(getattr(source, "sample_aspect_ratio", None))
        except Exception:
            sar = None
        if sar is not None:
            return sar
    return Fraction(1)


# --- size ----------------------------------------------------------------------------------------


def _round(value: Fraction) -> int:
    return max(1, math.floor(value + Fraction(1, 2)))


@dataclass(frozen=True)
class Layout:
    """How a stored picture becomes the output, computed before any pixel is touched.

    ``scale_to`` (stored orientation) is what swscale resamples to; then ``transpose``; then, in display
    orientation, an optional Pillow ``resize_to`` of the region ``resize_box`` (cover when it has to
    enlarge: the region is cut out first so nothing larger than the box is ever made), an optional
    ``crop`` box, and an optional ``canvas`` (pad) the picture is centred on.
    """

    scale_to: tuple[int, int]
    transpose: Image.Transpose | None
    resize_to: tuple[int, int] | None
    resize_box: tuple[float, float, float, float] | None
    crop: tuple[int, int, int, int] | None
    canvas: tuple[int, int] | None
    size: tuple[int, int]


def _check_dimension(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidParameter(f"{name} must be a positive integer, got {value!r}", parameter=name)
    return value


def plan_layout(
    width: int,
    height: int,
    *,
    sar: Fraction,
    rotation: int,
    mirrored: bool,
    options: RenderOptions,
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
) -> Layout:
    """The geometry for a ``width`` x ``height`` stored picture (after any clean-aperture crop)."""
    box_w = _check_dimension("width", options.width)
    box_h = _check_dimension("height", options.height)
    if width <= 0 or height <= 0:
        raise EngineError("decode_failed", f"frame has no pixels ({width}x{height})")

    stored_w, stored_h = _round(width * sar), height  # square pixels, stored orientation
    swapped = rotation % 180 == 90
    nat_w, nat_h = (stored_h, stored_w) if swapped else (stored_w, stored_h)  # display orientation

    fit = options.fit
    if fit in ("cover", "pad") and (box_w is None or box_h is None):
        fit = "contain"  # neither can fill a box with an open side

    resize_to: tuple[int, int] | None = None
    resize_box: tuple[float, float, float, float] | None = None
    crop: tuple[int, int, int, int] | None = None
    canvas: tuple[int, int] | None = None

    if fit == "fill":
        if box_w is not None and box_h is not None:
            content = (box_w, box_h)
        elif box_w is not None:
            content = (box_w, _round(Fraction(nat_h * box_w, nat_w)))
        elif box_h is not None:
            content = (_round(Fraction(nat_w * box_h, nat_h)), box_h)
        else:
            content = (nat_w, nat_h)
        size = content
    elif fit == "cover":
        assert box_w is not None and box_h is not None
        scale = max(Fraction(box_w, nat_w), Fraction(box_h, nat_h))
        size = (box_w, box_h)
        if scale <= 1:
            content = (max(box_w, _round(nat_w * scale)), max(box_h, _round(nat_h * scale)))
            left, top = (content[0] - box_w) // 2, (content[1] - box_h) // 2
            crop = (left, top, left + box_w, top + box_h)
        else:
            # Enlarging: cut the visible region out of the natural-size picture and resample only it.
            content = (nat_w, nat_h)
            region_w, region_h = float(box_w / scale), float(box_h / scale)
            x0, y0 = (nat_w - region_w) / 2, (nat_h - region_h) / 2
            resize_to = size
            resize_box = (x0, y0, x0 + region_w, y0 + region_h)
    else:  # contain, pad: fit inside, keep aspect, never enlarge
        scale = Fraction(1)
        if box_w is not None:
            scale = min(scale, Fraction(box_w, nat_w))
        if box_h is not None:
            scale = min(scale, Fraction(box_h, nat_h))
        content = (_round(nat_w * scale), _round(nat_h * scale))
        if fit == "pad":
            assert box_w is not None and box_h is not None
            canvas = (box_w, box_h)
            size = canvas
        else:
            size = content

    for w, h in (size, content):
        if w * h > max_output_pixels:
            raise InvalidParameter(
                f"the picture would be {w}x{h}, over the limit of {max_output_pixels} pixels;"
                " ask for a smaller width/height",
                parameter="width" if box_w is not None else "height",
            )

    scale_to = (content[1], content[0]) if swapped else content
    return Layout(
        scale_to=scale_to,
        transpose=transpose_for(rotation, mirrored),
        resize_to=resize_to,
        resize_box=resize_box,
        crop=crop,
        canvas=canvas,
        size=size,
    )


def parse_background(value: str) -> tuple[int, int, int]:
    """A CSS-style colour (name, #rgb, #rrggbb, rgb(...), hsl(...)) as an RGB triple."""
    try:
        rgb = ImageColor.getrgb(value)
    except (ValueError, AttributeError, TypeError) as exc:
        raise InvalidParameter(
            f"background must be a colour name or #rrggbb, got {value!r}", parameter="background"
        ) from exc
    # Pillow passes channels through unchecked (rgb(999,0,0), hsl(0,999%,50%)): past a byte they wrap or
    # overflow when the canvas is filled.
    if not all(0 <= channel <= 255 for channel in rgb):
        raise InvalidParameter(f"background: each channel must be 0 to 255, got {value!r}", parameter="background")
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


# --- colour conversion ---------------------------------------------------------------------------


def has_alpha(frame: av.VideoFrame) -> bool:
    """Whether the frame's pixels carry transparency (yuva*, rgba, gbrap, ya*...)."""
    return any(component.is_alpha for component in frame.format.components)


def _reformat(frame: av.VideoFrame, size: tuple[int, int] | None, pixel_format: str, threads: int) -> np.ndarray:
    """swscale the frame to full-range RGB(A) ``pixel_format`` at ``size`` (or its own size), with the
    frame's own YUV matrix and range."""
    fmt = frame.format.name
    matrix = colour.yuv_matrix(int(frame.colorspace), frame.width, frame.height)
    full = colour.is_full_range(int(frame.color_range), fmt)
    width, height = size if size is not None else (frame.width, frame.height)
    try:
        converted = frame.reformat(
            width=width,
            height=height,
            format=pixel_format,
            src_colorspace=matrix,
            dst_colorspace=matrix,
            src_color_range=ColorRange.JPEG if full else ColorRange.MPEG,
            dst_color_range=ColorRange.JPEG,
            interpolation=SCALE_FLAGS
            if pixel_format not in ("rgb24", "rgba") or (width, height) != (frame.width, frame.height)
            else SAME_SIZE_FLAGS,
            threads=threads,  # >1 only while other workers are idle (a busy pool gives each task one core)
        )
        return np.ascontiguousarray(converted.to_ndarray())
    except (av.FFmpegError, ValueError) as exc:
        raise EngineError("unsupported_media", f"cannot convert {fmt} pixels to RGB: {exc}") from exc


def _to_rgb(
    frame: av.VideoFrame,
    size: tuple[int, int] | None,
    dynamic_range: str,
    side_data: dict[int, bytes],
    threads: int = 1,
) -> Image.Image:
    """swscale the frame to RGB, or RGBA where it has alpha (at ``size``, or its own size), tone-mapping
    HDR when asked to."""
    alpha = has_alpha(frame)
    transfer = colour.hdr_transfer(int(frame.color_trc)) if dynamic_range == "sdr" else None
    if transfer is None:
        return Image.fromarray(
            _reformat(frame, size, "rgba" if alpha else "rgb24", threads), "RGBA" if alpha else "RGB"
        )
    array = _reformat(frame, size, "rgba64le" if alpha else "rgb48le", threads)
    peak = colour.hdr_peak_nits(side_data, transfer)
    rgb = colour.tone_map_to_sdr(
        np.ascontiguousarray(array[:, :, :3]),
        transfer=transfer,
        color_primaries=int(frame.color_primaries),
        peak_nits=peak,
        threads=threads,
    )
    if not alpha:
        return Image.fromarray(rgb, "RGB")
    return Image.fromarray(np.dstack((rgb, (array[:, :, 3] >> 8).astype(np.uint8))), "RGBA")


def render_native_hdr(
    frame: av.VideoFrame,
    options: RenderOptions,
    *,
    plan: tuple[Layout, tuple[int, int, int, int] | None],
    threads: int = 1,
) -> np.ndarray:
    """An HDR (PQ / HLG) frame as it is: 16-bit full-range RGB (H x W x 3, or x 4 with alpha, uint16),
    still in the source's transfer and primaries, laid out per ``plan`` (from ``plan_frame``).

    Pillow has no 16-bit RGB mode, so each channel goes through the same steps as a 16-bit grey picture;
    ``fit=pad`` fills with ``background`` put into the source's transfer and primaries."""
    layout, region = plan
    pixel_format = "rgba64le" if has_alpha(frame) else "rgb48le"
    transfer = colour.hdr_transfer(int(frame.color_trc))
    assert transfer is not None
    fill = colour.sdr_colour_in_hdr(
        parse_background(options.background), transfer=transfer, color_primaries=int(frame.color_primaries)
    )
    array = _reformat(frame, layout.scale_to if region is None else None, pixel_format, threads)
    if region is None and (layout.transpose, layout.resize_to, layout.crop, layout.canvas) == (None,) * 4:
        return array  # nothing more to do: no copy per channel
    channels = []
    for index in range(array.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(array[:, :, index]))
        if region is not None:
            channel = _resized(channel.crop(region), layout.scale_to)
        channels.append(np.asarray(_laid_out(channel, layout, fill[index] if index < 3 else 65535)))
    return np.dstack(channels)


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, _RESAMPLE)


def _laid_out(image: Image.Image, layout: Layout, fill: float | tuple[int, ...]) -> Image.Image:
    """The steps after swscale: orientation, a resize of a region, a crop, a canvas filled with ``fill``."""
    if layout.transpose is not None:
        image = image.transpose(layout.transpose)
    if layout.resize_to is not None:
        image = image.resize(layout.resize_to, _RESAMPLE, box=layout.resize_box)
    if layout.crop is not None:
        image = image.crop(layout.crop)
    if layout.canvas is not None:
        canvas = Image.new(image.mode, layout.canvas, fill)
        canvas.paste(image, ((layout.canvas[0] - image.width) // 2, (layout.canvas[1] - image.height) // 2))
        image = canvas
    return image


def _clean_region(clean_aperture: Sequence[int], width: int, height: int) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) from AV_PKT_DATA_FRAME_CROPPING's (top, bottom, left, right)."""
    top, bottom, left, right = (int(v) for v in clean_aperture)
    if min(top, bottom, left, right) < 0 or left + right >= width or top + bottom >= height:
        return None  # nonsense metadata: show the whole picture rather than fail
    if top == bottom == left == right == 0:
        return None
    return (left, top, width - right, height - bottom)


class Planning(TypedDict, total=False):
    """What ``plan_frame`` takes besides the frame and the options (see there): ``render_frame`` passes it on."""

    stream: Any
    max_output_pixels: int
    clean_aperture: Sequence[int] | None
    metadata: FrameMetadata | None


def render_frame(
    frame: av.VideoFrame,
    options: RenderOptions,
    *,
    plan: tuple[Layout, tuple[int, int, int, int] | None] | None = None,
    threads: int = 1,
    **planning: Unpack[Planning],
) -> Image.Image:
    """The frame as an RGB picture (RGBA where the frame has alpha; ``fit=pad`` fills with an opaque
    ``background``), oriented, with square pixels, sized and tone-mapped per ``options``.

    ``stream`` (the frame's ``av.VideoStream``) supplies the pixel aspect ratio; its container must
    still be open (PyAV reads through it, and crashes the process on a closed one). ``clean_aperture`` is
    the container's clean aperture as (top, bottom, left, right) pixels to remove, the layout of
    AV_PKT_DATA_FRAME_CROPPING; it is used with ``aperture="clean"`` only. ``metadata``: the stream's
    side data, read once (default: from this frame); ``plan``: what ``plan_frame`` gave for the same
    arguments, if the caller has it already; ``threads``: cores swscale and HDR tone mapping may use. Raises
    ``EngineError`` ``invalid_parameter`` for bad options or an output over ``max_output_pixels``.
    """
    metadata = planning["metadata"] = planning.get("metadata") or FrameMetadata.of(frame)
    layout, region = plan or plan_frame(frame, options, **planning)
    if region is None:
        image = _to_rgb(frame, layout.scale_to, options.dynamic_range, metadata.side_data, threads)
    else:
        image = _to_rgb(frame, None, options.dynamic_range, metadata.side_data, threads).crop(region)
        image = _resized(image, layout.scale_to)
    background = parse_background(options.background)
    return _laid_out(image, layout, (*background, 255) if image.mode == "RGBA" else background)


def plan_frame(
    frame: av.VideoFrame,
    options: RenderOptions,
    *,
    stream: Any = None,
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
    clean_aperture: Sequence[int] | None = None,
    metadata: FrameMetadata | None = None,
) -> tuple[Layout, tuple[int, int, int, int] | None]:
    """Check ``options`` and plan the frame's geometry: the layout, and the clean-aperture region
    (left, top, right, bottom) of the stored picture to cut out first, or None for all of it.
    ``metadata`` as for ``render_frame``."""
    for name, allowed in _VALID.items():
        value = getattr(options, name)
        if value not in allowed:
            raise InvalidParameter(f"{name} must be one of {', '.join(allowed)}, got {value!r}", parameter=name)
    parse_background(options.background)  # checked even when unused: typos surface

    rotation, mirrored = (0, False)
    if options.rotate == "auto":
        matrix = metadata.matrix if metadata is not None else display_matrix(frame, stream)
        rotation, mirrored = orientation_from_matrix(matrix)
    sar = Fraction(1) if options.aperture == "encoded" else sample_aspect_ratio(frame, stream)
    region = None
    if options.aperture == "clean" and clean_aperture is not None:
        region = _clean_region(clean_aperture, frame.width, frame.height)
    src_w, src_h = (region[2] - region[0], region[3] - region[1]) if region else (frame.width, frame.height)
    layout = plan_layout(
        src_w,
        src_h,
        sar=sar,
        rotation=rotation,
        mirrored=mirrored,
        options=options,
        max_output_pixels=max_output_pixels,
    )
    return layout, region
