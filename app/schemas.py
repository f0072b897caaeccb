"""The parameters of a grab, shared by the HTTP API (query or JSON body), the CLI and jobs."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from app.engine.options import (
    Aperture,
    DynamicRange,
    EncodeOptions,
    Fit,
    GrabOptions,
    ImageFormat,
    RenderOptions,
    Rotate,
)
from app.engine.poster import POSTER_TIME
from app.engine.render import parse_background
from app.engine.timeparse import parse_time, parse_tolerance


def _time_text(value: Any) -> Any:
    """Times stay text so they parse exactly; a JSON number is read back by its shortest decimal
    form (0.1 stays 0.1, not 0.1000000000000000055...). Send strings for rationals and percentages."""
    if isinstance(value, bool):
        raise ValueError("a time is a string or a number")
    if isinstance(value, int | float):
        return repr(value)
    return value


TimeText = Annotated[str, BeforeValidator(_time_text)]

_TIME_HELP = (
    "Seconds on the asset timeline: decimal (`12.5`), rational `value/timescale` (`1001/30000`), "
    "clock (`1:02.5`) or a percentage of the duration (`50%`)."
)
_TOLERANCE_HELP = "Seconds, or `inf`. Default 0: exact."
_RENDER_FIELDS = {option.name for option in dataclasses.fields(RenderOptions)}  # each a field of GrabParams too


class GrabParams(BaseModel):
    """Everything but the source and the time: how the frame is chosen and delivered."""

    model_config = ConfigDict(extra="forbid")

    tolerance: TimeText | None = Field(default=None, description="Sets both tolerances. " + _TOLERANCE_HELP)
    tolerance_before: TimeText | None = Field(default=None, description=_TOLERANCE_HELP)
    tolerance_after: TimeText | None = Field(default=None, description=_TOLERANCE_HELP)
    stream: int | None = Field(default=None, ge=0, description="Index among the video streams; default: the main one.")
    rotate: Rotate = Field(
        default="auto", description="`auto` applies the display matrix; `none` keeps the stored orientation."
    )
    aperture: Aperture = Field(
        default="clean",
        description="`clean`: square pixels, clean-aperture crop; `production`: square pixels; `encoded`: as stored.",
    )
    width: int | None = Field(
        default=None, ge=1, le=16384, description="Maximum width (never upscaled with `fit=contain`)."
    )
    height: int | None = Field(default=None, ge=1, le=16384, description="Maximum height.")
    fit: Fit = "contain"
    background: str = Field(default="black", max_length=32, description="Padding colour for `fit=pad`.")
    dynamic_range: DynamicRange = Field(
        default="sdr",
        description="`sdr` tone-maps HDR (PQ, HLG) to SDR; `native` keeps it: a 16-bit PNG (cICP) or a 10-bit"
        " AVIF (nclx) in the source's transfer and primaries, and 400 for formats that cannot carry it.",
    )
    format: ImageFormat | None = Field(
        default=None, description="Output format; default: negotiated from `Accept`, else jpeg."
    )
    quality: int | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _check_tolerances(self) -> GrabParams:
        self.tolerances()  # raises InvalidParameter on nonsense; surfaced as a 400 problem
        parse_background(self.background)  # here, before any decoder sees it
        return self

    def tolerances(self) -> tuple[Fraction | None, Fraction | None]:
        both = parse_tolerance(self.tolerance, "tolerance") if self.tolerance is not None else Fraction(0)
        before = (
            parse_tolerance(self.tolerance_before, "tolerance_before") if self.tolerance_before is not None else both
        )
        after = parse_tolerance(self.tolerance_after, "tolerance_after") if self.tolerance_after is not None else both
        return before, after

    def grab_options(self, image_format: ImageFormat | None = None) -> GrabOptions:
        before, after = self.tolerances()
        return GrabOptions(
            tolerance_before=before,
            tolerance_after=after,
            stream=self.stream,
            render=RenderOptions(**self.model_dump(include=_RENDER_FIELDS)),
            encode=EncodeOptions(format=image_format or self.format or "jpeg", quality=self.quality),
        )


class FrameParams(GrabParams):
    """One frame: a source and a time."""

    url: str = Field(min_length=1, max_length=8192, description="`http(s)://` URL, or a path under the media root.")
    t: TimeText = Field(default="0", max_length=64, description=_TIME_HELP + " `auto`: a representative poster frame.")

    @model_validator(mode="after")
    def _check_time(self) -> FrameParams:
        if self.t != POSTER_TIME:  # "auto": the poster frame (app.api.poster)
            parse_time(self.t)  # raises InvalidParameter, surfaced as a 400 problem
        return self
