"""GET /v1/storyboard.{vtt,json,jpg,webp,png}: hover-scrub previews, one sprite sheet and its index.

One pass over the asset in time order makes every tile (a grab of many times in a decoder worker);
the sheet is composed on a thread. The three views of one storyboard share that pass: the first to ask
makes it, the others wait for it or find it in the image cache.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
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
from app.api.auth import AccessControl
from app.config import Settings
from app.engine import FrameResult
from app.engine.errors import InvalidParameter
from app.engine.info import AssetInfo
from app.engine.options import EncodeOptions, GrabOptions, RenderOptions
from app.engine.storyboard import (
    SHEET_CONTENT_TYPES,
    StoryboardPlan,
    compose_sheet,
    plan_storyboard,
    seconds_text,
    storyboard_vtt,
    tile_size,
)
from app.engine.timeparse import format_fraction, format_rational_time, parse_seconds, parse_tolerance
from app.pool.base import GrabTask

router = APIRouter(tags=["storyboards"])

SheetFormat = Literal["jpg", "webp", "png"]
_SIGNED_URL_PERIOD = 3600  # signed sheet URLs expire at the end of the next whole hour: stable bodies meanwhile


class StoryboardParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=8192, description="`http(s)://` URL, or a path under the media root.")
    interval: str | None = Field(default=None, max_length=64, description="Seconds between tiles.")
    count: int | None = Field(default=None, ge=1, le=5000, description="Tiles, evenly spread (instead of `interval`).")
    tile_width: int | None = Field(default=None, ge=16, le=1280, description="Default 160 (or from `tile_height`).")
    tile_height: int | None = Field(default=None, ge=16, le=1280, description="Default: from the aspect ratio.")
    columns: int | None = Field(default=None, ge=1, le=100, description="Tiles per row; default 10.")
    start: str | None = Field(default=None, max_length=64, description="First tile's time; default 0.")
    end: str | None = Field(default=None, max_length=64, description="End of the last cue; default: the duration.")
    tolerance: str = Field(
        default="inf", max_length=64, description="`inf` (default): the nearest keyframe; `0`: the exact frame."
    )
    stream: int | None = Field(default=None, ge=0, description="Index among the video streams.")
    quality: int | None = Field(default=None, ge=1, le=100, description="Sheet quality (jpg, webp).")
    format: SheetFormat = Field(default="jpg", description="The sheet format the VTT and JSON point at.")

    @model_validator(mode="after")
    def _check(self) -> StoryboardParams:
        if self.interval is not None and self.count is not None:
            raise InvalidParameter("give interval or count, not both", parameter="count")
        for name in ("interval", "start", "end"):
            value = getattr(self, name)
            if value is not None:
                parse_seconds(value, name)
        parse_tolerance(self.tolerance, "tolerance")
        return self

    def sheet_options(self) -> dict[str, Any]:
        """What the sheet is a function of (``format`` only says which sheet the index points at)."""
        return self.model_dump(exclude={"format"}, exclude_none=True)


@dataclass(frozen=True)
class Storyboard:
    plan: StoryboardPlan
    tiles: tuple[FrameResult, ...]  # in plan order, image bytes dropped
    duration: Fraction | None


async def _make(request: Request, params: StoryboardParams, sheet_format: SheetFormat) -> tuple[Storyboard, bytes]:
    settings: Settings = request.app.state.settings
    pool = request.app.state.pool
    info: AssetInfo = await one_answer(pool, GrabTask(params.url, (), GrabOptions(stream=params.stream), kind="info"))
    start = parse_seconds(params.start, "start") if params.start is not None else Fraction(0)
    duration = info.duration
    if params.end is not None:
        end = parse_seconds(params.end, "end")
        end = min(end, duration) if duration is not None else end
    elif duration is not None:
        end = duration
    else:
        raise InvalidParameter("end: the asset's duration is unknown, so give an end", parameter="end")
    plan = plan_storyboard(
        start=start,
        end=end,
        interval=parse_seconds(params.interval, "interval") if params.interval is not None else None,
        count=params.count,
        columns=params.columns,
        tile=tile_size((info.width, info.height), params.tile_width, params.tile_height),
        max_tiles=settings.storyboard_max_tiles,
        max_sheet_pixels=settings.storyboard_max_sheet_pixels,
    )
    tolerance = parse_tolerance(params.tolerance, "tolerance")
    options = GrabOptions(
        tolerance_before=tolerance,
        tolerance_after=tolerance,
        stream=params.stream,
        render=RenderOptions(width=plan.tile_width, height=plan.tile_height, fit="fill"),
        encode=EncodeOptions(format="png"),
    )
    task = GrabTask(params.url, tuple(seconds_text(t) for t in plan.times), options)
    ordered = await grab_in_order(pool, task)
    sheet = await run_in_threadpool(compose_sheet, plan, [r.image for r in ordered], sheet_format, params.quality)
    tiles = tuple(dataclasses.replace(r, image=b"") for r in ordered)
    return Storyboard(plan, tiles, duration), sheet


class StoryboardCache:
    """Made storyboards with their sheets, least recently used out past ``max_bytes`` of sheets."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Storyboard, bytes]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> tuple[Storyboard, bytes] | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, board: Storyboard, sheet: bytes) -> None:
        if len(sheet) > self.max_bytes or key in self._items:
            return
        self._items[key] = (board, sheet)
        self._bytes += len(sheet)
        while self._bytes > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self._bytes -= len(evicted)


async def _storyboard(
    request: Request, params: StoryboardParams, sheet_format: SheetFormat
) -> tuple[Storyboard, bytes]:
    """The storyboard and its sheet in ``sheet_format``: from the cache (local files, whose identity
    is known before decoding), from a pass in flight, or from a new pass."""
    settings: Settings = request.app.state.settings
    cache: StoryboardCache = request.app.state.storyboards
    source = await checked_source(params.url, settings)
    identity = local_identity(source)
    key = entity_tag_of("storyboard", identity or f"url:{params.url}", params.sheet_options(), sheet_format)
    if identity is not None and (cached := cache.get(key)) is not None:
        return cached

    async def make() -> tuple[Storyboard, bytes]:
        return await _make(request, params, sheet_format)

    made: tuple[Storyboard, bytes] = await request.app.state.in_flight.run(key, make)
    if identity is not None:
        cache.put(key, *made)
    return made


def _sheet_url(request: Request, params: StoryboardParams) -> str:
    """The sheet's URL as it stands in a browser: an absolute path with this request's parameters,
    signed when URL signing is configured (an ``<img>`` or a player cannot send an API key)."""
    query = urlencode(
        [(k, v) for k, v in request.query_params.multi_items() if k not in {"format", "kid", "exp", "sig"}]
    )
    url = f"{request.scope.get('root_path', '')}/v1/storyboard.{params.format}?{query}"
    access: AccessControl = request.app.state.access_control
    if access.signer:
        expires = (int(time.time()) // _SIGNED_URL_PERIOD + 2) * _SIGNED_URL_PERIOD
        url = access.signer.sign(url, expires=expires)
    return url


def _tile_document(plan: StoryboardPlan, index: int, tile: FrameResult) -> dict[str, Any]:
    x, y = plan.position(index)
    return {
        "index": index,
        "start": float(format_fraction(plan.times[index])),
        "end": float(format_fraction(plan.ends[index])),
        "requested_time": format_fraction(tile.requested_time),
        "actual_time": format_fraction(tile.actual_time),
        "actual_time_rational": format_rational_time(tile.actual_time, tile.time_base),
        "x": x,
        "y": y,
    }


_RESPONSES: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified (`If-None-Match` matched)."},
    **ASSET_PROBLEMS,
}


async def _index_response(request: Request, params: StoryboardParams, media_type: str) -> Response:
    settings: Settings = request.app.state.settings
    sheet_url = _sheet_url(request, params)
    headers = {"Cache-Control": settings.cache_control}
    source = await checked_source(params.url, settings)
    kind = media_type.split("/")[1]
    if (identity := local_identity(source)) is not None:
        etag = entity_tag_of(kind, identity, params.model_dump(), sheet_url)
        if not_modified(request, etag):
            return not_modified_response(etag, headers)
    board, _ = await _storyboard(request, params, params.format)
    identity = board.tiles[0].source_identity
    etag = entity_tag_of(kind, identity, params.model_dump(), sheet_url)
    if not_modified(request, etag):
        return not_modified_response(etag, headers)
    headers["ETag"] = etag
    plan = board.plan
    if media_type == "text/vtt":
        return Response(storyboard_vtt(plan, sheet_url), media_type="text/vtt; charset=utf-8", headers=headers)
    document = {
        "url": sheet_url,
        "duration": None if board.duration is None else float(format_fraction(board.duration)),
        "tile_width": plan.tile_width,
        "tile_height": plan.tile_height,
        "columns": plan.columns,
        "rows": plan.rows,
        "tolerance": params.tolerance,
        "tiles": [_tile_document(plan, i, tile) for i, tile in enumerate(board.tiles)],
    }
    return JSONResponse(document, headers=headers)


@router.get(
    "/v1/storyboard.vtt",
    summary="WebVTT thumbnails track: a cue per tile, pointing at the sheet with #xywh",
    response_class=Response,
    responses={200: {"content": {"text/vtt": {"schema": {"type": "string"}}}}, **_RESPONSES},
)
async def get_storyboard_vtt(request: Request, params: Annotated[StoryboardParams, Query()]) -> Response:
    """Cues run from `start` (0) to `end` (the duration) without gaps; each names its tile on the sheet
    (`/v1/storyboard.{format}`, signed when URL signing is configured) as `#xywh=x,y,w,h`."""
    return await _index_response(request, params, "text/vtt")


@router.get(
    "/v1/storyboard.json",
    summary="The storyboard's index as JSON: each tile's place and its requested and actual time",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}}, **_RESPONSES},
)
async def get_storyboard_json(request: Request, params: Annotated[StoryboardParams, Query()]) -> Response:
    """`actual_time` is the tile's frame's presentation time: the nearest keyframe by default, the frame
    on screen at `requested_time` with `tolerance=0`, exactly as `/v1/frame` would answer."""
    return await _index_response(request, params, "application/json")


@router.get(
    "/v1/storyboard.{sheet_format}",
    summary="The sprite sheet: every tile on one image",
    response_class=Response,
    responses={
        200: {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in SHEET_CONTENT_TYPES.values()}},
        **_RESPONSES,
    },
)
async def get_storyboard_sheet(
    request: Request, sheet_format: SheetFormat, params: Annotated[StoryboardParams, Query()]
) -> Response:
    """Tiles left to right, top to bottom, `columns` to a row, in time order."""
    settings: Settings = request.app.state.settings
    headers = {"Cache-Control": settings.cache_control}
    source = await checked_source(params.url, settings)
    if (identity := local_identity(source)) is not None:
        etag = entity_tag_of("sheet", identity, params.sheet_options(), sheet_format)
        if not_modified(request, etag):
            return not_modified_response(etag, headers)
    board, sheet = await _storyboard(request, params, sheet_format)
    identity = board.tiles[0].source_identity
    etag = entity_tag_of("sheet", identity, params.sheet_options(), sheet_format)
    if not_modified(request, etag):
        return not_modified_response(etag, headers)
    headers["ETag"] = etag
    return Response(sheet, media_type=SHEET_CONTENT_TYPES[sheet_format], headers=headers)
