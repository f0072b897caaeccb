"""The image generator: "this asset, at this time" -> the right frame, rendered and encoded.

Modelled on AVAssetImageGenerator: build one from an asset and options, then ask for
``image_at(t)`` or ``images_for(times)``. One generator holds its asset open, so a second grab
from the same asset skips the open and the probe.

How a frame is chosen (the time contract):

* The asset timeline starts at 0 at the container's start time (FFmpeg's ``start_time``, which
  already honours MP4 edit lists), kept exact as a Fraction (``container.timeline_origin``).
* With zero tolerance, t gets the frame on screen at t: the last frame whose presentation time is
  <= t; the first frame for t before it; the last frame for t up to the end of its display.
* Seek by timestamp to the keyframe before the target and decode forward, backing off to seek
  earlier where a seek lands after the target (see ``app.engine.decode``).
* With a tolerance, a keyframe inside the window nearest to t (one decode; ``app.engine.keyframes``),
  else the frame on screen at t or the first one after it inside the window.

The parts: ``container`` opens the asset and picks the stream, ``decode`` (``Playhead``) seeks and
decodes, ``keyframes`` finds keyframes, ``cursor`` is the search's state they share, ``images`` makes
the images; this module searches, and orders a batch so that each image is made while the next frame
decodes.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av.error

from app.engine.container import (
    AV_TIME_BASE,
    close_container,
    complete_keyframe_index,
    open_container,
    select_video_stream,
)
from app.engine.cursor import ANSWER_KNOWN, Cursor, Decoded
from app.engine.decode import DEFAULT_DECODE_THREADS, DecodeStats, PicturesDropped, Playhead
from app.engine.errors import EngineError
from app.engine.images import ImageMaker, close_after_renders
from app.engine.keyframes import KeyframeFinder
from app.engine.options import CONTENT_TYPES, GrabOptions, SourceLimits
from app.engine.results import FrameFailure, FrameResult, Rendered
from app.engine.timeparse import TimeSpec, parse_time

if TYPE_CHECKING:
    from app.engine.sources import Source

_PIPELINE_DEPTH = 2  # decoded frames that may wait for the render thread (memory: a few frames)


_MAX_REFERENCES = 16
_PICTURE_BUFFER_BYTES = 184320 * 384  # H.264 level 5.1's MaxDpbMbs, in 8-bit 4:2:0 bytes
_DEMUXER_BYTES = 1024**2  # AVFormatContext, its I/O buffer, the reader's block


@dataclass
class _Pending:
    """A requested time whose frame is decoded and whose image is being made."""

    index: int
    requested: TimeSpec
    seconds: Fraction
    decoded: Decoded
    decode_seconds: float
    render: Future[Rendered]


class ImageGenerator:
    """Generates images from one asset. Not thread-safe: one generator serves one caller at a time.

    ``stats`` counts the decoder's work (seeks, reopens, keyframes decoded). ``cursor`` (the search's
    state), ``keyframes`` (the keyframe finder) and ``playhead`` (the open asset) are open for tests,
    diagnostics and descriptions to read.
    """

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
        self.limits = limits or SourceLimits()
        self.cursor = Cursor()
        self._duration_cache: Fraction | None = None
        started = time.perf_counter()
        container, file = open_container(source, self.limits)
        try:
            stream = select_video_stream(container, self.options.stream, self.limits)
            self._playhead = Playhead(
                source,
                (container, file),
                stream,
                limits=self.limits,
                decode_threads=max(1, decode_threads),
                cursor=self.cursor,
                retire=close_after_renders,
            )
            self.keyframes = KeyframeFinder(self._playhead, complete_keyframe_index(container, stream))
            self._images = ImageMaker(self._playhead, max_output_pixels)
            duration = self.duration
            if duration is not None and duration > self.limits.max_duration:
                raise EngineError("source_too_long", "the source's duration is over the limit")
        except BaseException:
            if hasattr(self, "_playhead"):
                self._playhead.close()
            else:
                close_container(container, file)
            raise
        self._open_seconds = time.perf_counter() - started

    # ------------------------------------------------------------------ public API

    @property
    def stats(self) -> DecodeStats:
        """What the decoder has done so far (counts only grow)."""
        return self._playhead.stats

    @property
    def playhead(self) -> Playhead:
        """The open asset (container, video stream, timeline origin), for describing it (app.engine.info)."""
        return self._playhead

    @property
    def duration(self) -> Fraction | None:
        """The asset's duration in seconds, exact where the container states it."""
        if self._duration_cache is not None:
            return self._duration_cache
        container, stream = self._playhead.container, self._playhead.stream
        if container.duration is not None and container.duration > 0:
            self._duration_cache = Fraction(container.duration, AV_TIME_BASE)
        elif stream.duration:
            self._duration_cache = self._playhead.time_of((stream.start_time or 0) + stream.duration)
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
        produced = self._results_in_time_order(specs)
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

    @property
    def resident_estimate(self) -> int:
        """Bytes this open asset holds between grabs, estimated: the decoder's reference pictures (as
        many as fit H.264's largest picture buffer, 16 at most), two more per frame thread, the keyframe
        index, the demuxer's buffers and a remote reader's block cache. Calibrated against measured cost
        in bench/README.md."""
        context = self._playhead.stream.codec_context
        pix_fmt = str(context.pix_fmt or "")
        depth = 2 if any(bits in pix_fmt for bits in ("p10", "p12", "p16")) else 1
        chroma = 3.0 if "444" in pix_fmt else 2.0 if "422" in pix_fmt else 1.5
        frame = max(1, int((context.width or 0) * (context.height or 0) * chroma * depth))
        references = min(_MAX_REFERENCES, max(2, _PICTURE_BUFFER_BYTES // frame))
        threads = self._playhead.decode_threads
        reader = getattr(self._playhead.file, "raw", None)  # a remote source's block cache, when full
        blocks = getattr(reader, "block_size", 0) * getattr(reader, "cache_blocks", 0)
        return frame * (references + 2 * threads) + 8 * len(self.keyframes.index) + _DEMUXER_BYTES + blocks

    def close(self) -> None:
        playhead = getattr(self, "_playhead", None)
        if playhead is not None:
            playhead.close()

    def __del__(self) -> None:
        # Close in order (container, then the files it reads) even when nobody called close():
        # PyAV's nested HLS readers corrupt the heap if garbage collection frees them first.
        self.close()

    def __enter__(self) -> ImageGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ a batch

    def _results_in_time_order(
        self, specs: list[tuple[int, TimeSpec | EngineError]]
    ) -> Iterator[FrameResult | FrameFailure]:
        """The results in ascending time (failures as they are found), each image made while the next
        frame decodes."""
        resolved: list[tuple[Fraction, int, TimeSpec]] = []
        for index, spec in specs:
            if isinstance(spec, EngineError):
                yield FrameFailure(index, TimeSpec(Fraction(0)), spec)
                continue
            try:
                duration = (self.duration or self.scan_duration()) if spec.percent else None
                seconds = spec.resolve(duration)
            except EngineError as exc:
                yield FrameFailure(index, spec, exc)
                continue
            resolved.append((seconds, index, spec))
        resolved.sort(key=lambda item: (item[0], item[1]))
        # Several times: each distinct frame is rendered and encoded on a helper thread while the next
        # one decodes (both release the GIL), so a batch costs about its decode alone on two cores.
        pipelined = len(resolved) > 1
        renders: dict[int, Future[Rendered]] = {}  # pts -> its image (sorted: only the latest is needed)
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
                    renders = {decoded.pts: self._images.image_for(decoded, self.options, pipelined=pipelined)}
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
            actual_time=self._playhead.time_of(decoded.pts),
            pts=decoded.pts,
            time_base=self._playhead.time_base,
            image=image,
            content_type=CONTENT_TYPES[self.options.encode.format],
            width=width,
            height=height,
            timings=timings,
        )

    # ------------------------------------------------------------------ the search

    def _frame_for(self, seconds: Fraction) -> Decoded:
        before, after = self.options.tolerance_before, self.options.tolerance_after

        def search() -> Decoded:
            if before == 0 and after == 0:
                return self._frame_on_screen_at(seconds)
            return self._frame_within_tolerance(seconds, before, after)

        try:
            return search()
        except PicturesDropped:
            # From now on this asset decodes on one thread, where a damaged picture's error comes with
            # its own packet, before any picture is received: the same search again, from a seek.
            self._playhead.decode_threads = 1
            self._playhead.reopen()
            self.cursor.previous = self.cursor.lookahead = None
            return search()

    def _end_of(self, decoded: Decoded) -> Fraction:
        """When the last frame stops being on screen: its time plus its duration, or the container's
        duration if that is later."""
        # The frame's own duration only: a stream that says 0 ends at its last frame (as the ffmpeg
        # CLI has it), unless the container's duration says otherwise.
        end = self._playhead.time_of(decoded.pts + max(0, int(decoded.frame.duration or 0)))
        duration = self.duration
        return max(end, duration) if duration is not None else end

    def _frame_on_screen_at(self, seconds: Fraction) -> Decoded:
        """Zero tolerance: the frame on screen at t (see the module docstring)."""
        if seconds < 0:
            raise EngineError("no_image_at_time", "the requested time is before the start of the asset")
        target = self._playhead.pts_at(seconds)
        found = self._on_screen(target)
        if found.pts > target:  # before the first frame: the first frame
            return found
        if self.cursor.last_frame is not None and found is self.cursor.last_frame and seconds > self._end_of(found):
            raise EngineError("no_image_at_time", "the requested time is past the end of the asset")
        return found

    def _on_screen(self, target: int, *, need_next: bool = False) -> Decoded:
        """The last frame with pts <= target (or the first frame, if target precedes it).

        Afterwards the cursor's lookahead is the frame continuing starts from: the next frame, or (when
        the answer was certain before it: ``ANSWER_KNOWN``) the answer itself; ``need_next`` asks for
        the next frame in any case."""
        cursor, playhead = self.cursor, self._playhead
        previous, ahead = cursor.previous, cursor.lookahead
        # Still the frame we answered last (ahead of it is the next one, or nothing at all)?
        if (
            previous is not None
            and previous.pts <= target
            and ((ahead is not None and target < ahead.pts) or (ahead is None and previous is cursor.last_frame))
        ):
            return previous
        if self._can_continue(target):
            found = self._read_up_to(target, playhead.continue_frames(), trusted=True, need_next=need_next)
        else:

            def land(aim: int | None) -> Decoded | None:
                first = playhead.first_frame_pts
                if (
                    aim is None
                    or playhead.synthetic_pts
                    or (first is not None and aim <= first)
                    or aim < playhead.pts_at(Fraction(0))  # before the asset's start: that is the start
                ):
                    return self._read_up_to(target, playhead.frames_from_start(), trusted=True, need_next=need_next)
                return self._read_up_to(target, playhead.frames_after_seek(aim), trusted=False, need_next=need_next)

            found = playhead.seek_back(target, land)
        assert found is not None  # (read from the start, frames are trusted: an answer or an error)
        return found

    def _read_up_to(self, target: int, frames: Iterator[Decoded], *, trusted: bool, need_next: bool) -> Decoded | None:
        """The last of ``frames`` at or before target (the first, where target precedes it); None where
        the frames are not ``trusted`` (read after a seek) and start after target: seek earlier."""
        cursor = self.cursor
        best: Decoded | None = None
        first: Decoded | None = None
        cursor.target = target
        for decoded in frames:
            if decoded is ANSWER_KNOWN:
                if need_next or best is None:
                    continue
                cursor.lookahead = best  # stop: going on later starts again from the answer
                break
            if first is None:
                first = decoded
            if decoded.pts <= target:
                best = decoded
                continue
            cursor.lookahead = decoded
            break
        else:
            cursor.lookahead = None
            cursor.live = False
            if best is not None:
                cursor.last_frame = best
        if first is None:
            if trusted:
                raise EngineError("decode_failed", "no frame of the video stream could be decoded")
            return None
        if not trusted and first.pts > target:
            return None  # the seek landed after the target
        if best is None:  # target precedes the first frame of the stream
            return first
        cursor.previous = best
        return best

    def _can_continue(self, target: int) -> bool:
        """Whether decoding on from the last position reaches target without a seek (same GOP, ahead)."""
        cursor, playhead = self.cursor, self._playhead
        ahead = cursor.lookahead
        if ahead is None or not cursor.live or target < ahead.pts:
            return False
        if playhead.synthetic_pts:
            return True
        keyframes = self.keyframes.index
        if not keyframes:
            # No index to say where the next keyframe is: decoding on costs at most a GOP, as long as
            # the longest seen so far (at least half a second), where a seek might cost as much again.
            reach = max(math.ceil(Fraction(1, 2) / playhead.time_base), cursor.longest_gop)
            return target - ahead.pts <= reach
        # a keyframe between here and the target: seeking there is cheaper than decoding up to it
        after = bisect.bisect_right(keyframes, ahead.pts)
        return after == len(keyframes) or keyframes[after] > target

    def _frame_within_tolerance(self, seconds: Fraction, before: Fraction | None, after: Fraction | None) -> Decoded:
        """A tolerance window around t: a keyframe in it nearest to t, else the frame on screen at t or
        the first frame after it inside the window."""
        low = None if before is None else seconds - before
        high = None if after is None else seconds + after

        def inside(decoded: Decoded) -> bool:
            t = self._playhead.time_of(decoded.pts)
            return (low is None or t >= low) and (high is None or t <= high)

        # 1. A keyframe in the window, nearest to t, costs one decode.
        for candidate in self.keyframes.candidates(seconds, low, high, self.duration):
            decoded = self.keyframes.keyframe_at(candidate, self.options)
            if decoded is not None and inside(decoded):
                return decoded
        # 2. Otherwise the frame on screen at t, or the first frame after it inside the window.
        clamped = max(seconds, Fraction(0))
        on_screen = self._on_screen(self._playhead.pts_at(clamped), need_next=True)
        if inside(on_screen):
            return on_screen
        ahead = self.cursor.lookahead
        if ahead is not None and inside(ahead):
            return ahead
        if seconds < 0:
            raise EngineError("no_image_at_time", "the requested time is before the start of the asset")
        if self.cursor.last_frame is on_screen and seconds > self._end_of(on_screen):
            raise EngineError("no_image_at_time", "the requested time is past the end of the asset")
        # No frame starts inside the window: the frame on screen throughout it is the answer.
        return on_screen

    def scan_duration(self) -> Fraction:
        """Duration by reading packet timestamps when the container states none (no decoding); the
        playhead is back at the start afterwards."""
        playhead = self._playhead
        end: int | None = None
        try:
            playhead.seek(self.keyframes.index[-1] if self.keyframes.index else 0)
        except av.error.FFmpegError:
            playhead.reopen()
        try:
            for packet in playhead.container.demux(playhead.stream):
                if packet.pts is not None:
                    stop = packet.pts + (packet.duration or 0)
                    end = stop if end is None else max(end, stop)
        except av.error.FFmpegError:
            pass
        playhead.reopen()
        self.cursor.at_start = True
        if end is None:
            raise EngineError("invalid_parameter", "t: the asset's duration is unknown, so a percentage can't be used")
        self._duration_cache = playhead.time_of(end)
        return self._duration_cache
