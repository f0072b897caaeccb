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
from dataclasses import dataclass

import av
import numpy as np
import simplejpeg
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image

from app.engine import colour
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


_SHIFT = 12  # fixed-point fraction bits of the chroma coefficients
_LUMA_SHIFT = 9  # ... and of the luma gain, so that 8-bit luma times it fits in int16


@dataclass(frozen=True)
class _Conversion:
    """Source YUV (one matrix and range) -> JFIF YCbCr, as fixed-point integer coefficients.

    With u, v = chroma codes - 128 and y = luma code - ``luma_offset``:
    Yj = y + y * luma_gain + (u * corr_u + v * corr_v), Cb = 128 + u * cb_u + v * cb_v, Cr likewise.
    """

    identity: bool  # already JFIF (BT.601, full range): the planes go out as they are
    luma_offset: int
    luma_gain: int  # (scale - 1), in 1/2^_LUMA_SHIFT
    corrected: bool  # whether the luma needs the chroma correction
    corr_u: int  # in 1/2^_SHIFT
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

    def fixed(coefficient: float) -> int:
        return round(coefficient * chroma_scale * (1 << _SHIFT))

    corr_u, corr_v = fixed(a[0, 1]), fixed(a[0, 2])
    return _Conversion(
        identity=full_range and (kr, kb) == _JPEG_KR_KB,
        luma_offset=0 if full_range else 16,
        luma_gain=0 if full_range else round((255.0 / 219.0 - 1.0) * (1 << _LUMA_SHIFT)),
        corrected=corr_u != 0 or corr_v != 0,
        corr_u=corr_u,
        corr_v=corr_v,
        cb_u=fixed(a[1, 1]),
        cb_v=fixed(a[1, 2]),
        cr_u=fixed(a[2, 1]),
        cr_v=fixed(a[2, 2]),
    )


def _mix(u: np.ndarray, v: np.ndarray, ku: int, kv: int, offset: int) -> np.ndarray:
    """offset + (u * ku + v * kv) / 2^_SHIFT, rounded (int32)."""
    out = u * ku
    out += v * kv
    out += (offset << _SHIFT) + (1 << (_SHIFT - 1))
    out >>= _SHIFT
    return out


def _to_uint8(values: np.ndarray) -> np.ndarray:
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def jfif_planes(
    y: np.ndarray, u: np.ndarray, v: np.ndarray, colorspace: int, full_range: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4:2:0 planes in the source's matrix and range -> JFIF (BT.601 full range) 4:2:0 planes.

    Integer arithmetic on whole planes: numpy's look-up tables (fancy indexing) cost ~4 ms on a
    1080p plane, these passes a tenth of that each.
    """
    conv = _conversion(colorspace, full_range)
    if conv.identity:
        return y, u, v
    cu = u.astype(np.int32)
    cu -= 128
    cv = v.astype(np.int32)
    cv -= 128
    cb = _to_uint8(_mix(cu, cv, conv.cb_u, conv.cb_v, 128))
    cr = _to_uint8(_mix(cu, cv, conv.cr_u, conv.cr_v, 128))
    luma = y.astype(np.int16)
    if conv.luma_offset:
        luma -= conv.luma_offset
    if conv.luma_gain:
        gain = luma * np.int16(conv.luma_gain)
        gain += 1 << (_LUMA_SHIFT - 1)
        gain >>= _LUMA_SHIFT
        luma += gain
    if conv.corrected:
        # Each chroma sample's correction onto its 2x2 block of luma: widened to full width once,
        # then added to even and odd rows (odd sizes: the last column/row has no partner).
        correction = _mix(cu, cv, conv.corr_u, conv.corr_v, 0).astype(np.int16)
        rows, cols = correction.shape
        wide = np.empty((rows, cols, 2), np.int16)
        wide[:, :, 0] = correction
        wide[:, :, 1] = correction
        height, width = luma.shape
        wide_rows = wide.reshape(rows, 2 * cols)[:, :width]
        luma[0::2] += wide_rows[: (height + 1) // 2]
        luma[1::2] += wide_rows[: height // 2]
    return _to_uint8(luma), cb, cr


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
    """Whether ``encode_jpeg`` gives this frame and layout the picture the RGB path would."""
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
        # YUV without alpha (swscale brings any layout or depth to yuv420p); not RGB, XYZ or a palette
        and not fmt.is_rgb
        and len(fmt.components) == 3
        and not fmt.name.startswith("xyz")
        and not (dynamic_range == "sdr" and colour.hdr_transfer(int(frame.color_trc)) is not None)
    )


def jfif_frame_planes(frame: av.VideoFrame, layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame as JFIF 4:2:0 planes per ``layout`` (check ``can_encode`` first). Another depth or
    chroma layout becomes yuv420p in swscale, YUV to YUV; the matrix and range change in ``jfif_planes``."""
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
            threads=1,
        )
    y, u, v = jfif_planes(*_planes(frame), colorspace, full)
    if layout.transpose is not None:
        turn = _PLANE_TRANSPOSES[layout.transpose]
        y, u, v = (np.ascontiguousarray(turn(plane)) for plane in (y, u, v))
    return y, u, v


def encode_planes(planes: tuple[np.ndarray, np.ndarray, np.ndarray], quality: int) -> bytes:
    return bytes(simplejpeg.encode_jpeg_yuv_planes(*planes, quality=quality))
