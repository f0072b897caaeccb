"""What a frontend needs to draw a timeline: an asset's duration, displayed size, frame rate, codec,
orientation, HDR, alpha, its streams and (on request) its keyframe times.

``describe`` takes a freshly opened ``ImageGenerator`` that is not used for anything else afterwards
(it reads and decodes the generator's container directly, from the start): the decoder worker opens
one for the call. Keyframe times come from the stream's packets, not from an MP4's index: that lists
decode times, and a keyframe's display delay is not the same for every keyframe (an HEVC CRA with
leading pictures shows later than an IDR).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import av.error

from app.engine.colour import hdr_transfer
from app.engine.errors import EngineError
from app.engine.generator import ImageGenerator
from app.engine.options import RenderOptions
from app.engine.render import display_matrix, orientation_from_matrix, plan_frame, sample_aspect_ratio

_FIRST_FRAME_PACKETS = 256  # packets read at most for the first decodable picture
_MAX_KEYFRAMES = 100_000  # keyframe times listed at most (a day of video at one a second is 86,400)
_VFR_SPREAD = Fraction(1, 100)  # frame durations further apart than this (relative) make a variable rate
_VFR_SAMPLE = 2_000  # index entries looked at for the frame-rate spread


@dataclass(frozen=True)
class StreamInfo:
    index: int
    type: str
    codec: str | None
    width: int | None = None
    height: int | None = None
    language: str | None = None
    default: bool = False


@dataclass(frozen=True)
class AssetInfo:
    """The facts ``GET /v1/info`` answers with. Times are exact seconds on the asset timeline."""

    duration: Fraction | None
    width: int  # as displayed: rotation and pixel aspect applied
    height: int
    coded_width: int
    coded_height: int
    frame_rate: Fraction | None
    variable_frame_rate: bool
    video_codec: str
    pixel_format: str | None
    rotation: int  # degrees clockwise the picture is turned for display
    mirrored: bool
    pixel_aspect_ratio: Fraction
    hdr: str | None  # "pq", "hlg" or None
    has_alpha: bool
    streams: tuple[StreamInfo, ...]
    keyframes: tuple[Fraction, ...] | None = None  # None: not asked for
    keyframes_truncated: bool = False
    index: int = 0  # the decoder pool's protocol: every answer carries its request index
    source_identity: str = field(default="", compare=False)


def describe(generator: ImageGenerator, *, keyframes: bool = False) -> AssetInfo:
    """The facts of ``generator``'s asset; its first picture is decoded for what only frames carry
    (the display matrix, the transfer function, the pixel format actually decoded)."""
    playhead = generator.playhead
    container: Any = playhead.container
    stream: Any = playhead.stream
    origin: Fraction = playhead.origin
    try:
        frame, stamps, truncated = _read(container, stream, keyframes=keyframes)
        layout, _ = plan_frame(frame, RenderOptions(), stream=stream, max_output_pixels=2**62)
        rotation, mirrored = orientation_from_matrix(display_matrix(frame, stream))
        pixel_format = frame.format.name
        hdr = hdr_transfer(int(frame.color_trc))
        time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 1_000_000)
        times = tuple(sorted(stamp * time_base - origin for stamp in stamps)[:_MAX_KEYFRAMES]) if keyframes else None
        info = AssetInfo(
            duration=generator.duration,
            width=layout.size[0],
            height=layout.size[1],
            coded_width=frame.width,
            coded_height=frame.height,
            frame_rate=_frame_rate(stream),
            variable_frame_rate=_variable_rate(stream),
            video_codec=stream.codec_context.name,
            pixel_format=pixel_format,
            rotation=rotation,
            mirrored=mirrored,
            pixel_aspect_ratio=sample_aspect_ratio(frame, stream),
            hdr=hdr,
            has_alpha=_has_alpha(pixel_format, stream),
            streams=tuple(_stream_info(s) for s in container.streams),
            keyframes=times,
            keyframes_truncated=truncated,
        )
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise EngineError("decode_failed", "the source could not be read to the end of its description") from exc
    if info.duration is None:  # the container states none: the packets' timestamps tell (it reopens the asset)
        with contextlib.suppress(EngineError):
            info = dataclasses.replace(info, duration=generator.scan_duration())
    return info


def _read(container: Any, stream: Any, *, keyframes: bool) -> tuple[Any, set[int], bool]:
    """One pass from the start (the container is fresh: no seek, which raw streams cannot do): the
    first decodable picture, and with ``keyframes`` every keyframe packet's timestamp (read, not
    decoded) and whether the list was cut at ``_MAX_KEYFRAMES``."""
    frame, stamps = None, set()
    for read, packet in enumerate(container.demux(stream), 1):
        stamp = packet.pts if packet.pts is not None else packet.dts
        if keyframes and packet.is_keyframe and stamp is not None:
            stamps.add(stamp)
            if len(stamps) > _MAX_KEYFRAMES:
                return frame, stamps, True
        if frame is None and packet.size:
            decoded = packet.decode()
            frame = decoded[0] if decoded else None
        if frame is not None and not keyframes:
            break
        if frame is None and read >= _FIRST_FRAME_PACKETS:
            break
    if frame is None:
        with contextlib.suppress(av.error.EOFError):
            for drained in stream.codec_context.decode(None):  # a stream of one picture, or a short one
                frame = drained
                break
    if frame is None:
        raise EngineError("decode_failed", "no picture could be decoded from the video stream")
    return frame, stamps, False


def _frame_rate(stream: Any) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _variable_rate(stream: Any) -> bool:
    """From the index where the container has one (MP4, AVI: every frame's time), else from FFmpeg's
    base rate against the average (they differ when frames are not evenly spaced)."""
    entries = stream.index_entries
    if len(entries) > 2:
        stamps = sorted(entries[i].timestamp for i in range(min(len(entries), _VFR_SAMPLE)))
        steps = [b - a for a, b in itertools.pairwise(stamps) if b > a]
        if steps:
            return max(steps) - min(steps) > _VFR_SPREAD * max(steps)
    average, base = stream.average_rate, stream.base_rate
    if not average or not base:
        return False
    return abs(Fraction(average) - Fraction(base)) > _VFR_SPREAD * Fraction(base)


def _has_alpha(pixel_format: str | None, stream: Any) -> bool:
    if pixel_format is not None:
        with contextlib.suppress(ValueError):
            if any(c.is_alpha for c in av.VideoFormat(pixel_format).components):
                return True
    # VP8/VP9 in WebM keep alpha in a side channel the default decoder does not output.
    return str(stream.metadata.get("alpha_mode", stream.metadata.get("ALPHA_MODE", ""))) == "1"


def _stream_info(stream: Any) -> StreamInfo:
    context = stream.codec_context
    width = getattr(context, "width", None) if stream.type == "video" else None
    height = getattr(context, "height", None) if stream.type == "video" else None
    return StreamInfo(
        index=stream.index,
        type=stream.type,
        codec=context.name if context is not None else None,
        width=width or None,
        height=height or None,
        language=stream.language,
        default=bool(stream.disposition & av.stream.Disposition.default),
    )
