"""``t=auto`` on ``/v1/frame``: the poster frame's time, chosen in one pass over keyframes at a reduced
size (app.engine.poster), then served like any other time (exact at that keyframe's time)."""

from __future__ import annotations

from collections import OrderedDict

from starlette.concurrency import run_in_threadpool

from app.engine import FrameFailure, FrameResult
from app.engine.errors import EngineError
from app.engine.options import EncodeOptions, GrabOptions, RenderOptions
from app.engine.poster import CANDIDATE_WIDTH, FALLBACK_SECONDS, best_candidate, candidate_times, poster_score
from app.engine.storyboard import seconds_text
from app.pool.base import DecoderPool, GrabTask

_CHOSEN_KEPT = 1024
_chosen: OrderedDict[tuple[str, int | None], str] = OrderedDict()  # (local file identity, stream) -> time


def _scores(images: list[bytes]) -> list[float]:
    return [poster_score(image) for image in images]


async def poster_time(pool: DecoderPool, url: str, stream: int | None, identity: str | None) -> str:
    """The poster frame's time as exact text, for ``t``. ``identity``: a local file's, to remember the
    choice by (its content decides it); None for a URL."""
    key = (identity, stream) if identity is not None else None
    if key is not None and (known := _chosen.get(key)) is not None:
        _chosen.move_to_end(key)
        return known
    options = GrabOptions(
        tolerance_before=None,
        tolerance_after=None,  # the nearest keyframe: one packet decoded per candidate
        stream=stream,
        render=RenderOptions(width=CANDIDATE_WIDTH, height=CANDIDATE_WIDTH),
        encode=EncodeOptions(format="png"),
    )
    candidates: list[FrameResult] = []
    failure: EngineError | None = None
    for times in (candidate_times(), FALLBACK_SECONDS):  # seconds where no duration is known for percentages
        async for item in pool.grab_many(GrabTask(url, tuple(times), options)):
            if isinstance(item, FrameFailure):
                failure = failure or item.error
            else:
                candidates.append(item)
        if candidates:
            break
    if not candidates:
        raise failure or EngineError("decode_failed", "no poster candidate could be decoded")
    candidates.sort(key=lambda result: result.actual_time)
    scores = await run_in_threadpool(_scores, [c.image for c in candidates])
    chosen = seconds_text(candidates[best_candidate(scores)].actual_time)
    if key is not None:
        _chosen[key] = chosen
        while len(_chosen) > _CHOSEN_KEPT:
            _chosen.popitem(last=False)
    return chosen
