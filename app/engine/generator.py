"""The image generator: "this asset, at this time" -> the right frame, rendered and encoded.

Modelled on AVAssetImageGenerator: build one from an asset and options, then ask for
``image_at(t)`` or ``images_for(times)``. One generator holds its asset open, so a second grab
from the same asset skips the open and the probe.

How a frame is chosen (the time contract):

* The asset timeline starts at 0 at the container's start time (FFmpeg's ``start_time``, which
  already honours MP4 edit lists), kept exact as a Fraction.
* With zero tolerance, t gets the frame on screen at t: the last frame whose presentation time is
  <= t; the first frame for t before it; the last frame for t up to the end of its display.
* Seek by timestamp to the keyframe before the target and decode forward. After a seek, frames
  are trusted only from the first keyframe the decoder outputs: leading pictures of an open GOP
  (and the frames of a keyframe whose DTS is before the target but PTS after) would otherwise be
  wrong or missing, so when the target lies before that keyframe we back off and seek earlier.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import io
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import av
import av.error
from av.codec.context import ThreadType

from app.engine.errors import EngineError
from app.engine.nal import H264Disposable
from app.engine.options import CONTENT_TYPES, EncodeOptions, GrabOptions, RenderOptions, SourceLimits
from app.engine.sources import Source
from app.engine.timeparse import TimeSpec, format_rational_time, parse_time

if TYPE_CHECKING:
    from app.engine.render import FrameMetadata

# Demuxers we accept. Probing picks among these only, whatever the name or extension says.
FORMAT_WHITELIST = "mov,matroska,mpegts,avi,flv,ivf,h264,hevc,mxf,hls,mpeg"
_DEMUXER_OPTIONS = {
    "format_whitelist": FORMAT_WHITELIST,
    # Every byte comes through our own I/O (the source's reader, nested opens via _NestedOpener),
    # so FFmpeg may open no protocol at all itself: "none" matches none.
    "protocol_whitelist": "none",
    # A live HLS playlist is read as the snapshot it is (see _ended_playlist); should one get past
    # that, it is reloaded once at most. (Not m3u8_hold_counters: FFmpeg counts every reopening of the
    # segment read last as a reload without news, a seek back into it among them, so a low cap turned
    # such seeks into an end of stream, and frames after it into "past the end".)
    "max_reload": "1",
}

_AV_TIME_BASE = 1_000_000
_AVFMT_TS_DISCONT = 0x0200
_BACKOFF_SECONDS = (Fraction(1), Fraction(4), Fraction(16), Fraction(64))


# Two decoder threads take 25-40% off an exact grab on an idle machine, for up to ~20% more CPU (a frame
# decoded past the target, hand-offs between threads): the decoder pool asks for one when it is busy.
DEFAULT_DECODE_THREADS = 2


def set_decoder_threads(stream: Any, codec: str, threads: int) -> None:
    """Set up a stream's decoder for ``threads`` (before its first packet).

    * One: slice threads only (the decoder as it comes; most streams have one slice per picture).
    * More, HEVC: slice threads. x265 and most software encoders code rows as parallel substreams
      (WPP) that slice threads decode side by side within one picture; frame threads measured slower
      there (a 4K keyframe 52 -> 43 ms, exact grabs 10-20% faster on slices).
    * More, anything else: frame threads (slices where the codec has no frame threads): a grab that
      decodes a run of frames runs on that many cores. Each thread holds back one frame, which the
      early answer absorbs: the one packet fed past the target decodes in the background meanwhile.
    """
    if threads <= 1:
        stream.thread_type = "SLICE"
        return
    stream.thread_type = "SLICE" if codec == "hevc" else "AUTO"
    stream.thread_count = threads


@dataclass(frozen=True)
class FrameResult:
    """A generated image, with the frame's exact time (``AVAssetImageGenerator`` ``actualTime``)."""

    index: int  # position in the request
    requested: TimeSpec
    requested_time: Fraction  # resolved seconds on the asset timeline
    actual_time: Fraction  # the returned frame's presentation time on the asset timeline
    pts: int  # the frame's timestamp in the stream's time base
    time_base: Fraction
    image: bytes
    content_type: str
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    source_identity: str = ""  # set by whoever resolved the source (the decoder pool)

    @property
    def ok(self) -> bool:
        return True

    @property
    def actual_time_rational(self) -> str:
        """``value/timescale`` of the frame's time on the asset timeline, as in CMTime: the timescale is
        the stream's (reduced only where the timeline origin is not a whole number of its ticks)."""
        return format_rational_time(self.actual_time, self.time_base)


@dataclass(frozen=True)
class FrameFailure:
    """A requested time that produced no image, with its error (``AVAssetImageGenerator.Result`` failed)."""

    index: int
    requested: TimeSpec
    error: EngineError

    @property
    def ok(self) -> bool:
        return False


@dataclass
class _Decoded:
    """A decoded frame with its exact timestamp (synthesised only where the stream has none)."""

    frame: av.VideoFrame
    pts: int
    image: _Rendered | None = None  # its image, when it was made already (then no frame is kept)


# Given out by the decoder before a packet that can only show after the target, once the frame on
# screen at the target is out: the answer is certain without decoding on to the next frame.
_ANSWER_KNOWN = _Decoded(cast(av.VideoFrame, None), -1)


@dataclass(frozen=True)
class _PacketKey:
    """A keyframe known by its packet's pts (where the container has no full index)."""

    pts: int


_KEYFRAME_SCAN_PACKETS = 5000  # packets read past a seek to find a keyframe (a 60 fps GOP of 80 s)


class _PicturesDropped(Exception):
    """A decode error from frame threads: pictures decoded fine may have been lost with it."""


_Rendered = tuple[bytes, int, int, dict[str, float]]  # image, width, height, timings
_ImageKey = tuple[int, RenderOptions, EncodeOptions]  # a frame (pts) and what it was made into
_PIPELINE_DEPTH = 2  # decoded frames that may wait for the render thread (memory: a few frames)


@dataclass
class _Pending:
    """A requested time whose frame is decoded and whose image is being made."""

    index: int
    requested: TimeSpec
    seconds: Fraction
    decoded: _Decoded
    decode_seconds: float
    render: Future[_Rendered]


@functools.cache
def _render_thread() -> ThreadPoolExecutor:
    """One render thread per process: a decoder worker runs one task at a time."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="stillframe-render")


def _close_in_order(container: Any, file: BinaryIO | io.RawIOBase | None) -> None:
    """Close a container, then the file it reads (nested HLS readers must not outlive it)."""
    with contextlib.suppress(Exception):
        container.close()
    if file is not None:
        with contextlib.suppress(Exception):
            file.close()


class ImageGenerator:
    """Generates images from one asset. Not thread-safe: one generator serves one caller at a time."""

    _key_shift: int | None = None  # a keyframe's pts less its index timestamp (see _index_shift)
    _key_seen: int | None = None  # the last keyframe decoded since a seek (pts); see _can_continue
    _cues_read = False  # Matroska: whether a seek has loaded its Cues (see _read_cues)

    def __init__(
        self,
        source: Source | Path | str,
        options: GrabOptions | None = None,
        *,
        max_output_pixels: int = 7680 * 4320,
        limits: SourceLimits | None = None,
        decode_threads: int = DEFAULT_DECODE_THREADS,
    ) -> None:
        self.options = options or GrabOptions()
        self.decode_threads = max(1, decode_threads)
        self.max_output_pixels = max_output_pixels
        self.limits = limits or SourceLimits()
        self._source = source
        self._file: BinaryIO | io.RawIOBase | None = None
        self._container: Any = None
        self._decode_target: int | None = None
        self._last_keyframe: tuple[int | _PacketKey, int] | None = None  # index entry or packet -> its pts
        self._last_image: tuple[_ImageKey, _Rendered] | None = None
        self._open()

    # ------------------------------------------------------------------ opening

    def _open(self) -> None:
        started = time.perf_counter()
        self._open_container()
        try:
            self._select_stream()
        except BaseException:
            self.close()
            raise
        self._open_seconds = time.perf_counter() - started

    def _open_container(self) -> None:
        source = self._source
        if isinstance(source, str | Path):
            source = _TrustedFile(Path(source))
        try:
            self._file = _Named(_ended_playlist(source.open()), source.display_name)
            io_open = _NestedOpener(source)
        except OSError as exc:
            raise EngineError("source_not_found", "the source could not be opened") from exc
        try:
            self._container = av.open(self._file, mode="r", options=dict(_DEMUXER_OPTIONS), io_open=io_open)
        except EngineError:
            self.close()
            raise
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            self.close()
            if io_open.refusal is not None:
                raise io_open.refusal from exc  # FFmpeg swallowed our refusal: say what it was
            raise EngineError("unsupported_media", "the source is not a video file this service can read") from exc

    def _select_stream(self) -> None:
        container = self._container
        if len(container.streams) > self.limits.max_streams:
            raise EngineError("source_too_many_streams", f"the source has more than {self.limits.max_streams} streams")
        video = [s for s in container.streams.video if not _is_attached_picture(s)]
        if not video:
            raise EngineError("no_video_stream", "the source has no video stream")
        wanted = self.options.stream
        if wanted is not None:
            if not 0 <= wanted < len(video):
                raise EngineError("invalid_parameter", f"stream: the source has {len(video)} video stream(s)")
            stream = video[wanted]
        else:
            default = [s for s in video if s.disposition & av.stream.Disposition.default]
            decodable = [s for s in (default or video) if s.codec_context is not None] or video
            stream = decodable[0]
        if stream.codec_context is None:
            raise EngineError("unsupported_media", "the video codec of this source is not supported")
        context = stream.codec_context
        if (context.width or 0) * (context.height or 0) > self.limits.max_pixels:
            raise EngineError("source_too_many_pixels", "the video's frame size is over the limit")
        # The decoder enforces the same cap on every frame, so a size change mid-stream can't dodge it.
        context.options = {**context.options, "max_pixels": str(self.limits.max_pixels)}
        self._stream_index = stream.index
        self._use_stream(stream)
        self._time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, _AV_TIME_BASE)
        self._origin = self._timeline_origin()
        self._keyframes = self._index_keyframes()
        self._synthetic_pts = False  # learnt on the first decode from the start
        self._at_start = True  # nothing demuxed yet: decoding now starts at the stream's start
        self._lookahead: _Decoded | None = None  # first frame past the previous target, still usable
        self._previous: _Decoded | None = None  # the frame answered last, with _lookahead the one after it
        self._decoder_live = False  # the decoder state follows on from the last target
        self._duration_cache: Fraction | None = None
        self._last_frame: _Decoded | None = None  # the stream's last frame, once seen
        self._first_frame_pts: int | None = None
        self._pts_before_dts = False  # a packet shown before it is decoded: the early answer is off
        self._metadata: FrameMetadata | None = None  # side data of the stream's frames, once one is rendered
        duration = self.duration
        if duration is not None and duration > self.limits.max_duration:
            raise EngineError("source_too_long", "the source's duration is over the limit")

    def _timeline_origin(self) -> Fraction:
        """Where t=0 is on the stream's clock, exact, as the ffmpeg CLI places it.

        Normally the container's start time (MP4 edit lists already folded in by FFmpeg's mov
        demuxer). FFmpeg keeps that in microseconds, rounded from the earliest stream's start; where
        a stream's exact start rounds to it we take the exact value, so a frame at the very start has
        actual time exactly 0. Formats whose timestamps are discontinuous by nature (MPEG-TS,
        MPEG-PS, HLS) start at the video stream's own start, ignoring an audio track that starts
        earlier: the CLI does the same, and an MPEG-TS that starts at 1.48 s has t=0 at its first frame.
        """
        container, video = self._container, self._stream
        video_start = video.start_time * Fraction(video.time_base) if video.start_time is not None else None
        if video_start is not None and container.format.flags & _AVFMT_TS_DISCONT:
            return video_start
        start_us = container.start_time
        if start_us is None:
            return video_start or Fraction(0)
        for stream in (video, *container.streams):
            if stream.start_time is not None and stream.time_base:
                exact = stream.start_time * Fraction(stream.time_base)
                if round(exact * _AV_TIME_BASE) == start_us:
                    return exact
        return Fraction(start_us, _AV_TIME_BASE)

    def _index_keyframes(self) -> list[int]:
        """The container's keyframe index, where it lists the whole stream (an MP4's sample table, an
        AVI's idx1); else nothing. Matroska cues, FLV metadata and fragmented MP4s index some keyframes
        up front and add others as they are read: the nearest keyframe to t may be missing from them."""
        try:
            stream = self._stream
            entries = stream.index_entries
            complete = self._container.format.name == "avi" or 0 < (stream.frames or 0) <= len(entries)
            if not complete:
                return []
            return sorted({e.timestamp for e in entries if e.is_keyframe and not e.is_discard})
        except (AttributeError, av.error.FFmpegError):
            return []

    # ------------------------------------------------------------------ public API

    @property
    def duration(self) -> Fraction | None:
        """The asset's duration in seconds, exact where the container states it."""
        if self._duration_cache is not None:
            return self._duration_cache
        container = self._container
        if container.duration is not None and container.duration > 0:
            self._duration_cache = Fraction(container.duration, _AV_TIME_BASE)
        elif self._stream.duration:
            start = self._stream.start_time or 0
            self._duration_cache = (start + self._stream.duration) * self._time_base - self._origin
        return self._duration_cache

    def image_at(self, t: str | Fraction | int | TimeSpec) -> FrameResult:
        """The image for one requested time; raises EngineError when there is none."""
        result = next(iter(self.images_for([t])))
        if isinstance(result, FrameFailure):
            raise result.error
        return result

    def images_for(
        self, times: Sequence[str | Fraction | int | TimeSpec], *, ordered: bool = True
    ) -> Iterator[FrameResult | FrameFailure]:
        """One result per requested time.

        Times are decoded in ascending order, in one forward pass per GOP, each distinct frame
        rendered once. With ``ordered`` the results come in request order; without it, each as soon
        as it exists (ascending time), carrying its request ``index``.
        """
        specs: list[tuple[int, TimeSpec | EngineError]] = []
        for index, raw in enumerate(times):
            try:
                specs.append((index, parse_time(raw)))
            except EngineError as exc:
                specs.append((index, exc))
        produced = self._produce(specs)
        if not ordered:
            yield from produced
            return
        pending: dict[int, FrameResult | FrameFailure] = {}
        next_index = 0
        for item in produced:
            pending[item.index] = item
            while next_index in pending:
                yield pending.pop(next_index)
                next_index += 1

    def close(self) -> None:
        container, file = getattr(self, "_container", None), getattr(self, "_file", None)
        self._container, self._file = None, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()

    def __del__(self) -> None:
        # Close in order (container, then the files it reads) even when nobody called close():
        # PyAV's nested HLS readers corrupt the heap if garbage collection frees them first.
        self.close()

    def __enter__(self) -> ImageGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ planning

    def _produce(self, specs: list[tuple[int, TimeSpec | EngineError]]) -> Iterator[FrameResult | FrameFailure]:
        resolved: list[tuple[Fraction, int, TimeSpec]] = []
        for index, spec in specs:
            if isinstance(spec, EngineError):
                yield FrameFailure(index, TimeSpec(Fraction(0)), spec)
                continue
            try:
                duration = (self.duration or self._scan_duration()) if spec.percent else None
                seconds = spec.resolve(duration)
            except EngineError as exc:
                yield FrameFailure(index, spec, exc)
                continue
            resolved.append((seconds, index, spec))
        resolved.sort(key=lambda item: (item[0], item[1]))
        # Several times: each distinct frame is rendered and encoded on a helper thread while the next
        # one decodes (both release the GIL), so a batch costs about its decode alone on two cores.
        pipelined = len(resolved) > 1
        renders: dict[int, Future[_Rendered]] = {}  # pts -> its image (sorted: only the latest is needed)
        pending: deque[_Pending] = deque()  # decoded, waiting for their image, in time order
        try:
            for seconds, index, spec in resolved:
                try:
                    started = time.perf_counter()
                    decoded = self._frame_for(seconds)
                    decode_seconds = time.perf_counter() - started
                except EngineError as exc:
                    yield FrameFailure(index, spec, exc)
                    continue
                if decoded.pts not in renders:
                    renders = {decoded.pts: self._image_of(decoded, pipelined)}
                pending.append(_Pending(index, spec, seconds, decoded, decode_seconds, renders[decoded.pts]))
                # Out as soon as its image is ready (those of the frames decoded meanwhile usually are),
                # and at the latest when the renders fall _PIPELINE_DEPTH frames behind.
                while pending and (len(pending) > (_PIPELINE_DEPTH if pipelined else 0) or pending[0].render.done()):
                    yield self._finish(pending.popleft())
            while pending:
                yield self._finish(pending.popleft())
        finally:
            # Never leave a render running on a frame whose container may be closed next.
            for item in pending:
                with contextlib.suppress(Exception):
                    item.render.result()

    def _image_of(self, decoded: _Decoded, pipelined: bool) -> Future[_Rendered]:
        """The frame's image, made now, or the last one made if it was of the same frame with the same
        options (a scrubbing client asks for many times that land on one frame, or one keyframe)."""
        key = (decoded.pts, self.options.render, self.options.encode)
        last = self._last_image
        made = decoded.image or (last[1] if last is not None and last[0] == key else None)
        if made is not None:
            image, width, height, _ = made
            done: Future[_Rendered] = Future()
            done.set_result((image, width, height, {"render": 0.0, "encode": 0.0}))
            return done
        future = self._start_render(decoded.frame, pipelined)
        future.add_done_callback(lambda made: self._remember_image(key, made))
        return future

    def _remember_image(self, key: _ImageKey, made: Future[_Rendered]) -> None:
        if not made.cancelled() and made.exception() is None:
            self._last_image = (key, made.result())

    def _start_render(self, frame: av.VideoFrame, pipelined: bool) -> Future[_Rendered]:
        if pipelined:  # (the next frame decodes meanwhile: one core for the render)
            return _render_thread().submit(self._render, frame, 1)
        done: Future[_Rendered] = Future()
        try:
            done.set_result(self._render(frame, self.decode_threads))
        except EngineError as exc:
            done.set_exception(exc)
        return done

    def _finish(self, item: _Pending) -> FrameResult | FrameFailure:
        try:
            image, width, height, timings = item.render.result()
        except EngineError as exc:
            return FrameFailure(item.index, item.requested, exc)
        timings = {"open": self._open_seconds, "decode": item.decode_seconds, **timings}
        self._open_seconds = 0.0  # the open is paid once, by the first result
        decoded = item.decoded
        return FrameResult(
            index=item.index,
            requested=item.requested,
            requested_time=item.seconds,
            actual_time=decoded.pts * self._time_base - self._origin,
            pts=decoded.pts,
            time_base=self._time_base,
            image=image,
            content_type=CONTENT_TYPES[self.options.encode.format],
            width=width,
            height=height,
            timings=timings,
        )

    def _frame_for(self, seconds: Fraction) -> _Decoded:
        before, after = self.options.tolerance_before, self.options.tolerance_after

        def search() -> _Decoded:
            if before == 0 and after == 0:
                return self._exact(seconds)
            return self._tolerant(seconds, before, after)

        try:
            return search()
        except _PicturesDropped:
            # From now on this asset decodes on one thread, where a damaged picture's error comes with
            # its own packet, before any picture is received: the same search again, from a seek.
            self.decode_threads = 1
            self._reopen()
            self._previous = self._lookahead = None
            return search()

    def _target_pts(self, seconds: Fraction) -> int:
        return math.floor((seconds + self._origin) / self._time_base)

    def _time_of(self, pts: int) -> Fraction:
        return pts * self._time_base - self._origin

    def _end_of(self, decoded: _Decoded) -> Fraction:
        """When the last frame stops being on screen: its time plus its duration, or the container's
        duration if that is later."""
        # The frame's own duration only: a stream that says 0 ends at its last frame (as the ffmpeg
        # CLI has it), unless the container's duration says otherwise.
        end = self._time_of(decoded.pts + max(0, int(decoded.frame.duration or 0)))
        duration = self.duration
        return max(end, duration) if duration is not None else end

    def _frame_duration(self, frame: av.VideoFrame) -> int:
        if frame.duration and frame.duration > 0:
            return int(frame.duration)
        rate = self._stream.average_rate or self._stream.guessed_rate
        if rate:
            return max(1, round(1 / (Fraction(rate) * self._time_base)))
        return 0

    # ------------------------------------------------------------------ exact

    def _exact(self, seconds: Fraction) -> _Decoded:
        if seconds < 0:
            raise EngineError("no_image_at_time", "the requested time is before the start of the asset")
        target = self._target_pts(seconds)
        found = self._on_screen(target)
        if found.pts > target:  # before the first frame: the first frame
            return found
        if self._last_frame is not None and found is self._last_frame and seconds > self._end_of(found):
            raise EngineError("no_image_at_time", "the requested time is past the end of the asset")
        return found

    def _on_screen(self, target: int, *, need_next: bool = False) -> _Decoded:
        """The last frame with pts <= target (or the first frame, if target precedes it).

        Afterwards ``_lookahead`` is the frame continuing starts from: the next frame, or (when the
        answer was certain before it: ``_ANSWER_KNOWN``) the answer itself; ``need_next`` asks for
        the next frame in any case."""
        previous, ahead = self._previous, self._lookahead
        # Still the frame we answered last (ahead of it is the next one, or nothing at all)?
        if (
            previous is not None
            and previous.pts <= target
            and ((ahead is not None and target < ahead.pts) or (ahead is None and previous is self._last_frame))
        ):
            return previous
        resume = self._can_continue(target)
        backoff = iter(_BACKOFF_SECONDS)
        seek_to: int | None = None if resume else target
        while True:
            if resume:
                frames = self._continue_frames()
                trusted_from_start = True
            elif (
                seek_to is None
                or self._synthetic_pts
                or (self._first_frame_pts is not None and seek_to <= self._first_frame_pts)
                or seek_to < self._target_pts(Fraction(0))  # before the asset's start: that is the start
            ):
                frames = self._frames_from_start()
                trusted_from_start = True
            else:
                frames = self._frames_after_seek(seek_to)
                trusted_from_start = False
            resume = False
            best: _Decoded | None = None
            first: _Decoded | None = None
            self._decode_target = target
            for decoded in frames:
                if decoded is _ANSWER_KNOWN:
                    if need_next or best is None:
                        continue
                    self._lookahead = best  # stop: going on later starts again from the answer
                    break
                if first is None:
                    first = decoded
                if decoded.pts <= target:
                    best = decoded
                    continue
                self._lookahead = decoded
                break
            else:
                self._lookahead = None
                self._decoder_live = False
                if best is not None:
                    self._last_frame = best
            if first is None:
                if trusted_from_start:
                    raise EngineError("decode_failed", "no frame of the video stream could be decoded")
            elif trusted_from_start or first.pts <= target:
                if best is None:  # target precedes the first frame of the stream
                    return first
                self._previous = best
                return best
            # The seek landed after the target (or on nothing): seek earlier.
            step = next(backoff, None)
            seek_to = None if step is None else target - math.ceil(step / self._time_base)

    def _can_continue(self, target: int) -> bool:
        """Whether decoding on from the last position reaches target without a seek (same GOP, ahead)."""
        ahead = self._lookahead
        if ahead is None or not self._decoder_live or target < ahead.pts:
            return False
        if self._synthetic_pts:
            return True
        keyframes = self._keyframes
        if not keyframes:
            # No index to say where the next keyframe is: decoding on costs at most a GOP, as long as
            # the longest seen so far (at least half a second), where a seek might cost as much again.
            reach = max(math.ceil(Fraction(1, 2) / self._time_base), self._longest_gop)
            return target - ahead.pts <= reach
        # a keyframe between here and the target: seeking there is cheaper than decoding up to it
        after = bisect.bisect_right(keyframes, ahead.pts)
        return after == len(keyframes) or keyframes[after] > target

    # ------------------------------------------------------------------ tolerance

    def _tolerant(self, seconds: Fraction, before: Fraction | None, after: Fraction | None) -> _Decoded:
        low = None if before is None else seconds - before
        high = None if after is None else seconds + after

        def inside(decoded: _Decoded) -> bool:
            t = self._time_of(decoded.pts)
            return (low is None or t >= low) and (high is None or t <= high)

        # 1. A keyframe in the window, nearest to t, costs one decode.
        for candidate in self._keyframe_candidates(seconds, low, high):
            decoded = self._keyframe_at(candidate)
            if decoded is not None and inside(decoded):
                return decoded
        # 2. Otherwise the frame on screen at t, or the first frame after it inside the window.
        clamped = max(seconds, Fraction(0))
        on_screen = self._on_screen(self._target_pts(clamped), need_next=True)
        if inside(on_screen):
            return on_screen
        ahead = self._lookahead
        if ahead is not None and inside(ahead):
            return ahead
        if seconds < 0:
            raise EngineError("no_image_at_time", "the requested time is before the start of the asset")
        if self._last_frame is on_screen and seconds > self._end_of(on_screen):
            raise EngineError("no_image_at_time", "the requested time is past the end of the asset")
        # No frame starts inside the window: the frame on screen throughout it is the answer.
        return on_screen

    def _keyframe_candidates(
        self, seconds: Fraction, low: Fraction | None, high: Fraction | None
    ) -> list[int | _Decoded | _PacketKey]:
        """Keyframes to try, nearest to t first: index timestamps to decode, or frames already decoded
        while probing a container that has no index."""
        if self._synthetic_pts:
            return []
        margin = Fraction(1, 2)  # index timestamps can be DTS: the decoded PTS is checked afterwards
        keys: list[int | _Decoded | _PacketKey]
        shift = 0
        if not self._keyframes and not self._cues_read and self._container.format.name.startswith("matroska"):
            self._read_cues()
        if self._keyframes:
            # The index is sorted: the 4 nearest to t are among the 4 on either side of it (a film has
            # thousands of entries, too many to sort by Fraction distance on every grab).
            at = bisect.bisect_left(self._keyframes, self._target_pts(seconds))
            keys = [*self._keyframes[max(0, at - 4) : at + 4]]
            if keys and not self._dts_clock:
                shift = self._index_shift(self._keyframes[max(0, at - 1)])
        elif self._dts_clock:
            keys = [*self._probe_keyframes(seconds)]
        else:
            keys = [*self._keyframe_packets_around(seconds)]

        def time_of(key: int | _Decoded | _PacketKey) -> Fraction:
            return self._time_of(key + shift if isinstance(key, int) else key.pts)

        window = [
            k
            for k in keys
            if (low is None or time_of(k) >= low - margin) and (high is None or time_of(k) <= high + margin)
        ]
        return sorted(window, key=lambda k: abs(time_of(k) - seconds))[:4]

    def _probe_keyframes(self, seconds: Fraction) -> list[_Decoded]:
        """Without an index: the keyframe before t and the one after it, found by seeking.

        Demuxers without an index (MPEG-TS) seek by bisection and may land past the target, so the
        backward probe backs off until it lands at or before t, as exact grabs do.
        """
        duration = self.duration
        clamped = max(min(seconds, duration) if duration is not None else seconds, Fraction(0))
        target = self._target_pts(clamped)
        found: dict[int, _Decoded] = {}
        for step in (Fraction(0), *_BACKOFF_SECONDS, None):
            if step is None:
                frames = self._frames_from_start()
            else:
                frames = self._frames_after_seek(target - math.ceil(step / self._time_base))
            first = next(frames, None)
            if first is not None:
                found[first.pts] = first
                if first.pts <= target:
                    break
        with contextlib.suppress(av.error.FFmpegError):
            self._seek(target, backward=False)
            after = next(self._decode(trust_all=False), None)
            if after is not None:
                found[after.pts] = after
        self._decoder_live = False
        return list(found.values())

    def _read_cues(self) -> None:
        """Matroska lists its keyframes in Cues (ffmpeg and mkvmerge write one per video keyframe), which
        FFmpeg reads on the first seek: from then on they are the keyframe index. Reading the packets
        between keyframes instead would fetch a GOP or two of a remote file for each grab."""
        self._cues_read = True
        with contextlib.suppress(av.error.FFmpegError):
            self._seek(self._target_pts(Fraction(0)))
        entries = self._stream.index_entries
        keys = sorted({e.timestamp for e in entries if e.is_keyframe and not e.is_discard})
        if len(keys) > 1:
            self._keyframes = keys

    def _index_shift(self, entry: int) -> int:
        """How far the keyframe a grab of an index entry gets is from the entry's timestamp, so that
        "nearest to t" goes by what will be shown: the index holds decode times (B-frames show a
        keyframe some frames later), and where an edit list starts before the first keyframe, the seek
        for an entry can land a keyframe further on. Learnt from one keyframe packet (its pts), then
        from every keyframe decoded."""
        if self._key_shift is None:
            found = self._keyframe_packet_pts(entry)
            self._key_shift = 0 if found is None else found - entry
        return self._key_shift

    def _keyframe_packets_around(self, seconds: Fraction) -> list[_PacketKey]:
        """Without a full index: the last keyframe at or before t and the first after it, from the
        packets after a seek (read, not decoded). A seek may land on an earlier keyframe than the one
        before t (sparse cues, MPEG-TS bisection), hence the reading on to t; one that lands past t
        backs off as exact grabs do."""
        duration = self.duration
        clamped = max(min(seconds, duration) if duration is not None else seconds, Fraction(0))
        target = self._target_pts(clamped)
        for step in (Fraction(0), *_BACKOFF_SECONDS, None):
            aim = None if step is None else target - math.ceil(step / self._time_base)
            try:
                if aim is None or aim < self._target_pts(Fraction(0)):
                    self._reopen()
                    step = None
                else:
                    self._seek(aim)
            except av.error.FFmpegError:
                continue
            self._at_start = False
            before, after = self._scan_keyframe_packets(target)
            if before is not None or step is None:
                return [_PacketKey(pts) for pts in (before, after) if pts is not None]
        return []

    def _keyframe_packets(self) -> Iterator[Any]:
        """The keyframe packets from the demuxer's position on, read and not decoded (those an edit list
        hides left out), for at most ``_KEYFRAME_SCAN_PACKETS`` packets."""
        try:
            for count, packet in enumerate(self._container.demux(self._stream)):
                if packet.size == 0 or count > _KEYFRAME_SCAN_PACKETS:
                    return
                if packet.is_keyframe and packet.pts is not None and not packet.is_discard:
                    yield packet
        except av.error.FFmpegError:
            return

    def _scan_keyframe_packets(self, target: int) -> tuple[int | None, int | None]:
        """From the demuxer's position: the pts of the last keyframe at or before target, of the first after."""
        before: int | None = None
        for packet in self._keyframe_packets():
            if packet.pts > target:
                return before, int(packet.pts)
            before = int(packet.pts)
        return before, None

    def _decode_keyframe_packet(self, key: _PacketKey) -> _Decoded | None:
        """The keyframe whose packet has this pts: seek to it, read on to its packet, decode that one."""
        codec = self._stream.codec_context
        for step in (Fraction(0), *_BACKOFF_SECONDS):
            try:
                self._seek(key.pts - math.ceil(step / self._time_base))
            except av.error.FFmpegError:
                continue
            packet = next((p for p in self._keyframe_packets() if p.pts >= key.pts), None)
            if packet is None or packet.pts > key.pts:
                continue  # landed past it: back off
            codec.skip_frame = "DEFAULT"
            try:
                frames = [*codec.decode(packet), *codec.decode(None)]
            except (av.error.FFmpegError, ValueError):
                return None
            for frame in frames:
                pts = self._pts_guess.guess(frame.pts, frame.dts)
                if frame.key_frame and pts is not None:
                    return _Decoded(frame, int(pts))
            return None
        return None

    def _keyframe_at(self, timestamp: int | _Decoded | _PacketKey) -> _Decoded | None:
        """Decode the keyframe of an index entry or a packet (or take one the probe already decoded)."""
        if isinstance(timestamp, _Decoded):
            return timestamp
        if self._last_keyframe is not None and self._last_keyframe[0] == timestamp:
            # The same entry as the last keyframe grab: its image, if it is the last one made (taken now,
            # as a render finishing on the helper thread may replace it before it is used).
            pts, last = self._last_keyframe[1], self._last_image
            if last is not None and last[0] == (pts, self.options.render, self.options.encode):
                return _Decoded(cast(av.VideoFrame, None), pts, last[1])
        if isinstance(timestamp, _PacketKey):
            decoded = self._decode_keyframe_packet(timestamp)
            self._lookahead = None
            self._decoder_live = False
            self._last_keyframe = None if decoded is None else (timestamp, decoded.pts)
            return decoded
        if not self._seek_to_entry(timestamp):
            return None
        # (AVI frames are timed by the DTS the decoder hands out as it goes: no shortcut there.)
        decoded = next(self._decode(trust_all=False), None) if self._dts_clock else self._decode_one_keyframe()
        self._lookahead = None
        self._decoder_live = False
        self._last_keyframe = None if decoded is None else (timestamp, decoded.pts)
        if decoded is not None:
            self._key_shift = decoded.pts - timestamp
        return decoded

    def _seek_to_entry(self, timestamp: int) -> bool:
        """Seek so that the next keyframe read is that of this index entry. Index entries carry DTS while
        demuxers such as mov seek by PTS, so seeking to the entry itself can land one GOP early: aim just
        before the next keyframe entry instead."""
        keys = self._keyframes
        after = bisect.bisect_right(keys, timestamp)
        if after < len(keys):
            aim = keys[after] - 1
        elif self._cues_read:  # the last cue: Matroska seeks by presentation time, and reads on to the aim
            aim = timestamp
        else:  # the last keyframe: anywhere after it
            aim = timestamp + math.ceil(Fraction(3600) / self._time_base)
        try:
            self._seek(aim, backward=True)
        except av.error.FFmpegError:
            return False
        return True

    def _keyframe_packet_pts(self, entry: int) -> int | None:
        """The pts of the keyframe packet of an index entry (read, not decoded)."""
        if not self._seek_to_entry(entry):
            return None
        packet = next(self._keyframe_packets(), None)
        return None if packet is None else int(packet.pts)

    def _decode_one_keyframe(self) -> _Decoded | None:
        """The first keyframe after a seek, decoding that one packet and draining the decoder (no
        later pictures fed just to push it out of the reorder buffer)."""
        codec = self._stream.codec_context
        codec.skip_frame = "DEFAULT"
        for packet in self._container.demux(self._stream):
            if packet.size and not packet.is_keyframe:
                continue
            try:
                frames = [*codec.decode(packet), *codec.decode(None)] if packet.size else codec.decode(None)
            except (av.error.FFmpegError, ValueError):
                return None
            for frame in frames:
                if frame.key_frame:
                    pts = self._pts_guess.guess(frame.pts, frame.dts)
                    return None if pts is None else _Decoded(frame, int(pts))
            return None
        return None

    # ------------------------------------------------------------------ decoding

    def _seek(self, pts: int, *, backward: bool = True) -> None:
        self._decode_target = None
        self._key_seen = None
        self._lookahead = None
        self._decoder_live = False
        self._at_start = False
        self._pts_guess.reset_sequence()
        self._container.seek(pts, stream=self._stream, backward=backward, any_frame=False)

    def _frames_after_seek(self, target: int) -> Iterator[_Decoded]:
        try:
            self._seek(target)
        except av.error.FFmpegError:
            return iter(())
        return self._decode(trust_all=False)

    def _frames_from_start(self) -> Iterator[_Decoded]:
        if not self._at_start:
            self._reopen()
        self._at_start = False
        return self._decode(trust_all=True, from_start=True)

    def _continue_frames(self) -> Iterator[_Decoded]:
        ahead = self._lookahead
        assert ahead is not None
        self._lookahead = None

        def chain() -> Iterator[_Decoded]:
            # Through a plain iterator: closing this chain must not close the live decoder it reads.
            yield ahead
            live = self._live
            yield from iter(lambda: next(live, None), None)

        return chain()

    def _reopen(self) -> None:
        """Back to the very start: reopening is the one way to reach it in every format (a seek to
        the first timestamp is refused by some demuxers and lands late in others)."""
        # A render still running reads through the old container (PyAV crashes on a closed one): the
        # render thread closes it after the renders queued before, in order, and decoding goes on.
        _render_thread().submit(_close_in_order, self._container, self._file)
        self._container = None
        self._file = None
        self._open_container()
        self._use_stream(self._container.streams.get(self._stream_index)[0])

    def _use_stream(self, stream: Any) -> None:
        self._pts_guess = _PtsGuesser()
        # AVI stores decode timestamps only; the pts libavformat guesses for its packets come back
        # from the decoder out of order. The ffmpeg CLI times AVI frames by the DTS the decoder hands
        # out with each frame (monotonic, in presentation order), and so do we.
        self._dts_clock = self._container.format.name == "avi"
        self._dts_clock_next: int | None = None
        self._decode_target = None  # the pts being looked for, while one is (see _skippable)
        # The last keyframe decoded (index entry and pts) and the last image made (by pts and options):
        # a grab that lands on the same frame again gets that image (no decoded pixels are kept).
        self._last_keyframe = None
        self._last_image = None
        self._key_shift = None
        self._key_seen = None
        self._longest_gop = 0
        context = stream.codec_context
        set_decoder_threads(stream, context.name, self.decode_threads)
        self._stream = stream
        self._disposable = H264Disposable(context.extradata) if context.name == "h264" else None
        self._live: Iterator[_Decoded] = iter(())

    def _decode(self, *, trust_all: bool, from_start: bool = False) -> Iterator[_Decoded]:
        """Decoded frames in presentation order with exact timestamps.

        ``trust_all`` is for decoding from the very start; after a seek, frames before the first
        keyframe the decoder outputs are dropped (see the module docstring).
        """
        generator = self._decode_frames(trust_all=trust_all, from_start=from_start)
        self._live = generator
        self._decoder_live = True
        return generator

    def _decode_frames(self, *, trust_all: bool, from_start: bool) -> Iterator[_Decoded]:
        stream = self._stream
        codec = stream.codec_context
        trusted = trust_all
        next_synthetic = 0
        errors = 0
        produced = 0
        decoded_pts: list[int] = []  # pts of the packets decoded so far, sorted
        hidden_key: int | None = None  # pts of a keyframe decoded after the seek but hidden by an edit list
        given_pts: set[int] = set()  # pts of the frames given out so far
        for packet in self._container.demux(stream):
            if packet.pts is not None and packet.dts is not None and packet.pts < packet.dts:
                self._pts_before_dts = True
            # The latest picture decoded that is still <= the target (the target changes between the
            # grabs that continue one decode). Only a picture that decoded may stand in for the ones
            # before it: a corrupt one won't show.
            latest_wanted = _at_most(decoded_pts, self._decode_target)
            if latest_wanted in given_pts and self._after_target(packet):
                # That picture is out, and nothing to come shows before the target: the answer is
                # certain. The consumer may stop here; if it goes on, this packet is decoded next.
                yield _ANSWER_KNOWN
                latest_wanted = _at_most(decoded_pts, self._decode_target)
            skippable = self._skippable(packet, latest_wanted)
            if skippable and self._disposable is not None and self._disposable(bytes(packet)):
                continue  # nothing refers to it: not even handed to the decoder (see app.engine.nal)
            codec.skip_frame = "NONREF" if skippable else "DEFAULT"
            try:
                frames = codec.decode(packet)
            except av.error.EOFError:
                break
            except (av.error.FFmpegError, ValueError) as exc:
                if codec.thread_count > 1 and codec.thread_type & ThreadType.FRAME:
                    # A frame-threaded decoder reports a damaged picture's error a picture or two late,
                    # and PyAV drops the pictures it had received in the same call: decode again.
                    raise _PicturesDropped from exc
                errors += 1
                if errors > 1000 and produced == 0:
                    raise EngineError("decode_failed", "the video stream could not be decoded") from exc
                continue
            if packet.pts is not None:
                bisect.insort(decoded_pts, packet.pts)
                if not trusted and hidden_key is None and packet.is_keyframe and packet.is_discard:
                    hidden_key = packet.pts
            for frame in frames:
                if self._dts_clock:
                    # Frames flushed at the end carry no DTS: the clock runs on by their duration.
                    pts = frame.dts if frame.dts is not None else self._dts_clock_next
                    if pts is not None:
                        self._dts_clock_next = pts + self._frame_duration(frame)
                else:
                    pts = self._pts_guess.guess(frame.pts, frame.dts)
                if from_start and produced == 0 and pts is None:
                    self._synthetic_pts = True
                if self._synthetic_pts:
                    # No timestamps in the stream at all (raw Annex-B): its only clock is the
                    # frame durations, counted from 0 exactly as the ffmpeg CLI does.
                    pts = next_synthetic
                    next_synthetic += self._frame_duration(frame)
                elif pts is None:
                    continue
                produced += 1
                # Trusted from the first keyframe out of the decoder, or from the first picture at or after
                # a keyframe it decoded but does not output (before an edit list's start: a clip that
                # starts mid-GOP). Pictures before either are an open GOP's leading ones.
                if not trusted and not frame.key_frame and (hidden_key is None or pts < hidden_key):
                    continue
                trusted = True
                decoded = _Decoded(frame, int(pts))
                if from_start and self._first_frame_pts is None:
                    self._first_frame_pts = decoded.pts
                given_pts.add(decoded.pts)
                if frame.key_frame:
                    if self._key_seen is not None and decoded.pts > self._key_seen:
                        self._longest_gop = max(self._longest_gop, decoded.pts - self._key_seen)
                    self._key_seen = decoded.pts
                yield decoded

    def _after_target(self, packet: Any) -> bool:
        """Whether this packet, and so every one after it, shows after the target: packets come in
        decode order, and no packet is shown before it is decoded (pts >= dts; an asset where one was
        gets no early answers). Then the latest picture decoded at or before the target is the answer."""
        target = self._decode_target
        return (
            target is not None
            and packet.dts is not None
            and packet.dts > target
            and not self._pts_before_dts
            and not self._synthetic_pts
            and not self._dts_clock
        )

    def _skippable(self, packet: Any, latest_wanted: int | None) -> bool:
        """Whether the decoder may drop this packet's picture if nothing refers to it: only when a
        later picture that is still <= the target is already known, so this one can't be the answer.
        (The decoder still decodes it when it is a reference for others.)"""
        return (
            self._decode_target is not None
            and not self._synthetic_pts
            and not self._dts_clock  # a skipped picture would shift every later frame's DTS
            and packet.pts is not None
            and latest_wanted is not None
            and packet.pts < latest_wanted
        )

    def _scan_duration(self) -> Fraction:
        """Duration by reading packet timestamps when the container states none (no decoding)."""
        end: int | None = None
        try:
            self._seek(self._keyframes[-1] if self._keyframes else 0)
        except av.error.FFmpegError:
            self._reopen()
        try:
            for packet in self._container.demux(self._stream):
                if packet.pts is not None:
                    stop = packet.pts + (packet.duration or 0)
                    end = stop if end is None else max(end, stop)
        except av.error.FFmpegError:
            pass
        self._reopen()
        self._at_start = True
        if end is None:
            raise EngineError("invalid_parameter", "t: the asset's duration is unknown, so a percentage can't be used")
        self._duration_cache = self._time_of(end)
        return self._duration_cache

    # ------------------------------------------------------------------ rendering

    def _render(self, frame: av.VideoFrame, threads: int) -> _Rendered:
        from app.engine.encode import encode_frame
        from app.engine.render import FrameMetadata

        try:
            if self._metadata is None:  # the stream's side data, read once (see FrameMetadata)
                self._metadata = FrameMetadata.of(frame)
            data, (width, height), timings = encode_frame(
                frame,
                self.options.render,
                self.options.encode,
                stream=self._stream,
                max_output_pixels=self.max_output_pixels,
                metadata=self._metadata,
                threads=threads,
            )
        except EngineError:
            raise
        except (av.error.FFmpegError, ValueError, MemoryError) as exc:
            raise EngineError("decode_failed", "the frame could not be converted to an image") from exc
        return data, width, height, timings


class _Named(io.RawIOBase):
    """A source's file object under its file name (never a path): FFmpeg's HLS demuxer only accepts
    a playlist whose name ends in .m3u8, and resolves segment names against it, which our
    ``open_related`` then confines like any other source."""

    def __init__(self, raw: BinaryIO, display_name: str) -> None:
        super().__init__()
        self._raw = raw
        self.name = display_name.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "source"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()
        super().close()


class _PtsGuesser:
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


def _is_attached_picture(stream: Any) -> bool:
    try:
        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except AttributeError:
        return False


class _TrustedFile:
    """A path given by the operator (CLI, library use): no media-root confinement, but still read
    through our I/O, and nested resources only as files beside it, never by FFmpeg itself."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.display_name = path.name
        self.identity = f"path:{path}"

    def open(self) -> BinaryIO:
        return self.path.open("rb")

    def open_related(self, url: str) -> BinaryIO:
        if "://" in url or url.startswith(("file:", "data:")):
            raise EngineError("source_forbidden", "a local playlist may refer to local files only")
        return (self.path.parent / url).open("rb")


_PLAYLIST_MAX_BYTES = 8 * 1024 * 1024  # a larger "playlist" is handed over as it is


def _ended_playlist(raw: BinaryIO) -> BinaryIO:
    """``raw``, unless it is an HLS media playlist without ``#EXT-X-ENDLIST`` (a live or event one): then
    that playlist with the tag added. A still comes from the segments listed now, read as a finished
    video from the first of them: FFmpeg would otherwise start a few segments before the end, reload the
    playlist and wait for segments that may never come."""
    head = raw.read(16)
    if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"#EXTM3U"):
        raw.seek(0)
        return raw
    text = head + raw.read(_PLAYLIST_MAX_BYTES)
    if len(text) > _PLAYLIST_MAX_BYTES or b"#EXTINF" not in text or b"#EXT-X-ENDLIST" in text:
        raw.seek(0)
        return raw
    raw.close()
    return io.BytesIO(text + b"\n#EXT-X-ENDLIST\n")


class _NestedOpener:
    """FFmpeg asks for nested resources (HLS playlists, segments) through this, never by itself:
    each goes through the source's own rules (media-root confinement or the SSRF guard), and there
    is a cap on how many one asset may open, so a playlist can't fan out or loop for ever."""

    MAX_OPENS = 512

    def __init__(self, source: Source) -> None:
        self.source = source
        self.opens = 0
        self.refusal: EngineError | None = None

    def __call__(self, url: str, flags: int, options: dict[str, Any]) -> BinaryIO:
        self.opens += 1
        try:
            if self.opens > self.MAX_OPENS:
                raise EngineError("unsupported_media", "the playlist refers to too many resources")
            return _ended_playlist(self.source.open_related(url))
        except EngineError as exc:
            self.refusal = self.refusal or exc
            raise
