"""GET/POST /v1/frame: one image for one time."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.problems import Problem
from app.config import Settings, get_settings
from app.engine.encode import negotiate_format
from app.engine.generator import FrameResult, ImageGenerator
from app.engine.sources import Source, resolve_source
from app.engine.timeparse import format_fraction
from app.schemas import FrameParams

router = APIRouter(tags=["frames"])

_IMAGE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "The image. `X-Actual-Time` is the returned frame's presentation time on the asset timeline.",
        "content": {
            t: {"schema": {"type": "string", "format": "binary"}}
            for t in ("image/jpeg", "image/png", "image/webp", "image/avif")
        },
        "headers": {
            "X-Actual-Time": {"description": "Seconds, exact to the nanosecond.", "schema": {"type": "string"}},
            "X-Actual-Time-Rational": {
                "description": "value/timescale of the frame's time.",
                "schema": {"type": "string"},
            },
            "X-Requested-Time": {
                "description": "The requested time, resolved to seconds.",
                "schema": {"type": "string"},
            },
            "ETag": {"description": "Strong validator of this exact image.", "schema": {"type": "string"}},
        },
    },
    304: {"description": "Not modified (`If-None-Match` matched)."},
    **{
        status: {"description": description, "model": Problem, "content": {"application/problem+json": {}}}
        for status, description in {
            400: "`invalid_parameter`",
            403: "`source_forbidden`",
            404: "`source_not_found`",
            422: "`no_image_at_time`, `unsupported_media`, `no_video_stream`, `decode_failed`, `source_too_large`",
            502: "`source_unreachable`",
        }.items()
    },
}


def _etag(source: Source, params: FrameParams, image_format: str) -> str:
    """A strong validator known before decoding: the output is a pure function of the source's bytes
    (its identity changes with them) and every option, so a match needs no decode at all."""
    options = params.model_dump(exclude={"url", "format"})
    blob = json.dumps([source.identity, image_format, options], sort_keys=True, default=str)
    return '"' + hashlib.sha256(blob.encode()).hexdigest()[:32] + '"'


def _grab(source: Source, params: FrameParams, image_format: str, settings: Settings) -> FrameResult:
    options = params.grab_options(image_format)  # type: ignore[arg-type]
    with ImageGenerator(source, options, max_output_pixels=settings.max_output_pixels) as generator:
        return generator.image_at(params.t)


async def serve_frame(
    params: FrameParams, request: Request, settings: Settings, accept: str | None, if_none_match: str | None
) -> Response:
    image_format = params.format or negotiate_format(accept)
    source = await run_in_threadpool(resolve_source, params.url, settings)
    etag = _etag(source, params, image_format)
    headers = {"ETag": etag, "Cache-Control": settings.cache_control}
    if params.format is None:
        headers["Vary"] = "Accept"
    if if_none_match and etag in {tag.strip() for tag in if_none_match.split(",")} | {"*"} - {""}:
        return Response(status_code=304, headers=headers)
    result = await run_in_threadpool(_grab, source, params, image_format, settings)
    headers.update(
        {
            "X-Actual-Time": format_fraction(result.actual_time),
            "X-Actual-Time-Rational": result.actual_time_rational,
            "X-Requested-Time": format_fraction(result.requested_time),
            "Content-Disposition": f'inline; filename="frame-{format_fraction(result.actual_time)}.{image_format}"',
            "Access-Control-Expose-Headers": "X-Actual-Time, X-Actual-Time-Rational, X-Requested-Time, ETag",
        }
    )
    return Response(content=result.image, media_type=result.content_type, headers=headers)


@router.get("/v1/frame", responses=_IMAGE_RESPONSES, response_class=Response, summary="The image at a time")
async def get_frame(
    request: Request,
    params: Annotated[FrameParams, Query()],
    settings: Annotated[Settings, Depends(get_settings)],
    accept: Annotated[str | None, Header()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Like `AVAssetImageGenerator.image(at:)`: the frame on screen at `t` (exact by default)."""
    return await serve_frame(params, request, settings, accept, if_none_match)


@router.post(
    "/v1/frame", responses=_IMAGE_RESPONSES, response_class=Response, summary="The image at a time (JSON body)"
)
async def post_frame(
    request: Request,
    params: FrameParams,
    settings: Annotated[Settings, Depends(get_settings)],
    accept: Annotated[str | None, Header()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The same as `GET /v1/frame`, with the parameters as a JSON body."""
    return await serve_frame(params, request, settings, accept, if_none_match)
