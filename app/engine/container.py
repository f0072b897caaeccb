"""Opening an asset: the container, read through our own I/O only, its video stream, and where its timeline starts.

Every byte FFmpeg reads comes from the source's reader or, for nested resources (HLS playlists and
segments), from the source's ``open_related``: FFmpeg opens no protocol itself.
"""

from __future__ import annotations

import contextlib
import io
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import av
import av.error

from app.engine.errors import EngineError, InvalidParameter
from app.engine.options import SourceLimits

if TYPE_CHECKING:
    from app.engine.sources import Source

# Demuxers we accept. Probing picks among these only, whatever the name or extension says.
FORMAT_WHITELIST = "mov,matroska,mpegts,avi,flv,ivf,h264,hevc,mxf,hls,mpeg"
_DEMUXER_OPTIONS = {
    "format_whitelist": FORMAT_WHITELIST,
    # Every byte comes through our own I/O (the source's reader, nested opens via NestedOpener),
    # so FFmpeg may open no protocol at all itself: "none" matches none.
    "protocol_whitelist": "none",
    # A live HLS playlist is read as the snapshot it is (see ended_playlist); should one get past
    # that, it is reloaded once at most. (Not m3u8_hold_counters: FFmpeg counts every reopening of the
    # segment read last as a reload without news, a seek back into it among them, so a low cap turned
    # such seeks into an end of stream, and frames after it into "past the end".)
    "max_reload": "1",
}

AV_TIME_BASE = 1_000_000  # FFmpeg's container-level clock (microseconds)
_AVFMT_TS_DISCONT = 0x0200


def open_container(source: Source | Path | str, limits: SourceLimits | None = None) -> tuple[Any, NamedReader]:
    """The source opened for demuxing: (container, the file it reads). Closes what it opened on failure.

    With ``limits``, the demuxer itself stops at one stream over the limit (FFmpeg's ``max_streams``):
    probing hundreds of streams costs a worker far more memory than the file's size before the count
    could be checked on the result."""
    if isinstance(source, str | Path):
        source = TrustedFile(Path(source))
    try:
        file = NamedReader(ended_playlist(source.open()), source.display_name)
        io_open = NestedOpener(source)
    except OSError as exc:
        raise EngineError("source_not_found", "the source could not be opened") from exc
    options = dict(_DEMUXER_OPTIONS)
    if limits is not None:
        options["max_streams"] = str(limits.max_streams + 1)  # one over: select_video_stream says so
    try:
        return av.open(file, mode="r", options=options, io_open=io_open), file
    except EngineError:
        close_container(None, file)
        raise
    except av.error.MemoryError as exc:
        close_container(None, file)
        if limits is None:
            raise EngineError("decode_failed", "opening the source needed more memory than allowed") from exc
        # (a demuxer that reads every stream from its header, as MP4 does, fails at the stream past the limit)
        raise EngineError("source_too_many_streams", f"the source has more than {limits.max_streams} streams") from exc
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        close_container(None, file)
        if io_open.refusal is not None:
            raise io_open.refusal from exc  # FFmpeg swallowed our refusal: say what it was
        raise EngineError("unsupported_media", "the source is not a video file this service can read") from exc


def close_container(container: Any, file: io.RawIOBase | None) -> None:
    """Close the container, then the file it reads (in that order: PyAV's nested HLS readers corrupt
    the heap if the files go first), whatever fails."""
    if container is not None:
        with contextlib.suppress(Exception):
            container.close()
    if file is not None:
        with contextlib.suppress(Exception):
            file.close()


def select_video_stream(container: Any, wanted: int | None, limits: SourceLimits) -> Any:
    """The video stream to grab from (``wanted``: an index among the video streams; None: the default
    one), its decoder capped at the pixel limit."""
    if len(container.streams) > limits.max_streams:
        raise EngineError("source_too_many_streams", f"the source has more than {limits.max_streams} streams")
    video = [s for s in container.streams.video if not _is_attached_picture(s)]
    if not video:
        raise EngineError("no_video_stream", "the source has no video stream")
    if wanted is not None:
        if not 0 <= wanted < len(video):
            raise InvalidParameter(f"stream: the source has {len(video)} video stream(s)", parameter="stream")
        stream = video[wanted]
    else:
        default = [s for s in video if s.disposition & av.stream.Disposition.default]
        decodable = [s for s in (default or video) if s.codec_context is not None] or video
        stream = decodable[0]
    if stream.codec_context is None:
        raise EngineError("unsupported_media", "the video codec of this source is not supported")
    cap_pixels(stream, limits)
    return stream


def cap_pixels(stream: Any, limits: SourceLimits) -> None:
    """Refuse a stream whose frame size is over the pixel limit, and cap its decoder at the limit: the
    decoder enforces it on every frame, so a size change mid-stream can't dodge it. Needed on every
    opening of the stream (a reopened container has a fresh decoder)."""
    context = stream.codec_context
    if (context.width or 0) * (context.height or 0) > limits.max_pixels:
        raise EngineError("source_too_many_pixels", "the video's frame size is over the limit")
    context.options = {**context.options, "max_pixels": str(limits.max_pixels)}


def timeline_origin(container: Any, video: Any) -> Fraction:
    """Where t=0 is on the stream's clock, exact, as the ffmpeg CLI places it.

    Normally the container's start time (MP4 edit lists already folded in by FFmpeg's mov
    demuxer). FFmpeg keeps that in microseconds, rounded from the earliest stream's start; where
    a stream's exact start rounds to it we take the exact value, so a frame at the very start has
    actual time exactly 0. Formats whose timestamps are discontinuous by nature (MPEG-TS,
    MPEG-PS, HLS) start at the video stream's own start, ignoring an audio track that starts
    earlier: the CLI does the same, and an MPEG-TS that starts at 1.48 s has t=0 at its first frame.
    """
    video_start = video.start_time * Fraction(video.time_base) if video.start_time is not None else None
    if video_start is not None and container.format.flags & _AVFMT_TS_DISCONT:
        return video_start
    start_us = container.start_time
    if start_us is None:
        return video_start or Fraction(0)
    for stream in (video, *container.streams):
        if stream.start_time is not None and stream.time_base:
            exact = stream.start_time * Fraction(stream.time_base)
            if round(exact * AV_TIME_BASE) == start_us:
                return exact
    return Fraction(start_us, AV_TIME_BASE)


def indexed_keyframes(stream: Any) -> list[int]:
    """The keyframe timestamps in the stream's index as it stands (sorted, those an edit list hides left out)."""
    return sorted({e.timestamp for e in stream.index_entries if e.is_keyframe and not e.is_discard})


def complete_keyframe_index(container: Any, stream: Any) -> list[int]:
    """The container's keyframe index, where it lists the whole stream (an MP4's sample table, an
    AVI's idx1); else nothing. Matroska cues, FLV metadata and fragmented MP4s index some keyframes
    up front and add others as they are read: the nearest keyframe to t may be missing from them."""
    try:
        complete = container.format.name == "avi" or 0 < (stream.frames or 0) <= len(stream.index_entries)
        return indexed_keyframes(stream) if complete else []
    except (AttributeError, av.error.FFmpegError):
        return []


def _is_attached_picture(stream: Any) -> bool:
    try:
        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except AttributeError:
        return False


class NamedReader(io.RawIOBase):
    """A source's file object under its file name (never a path): FFmpeg's HLS demuxer only accepts
    a playlist whose name ends in .m3u8, and resolves segment names against it, which our
    ``open_related`` then confines like any other source."""

    def __init__(self, raw: BinaryIO, display_name: str) -> None:
        super().__init__()
        self._raw = raw
        self.name = display_name.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "source"

    @property
    def raw(self) -> BinaryIO:
        """The file object read (a local file, or a remote source's block reader)."""
        return self._raw

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


class TrustedFile:
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
        # Only files in the playlist's own folder (or below), after '..' and symlinks: as the service
        # confines its sources to the media root.
        folder = self.path.parent.resolve()
        target = (folder / url).resolve()
        if not target.is_relative_to(folder):
            raise EngineError("source_forbidden", "a local playlist may refer only to files in its own folder")
        return target.open("rb")


_PLAYLIST_MAX_BYTES = 8 * 1024 * 1024  # a larger "playlist" is handed over as it is


def ended_playlist(raw: BinaryIO) -> BinaryIO:
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


class NestedOpener:
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
            return ended_playlist(self.source.open_related(url))
        except EngineError as exc:
            self.refusal = self.refusal or exc
            raise
