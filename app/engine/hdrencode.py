"""HDR pictures encoded as they are (``dynamic_range=native``): the formats that can say what the pixels
mean, and only those.

* PNG, 16 bits per channel, through FFmpeg's encoder, which writes the ``cICP`` chunk (PNG third
  edition: primaries, transfer, matrix 0 = RGB, full range) and a ``cHRM`` chunk from the colour
  properties given to it; viewers that know cICP show PQ or HLG as such.
* AVIF, 10-bit 4:2:0, through SVT-AV1 and FFmpeg's AVIF muxer, which writes the ``colr`` box as nclx
  (primaries, transfer, BT.2020 matrix, limited range) and a ``pixi`` box of 10 bits. Pillow's AVIF
  plugin writes 8 bits only, and an HDR transfer needs more. An AVIF with alpha is two images in one
  file, which the muxer does not write from here: HDR with alpha is PNG's.

JPEG and WebP are 8-bit with no way to label PQ or HLG that browsers read: they are refused (400) rather
than given 8-bit PQ values that every viewer would take for sRGB.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from app.engine.errors import InvalidParameter
from app.engine.options import EncodeOptions

HDR_FORMATS = ("png", "avif")

_AVCOL_SPC_RGB = 0
_AVCOL_SPC_BT2020_NCL = 9
_AVCOL_RANGE_MPEG = 1
_AVCOL_RANGE_JPEG = 2
_AVIF_MIN_SIDE = 4  # SVT-AV1 refuses smaller pictures
_AVIF_THREADS = 2  # fixed, like the 8-bit AVIF encoder's: the bytes must not depend on the machine
# SVT-AV1 writes a banner to stderr for every encoder it opens, unless told to keep to errors.
os.environ.setdefault("SVT_LOG", "1")


def check_hdr_format(options: EncodeOptions) -> None:
    if options.format not in HDR_FORMATS:
        raise InvalidParameter(
            f"dynamic_range=native: {options.format} cannot carry this source's HDR (PQ or HLG) colour;"
            " ask for format=png or format=avif, or for dynamic_range=sdr",
            parameter="format",
        )


def encode_hdr(pixels: np.ndarray, options: EncodeOptions, *, color_primaries: int, color_trc: int) -> bytes:
    """``pixels`` (H x W x 3 or 4, uint16, full-range RGB(A) in the given primaries and transfer, as
    ``render.render_native_hdr`` makes them) as a 16-bit PNG or a 10-bit AVIF labelled with both."""
    check_hdr_format(options)
    if options.format == "png":
        return _png16(pixels, color_primaries, color_trc)
    return _avif10(pixels, options, color_primaries, color_trc)


def _png16(pixels: np.ndarray, color_primaries: int, color_trc: int) -> bytes:
    alpha = pixels.shape[2] == 4
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgba64le" if alpha else "rgb48le")
    frame = frame.reformat(format="rgba64be" if alpha else "rgb48be")  # PNG's byte order; a copy, no conversion
    frame.pts = 0
    # (the encoder writes cICP from the frame's properties)
    frame.color_primaries, frame.color_trc = color_primaries, color_trc
    frame.colorspace, frame.color_range = _AVCOL_SPC_RGB, _AVCOL_RANGE_JPEG
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frame.width, frame.height, frame.format.name
    codec.time_base = Fraction(1, 1)
    codec.color_primaries, codec.color_trc = color_primaries, color_trc
    codec.colorspace, codec.color_range = _AVCOL_SPC_RGB, _AVCOL_RANGE_JPEG
    codec.options = {"pred": "paeth", "compression_level": "1"}
    return b"".join(bytes(packet) for packet in (*codec.encode(frame), *codec.encode(None)))


def _avif10(pixels: np.ndarray, options: EncodeOptions, color_primaries: int, color_trc: int) -> bytes:
    height, width, channels = pixels.shape
    if channels == 4:
        raise InvalidParameter(
            "dynamic_range=native: this source has alpha, which an HDR AVIF from this service cannot carry;"
            " ask for format=png",
            parameter="format",
        )
    if min(width, height) < _AVIF_MIN_SIDE:
        raise InvalidParameter(
            f"a 10-bit AVIF needs at least {_AVIF_MIN_SIDE}x{_AVIF_MIN_SIDE} pixels, this one would be"
            f" {width}x{height}; ask for a larger width/height or format=png",
            parameter="width",
        )
    quality = options.quality if options.quality is not None else 60
    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb48le")
    yuv = rgb.reformat(
        format="yuv420p10le",
        src_colorspace=Colorspace.BT2020,
        dst_colorspace=Colorspace.BT2020,
        src_color_range=ColorRange.JPEG,
        dst_color_range=ColorRange.MPEG,
    )
    yuv.pts = 0
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avif") as output:
        # libavif's mapping of quality to quantizer (0..63); SVT-AV1's preset runs 0 (slowest) to 13,
        # of which the AVIF speed setting's 0..10 is the useful part.
        crf = round((100 - quality) * 63 / 100)
        stream = output.add_stream("libsvtav1", rate=1, options={"crf": str(crf), "preset": str(options.avif_speed)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p10le"
        context = stream.codec_context
        context.thread_count = _AVIF_THREADS
        context.color_primaries, context.color_trc = color_primaries, color_trc
        context.colorspace, context.color_range = _AVCOL_SPC_BT2020_NCL, _AVCOL_RANGE_MPEG
        for packet in (*stream.encode(yuv), *stream.encode(None)):
            output.mux(packet)
    return buffer.getvalue()
