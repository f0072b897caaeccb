"""Colour: which YUV->RGB matrix and range a frame uses, and HDR (PQ / HLG) to SDR tone mapping.

swscale (through PyAV's ``VideoFrame.reformat``) does the YUV->RGB matrix, the range expansion and the
chroma upsampling; this module decides what to tell it. HDR tone mapping runs here in numpy (float32),
because PyAV's FFmpeg has no zscale and swscale's own colour-managed path (FFmpeg 8's ``sws`` CMS,
reached by asking ``reformat`` for another transfer/primaries) is an order of magnitude slower.

Tone-mapping pipeline (``tone_map_to_sdr``), on RGB that swscale already produced with the BT.2020
(non-constant luminance) matrix at 16 bits per channel (``rgb48le``, so 10-bit precision survives):

1. inverse transfer per channel, by look-up table: PQ EOTF to absolute nits; HLG inverse OETF to scene
   light, then the BT.2100 HLG OOTF for a 1000 nit display (gamma 1.2) to nits;
2. primaries BT.2020 -> BT.709 in linear light (3x3 matrix);
3. tone mapping with the ITU-R BT.2390 EETF on max(R, G, B) (one gain for all three channels, so hue
   is kept), then chroma eased towards luminance by PQ(out)/PQ(in), as BT.2390 suggests for the
   EETF's chroma, so near-peak whites lose the tint that a pure ratio-preserving roll-off exaggerates;
4. gamut clip: colours outside BT.709 (a negative channel) are pulled towards their own luminance
   until they fit, which keeps luminance and hue where a per-channel clip would shift both; then the
   sRGB inverse EOTF, by look-up table, to 8 bits.

Why BT.2390 and not Hable: the BT.2390 EETF is the ITU's reference curve; it is the identity below its
knee, so shadows, mid-tones and skin keep the light level the grade gave them, and only highlights are
rolled off smoothly into the SDR peak. Hable's filmic curve compresses the whole range, which darkens
mid-tones and lowers contrast: the "washed out / dull" look this step exists to avoid.

Levels: HDR reference ("graphics") white is 203 nits (ITU-R BT.2408) and SDR white (1.0) is put there,
as libplacebo and FFmpeg's swscale CMS do; the source range [0, peak] maps onto [0, 203] nits and
BT.2408's 18% grey (26 nits) comes out at sRGB 100. The result is encoded with the sRGB curve because it
is a still image that browsers and viewers show as sRGB: that reproduces the tone-mapped light there.

Cost: the steps run in blocks of pixels that stay in the CPU's cache, on helper threads when the grab
has the cores, which is faster than the same steps over the whole picture at once and gives the same
bytes (measurements: bench/README.md). swscale's CMS result is close to ours (same levels, slightly
lighter highlights), at many times the cost.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc

from app.engine.parallel import in_parallel

Transfer = Literal["pq", "hlg"]

# AVColorSpace values (libavutil/pixfmt.h); PyAV exposes the frame's value as a plain int.
_SPC_RGB = 0
_SPC_BT709 = 1
_SPC_FCC = 4
_SPC_BT470BG = 5
_SPC_SMPTE170M = 6
_SPC_SMPTE240M = 7
_SPC_BT2020_NCL = 9
_SPC_BT2020_CL = 10

SDR_WHITE_NITS = 203.0  # ITU-R BT.2408 HDR reference white; becomes SDR 1.0
DEFAULT_PQ_PEAK_NITS = 1000.0  # when neither mastering display nor content light level is known
HLG_DISPLAY_PEAK_NITS = 1000.0  # nominal display for the HLG OOTF (BT.2100: gamma 1.2 at 1000 nits)

# Side data types by their FFmpeg number (AVFrameSideDataType); the PyAV enum has the same values.
_SD_MASTERING_DISPLAY = 11
_SD_CONTENT_LIGHT_LEVEL = 14


def yuv_matrix(frame_colorspace: int, width: int, height: int) -> Colorspace:
    """The swscale YUV->RGB matrix for a frame's ``colorspace`` (an AVColorSpace number).

    UNSPECIFIED (and anything swscale has no matrix for) is guessed from the picture size: BT.709 for HD
    (height >= 720 or width >= 1280), BT.601 for SD. Untagged files are the norm for screen recordings
    and many encoders; HD material is almost always BT.709 and SD almost always BT.601, and players guess
    the same way: mpv/libplacebo (``pl_color_system_guess_ycbcr``), VLC, and Apple's AVFoundation
    (TN2227, SD vs HD). swscale's own default would be BT.601 for everything, which shifts the hues of
    untagged HD video (reds go orange, greens go yellow-ish).
    """
    if frame_colorspace == _SPC_BT709:
        return Colorspace.ITU709
    if frame_colorspace in (_SPC_BT470BG, _SPC_SMPTE170M):
        return Colorspace.ITU601
    if frame_colorspace == _SPC_FCC:
        return Colorspace.FCC
    if frame_colorspace == _SPC_SMPTE240M:
        return Colorspace.SMPTE240M
    if frame_colorspace in (_SPC_BT2020_NCL, _SPC_BT2020_CL):
        # Constant luminance BT.2020 is vanishingly rare; the NCL matrix is the closest swscale has.
        return Colorspace.BT2020
    return Colorspace.ITU709 if (height >= 720 or width >= 1280) else Colorspace.ITU601


def is_full_range(frame_color_range: int, pix_fmt: str) -> bool:
    """Whether YUV samples use the full (JPEG) range. ``yuvj*`` formats are full range by definition;
    UNSPECIFIED otherwise means limited (studio) range, which is what every video codec defaults to."""
    return pix_fmt.startswith("yuvj") or frame_color_range == ColorRange.JPEG


def hdr_transfer(frame_color_trc: int) -> Transfer | None:
    if frame_color_trc == ColorTrc.SMPTE2084:
        return "pq"
    if frame_color_trc == ColorTrc.ARIB_STD_B67:
        return "hlg"
    return None


def side_data_bytes(frame: Any) -> dict[int, bytes]:
    """The frame's side data as {AVFrameSideDataType number: payload}.

    PyAV builds an enum member for each entry and raises ``ValueError`` for types newer than its enum
    (an MV-HEVC frame carries type 29, VIEW_ID); any failure here means "no side data", never a crash.
    """
    out: dict[int, bytes] = {}
    try:
        for entry in frame.side_data:
            try:
                out[int(entry.type.value)] = bytes(entry)
            except Exception:
                continue
    except Exception:
        return out
    return out


def hdr_peak_nits(side_data: dict[int, bytes], transfer: Transfer) -> float:
    """The source peak luminance to tone-map from.

    PQ: the content light level (MaxCLL) when given, else the mastering display's maximum luminance,
    else 1000 nits (the common HDR10 mastering peak). When both are known the smaller wins: content
    never exceeds MaxCLL, and a grade never exceeds what its mastering display could show.
    HLG: always the 1000 nit nominal display the OOTF targets (HLG is scene-referred).
    """
    if transfer == "hlg":
        return HLG_DISPLAY_PEAK_NITS
    candidates: list[float] = []
    mdm = side_data.get(_SD_MASTERING_DISPLAY)
    # AVMasteringDisplayMetadata: 8 + 2 AVRationals of primaries/white point, then min and max
    # luminance (AVRational each), then int has_primaries, int has_luminance: 88 bytes.
    if mdm is not None and len(mdm) >= 88:
        max_num, max_den = struct.unpack_from("<ii", mdm, 72)
        (has_luminance,) = struct.unpack_from("<i", mdm, 84)
        if has_luminance and max_den > 0 and max_num > 0:
            candidates.append(max_num / max_den)
    cll = side_data.get(_SD_CONTENT_LIGHT_LEVEL)
    if cll is not None and len(cll) >= 8:
        (max_cll,) = struct.unpack_from("<I", cll, 0)
        if max_cll > 0:
            candidates.append(float(max_cll))
    peak = min(candidates) if candidates else DEFAULT_PQ_PEAK_NITS
    return float(min(max(peak, SDR_WHITE_NITS), 10000.0))


# --- transfer functions (float64 on small arrays / LUT construction) ------------------------------

_PQ_M1 = 2610 / 16384
_PQ_M2 = 2523 / 4096 * 128
_PQ_C1 = 3424 / 4096
_PQ_C2 = 2413 / 4096 * 32
_PQ_C3 = 2392 / 4096 * 32

_HLG_A = 0.17883277
_HLG_B = 1 - 4 * _HLG_A
_HLG_C = 0.5 - _HLG_A * float(np.log(4 * _HLG_A))


def pq_eotf(e: npt.ArrayLike) -> np.ndarray:
    """PQ signal [0, 1] -> absolute luminance in nits (SMPTE ST 2084)."""
    ep = np.power(np.clip(np.asarray(e, dtype=np.float64), 0.0, 1.0), 1.0 / _PQ_M2)
    y = np.maximum(ep - _PQ_C1, 0.0) / (_PQ_C2 - _PQ_C3 * ep)
    return 10000.0 * np.power(y, 1.0 / _PQ_M1)


def pq_inverse_eotf(nits: npt.ArrayLike) -> np.ndarray:
    """Absolute luminance in nits -> PQ signal [0, 1]."""
    y = np.power(np.clip(np.asarray(nits, dtype=np.float64) / 10000.0, 0.0, 1.0), _PQ_M1)
    return np.power((_PQ_C1 + _PQ_C2 * y) / (1.0 + _PQ_C3 * y), _PQ_M2)


def hlg_inverse_oetf(e: npt.ArrayLike) -> np.ndarray:
    """HLG signal [0, 1] -> normalised scene light [0, 1] (ITU-R BT.2100)."""
    e = np.clip(np.asarray(e, dtype=np.float64), 0.0, 1.0)
    low = e * e / 3.0
    high = (np.exp((e - _HLG_C) / _HLG_A) + _HLG_B) / 12.0
    return np.where(e <= 0.5, low, high)


def srgb_encode(linear: npt.ArrayLike) -> np.ndarray:
    """Linear [0, 1] -> sRGB signal [0, 1] (IEC 61966-2-1 inverse EOTF)."""
    x = np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def srgb_decode(signal: npt.ArrayLike) -> np.ndarray:
    """sRGB signal [0, 1] -> linear [0, 1] (IEC 61966-2-1 EOTF)."""
    e = np.clip(np.asarray(signal, dtype=np.float64), 0.0, 1.0)
    return np.where(e <= 0.04045, e / 12.92, np.power((e + 0.055) / 1.055, 2.4))


def hlg_oetf(scene: npt.ArrayLike) -> np.ndarray:
    """Normalised scene light [0, 1] -> HLG signal [0, 1] (ITU-R BT.2100)."""
    e = np.clip(np.asarray(scene, dtype=np.float64), 0.0, 1.0)
    return np.where(e <= 1 / 12, np.sqrt(3 * e), _HLG_A * np.log(np.maximum(12 * e - _HLG_B, 1e-12)) + _HLG_C)


def sdr_colour_in_hdr(rgb: tuple[int, int, int], *, transfer: Transfer, color_primaries: int) -> tuple[int, int, int]:
    """An 8-bit sRGB colour as 16-bit full-range code values of an HDR picture in ``transfer`` and
    ``color_primaries``, SDR white at HDR reference white (203 nits, BT.2408), as a compositor puts
    SDR graphics over HDR video. HLG: the OOTF undone for a 1000 nit display per channel (exact for
    greys, which is what a padding colour usually is)."""
    linear = srgb_decode(np.asarray(rgb, dtype=np.float64) / 255.0)
    to_709 = primaries_to_bt709(color_primaries)
    if to_709 is not None:
        linear = np.linalg.solve(to_709.astype(np.float64), linear)
    nits = np.clip(linear, 0.0, None) * SDR_WHITE_NITS
    hlg_scene = np.power(nits / HLG_DISPLAY_PEAK_NITS, 1 / 1.2)
    signal = pq_inverse_eotf(nits) if transfer == "pq" else hlg_oetf(hlg_scene)
    red, green, blue = (round(float(v) * 65535) for v in signal)
    return red, green, blue


@functools.lru_cache(maxsize=4)
def _input_lut(transfer: Transfer) -> np.ndarray:
    """16-bit code value -> linear light (float32). PQ: in units of SDR white (nits / 203);
    HLG: normalised scene light (the OOTF needs all three channels, so it runs afterwards)."""
    code = np.arange(65536, dtype=np.float64) / 65535.0
    lut = pq_eotf(code) / SDR_WHITE_NITS if transfer == "pq" else hlg_inverse_oetf(code)
    return lut.astype(np.float32)


_OUT_LUT_SIZE = 16384


@functools.lru_cache(maxsize=1)
def _output_lut() -> np.ndarray:
    """Linear [0, 1] quantised to 16384 steps -> sRGB 8-bit. A step is 6e-5 linear, a fifth of an 8-bit
    code even in the steepest (near-black) part of the sRGB curve, so the LUT adds no visible error."""
    x = np.arange(_OUT_LUT_SIZE, dtype=np.float64) / (_OUT_LUT_SIZE - 1)
    return np.round(srgb_encode(x) * 255.0).astype(np.uint8)


# --- primaries -------------------------------------------------------------------------------------

_D65 = (0.3127, 0.3290)
_PRIMARIES_XY: dict[int, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    int(ColorPrimaries.BT709): ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060)),
    int(ColorPrimaries.BT470BG): ((0.640, 0.330), (0.290, 0.600), (0.150, 0.060)),
    int(ColorPrimaries.SMPTE170M): ((0.630, 0.340), (0.310, 0.595), (0.155, 0.070)),
    int(ColorPrimaries.SMPTE240M): ((0.630, 0.340), (0.310, 0.595), (0.155, 0.070)),
    int(ColorPrimaries.BT2020): ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046)),
    int(ColorPrimaries.SMPTE432): ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),  # Display P3 (D65)
}


def _rgb_to_xyz(primaries: tuple[tuple[float, float], ...]) -> np.ndarray:
    def xyz(xy: tuple[float, float]) -> np.ndarray:
        x, y = xy
        return np.array([x / y, 1.0, (1.0 - x - y) / y])

    m = np.stack([xyz(p) for p in primaries], axis=1)
    scale = np.linalg.solve(m, xyz(_D65))
    return m * scale


@functools.lru_cache(maxsize=8)
def primaries_to_bt709(color_primaries: int) -> np.ndarray | None:
    """3x3 float32 matrix taking linear RGB in ``color_primaries`` to linear BT.709, or None when they
    already are BT.709. Unknown primaries are taken to be BT.2020 (the only ones HDR10/HLG use)."""
    src = _PRIMARIES_XY.get(int(color_primaries), _PRIMARIES_XY[int(ColorPrimaries.BT2020)])
    dst = _PRIMARIES_XY[int(ColorPrimaries.BT709)]
    if src == dst:
        return None
    m = np.linalg.solve(_rgb_to_xyz(dst), _rgb_to_xyz(src))
    return m.astype(np.float32)


# --- tone mapping -----------------------------------------------------------------------------------


def bt2390_eetf(nits: np.ndarray, source_peak: float, target_peak: float) -> np.ndarray:
    """ITU-R BT.2390 EETF (black level 0): maps [0, source_peak] nits onto [0, target_peak] nits,
    identity below the knee, Hermite spline roll-off above it. Works in the PQ domain."""
    e_src = float(pq_inverse_eotf(source_peak))
    e_tgt = float(pq_inverse_eotf(target_peak))
    max_lum = e_tgt / e_src
    ks = 1.5 * max_lum - 0.5
    e1 = np.minimum(pq_inverse_eotf(nits) / e_src, 1.0)
    t = (e1 - ks) / (1.0 - ks)
    t2 = t * t
    t3 = t2 * t
    spline = (2 * t3 - 3 * t2 + 1) * ks + (t3 - 2 * t2 + t) * (1 - ks) + (-2 * t3 + 3 * t2) * max_lum
    e2 = np.where(e1 < ks, e1, spline)
    return pq_eotf(e2 * e_src)


def eetf_knee_nits(source_peak: float, target_peak: float) -> float:
    """Luminance below which the BT.2390 EETF is the identity."""
    e_src = float(pq_inverse_eotf(source_peak))
    ks = 1.5 * float(pq_inverse_eotf(target_peak)) / e_src - 0.5
    return float(pq_eotf(max(ks, 0.0) * e_src))


def _eetf_gain_tables(
    source_peak: float, image_peak: float, n: int = 4096
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Tables over max(R, G, B) m (linear, units of SDR white) from the knee to the largest m present:
    the gain mapped(m) / m, and the chroma scale PQ(mapped) / PQ(m) (BT.2390 section 5.4.1's
    min(I1/I2, I2/I1) chroma rule, on the PQ value of max(R, G, B)). Returns (knee, step, gain, chroma).
    """
    knee = eetf_knee_nits(source_peak, SDR_WHITE_NITS) / SDR_WHITE_NITS
    top = max(image_peak, source_peak / SDR_WHITE_NITS, knee * 1.001)
    m = np.linspace(knee, top, n)
    nits = m * SDR_WHITE_NITS
    mapped = bt2390_eetf(nits, source_peak, SDR_WHITE_NITS)
    gain = mapped / nits
    chroma = pq_inverse_eotf(mapped) / pq_inverse_eotf(nits)
    return knee, (top - knee) / (n - 1), gain.astype(np.float32), chroma.astype(np.float32)


_BT709_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], dtype=np.float32)


_BLOCK_PIXELS = 1 << 15  # pixels per block: a block's float32 working set stays in the CPU's cache


def tone_map_to_sdr(
    rgb16: np.ndarray,
    *,
    transfer: Transfer,
    color_primaries: int,
    peak_nits: float,
    threads: int = 1,
) -> np.ndarray:
    """HDR RGB (uint16, H x W x 3, full-range non-linear PQ or HLG signal, as swscale's ``rgb48le``
    gives it) -> SDR BT.709/sRGB RGB (uint8, H x W x 3). See the module docstring for the steps.

    Runs in blocks of pixels (each step over a whole 1080p frame would stream ~24 MB through memory,
    some thirty times), in two passes: linear light first, as the EETF's table spans the brightest
    pixel of the picture; then the tone mapping. ``threads`` > 1 runs the blocks on helper threads
    too (numpy lets go of the GIL); the result does not depend on it."""
    if rgb16.dtype != np.uint16 or rgb16.ndim != 3 or rgb16.shape[2] != 3:
        raise ValueError("expected an H x W x 3 uint16 array")
    h, w, _ = rgb16.shape
    codes = rgb16.reshape(-1, 3)
    n = codes.shape[0]
    tone_map = peak_nits > SDR_WHITE_NITS
    lin = np.empty((n, 3), np.float32)
    y = np.empty(n, np.float32)
    scale = np.empty(n, np.float32) if transfer == "hlg" else None
    # BT.2100 HLG OOTF: Fd = Lw * Ys^(gamma - 1) * E, Ys the scene luminance (BT.2020 weights). Such
    # per-pixel gains are gathered into one scalar per pixel and applied once; the 3x3 primaries matrix
    # commutes with them.
    ootf_exponent = np.float32(0.2 + 0.42 * np.log10(HLG_DISPLAY_PEAK_NITS / 1000.0))
    m = np.empty(n, np.float32) if tone_map else None
    lut = _input_lut(transfer)
    matrix = primaries_to_bt709(color_primaries)
    blocks = [slice(start, min(start + _BLOCK_PIXELS, n)) for start in range(0, n, _BLOCK_PIXELS)]

    def linear(block: slice) -> float:
        """Linear light in BT.709 (``lin``), luminance (``y``), the HLG OOTF's gain (``scale``) and
        max(R, G, B) (``m``) of one block; returns the block's largest ``m``."""
        part = np.take(lut, codes[block], out=lin[block], mode="clip")  # float32, k x 3
        gain = None
        if scale is not None:
            gain = np.power(part @ _BT2020_LUMA, ootf_exponent, dtype=np.float32, out=scale[block])
            gain *= np.float32(HLG_DISPLAY_PEAK_NITS / SDR_WHITE_NITS)
        if matrix is not None:
            part[:] = part @ matrix.T
        luma = np.matmul(part, _BT709_LUMA, out=y[block])
        if gain is not None:
            luma *= gain
        if m is None:
            return 0.0
        top = np.maximum(np.maximum(part[:, 0], part[:, 1]), part[:, 2], out=m[block])
        if gain is not None:
            top *= gain
        return float(top.max(initial=0.0))

    def sdr(block: slice, tables: tuple[float, float, np.ndarray, np.ndarray] | None) -> None:
        part, luma = lin[block], y[block]
        gain = scale[block] if scale is not None else None
        if tables is not None and m is not None:
            # BT.2390 EETF on max(R, G, B): the identity below the knee, so only highlights change; the
            # same gain on all three channels keeps the hue. Chroma is then eased towards the luminance
            # as BT.2390 suggests, so that near-peak whites do not keep a tint the roll-off exaggerates:
            # out = g*Y + c * (g*rgb - g*Y) = (g*c) * rgb + g*Y * (1 - c).
            knee, step, gain_table, chroma_table = tables
            top = m[block]
            top -= np.float32(knee)
            top *= np.float32(1.0 / step)
            np.clip(top, 0.0, float(gain_table.size - 1), out=top)
            top += np.float32(0.5)
            at = top.astype(np.int32)  # (a tenth of the cost of a conversion to intp)
            eetf = np.take(gain_table, at, mode="clip")
            chroma = np.take(chroma_table, at, mode="clip")
            luma *= eetf
            factor = eetf * chroma
            if gain is not None:
                factor *= gain
            part *= factor[:, None]
            part += (luma * (1.0 - chroma))[:, None]
        elif gain is not None:
            part *= gain[:, None]
        # Gamut clip: colours outside BT.709 come out with a negative channel. Pull them towards their
        # own luminance until the smallest channel is 0, which keeps hue and luminance (a per-channel
        # clip would shift both); then clip what is left (rounding, and peaks when no tone mapping ran).
        low = np.minimum(np.minimum(part[:, 0], part[:, 1]), part[:, 2])
        neg = np.flatnonzero(low < 0)
        if neg.size:
            yn = np.maximum(luma[neg], 0.0)
            k = yn / (yn - low[neg])
            part[neg] = yn[:, None] + (part[neg] - yn[:, None]) * k[:, None]
        np.clip(part, 0.0, 1.0, out=part)
        part *= np.float32(_OUT_LUT_SIZE - 1)
        part += np.float32(0.5)
        np.take(_output_lut(), part.astype(np.uint16), out=out[block], mode="clip")

    out = np.empty((n, 3), np.uint8)
    peak = max(in_parallel(linear, blocks, threads), default=0.0)
    tables = _eetf_gain_tables(peak_nits, peak) if tone_map else None
    in_parallel(lambda block: sdr(block, tables), blocks, threads)
    return out.reshape(h, w, 3)
