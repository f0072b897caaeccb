"""What the asset endpoints beyond ``/v1/frame`` share (info, storyboards, animated previews): the
source check before queueing, validators and weak ``If-None-Match``, and one-answer pool tasks."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Final

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.images import entity_tag, none_match
from app.api.problems import problem_responses
from app.config import Settings
from app.engine import FrameFailure, FrameResult
from app.engine.errors import EngineError
from app.engine.sources import LocalSource, Source, is_remote, resolve_source
from app.pool.base import DecoderPool, GrabTask

# The problems of an endpoint that reads an asset in a decoder worker (frames, info, storyboards, previews).
_ASSET_PROBLEM_CODES: Final = (
    "invalid_parameter",
    "unauthorized",
    "source_forbidden",
    "signature_invalid",
    "signature_expired",
    "source_not_found",
    "no_image_at_time",
    "unsupported_media",
    "no_video_stream",
    "decode_failed",
    "source_too_large",
    "source_too_many_pixels",
    "source_too_long",
    "source_too_many_streams",
    "queue_full",
    "overloaded",
    "rate_limited",
    "source_unreachable",
    "decode_timeout",
)
ASSET_PROBLEMS: Final = problem_responses(
    *_ASSET_PROBLEM_CODES,
    notes={
        401: "API keys configured, none or a wrong one given",
        429: "with `Retry-After`",
        503: "at the memory limit, with `Retry-After`",
    },
)


async def checked_source(url: str, settings: Settings) -> Source:
    """The source, refused here before any queueing (an SSRF refusal needs no decoder); DNS on a thread."""
    if is_remote(url):
        return await run_in_threadpool(resolve_source, url, settings.source_policy())
    return resolve_source(url, settings.source_policy())


def local_identity(source: Source) -> str | None:
    """The identity of a local file (a stat away), for answering without decoding; None for URLs."""
    return source.identity if isinstance(source, LocalSource) else None


def entity_tag_of(*parts: Any) -> str:
    """A strong entity tag over everything the response is a pure function of."""
    return entity_tag(json.dumps(parts, sort_keys=True, default=str).encode())


def not_modified(request: Request, etag: str) -> bool:
    return none_match(request.headers.get("if-none-match"), etag)


def not_modified_response(etag: str, headers: dict[str, str]) -> Response:
    return Response(status_code=304, headers={**headers, "ETag": etag})


async def one_answer(pool: DecoderPool, task: GrabTask) -> Any:
    """The single item a non-grab task (``task.kind``) answers with; raises its EngineError."""
    async with contextlib.aclosing(pool.grab_many(task)) as items:  # type: ignore[type-var]
        async for item in items:
            failure = getattr(item, "error", None)
            if isinstance(failure, EngineError):
                raise failure
            return item
    raise EngineError("decode_failed", "the decoder produced no result")


async def grab_in_order(pool: DecoderPool, task: GrabTask) -> list[FrameResult]:
    """Every time of ``task`` in one pass, in request order. A time past the last frame (a container
    whose duration runs on past its video, an audio track longer than the picture) gets the last
    frame before it, which is what a player shows there; any other failure fails the whole."""
    found: dict[int, FrameResult] = {}
    past_end: list[FrameFailure] = []
    async for item in pool.grab_many(task):
        if isinstance(item, FrameFailure):
            if item.error.code != "no_image_at_time":
                raise item.error
            past_end.append(item)
        else:
            found[item.index] = item
    for failure in sorted(past_end, key=lambda f: f.index):
        earlier = [i for i in found if i < failure.index]
        if not earlier:
            raise failure.error
        found[failure.index] = found[max(earlier)]
    if len(found) != len(task.times):
        raise EngineError("decode_failed", "the decoder did not answer every time")
    return [found[i] for i in range(len(task.times))]
