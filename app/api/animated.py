"""GET /v1/animated.{webp,gif}: a short animated preview, each frame the one on screen at its time."""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from app.api.assets import (
    ASSET_PROBLEMS,
    checked_source,
    entity_tag_of,
    grab_in_order,
    local_identity,
    not_modified,
    not_modified_response,
    one_answer,
)
from app.config import Settings
from app.engine import FrameResult
from app.engine.animated import ANIMATED_CONTENT_TYPES, encode_animation, frame_times
from app.engine.errors import InvalidParameter
from app.engine.info import AssetInfo
from app.engine.options import EncodeOptions, GrabOptions, RenderOptions
from app.engine.storyboard import seconds_text
from app.engine.timeparse import format_fraction, parse_seconds
from app.pool.base import GrabTask

router = APIRouter(tags=["animated"])

AnimatedFormat = Literal["webp", "gif"]
DEFAULT_SECONDS = Fraction(3)
DEFAULT_WIDTH = 320


class AnimatedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=8192, description="`http(s)://` URL, or a path under the media root.")
    start: str = Field(default="0", max_length=64, description="Seconds on the asset timeline.")
    end: str | None = Field(
        default=None, max_length=64, description="Default: 3 s after `start` (at most the duration)."
    )
    fps: int = Field(default=10, ge=1, le=60, description="Frames a second (at most `STILLFRAME_ANIMATED_MAX_FPS`).")
    width: int | None = Field(default=None, ge=16, le=4096, description="Maximum width; default 320.")
    height: int | None = Field(default=None, ge=16, le=4096, description="Maximum height.")
    stream: int | None = Field(default=None, ge=0, description="Index among the video streams.")

    @model_validator(mode="after")
    def _check(self) -> AnimatedParams:
        parse_seconds(self.start, "start")
        if self.end is not None:
            parse_seconds(self.end, "end")
        return self


def _check_bounds(params: AnimatedParams, settings: Settings) -> None:
    if params.fps > settings.animated_max_fps:
        raise InvalidParameter(f"fps: at most {settings.animated_max_fps}", parameter="fps")
    for name in ("width", "height"):
        value = getattr(params, name)
        if value is not None and value > settings.animated_max_side:
            raise InvalidParameter(f"{name}: at most {settings.animated_max_side}", parameter=name)
    if params.end is not None:
        span = parse_seconds(params.end, "end") - parse_seconds(params.start, "start")
        if span > Fraction(str(settings.animated_max_seconds)):
            raise InvalidParameter(f"end: at most {settings.animated_max_seconds} s after start", parameter="end")


async def _make(request: Request, params: AnimatedParams, image_format: str) -> tuple[bytes, list[FrameResult]]:
    pool = request.app.state.pool
    info: AssetInfo = await one_answer(pool, GrabTask(params.url, (), GrabOptions(stream=params.stream), kind="info"))
    start = parse_seconds(params.start, "start")
    end = parse_seconds(params.end, "end") if params.end is not None else start + DEFAULT_SECONDS
    if info.duration is not None:
        end = min(end, info.duration)
    ticks = frame_times(start, end, params.fps)
    width = params.width if params.width is not None or params.height is not None else DEFAULT_WIDTH
    options = GrabOptions(
        stream=params.stream,
        render=RenderOptions(width=width, height=params.height),
        encode=EncodeOptions(format="png"),
    )
    frames = await grab_in_order(pool, GrabTask(params.url, tuple(seconds_text(t) for t in ticks), options))
    body = await run_in_threadpool(
        encode_animation, [(f.image, f.actual_time) for f in frames], ticks, end, image_format
    )
    return body, frames


@router.get(
    "/v1/animated.{image_format}",
    summary="A short animated preview (GIF or WebP)",
    response_class=Response,
    responses={
        200: {
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in ANIMATED_CONTENT_TYPES.values()},
            "description": "The animation. `X-Actual-Time`: the first frame's time; `X-Frame-Count`: ticks.",
        },
        304: {"description": "Not modified (`If-None-Match` matched)."},
        **ASSET_PROBLEMS,
    },
)
async def get_animated(
    request: Request, image_format: AnimatedFormat, params: Annotated[AnimatedParams, Query()]
) -> Response:
    """`fps` frames a second from `start` to `end` (at most `STILLFRAME_ANIMATED_MAX_SECONDS`, 10 s),
    each the frame on screen at its time (tolerance 0, as `/v1/frame`), at most 640 pixels a side by
    default; a GIF shares one palette over all its frames."""
    settings: Settings = request.app.state.settings
    _check_bounds(params, settings)
    headers = {"Cache-Control": settings.cache_control}
    source = await checked_source(params.url, settings)
    cache = request.app.state.image_cache
    options: dict[str, Any] = params.model_dump()
    identity = local_identity(source)
    if identity is not None:
        etag = entity_tag_of("animated", identity, options, image_format)
        if not_modified(request, etag):
            return not_modified_response(etag, headers)
        if (cached := cache.get(etag)) is not None:
            body, cached_headers = cached
            return Response(body, headers={**headers, **cached_headers})
    key = entity_tag_of("animated", identity or f"url:{params.url}", options, image_format)

    async def make() -> tuple[bytes, list[FrameResult]]:
        return await _make(request, params, image_format)

    body, frames = await request.app.state.in_flight.run(key, make)
    etag = entity_tag_of("animated", frames[0].source_identity, options, image_format)
    if not_modified(request, etag):
        return not_modified_response(etag, headers)
    made = {
        "ETag": etag,
        "Content-Type": ANIMATED_CONTENT_TYPES[image_format],
        "X-Actual-Time": format_fraction(frames[0].actual_time),
        "X-Frame-Count": str(len(frames)),
    }
    cache.put(etag, body, made)
    return Response(body, headers={**headers, **made})
