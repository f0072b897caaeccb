"""JPEG and WebP straight from the decoder's YUV planes: the fast path for the most common requests.

Inside, a JPEG is YCbCr 4:2:0 with the BT.601 matrix at full range, and a (lossy) WebP is VP8's YCbCr
4:2:0, BT.601 at limited range. The general path (``render`` then ``encode``) converts the frame to
RGB, upsampling its chroma to every pixel, and the encoder converts that back to YCbCr and averages the
chroma down to 4:2:0 again: at 1080p most of the time after decoding goes into chroma detail the encoder
then throws away. Here the decoded planes are re-expressed as the format's YCbCr instead, and
libjpeg-turbo (simplejpeg) or libwebp (through FFmpeg) encodes them as they are.

The colour maths is the same linear map the RGB path makes, folded into one step: with the source's
matrix ``Ms`` (BT.709, BT.601, BT.2020... exactly as ``colour.yuv_matrix`` picks it) and range, a
decoder must get back ``RGB = Ms^-1 (Y, Pb, Pr)``, so we write ``(Y', Pb', Pr') = M601 Ms^-1 (Y, Pb,
Pr)`` at the format's range, one chroma sample per 2x2 block of luma. FFmpeg's ``colorspace`` filter
makes exactly that map (its YUV-to-YUV mode, in SIMD, when primaries and transfer stay as they are):
several times faster than the same map in numpy, and within half a code of the exact result.

Used when it gives the same picture: YUV without alpha at any depth or chroma layout (swscale brings it
to 8-bit 4:2:0), no HDR tone mapping, and a layout that is the frame at its own (even) size plus an optional
rotation/mirror (applied to the planes). Everything else (scaling, pad, cover crops, clean apertures,
HDR to SDR, other formats) takes the RGB path.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import simplejpeg
from av.filter import Graph
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image

import app.engine.colour as colour
from app.engine.parallel import in_parallel
from app.engine.render import SCALE_FLAGS, Layout

# The colorspace filter's names for the YUV matrices swscale knows (as ``colour.yuv_matrix`` picks them).
_FILTER_MATRIX: dict[int, str] = {
    int(Colorspace.ITU709): "bt709",
    int(Colorspace.ITU601): "smpte170m",
    int(Colorspace.FCC): "fcc",
    int(Colorspace.SMPTE240M): "smpte240m",
    int(Colorspace.BT2020): "bt2020ncl",
}
_BT601 = int(Colorspace.ITU601)  # the matrix of JFIF (full range) and of VP8 (limited range)

# Planar and semi-planar YUV formats the planes can come from (swscale brings them to yuv420p first).
_YUV_FAMILIES = ("yuv", "nv", "p0", "p2", "p4")  # yuv4xxp*, nv12/nv21/nv16..., p010/p016/p210/p410...

# What the colorspace filter converts as it is: 4:2:0 at 8, 10 and 12 bits (into 8: one rounding, where
# swscale's pass to 8 bits first would dither, then the filter round again, at several times the cost).
_FILTER_INPUTS = ("yuv420p", "yuv420p10le", "yuv420p12le")

_MIN_HALF_ROWS = 256  # a picture under two halves of this encodes whole (too quick to be worth a hand-off)


class _Conversion:
    """A filter graph that re-expresses 4:2:0 frames of one size, depth, matrix and range as 8-bit BT.601
    4:2:0 at full range (JFIF) or limited (VP8): all their rows, or ``rows`` ((first, count), both even).

    Only the matrix and range change: primaries and transfer are given as equal on both sides (and
    ``fast``), so the filter never goes through linear light and ignores what the frame is tagged with.
    """

    def __init__(
        self,
        width: int,
        height: int,
        pix_fmt: str,
        colorspace: int,
        full_range: bool,
        full_range_out: bool,
        threads: int,
        rows: tuple[int, int] | None,
    ) -> None:
        self.graph = Graph()
        source = self.graph.add_buffer(
            width=width, height=height, format=av.VideoFormat(pix_fmt), time_base=Fraction(1, 1)
        )
        if rows is not None:  # (the crop only moves the planes' pointers: no copy)
            crop = self.graph.add("crop", w=str(width), h=str(rows[1]), x="0", y=str(rows[0]), exact="1")
            source.link_to(crop)
            source = crop
        convert = self.graph.add(
            "colorspace",
            ispace=_FILTER_MATRIX[colorspace],
            irange="pc" if full_range else "tv",
            space="bt470bg",
            range="pc" if full_range_out else "tv",
            format="yuv420p",
            iprimaries="bt709",
            primaries="bt709",
            itrc="bt709",
            trc="bt709",
            fast="1",
            threads=str(threads),
        )
        sink = self.graph.add("buffersink")
        source.link_to(convert)
        convert.link_to(sink)
        self.graph.configure()

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        self.graph.push(frame)
        out = self.graph.pull()
        assert isinstance(out, av.VideoFrame)
        return out


_THREAD = threading.local()
_CONVERSIONS_KEPT = 6  # per thread: a worker mostly sees a few sizes over and over (halves are their own)


def bt601_frame(
    frame: av.VideoFrame,
    colorspace: int,
    full_range: bool,
    *,
    full_range_out: bool = True,
    threads: int = 1,
    rows: tuple[int, int] | None = None,
) -> av.VideoFrame:
    """A 4:2:0 ``frame`` (one of ``_FILTER_INPUTS``, in swscale's matrix ``colorspace`` and the given
    range), or its ``rows`` (first, count; both even), as 8-bit BT.601 4:2:0: JFIF's (full range) by
    default, VP8's with ``full_range_out=False``.

    Graphs are kept per thread (a graph serves one thread at a time), by size, format, matrix, ranges,
    threads and rows; one that fails is dropped, so that no frame of a failed call can come out of the
    next one."""
    conversions: OrderedDict[tuple[object, ...], _Conversion] | None = getattr(_THREAD, "conversions", None)
    if conversions is None:
        conversions = _THREAD.conversions = OrderedDict()
    key = (frame.width, frame.height, frame.format.name, colorspace, full_range, full_range_out, threads, rows)
    conversion = conversions.pop(key, None) or _Conversion(*key)
    out = conversion(frame)
    conversions[key] = conversion  # (kept only once it has worked)
    while len(conversions) > _CONVERSIONS_KEPT:
        conversions.popitem(last=False)
    return out


_PLANE_TRANSPOSES = {
    Image.Transpose.FLIP_LEFT_RIGHT: lambda p: p[:, ::-1],
    Image.Transpose.FLIP_TOP_BOTTOM: lambda p: p[::-1, :],
    Image.Transpose.ROTATE_90: lambda p: np.rot90(p, 1),  # Pillow's ROTATE_n turn counter-clockwise
    Image.Transpose.ROTATE_180: lambda p: p[::-1, ::-1],
    Image.Transpose.ROTATE_270: lambda p: np.rot90(p, -1),
    Image.Transpose.TRANSPOSE: lambda p: p.T,
    Image.Transpose.TRANSVERSE: lambda p: p[::-1, ::-1].T,
}


def _planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three planes of a yuv420p frame as uint8 views (no copy; line padding cut off)."""
    y, u, v = (
        np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        for plane in frame.planes[:3]
    )
    return y, u, v


def can_encode(frame: av.VideoFrame, layout: Layout, region: object, dynamic_range: str) -> bool:
    """Whether the planes (``encode_jpeg``, ``encode_webp``) give this frame and layout the picture the
    RGB path would."""
    fmt = frame.format
    return (
        # Same size only: scaled 4:2:0 planes clip out-of-gamut colours after averaging, where the RGB path
        # clips before (1-2 dB apart on saturated test patterns), and small pictures are cheap either way.
        layout.scale_to == (frame.width, frame.height)
        # Even sizes only: for an odd one swscale stretches ceil(w/2) chroma samples over w pixels,
        # JPEG sites them every two pixels; up to half a pixel apart at the right and bottom edges.
        and frame.width % 2 == 0
        and frame.height % 2 == 0
        and region is None
        and layout.resize_to is None
        and layout.crop is None
        and layout.canvas is None
        # planar or semi-planar YUV without alpha (swscale brings any layout or depth to yuv420p)
        and fmt.name.startswith(_YUV_FAMILIES)
        and not fmt.is_rgb
        and len(fmt.components) == 3
        and not (dynamic_range == "sdr" and colour.hdr_transfer(int(frame.color_trc)) is not None)
    )


@dataclass(frozen=True)
class _Source:
    """A frame ready for ``bt601_frame``: in one of ``_FILTER_INPUTS``, or already in the target's
    YCbCr (``identity``: BT.601 8-bit 4:2:0 at the target's range), whose planes go out as they are."""

    frame: av.VideoFrame
    colorspace: int
    full_range: bool
    full_range_out: bool  # the target: JFIF (full) or VP8 (limited)
    identity: bool

    def converted(self, *, threads: int = 1) -> av.VideoFrame:
        """The whole frame in the target's YCbCr, as yuv420p (or yuvj420p, when it already was)."""
        if self.identity:
            return self.frame
        return bt601_frame(
            self.frame, self.colorspace, self.full_range, full_range_out=self.full_range_out, threads=threads
        )

    def planes(
        self, *, threads: int = 1, rows: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The target's planes of the frame, or of its ``rows`` (first, count; both even)."""
        if rows is None:
            return _planes(self.converted(threads=threads))
        if not self.identity:
            return _planes(
                bt601_frame(
                    self.frame,
                    self.colorspace,
                    self.full_range,
                    full_range_out=self.full_range_out,
                    threads=threads,
                    rows=rows,
                )
            )
        first, count = rows
        y, u, v = _planes(self.frame)
        return y[first : first + count], u[first // 2 : (first + count) // 2], v[first // 2 : (first + count) // 2]


def _source(frame: av.VideoFrame, threads: int, *, full_range_out: bool = True) -> _Source:
    """Another chroma layout or pixel format becomes yuv420p in swscale, YUV to YUV; the matrix, range
    and depth change later, in ``bt601_frame``."""
    colorspace = int(colour.yuv_matrix(int(frame.colorspace), frame.width, frame.height))
    full = colour.is_full_range(int(frame.color_range), frame.format.name)
    identity = colorspace == _BT601 and full == full_range_out and frame.format.name in ("yuv420p", "yuvj420p")
    if frame.format.name not in _FILTER_INPUTS and not identity:
        color_range = ColorRange.JPEG if full else ColorRange.MPEG
        frame = frame.reformat(
            format="yuv420p",
            src_colorspace=colorspace,
            dst_colorspace=colorspace,
            src_color_range=color_range,
            dst_color_range=color_range,
            interpolation=SCALE_FLAGS,
            threads=threads,
        )
    return _Source(frame, colorspace, full, full_range_out, identity)


def jfif_frame_planes(
    frame: av.VideoFrame, layout: Layout, *, threads: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame as JFIF 4:2:0 planes per ``layout`` (check ``can_encode`` first). ``threads``: cores the
    conversion may use."""
    return _laid_out(_source(frame, threads).planes(threads=threads), layout)


def _laid_out(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray], layout: Layout
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, u, v = planes
    if layout.transpose is not None:
        turn = _PLANE_TRANSPOSES[layout.transpose]
        y, u, v = (np.ascontiguousarray(turn(plane)) for plane in (y, u, v))
    return y, u, v


def encode_jpeg(frame: av.VideoFrame, layout: Layout, quality: int, *, threads: int = 1) -> tuple[bytes, float]:
    """The JPEG of ``frame`` per ``layout`` (check ``can_encode`` first), and when (``perf_counter``) this
    thread was done converting.

    On two cores or more, a big picture that is not turned is converted *and* encoded half by half,
    each half on its own core, with no wait between the two steps. The bytes are those of
    ``encode_planes(jfif_frame_planes(...))``: the conversion works per 2x2 block, and the halves are
    cut where ``encode_planes`` cuts them."""
    source = _source(frame, threads)
    split = _split(frame.height, frame.width)
    if threads > 1 and split is not None and layout.transpose is None:
        top, interval = split
        converted: list[float] = []

        def half(rows: tuple[int, int]) -> bytes:
            planes = source.planes(rows=rows)
            if rows[0] == 0:  # (this thread's half)
                converted.append(time.perf_counter())
            return bytes(simplejpeg.encode_jpeg_yuv_planes(*planes, quality=quality))

        first, second = in_parallel(half, [(0, top), (top, frame.height - top)], threads)
        joined = _join_halves(first, second, frame.height, interval)
        if joined is not None:
            return joined, converted[0]
    planes = _laid_out(source.planes(threads=threads), layout)
    converted_at = time.perf_counter()
    return encode_planes(planes, quality, threads=threads), converted_at


def encode_webp(
    frame: av.VideoFrame, layout: Layout, quality: int, method: int, *, threads: int = 1
) -> tuple[bytes, float]:
    """The lossy WebP of ``frame`` per ``layout`` (check ``can_encode`` first) from its planes in VP8's
    YCbCr (BT.601, limited range), and when (``perf_counter``) the conversion was done. libwebp through
    FFmpeg: the library Pillow's WebP encodes with, handed the planes instead of RGB (in little more
    than half the time of the RGB path, and 1 dB closer to the rendered frame). ``method``: libwebp's
    effort, 0 (fastest) to 6."""
    converted = _source(frame, threads, full_range_out=False).converted(threads=threads)
    if layout.transpose is not None:
        converted = _yuv420p_frame(_laid_out(_planes(converted), layout))
    converted_at = time.perf_counter()
    codec = av.CodecContext.create("libwebp", "w")
    codec.width, codec.height, codec.pix_fmt = converted.width, converted.height, "yuv420p"
    codec.time_base = Fraction(1, 1)
    codec.options = {"quality": str(quality), "compression_level": str(method), "lossless": "0"}
    data = b"".join(bytes(packet) for packet in (*codec.encode(converted), *codec.encode(None)))
    return data, converted_at


def _yuv420p_frame(planes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> av.VideoFrame:
    y = planes[0]
    frame = av.VideoFrame(y.shape[1], y.shape[0], "yuv420p")
    for plane, values in zip(frame.planes, planes, strict=True):
        np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width] = values
    return frame


def _split(height: int, width: int) -> tuple[int, int] | None:
    """Where a picture is cut in two for encoding: (rows of the top half, whole 16-row MCU rows and at
    least half the picture; its MCUs, the restart interval), or None to encode it whole."""
    top = -(-height // 32) * 16
    interval = (top // 16) * -(-width // 16)
    if height < 2 * _MIN_HALF_ROWS or top >= height or interval > 0xFFFF:
        return None
    return top, interval


def encode_planes(planes: tuple[np.ndarray, np.ndarray, np.ndarray], quality: int, *, threads: int = 1) -> bytes:
    """JFIF 4:2:0 planes -> JPEG. A big picture is encoded as two halves joined with a restart marker
    (see ``_join_halves``): the same pixels as one encode, with one DRI segment and two bytes more.
    With ``threads`` > 1 the halves are encoded side by side. The bytes never depend on ``threads``
    (ETags, caches and tests compare them)."""
    y = planes[0]
    height, width = y.shape
    split = _split(height, width)
    if split is None:
        return bytes(simplejpeg.encode_jpeg_yuv_planes(*planes, quality=quality))
    top, interval = split
    _, u, v = planes
    cut = top // 2  # chroma rows
    halves = [(y[:top], u[:cut], v[:cut]), (y[top:], u[cut:], v[cut:])]
    first, second = in_parallel(
        lambda half: bytes(simplejpeg.encode_jpeg_yuv_planes(*half, quality=quality)), halves, threads
    )
    joined = _join_halves(first, second, height, interval)
    return joined if joined is not None else bytes(simplejpeg.encode_jpeg_yuv_planes(*planes, quality=quality))


def _segments(jpeg: bytes) -> tuple[list[tuple[int, bytes]], bytes] | None:
    """A baseline JPEG's marker segments up to and including SOS as (marker, whole segment), and its
    entropy-coded data (up to EOI); None if it is not laid out that way."""
    if jpeg[:2] != b"\xff\xd8" or jpeg[-2:] != b"\xff\xd9":
        return None
    segments, at = [], 2
    while at + 4 <= len(jpeg):
        if jpeg[at] != 0xFF:
            return None
        marker, length = jpeg[at + 1], int.from_bytes(jpeg[at + 2 : at + 4], "big")
        segments.append((marker, jpeg[at : at + 2 + length]))
        at += 2 + length
        if marker == 0xDA:  # SOS: the entropy-coded data follows
            return segments, jpeg[at:-2]
    return None


def _join_halves(top: bytes, bottom: bytes, height: int, interval: int) -> bytes | None:
    """Two JPEGs of the upper and lower rows of one picture (same width and tables) as one JPEG.

    A restart interval of exactly the upper half's MCUs makes the decoder expect a restart marker
    where the lower half begins, and a restart resets what the halves do not share (DC predictions,
    bit alignment): the upper half's data, RST0, the lower half's data decode as the whole picture.
    The lower half is the last interval, which may be shorter. Only the frame height changes."""
    upper, lower = _segments(top), _segments(bottom)
    if upper is None or lower is None:
        return None
    tables = [segment for marker, segment in upper[0] if marker in (0xDB, 0xC4)]  # DQT, DHT
    if tables != [segment for marker, segment in lower[0] if marker in (0xDB, 0xC4)]:
        return None
    out = bytearray(b"\xff\xd8")
    for marker, segment in upper[0]:
        if marker == 0xC0:  # SOF0: precision (1 byte) then height (2 bytes)
            segment = segment[:5] + height.to_bytes(2, "big") + segment[7:]
        elif marker == 0xDA:
            out += b"\xff\xdd\x00\x04" + interval.to_bytes(2, "big")  # DRI, before the scan
        elif marker == 0xDD:
            return None  # restarts of its own: not what we asked libjpeg for
        out += segment
    if not any(marker == 0xC0 for marker, _ in upper[0]):
        return None
    out += upper[1] + b"\xff\xd0" + lower[1] + b"\xff\xd9"
    return bytes(out)
