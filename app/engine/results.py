"""What a generator gives back for each requested time: an image with its frame's exact time, or a failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from app.engine.errors import EngineError
from app.engine.timeparse import TimeSpec, format_rational_time

Rendered = tuple[bytes, int, int, dict[str, float]]  # an image made from a frame: data, width, height, timings


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
