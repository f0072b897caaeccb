"""JPEG straight from the decoder's YUV planes: the fast path for the most common request.

Inside, a JPEG is YCbCr 4:2:0 with the BT.601 matrix at full range. The general path (``render`` then
``encode``) converts the frame to RGB, upsampling its chroma to every pixel, and libjpeg converts that
back to YCbCr and averages the chroma down to 4:2:0 again: at 1080p about two thirds of the time after
decoding goes into chroma detail the encoder then throws away. Here the decoded planes are re-expressed
as JPEG's YCbCr instead, and libjpeg-turbo (simplejpeg) encodes them as they are.

The colour maths is the same linear map the RGB path makes, folded into one step. With the source's
matrix ``Ms`` (BT.709, BT.601, BT.2020... exactly as ``colour.yuv_matrix`` picks it) and range, a
JPEG decoder must get back ``RGB = Ms^-1 (Y, Pb, Pr)``, so we write ``(Yj, Pbj, Prj) = M601 Ms^-1 (Y,
Pb, Pr)``. Grey has no chroma in either matrix, so the chroma rows need chroma only (computed at chroma
resolution); the luma row is the source luma plus a correction from the chroma (``a12 Pb + a13 Pr``,
0 for BT.601 sources), added per 2x2 block. Range expansion is one multiply-add, all in fixed point.

Used when it gives the same picture: YUV without alpha at any depth or chroma layout (swscale brings it
to 8-bit 4:2:0), no HDR tone mapping, and a layout that is the frame at its own (even) size plus an optional
rotation/mirror (applied to the planes). Everything else (scaling, pad, cover crops, clean apertures,
HDR to SDR, other formats) takes the RGB path.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import av
import numpy as np
import simplejpeg
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image

from app.engine import colour
from app.engine.parallel import in_parallel
from app.engine.render import SCALE_FLAGS, Layout

# (Kr, Kb) of the YUV matrices swscale knows (libswscale's ff_yuv2rgb_coeffs).
_KR_KB: dict[int, tuple[float, float]] = {
    int(Colorspace.ITU709): (0.2126, 0.0722),
    int(Colorspace.ITU601): (0.299, 0.114),
    int(Colorspace.FCC): (0.30, 0.11),
    int(Colorspace.SMPTE240M): (0.212, 0.087),
    int(Colorspace.BT2020): (0.2627, 0.0593),
}
_JPEG_KR_KB = (0.299, 0.114)  # JFIF: BT.601, full range

# Planar YUV formats the planes can come from (other layouts go through swscale to yuv420p first).
_YUV420P = ("yuv420p", "yuvj420p")
_YUV_FAMILIES = ("yuv", "nv", "p0", "p2", "p4")  # yuv4xxp*, nv12/nv21/nv16..., p010/p016/p210/p410...


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


_SHIFT = 12  # fixed-point fraction bits of the chroma coefficients (int32 sums at chroma resolution)
_LUMA_SHIFT = 7  # ... of the luma sum, so that it fits uint16 (one pass per step over the big plane)
_BIAS = 96  # codes added to the luma sum so that it never goes below 0 (see _conversion)


@dataclass(frozen=True)
class _Conversion:
    """Source YUV (one matrix and range) -> JFIF YCbCr, as fixed-point integer coefficients.

    With u, v = chroma codes - 128, coefficients in units of 1/2^_SHIFT: Cb = 128 + u * cb_u + v * cb_v
    (Cr likewise); Yj = Y * luma_gain / 2^_LUMA_SHIFT + offset, where the offset of each chroma sample's
    2x2 block is ``u * corr_u + v * corr_v + luma_offset`` (``_BIAS`` codes included).
    """

    identity: bool  # already JFIF (BT.601, full range): the planes go out as they are
    luma_gain: int  # in 1/2^_LUMA_SHIFT
    luma_offset: int
    corr_u: int
    corr_v: int
    cb_u: int
    cb_v: int
    cr_u: int
    cr_v: int


@functools.lru_cache(maxsize=16)
def _conversion(colorspace: int, full_range: bool) -> _Conversion:
    kr, kb = _KR_KB[colorspace]
    a = _yuv_matrix(*_JPEG_KR_KB) @ np.linalg.inv(_yuv_matrix(kr, kb))
    # Codes -> JFIF's scale (255 * Y, 255 * Pb): limited range stretches luma 219 -> 255, chroma 224 -> 255.
    chroma_scale = 1.0 if full_range else 255.0 / 224.0
    luma_scale, black = (1.0, 0) if full_range else (255.0 / 219.0, 16)

    def fixed(coefficient: float) -> int:
        return round(coefficient * chroma_scale * (1 << _SHIFT))

    conv = _Conversion(
        identity=full_range and (kr, kb) == _JPEG_KR_KB,
        luma_gain=round(luma_scale * (1 << _LUMA_SHIFT)),
        luma_offset=round((_BIAS + 0.5 - black * luma_scale) * (1 << _SHIFT)),  # + 1/2: rounded when shifted
        corr_u=fixed(a[0, 1]),
        corr_v=fixed(a[0, 2]),
        cb_u=fixed(a[1, 1]),
        cb_v=fixed(a[1, 2]),
        cr_u=fixed(a[2, 1]),
        cr_v=fixed(a[2, 2]),
    )
    # The luma sum in 1/2^_LUMA_SHIFT must stay within uint16 and never go below 0.
    correction = 128 * (abs(conv.corr_u) + abs(conv.corr_v))
    assert conv.luma_offset - correction >= 0
    assert (255 * conv.luma_gain) + ((conv.luma_offset + correction) >> (_SHIFT - _LUMA_SHIFT)) + 1 < 2**16
    return conv


class Scratch:
    """Arrays reused from one frame to the next (by name). Fresh arrays of frame size cost page faults
    on every grab, ~3 ms at 1080p: as much as the arithmetic. An array is remade only when a request
    needs more rows than it has (or another row shape or type); fewer rows get a view of its first
    rows, so that the short last strip of a picture does not remake the full ones."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
        array = self._arrays.get(name)
        if array is None or array.dtype != dtype or array.shape[1:] != shape[1:] or array.shape[0] < shape[0]:
            array = self._arrays[name] = np.empty(shape, dtype)
        return array if array.shape[0] == shape[0] else array[: shape[0]]


_THREAD = threading.local()


_SCRATCH_MAX_PIXELS = 3840 * 2160  # larger frames (rare) get buffers of their own, not kept (~45 MiB at 4K)


def _thread_scratch(pixels: int, use: str = "planes") -> Scratch:
    """This thread's scratch arrays for one use (whole planes, or a strip's intermediates)."""
    if pixels > _SCRATCH_MAX_PIXELS:
        return Scratch()
    scratch: Scratch | None = getattr(_THREAD, use, None)
    if scratch is None:
        scratch = Scratch()
        setattr(_THREAD, use, scratch)
    return scratch


def _mix(scratch: Scratch, name: str, u: np.ndarray, v: np.ndarray, ku: int, kv: int, offset: int) -> np.ndarray:
    """offset + (u - 128) * ku + (v - 128) * kv (int32) of chroma codes u, v (the 128s folded into the
    offset: no pass to centre the planes)."""
    out = scratch.get(name, u.shape, np.int32)
    np.multiply(u, ku, out=out, dtype=np.int32)
    term = scratch.get("term", u.shape, np.int32)
    np.multiply(v, kv, out=term, dtype=np.int32)
    out += term
    out += offset - 128 * (ku + kv)
    return out


def _chroma(
    scratch: Scratch, name: str, u: np.ndarray, v: np.ndarray, ku: int, kv: int, out: np.ndarray | None
) -> np.ndarray:
    total = _mix(scratch, "sum", u, v, ku, kv, (128 << _SHIFT) + (1 << (_SHIFT - 1)))  # + 1/2: rounded
    total >>= _SHIFT
    np.clip(total, 0, 255, out=total)
    if out is None:
        out = scratch.get(name, u.shape, np.uint8)
    np.copyto(out, total, casting="unsafe")
    return out


def jfif_planes(
    y: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    colorspace: int,
    full_range: bool,
    *,
    scratch: Scratch | None = None,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4:2:0 planes in the source's matrix and range -> JFIF (BT.601 full range) 4:2:0 planes.

    Integer arithmetic on whole planes, as few passes over the luma as it takes (numpy's look-up
    tables, fancy indexing, cost ~4 ms on a 1080p plane; each pass here a tenth of that). With
    ``scratch``, every array (the planes returned included) is one of its buffers; with ``out``, the
    planes are written there instead.
    """
    conv = _conversion(colorspace, full_range)
    if conv.identity:
        return y, u, v
    scratch = scratch or Scratch()
    out_y, out_cb, out_cr = out if out is not None else (None, None, None)
    cb = _chroma(scratch, "cb", u, v, conv.cb_u, conv.cb_v, out_cb)
    cr = _chroma(scratch, "cr", u, v, conv.cr_u, conv.cr_v, out_cr)
    # Luma: Y * gain plus, per 2x2 block, the chroma's correction and the range offset (one sum per
    # chroma sample, widened to full width once, then added to even and odd rows; an odd size's last
    # column/row has no partner). Kept positive by _BIAS, so uint16 holds it. Widening is one multiply:
    # a uint32 of o * 65537 is o in both of its uint16 halves, whatever the byte order.
    offset = _mix(scratch, "sum", u, v, conv.corr_u, conv.corr_v, conv.luma_offset)
    offset >>= _SHIFT - _LUMA_SHIFT
    rows, cols = offset.shape
    wide = scratch.get("wide", (rows, cols), np.uint32)
    np.multiply(offset.view(np.uint32), np.uint32(0x10001), out=wide)
    luma = scratch.get("luma", y.shape, np.uint16)
    np.multiply(y, np.uint16(conv.luma_gain), out=luma, dtype=np.uint16)
    height, width = luma.shape
    wide_rows = wide.view(np.uint16).reshape(rows, 2 * cols)[:, :width]
    if height == 2 * rows:  # both rows of each block in one pass
        pairs = luma.reshape(rows, 2, width)
        pairs += wide_rows[:, None, :]
    else:
        luma[0::2] += wide_rows[: (height + 1) // 2]
        luma[1::2] += wide_rows[: height // 2]
    np.clip(luma, _BIAS << _LUMA_SHIFT, ((_BIAS + 256) << _LUMA_SHIFT) - 1, out=luma)
    luma >>= _LUMA_SHIFT
    luma -= _BIAS
    if out_y is None:
        out_y = scratch.get("y", y.shape, np.uint8)
    np.copyto(out_y, luma, casting="unsafe")
    return out_y, cb, cr


_MIN_BAND_ROWS = 256  # smaller pictures convert in ~1 ms: not worth a hand-off
# Luma rows converted in one go on one core. The conversion makes ~20 passes over its arrays; over
# whole planes each pass goes out to memory and back, over a strip (1 MiB of intermediates at 1920
# wide) they stay in the core's cache. A 1080p keyframe grab on one core renders in 5.0 ms instead
# of 7.3 (720p: 2.3 instead of 2.9). Not in bands on several cores, where the ~20 numpy calls per
# strip hand the GIL back and forth between the threads (1080p on two: 3.7 ms in two whole bands,
# 4.7-6.6 ms in strips).
_STRIP_ROWS = 128


def _convert_rows(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray],
    colorspace: int,
    full_range: bool,
    out: tuple[np.ndarray, np.ndarray, np.ndarray],
    chroma_rows: tuple[int, int],
    strip_rows: int,
) -> None:
    """``jfif_planes`` of the rows of ``planes`` that go with chroma rows [c0, c1), ``strip_rows``
    luma rows at a time, into the same rows of ``out``."""
    y, u, v = planes
    scratch = _thread_scratch(y.size, "strip")
    first, end = chroma_rows
    for c0 in range(first, end, strip_rows // 2):
        c1 = min(end, c0 + strip_rows // 2)
        l0, l1 = 2 * c0, min(2 * c1, y.shape[0])  # an odd height's last chroma row has one luma row
        strip = (y[l0:l1], u[c0:c1], v[c0:c1])
        jfif_planes(*strip, colorspace, full_range, scratch=scratch, out=(out[0][l0:l1], out[1][c0:c1], out[2][c0:c1]))


def _jfif_planes_in_bands(
    y: np.ndarray, u: np.ndarray, v: np.ndarray, colorspace: int, full_range: bool, bands: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``jfif_planes`` of a whole picture into this thread's scratch planes: in strips on one core (see
    ``_STRIP_ROWS``), or cut into bands of rows converted side by side on helper threads (numpy lets go
    of the GIL)."""
    if _conversion(colorspace, full_range).identity:
        return y, u, v
    bands = max(1, min(bands, 4, y.shape[0] // _MIN_BAND_ROWS))
    scratch = _thread_scratch(y.size)
    out = (
        scratch.get("band_y", y.shape, np.uint8),
        scratch.get("band_cb", u.shape, np.uint8),
        scratch.get("band_cr", v.shape, np.uint8),
    )
    edges = [u.shape[0] * band // bands for band in range(bands + 1)]  # in chroma rows

    strip_rows = _STRIP_ROWS if bands == 1 else y.shape[0]

    def convert(band: int) -> None:
        _convert_rows((y, u, v), colorspace, full_range, out, (edges[band], edges[band + 1]), strip_rows)

    in_parallel(convert, range(bands), bands)
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
    """Whether ``jfif_frame_planes`` gives this frame and layout the picture the RGB path would."""
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


def jfif_frame_planes(
    frame: av.VideoFrame, layout: Layout, *, threads: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame as JFIF 4:2:0 planes per ``layout`` (check ``can_encode`` first). Another depth or
    chroma layout becomes yuv420p in swscale, YUV to YUV; the matrix and range change in ``jfif_planes``,
    on ``threads`` cores for a big picture. The planes are this thread's scratch buffers (or the
    frame's own): encode them before the next call."""
    colorspace = int(colour.yuv_matrix(int(frame.colorspace), frame.width, frame.height))
    full = colour.is_full_range(int(frame.color_range), frame.format.name)
    if frame.format.name not in _YUV420P:
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
    y, u, v = _jfif_planes_in_bands(*_planes(frame), colorspace, full, threads)
    if layout.transpose is not None:
        turn = _PLANE_TRANSPOSES[layout.transpose]
        y, u, v = (np.ascontiguousarray(turn(plane)) for plane in (y, u, v))
    return y, u, v


def encode_planes(planes: tuple[np.ndarray, np.ndarray, np.ndarray], quality: int, *, threads: int = 1) -> bytes:
    """JFIF 4:2:0 planes -> JPEG. A big picture is encoded as two halves joined with a restart marker
    (see ``_join_halves``): the same pixels as one encode, with one DRI segment and two bytes more.
    With ``threads`` > 1 the halves are encoded side by side. The bytes never depend on ``threads``
    (ETags, caches and tests compare them)."""
    y = planes[0]
    height, width = y.shape
    top = -(-height // 32) * 16  # whole 16-row MCU rows, at least half the picture
    interval = (top // 16) * -(-width // 16)  # the top half's MCUs: one restart interval
    if height < 2 * _MIN_BAND_ROWS or top >= height or interval > 0xFFFF:
        return bytes(simplejpeg.encode_jpeg_yuv_planes(*planes, quality=quality))
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
