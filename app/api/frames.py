"""GET/POST /v1/frame: one image for one time.

``GET /v1/frame`` is the hot path (an ``<img src>``, often answered from the image cache), and it
binds nothing through FastAPI: it reads its query (``frame_query``, one pydantic call), its caller
(``app.api.auth.authenticate``), its headers and its services itself. FastAPI's binding of a query
model, of a dependency and of each header costs every request, and together they are a large part
of a cached grab at p50 (the benchmark of a cached ``GET /v1/frame`` over a keep-alive connection).
The route still answers as a bound one would: the same checks on the same credentials, the same
400 problems (``RequestValidationError``), and the parameters and security FastAPI would document
(``_documented_parameters``, ``SECURITY``; tests/test_openapi.py checks them). ``POST`` binds as usual.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.assets import ASSET_PROBLEMS
from app.api.auth import SECURITY, authenticate, caller_identity
from app.api.deps import FrameServices, get_frame_services
from app.api.images import entity_tag, image_headers, none_match
from app.api.jobs import respond_async, wants_async
from app.api.poster import poster_time
from app.config import Settings
from app.engine.encode import negotiate_format
from app.engine.poster import POSTER_TIME
from app.engine.sources import LocalSource, is_remote, resolve_source
from app.pool.base import GrabTask
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
            "Server-Timing": {
                "description": "open, decode, render, encode, pool (ms); with `STILLFRAME_SERVER_TIMING` only.",
                "schema": {"type": "string"},
            },
        },
    },
    304: {"description": "Not modified (`If-None-Match` matched)."},
    **ASSET_PROBLEMS,
}


def _etag(source_identity: str, params: FrameParams, image_format: str, settings: Settings) -> str:
    """A strong validator: the output is a pure function of the source's bytes (its identity changes
    with them), every option and the deployment's encoder effort, so for a local file a match needs no
    decode at all."""
    options = params.model_dump(exclude={"url", "format"})
    effort = {"webp": settings.webp_method, "avif": settings.avif_speed}.get(image_format)
    blob = json.dumps([source_identity, image_format, options, effort], sort_keys=True, default=str)
    return entity_tag(blob.encode())


async def serve_frame(
    params: FrameParams, services: FrameServices, accept: str | None, if_none_match: str | None
) -> Response:
    settings, pool, cache, in_flight = services.settings, services.pool, services.cache, services.in_flight
    image_format = params.format or negotiate_format(accept)
    # Refuse bad sources here, before any queueing (an SSRF refusal needs no decoder). A local path is
    # a stat: cheaper inline than a hop to the thread pool; DNS is not.
    if is_remote(params.url):
        source = await run_in_threadpool(resolve_source, params.url, settings.source_policy())
    else:
        source = resolve_source(params.url, settings.source_policy())
    if params.t == POSTER_TIME:  # the poster's time first, then the frame at it like any other
        identity = source.identity if isinstance(source, LocalSource) else None
        params = params.model_copy(update={"t": await poster_time(pool, params.url, params.stream, identity)})
    headers = {"Cache-Control": settings.cache_control}
    if params.format is None:
        headers["Vary"] = "Accept"
    known_etag = None
    if isinstance(source, LocalSource):  # identity is a stat away: answer without decoding when we can
        known_etag = _etag(source.identity, params, image_format, settings)
        if none_match(if_none_match, known_etag):
            return Response(status_code=304, headers={**headers, "ETag": known_etag})
        if cached := cache.get(known_etag):
            body, entity_headers = cached
            return Response(body, headers={**headers, **entity_headers, "Server-Timing": "cache;dur=0"})
    task = GrabTask(params.url, (params.t,), params.grab_options(image_format))  # type: ignore[arg-type]
    started = time.perf_counter()
    flight_key = known_etag or _etag(f"url:{params.url}", params, image_format, settings)
    result = await in_flight.run(flight_key, lambda: pool.grab(task))
    total = time.perf_counter() - started
    etag = _etag(result.source_identity, params, image_format, settings)
    if none_match(if_none_match, etag):
        return Response(status_code=304, headers={**headers, "ETag": etag})
    times = image_headers(result.actual_time, result.actual_time_rational, result.requested_time, image_format)
    entity_headers = {"ETag": etag, "Content-Type": result.content_type, **times}
    cache.put(etag, result.image, entity_headers)
    headers["Server-Timing"] = server_timing(result.timings, total)  # (sent on only if configured: ObserveMiddleware)
    return Response(result.image, headers={**headers, **entity_headers})


def server_timing(timings: dict[str, float], total: float) -> str:
    """Where the time went: open (fetch + probe, first use of an asset in its worker only), decode
    (seek and decode up to the frame), render (convert, orient, scale), encode, and the rest
    (queueing and transfer between processes)."""
    parts = [f"{name};dur={seconds * 1000:.2f}" for name, seconds in timings.items()]
    parts.append(f"pool;dur={max(0.0, total - sum(timings.values())) * 1000:.2f}")
    return ", ".join(parts)


def _documented_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI parameters FastAPI writes for ``model`` bound as a query model (``Annotated[model,
    Query()]``) and the ``Accept`` and ``If-None-Match`` headers, taken from a route made only to be
    documented."""

    async def documented(params: Any, accept: Any = None, if_none_match: Any = None) -> None:
        """Never called."""

    # (set here, not written in the signature: annotations are strings under __future__.annotations,
    # and FastAPI could not resolve this function's local ``model``)
    documented.__annotations__ = {
        "params": Annotated[model, Query()],  # type: ignore[valid-type]
        "accept": Annotated[str | None, Header()],
        "if_none_match": Annotated[str | None, Header()],
        "return": None,
    }
    probe = FastAPI()
    probe.add_api_route("/", documented, methods=["GET"])
    parameters: list[dict[str, Any]] = probe.openapi()["paths"]["/"]["get"]["parameters"]
    return parameters


async def frame_query(request: Request) -> FrameParams:
    """``GET /v1/frame``'s query, validated in one pydantic call; errors as FastAPI's own (a 400 problem)."""
    try:
        return FrameParams.model_validate(dict(request.query_params))  # (a repeated name: its last value)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]) from None


@router.get(
    "/v1/frame",
    responses=_IMAGE_RESPONSES,
    response_class=Response,
    summary="The image at a time",
    openapi_extra={"parameters": _documented_parameters(FrameParams), "security": SECURITY},
)
async def get_frame(request: Request) -> Response:
    """Like `AVAssetImageGenerator.image(at:)`: the frame on screen at `t` (exact by default)."""
    await authenticate(request)  # (nothing bound through FastAPI here: see the module's docstring)
    headers = request.headers
    services = await get_frame_services(request)
    return await serve_frame(await frame_query(request), services, headers.get("accept"), headers.get("if-none-match"))


@router.post(
    "/v1/frame",
    responses=_IMAGE_RESPONSES,
    response_class=Response,
    summary="The image at a time (JSON body)",
    dependencies=[Depends(caller_identity)],
)
async def post_frame(
    params: FrameParams,
    services: Annotated[FrameServices, Depends(get_frame_services)],
    request: Request,
    accept: Annotated[str | None, Header()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
    prefer: Annotated[str | None, Header(description="`respond-async`: answer 202 with a job (RFC 7240).")] = None,
) -> Response:
    """The same as `GET /v1/frame`, with the parameters as a JSON body. With `Prefer: respond-async`,
    `202` and a one-time job (`Location`) instead of the image."""
    if wants_async(prefer):
        return await respond_async(request, params, accept)
    return await serve_frame(params, services, accept, if_none_match)
