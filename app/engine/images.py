"""Decoded frames made into images: at once for a single grab, or on a render thread while the next frame
decodes (a batch), and the last image made given again when a grab lands on the same frame."""

from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import av
import av.error

from app.engine.container import NamedReader, close_container
from app.engine.cursor import Decoded, ImageKey
from app.engine.decode import Playhead
from app.engine.errors import EngineError
from app.engine.options import GrabOptions
from app.engine.results import Rendered

if TYPE_CHECKING:
    from app.engine.render import FrameMetadata


@functools.cache
def _render_thread() -> ThreadPoolExecutor:
    """One render thread per process: a decoder worker runs one task at a time."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="stillframe-render")


def close_after_renders(container: Any, file: NamedReader | None) -> None:
    """Close a container the playhead has left (a reopen) on the render thread, after the renders
    queued before: they still read through it, and PyAV crashes on a closed one. Waiting for them
    instead would put each render back in the decode's path."""
    _render_thread().submit(close_container, container, file)


class ImageMaker:
    """Makes the images of one asset's frames (the stream's side data read once, from its first frame)."""

    def __init__(self, playhead: Playhead, max_output_pixels: int) -> None:
        self.playhead = playhead
        self.max_output_pixels = max_output_pixels
        self._metadata: FrameMetadata | None = None  # side data of the stream's frames, once one is rendered

    def image_for(self, decoded: Decoded, options: GrabOptions, *, pipelined: bool) -> Future[Rendered]:
        """The frame's image, made now (``pipelined``: on the render thread), or the last one made if it
        was of the same frame with the same options (a scrubbing client asks for many times that land
        on one frame, or one keyframe)."""
        key: ImageKey = (decoded.pts, options.render, options.encode)
        last = self.playhead.cursor.last_image
        made = decoded.image or (last[1] if last is not None and last[0] == key else None)
        if made is not None:
            image, width, height, _ = made
            done: Future[Rendered] = Future()
            done.set_result((image, width, height, {"render": 0.0, "encode": 0.0}))
            return done
        future = self._start(decoded.frame, options, pipelined)
        future.add_done_callback(lambda made: self._remember(key, made))
        return future

    def _remember(self, key: ImageKey, made: Future[Rendered]) -> None:
        if not made.cancelled() and made.exception() is None:
            self.playhead.cursor.last_image = (key, made.result())

    def _start(self, frame: av.VideoFrame, options: GrabOptions, pipelined: bool) -> Future[Rendered]:
        if pipelined:  # (the next frame decodes meanwhile: one core for the render)
            return _render_thread().submit(self._render, frame, options, 1)
        done: Future[Rendered] = Future()
        try:
            done.set_result(self._render(frame, options, self.playhead.decode_threads))
        except EngineError as exc:
            done.set_exception(exc)
        return done

    def _render(self, frame: av.VideoFrame, options: GrabOptions, threads: int) -> Rendered:
        # (Loaded on the first render: opening an asset needs none of the imaging libraries.)
        from app.engine.encode import render_and_encode
        from app.engine.render import FrameMetadata

        try:
            if self._metadata is None:  # the stream's side data, read once (see FrameMetadata)
                self._metadata = FrameMetadata.of(frame)
            data, (width, height), timings = render_and_encode(
                frame,
                options.render,
                options.encode,
                stream=self.playhead.stream,
                max_output_pixels=self.max_output_pixels,
                metadata=self._metadata,
                threads=threads,
            )
        except EngineError:
            raise
        except (av.error.FFmpegError, ValueError, MemoryError) as exc:
            raise EngineError("decode_failed", "the frame could not be converted to an image") from exc
        return data, width, height, timings
