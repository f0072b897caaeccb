"""GET /v1/info: the facts a frontend needs to draw a timeline (duration, displayed size, frame rate...)."""

from __future__ import annotations

from dataclasses import asdict
from fractions import Fraction
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.assets import (
    ASSET_PROBLEMS,
    checked_source,
    entity_tag_of,
    local_identity,
    not_modified,
    not_modified_response,
    one_answer,
)
from app.engine.info import AssetInfo
from app.engine.options import GrabOptions
from app.engine.timeparse import format_fraction
from app.pool.base import GrabTask, TaskKind

router = APIRouter(tags=["assets"])


class InfoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=8192, description="`http(s)://` URL, or a path under the media root.")
    stream: int | None = Field(default=None, ge=0, description="Index among the video streams; default: the main one.")
    keyframes: bool = Field(default=False, description="List every keyframe's time (reads the whole index or file).")


def _seconds(value: Fraction | None) -> float | None:
    """Seconds as a JSON number: the exact decimal to the nanosecond (``format_fraction``), read back."""
    return None if value is None else float(format_fraction(value))


def info_document(info: AssetInfo) -> dict[str, Any]:
    rate = info.frame_rate
    return {
        "duration": _seconds(info.duration),
        "width": info.width,
        "height": info.height,
        "coded_width": info.coded_width,
        "coded_height": info.coded_height,
        "frame_rate": _seconds(rate),
        "frame_rate_rational": None if rate is None else f"{rate.numerator}/{rate.denominator}",
        "variable_frame_rate": info.variable_frame_rate,
        "video_codec": info.video_codec,
        "pixel_format": info.pixel_format,
        "rotation": info.rotation,
        "mirrored": info.mirrored,
        "pixel_aspect_ratio": f"{info.pixel_aspect_ratio.numerator}:{info.pixel_aspect_ratio.denominator}",
        "hdr": info.hdr,
        "has_alpha": info.has_alpha,
        "streams": [{k: v for k, v in asdict(stream).items() if v is not None} for stream in info.streams],
        **(
            {"keyframes": [_seconds(t) for t in info.keyframes], "keyframes_truncated": info.keyframes_truncated}
            if info.keyframes is not None
            else {}
        ),
    }


@router.get(
    "/v1/info",
    summary="The asset's duration, displayed size, frame rate, codec, orientation, HDR and streams",
    responses={
        200: {"description": "The facts, as JSON; times in seconds on the asset timeline (t=0 at the start)."},
        304: {"description": "Not modified (`If-None-Match` matched)."},
        **ASSET_PROBLEMS,
    },
)
async def get_info(request: Request, params: Annotated[InfoParams, Query()]) -> Response:
    """Probed in a decoder worker (the first picture is decoded for its orientation and transfer)."""
    settings = request.app.state.settings
    source = await checked_source(params.url, settings)
    headers = {"Cache-Control": settings.cache_control}
    identity = local_identity(source)
    if identity is not None and not_modified(request, etag := entity_tag_of("info", identity, params.model_dump())):
        return not_modified_response(etag, headers)
    kind: TaskKind = "info_keyframes" if params.keyframes else "info"
    task = GrabTask(params.url, (), GrabOptions(stream=params.stream), kind=kind)
    info: AssetInfo = await one_answer(request.app.state.pool, task)
    etag = entity_tag_of("info", info.source_identity, params.model_dump())
    if not_modified(request, etag):
        return not_modified_response(etag, headers)
    return JSONResponse(info_document(info), headers={**headers, "ETag": etag})
