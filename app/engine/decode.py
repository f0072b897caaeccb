"""Decoding one video stream: (re)opening, seeking, and the packet loop that turns packets into frames
with exact timestamps.

After a seek, frames are trusted only from the first keyframe the decoder outputs: leading pictures of
an open GOP (and the frames of a keyframe whose DTS is before the target but PTS after) would otherwise
be wrong or missing, so where a seek lands after the target the caller backs off and seeks earlier
(``Playhead.seek_back``, the one place that does).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import av
import av.error
from av.codec.context import ThreadType

from app.engine.container import (
    AV_TIME_BASE,
    NamedReader,
    cap_pixels,
    close_container,
    open_container,
    timeline_origin,
)
from app.engine.cursor import ANSWER_KNOWN, Cursor, Decoded
from app.engine.errors import EngineError
from app.engine.nal import H264Disposable
from app.engine.options import SourceLimits

if TYPE_CHECKING:
    from app.engine.sources import Source

# Two decoder threads make an exact grab markedly faster on an idle machine, for a little more CPU (a
# frame decoded past the target, hand-offs between threads): the decoder pool asks for one when it is busy.
DEFAULT_DECODE_THREADS = 2

BACKOFF_SECONDS = (Fraction(1), Fraction(4), Fraction(16), Fraction(64))  # how far before the target seek_back aims
KEYFRAME_SCAN_PACKETS = 5000  # packets read past a seek to find a keyframe (a 60 fps GOP of 80 s)

_T = TypeVar("_T")


def set_decoder_threads(stream: Any, codec: str, threads: int) -> None:
    """Set up a stream's decoder (the stream, or the decoder itself) for ``threads`` (before its first packet).

    * One: slice threads only (the decoder as it comes; most streams have one slice per picture).
    * More, HEVC: slice threads. x265 and most software encoders code rows as parallel substreams
      (WPP) that slice threads decode side by side within one picture; frame threads measured slower
      there (keyframes and exact grabs alike).
    * More, anything else: frame threads (slices where the codec has no frame threads): a grab that
      decodes a run of frames runs on that many cores. Each thread holds back one frame, which the
      early answer absorbs: the one packet fed past the target decodes in the background meanwhile.
    """
    if threads <= 1:
        stream.thread_type = "SLICE"
        return
    stream.thread_type = "SLICE" if codec == "hevc" else "AUTO"
    stream.thread_count = threads


class AlphaVp9Decoder:
    """A VP9 stream with alpha (WebM ``alpha_mode=1``: the alpha plane is a second VP9 stream in each
    block's BlockAdditional), decoded by libvpx, which reads it and gives yuva420p; FFmpeg's own vp9
    decoder drops it. libvpx marks no picture as a keyframe, so the packets' flags do (the trust after a
    seek rests on them). Otherwise it is the codec context it wraps."""

    def __init__(self, stream: Any) -> None:
        context = av.CodecContext.create("libvpx-vp9", "r")
        context.extradata = stream.codec_context.extradata
        context.options = dict(stream.codec_context.options)  # the pixel cap
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "key_pts", set())

    @staticmethod
    def wanted(stream: Any) -> bool:
        return stream.codec_context.name == "vp9" and str(stream.metadata.get("alpha_mode", "")) == "1"

    def decode(self, packet: Any = None) -> list[av.VideoFrame]:
        if packet is not None and packet.is_keyframe and packet.pts is not None:
            self.key_pts.add(packet.pts)
        frames: list[av.VideoFrame] = self.context.decode(packet)
        for frame in frames:
            if frame.pts in self.key_pts:
                frame.key_frame = True  # type: ignore[misc]  # (settable; the stubs say read-only)
        return frames

    def __getattr__(self, name: str) -> Any:
        return getattr(self.context, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.context, name, value)


class PicturesDropped(Exception):
    """A decode error from frame threads: pictures decoded fine may have been lost with it."""


@dataclass
class DecodeStats:
    """What one generator's decoder has done so far (counts only grow): for tests, the benchmark and
    diagnostics, which check the work a grab takes, not only its answer."""

    seeks: int = 0  # demuxer seeks (a failed one included)
    reopens: int = 0  # reopenings of the container, to read from the very start (the first open not counted)
    keyframes_decoded: int = 0  # single keyframes decoded on their own, for a tolerant grab


class Playhead:
    """The open asset and the decoder's place in its video stream.

    Shares the search's ``Cursor``: a seek or reopen updates it, and the packet loop reads its target.
    """

    _dts_clock_next: int | None  # the AVI clock's next time (see _use_stream); None: not known yet

    def __init__(
        self,
        source: Source | Path | str,
        opened: tuple[Any, NamedReader],
        stream: Any,
        *,
        limits: SourceLimits,
        decode_threads: int,
        cursor: Cursor,
        retire: Callable[[Any, NamedReader | None], None] = close_container,
    ) -> None:
        self.source = source
        self.limits = limits
        # How a reopen disposes of the old container (and its file): a render may still read through
        # it (see app.engine.images.close_after_renders).
        self.retire = retire
        self.container: Any = opened[0]
        self.file: NamedReader | None = opened[1]
        self.stream_index: int = stream.index
        self.decode_threads = decode_threads
        self.cursor = cursor
        self.stats = DecodeStats()
        self._use_stream(stream)
        self.time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, AV_TIME_BASE)
        self.origin = timeline_origin(self.container, stream)
        # Learnt once per asset, kept across reopens:
        self.synthetic_pts = False  # the stream has no timestamps (learnt on the first decode from the start)
        self.first_frame_pts: int | None = None
        self.pts_before_dts = False  # a packet shown before it is decoded: the early answer is off

    # ------------------------------------------------------------------ the clock

    def pts_at(self, seconds: Fraction) -> int:
        """The stream timestamp at a time on the asset timeline (the frame on screen then has pts <= it)."""
        return math.floor((seconds + self.origin) / self.time_base)

    def time_of(self, pts: int) -> Fraction:
        return pts * self.time_base - self.origin

    def frame_duration(self, frame: av.VideoFrame) -> int:
        if frame.duration and frame.duration > 0:
            return int(frame.duration)
        rate = self.stream.average_rate or self.stream.guessed_rate
        if rate:
            return max(1, round(1 / (Fraction(rate) * self.time_base)))
        return 0

    # ------------------------------------------------------------------ moving

    def seek(self, pts: int, *, backward: bool = True) -> None:
        self.stats.seeks += 1
        cursor = self.cursor
        cursor.target = None
        cursor.key_seen = None
        cursor.lookahead = None
        cursor.live = False
        cursor.at_start = False
        self.pts_guess.reset_sequence()
        # The DTS clock restarts from the first DTS after the seek: a picture flushed out with none
        # before that has no time (and is left out) rather than the clock's time from before the seek.
        self._dts_clock_next = None
        self.container.seek(pts, stream=self.stream, backward=backward, any_frame=False)
        if self.decoder is not self.stream.codec_context:
            self.decoder.flush_buffers()  # (the seek flushes the stream's own decoder only)

    def reopen(self) -> None:
        """Back to the very start: reopening is the one way to reach it in every format (a seek to
        the first timestamp is refused by some demuxers and lands late in others)."""
        self.stats.reopens += 1
        container, file = self.container, self.file
        self.container, self.file = None, None
        self.retire(container, file)
        self.container, self.file = open_container(self.source, self.limits)
        stream = self.container.streams.get(self.stream_index)[0]
        cap_pixels(stream, self.limits)  # a fresh decoder: the cap again, and the size checked again
        self._use_stream(stream)

    def close(self) -> None:
        container, file = self.container, self.file
        self.container, self.file = None, None
        close_container(container, file)

    def seek_back(self, target: int, land: Callable[[int | None], _T | None], *, to_start: bool = True) -> _T | None:
        """The one "back off and seek earlier" loop. ``land(aim)`` goes to ``aim`` (None: the very start)
        and reads from there, giving None where it landed after the target (or on nothing); then the
        next aim is 1, 4, 16 and 64 s before the target, and last (with ``to_start``) the start."""
        for step in (Fraction(0), *BACKOFF_SECONDS):
            found = land(target - math.ceil(step / self.time_base))
            if found is not None:
                return found
        return land(None) if to_start else None

    def _use_stream(self, stream: Any) -> None:
        self.pts_guess = PtsGuesser()
        # AVI stores decode timestamps only; the pts libavformat guesses for its packets come back
        # from the decoder out of order. The ffmpeg CLI times AVI frames by the DTS the decoder hands
        # out with each frame (monotonic, in presentation order), and so do we.
        self.dts_clock = self.container.format.name == "avi"
        self._dts_clock_next = None
        self.cursor.forget_open()
        context = stream.codec_context
        self.decoder: Any = AlphaVp9Decoder(stream) if AlphaVp9Decoder.wanted(stream) else context
        set_decoder_threads(self.decoder, context.name, self.decode_threads)
        self.stream = stream
        self._disposable = H264Disposable(context.extradata) if context.name == "h264" else None
        self._live: Iterator[Decoded] = iter(())

    # ------------------------------------------------------------------ frames

    def frames_after_seek(self, target: int) -> Iterator[Decoded]:
        try:
            self.seek(target)
        except av.error.FFmpegError:
            return iter(())
        return self.decode(trust_all=False)

    def frames_from_start(self) -> Iterator[Decoded]:
        if not self.cursor.at_start:
            self.reopen()
        self.cursor.at_start = False
        return self.decode(trust_all=True, from_start=True)

    def continue_frames(self) -> Iterator[Decoded]:
        """The lookahead, then the frames after it from the decode that found it."""
        ahead = self.cursor.lookahead
        assert ahead is not None
        self.cursor.lookahead = None

        def chain() -> Iterator[Decoded]:
            # Through a plain iterator: closing this chain must not close the live decoder it reads.
            yield ahead
            live = self._live
            yield from iter(lambda: next(live, None), None)

        return chain()

    def decode(self, *, trust_all: bool, from_start: bool = False) -> Iterator[Decoded]:
        """Decoded frames in presentation order with exact timestamps.

        ``trust_all`` is for decoding from the very start; after a seek, frames before the first
        keyframe the decoder outputs are dropped (see the module docstring).
        """
        generator = self._decode_frames(trust_all=trust_all, from_start=from_start)
        self._live = generator
        self.cursor.live = True
        return generator

    def _decode_frames(self, *, trust_all: bool, from_start: bool) -> Iterator[Decoded]:
        stream, cursor = self.stream, self.cursor
        codec = self.decoder
        trusted = trust_all
        next_synthetic = 0
        errors = 0
        produced = 0
        decoded_pts: list[int] = []  # pts of the packets decoded so far, sorted
        hidden_key: int | None = None  # pts of a keyframe decoded after the seek but hidden by an edit list
        given_pts: set[int] = set()  # pts of the frames given out so far
        for packet in self.container.demux(stream):
            if packet.pts is not None and packet.dts is not None and packet.pts < packet.dts:
                self.pts_before_dts = True
            # The latest picture decoded that is still <= the target (the target changes between the
            # grabs that continue one decode). Only a picture that decoded may stand in for the ones
            # before it: a corrupt one won't show.
            latest_wanted = _at_most(decoded_pts, cursor.target)
            if latest_wanted in given_pts and self._after_target(packet, cursor.target):
                # That picture is out, and nothing to come shows before the target: the answer is
                # certain. The consumer may stop here; if it goes on, this packet is decoded next.
                yield ANSWER_KNOWN
                latest_wanted = _at_most(decoded_pts, cursor.target)
            skippable = self._skippable(packet, latest_wanted, cursor.target)
            if skippable and self._disposable is not None and self._disposable(bytes(packet)):
                continue  # nothing refers to it: not even handed to the decoder (see app.engine.nal)
            codec.skip_frame = "NONREF" if skippable else "DEFAULT"
            try:
                frames = codec.decode(packet)
            except av.error.EOFError:
                break
            except (av.error.FFmpegError, ValueError) as exc:
                if packet.pts is None or cursor.target is None or packet.pts <= cursor.target:
                    self.check_size(codec.width, codec.height)  # the decoder refused a picture over the cap
                if codec.thread_count > 1 and codec.thread_type & ThreadType.FRAME:
                    # A frame-threaded decoder reports a damaged picture's error a picture or two late,
                    # and PyAV drops the pictures it had received in the same call: decode again.
                    raise PicturesDropped from exc
                errors += 1
                if errors > 1000 and produced == 0:
                    raise EngineError("decode_failed", "the video stream could not be decoded") from exc
                continue
            if packet.pts is not None:
                bisect.insort(decoded_pts, packet.pts)
                if not trusted and hidden_key is None and packet.is_keyframe and packet.is_discard:
                    hidden_key = packet.pts
            for frame in frames:
                self.check_size(frame.width, frame.height)
                if self.dts_clock:
                    # Frames flushed at the end carry no DTS: the clock runs on by their duration.
                    pts = frame.dts if frame.dts is not None else self._dts_clock_next
                    if pts is not None:
                        self._dts_clock_next = pts + self.frame_duration(frame)
                else:
                    pts = self.pts_guess.guess(frame.pts, frame.dts)
                if from_start and produced == 0 and pts is None:
                    self.synthetic_pts = True
                if self.synthetic_pts:
                    # No timestamps in the stream at all (raw Annex-B): its only clock is the
                    # frame durations, counted from 0 exactly as the ffmpeg CLI does.
                    pts = next_synthetic
                    next_synthetic += self.frame_duration(frame)
                elif pts is None:
                    continue
                produced += 1
                # Trusted from the first keyframe out of the decoder, or from the first picture at or after
                # a keyframe it decoded but does not output (before an edit list's start: a clip that
                # starts mid-GOP). Pictures before either are an open GOP's leading ones.
                if not trusted and not frame.key_frame and (hidden_key is None or pts < hidden_key):
                    continue
                trusted = True
                decoded = Decoded(frame, int(pts))
                if from_start and self.first_frame_pts is None:
                    self.first_frame_pts = decoded.pts
                given_pts.add(decoded.pts)
                if frame.key_frame:
                    if cursor.key_seen is not None and decoded.pts > cursor.key_seen:
                        cursor.longest_gop = max(cursor.longest_gop, decoded.pts - cursor.key_seen)
                    cursor.key_seen = decoded.pts
                yield decoded

    def check_size(self, width: int | None, height: int | None) -> None:
        """Refuse a picture over the pixel cap wherever it shows up: the size may change mid-stream (raw
        H.264/HEVC, MPEG-TS, VP9), and a decoder that refused such a picture (the cap is its option too)
        would otherwise leave an earlier frame standing as the answer."""
        if (width or 0) * (height or 0) > self.limits.max_pixels:
            raise EngineError("source_too_many_pixels", "a video frame's size is over the limit")

    def _after_target(self, packet: Any, target: int | None) -> bool:
        """Whether this packet, and so every one after it, shows after the target: packets come in
        decode order, and no packet is shown before it is decoded (pts >= dts; an asset where one was
        gets no early answers). Then the latest picture decoded at or before the target is the answer."""
        return (
            target is not None
            and packet.dts is not None
            and packet.dts > target
            and not self.pts_before_dts
            and not self.synthetic_pts
            and not self.dts_clock
        )

    def _skippable(self, packet: Any, latest_wanted: int | None, target: int | None) -> bool:
        """Whether the decoder may drop this packet's picture if nothing refers to it: only when a
        later picture that is still <= the target is already known, so this one can't be the answer.
        (The decoder still decodes it when it is a reference for others.)"""
        return (
            target is not None
            and not self.synthetic_pts
            and not self.dts_clock  # a skipped picture would shift every later frame's DTS
            and packet.pts is not None
            and latest_wanted is not None
            and packet.pts < latest_wanted
        )

    # ------------------------------------------------------------------ single keyframes

    def keyframe_packets(self) -> Iterator[Any]:
        """The keyframe packets from the demuxer's position on, read and not decoded (those an edit list
        hides left out), for at most ``KEYFRAME_SCAN_PACKETS`` packets."""
        try:
            for count, packet in enumerate(self.container.demux(self.stream)):
                if packet.size == 0 or count > KEYFRAME_SCAN_PACKETS:
                    return
                if packet.is_keyframe and packet.pts is not None and not packet.is_discard:
                    yield packet
        except av.error.FFmpegError:
            return

    def decode_one_keyframe(self) -> Decoded | None:
        """The first keyframe after a seek, decoding that one packet and draining the decoder (no
        later pictures fed just to push it out of the reorder buffer)."""
        for packet in self.container.demux(self.stream):
            if packet.size and not packet.is_keyframe:
                continue
            return self.decode_keyframe_packet(packet)
        return None

    def decode_keyframe_packet(self, packet: Any) -> Decoded | None:
        """The keyframe in this packet (an empty one: the decoder drained), decoded alone."""
        self.stats.keyframes_decoded += 1
        codec = self.decoder
        codec.skip_frame = "DEFAULT"
        try:
            frames = [*codec.decode(packet), *codec.decode(None)] if packet.size else codec.decode(None)
        except (av.error.FFmpegError, ValueError):
            self.check_size(codec.width, codec.height)
            return None
        for frame in frames:
            self.check_size(frame.width, frame.height)
            pts = self.pts_guess.guess(frame.pts, frame.dts)
            if frame.key_frame and pts is not None:
                return Decoded(frame, int(pts))
        return None


class PtsGuesser:
    """FFmpeg's ``best_effort_timestamp`` (``guess_correct_pts``), which PyAV does not expose.

    Containers such as AVI carry only decode timestamps, so the "pts" a decoder hands back after
    reordering is not monotonic; FFmpeg (and so the ffmpeg CLI) then trusts the DTS instead. The
    counts carry across seeks within one open asset, so a seek does not forget what was learnt.
    """

    def __init__(self) -> None:
        self.faulty_pts = 0
        self.faulty_dts = 0
        self.last_pts: int | None = None
        self.last_dts: int | None = None

    def guess(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        elif pts is not None:
            self.last_dts = pts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        elif dts is not None:
            self.last_pts = dts
        if (self.faulty_pts <= self.faulty_dts or dts is None) and pts is not None:
            return pts
        return dts

    def reset_sequence(self) -> None:
        """After a seek the previous timestamps are no reference (the fault counts stay)."""
        self.last_pts = self.last_dts = None


def _at_most(ordered: list[int], limit: int | None) -> int | None:
    """The largest value <= limit in a sorted list (None: none, or no limit)."""
    if limit is None:
        return None
    at = bisect.bisect_right(ordered, limit)
    return ordered[at - 1] if at else None
