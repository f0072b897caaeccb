"""``GET /metrics``: Prometheus text (app.metrics), optionally behind its own bearer token
(``STILLFRAME_METRICS_TOKEN``), so a scraper needs no API key and an API key does not open it."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from app.errors import ProblemError
from app.metrics import CONTENT_TYPE, LiveState, render

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, include_in_schema=False)
async def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
        presented = request.headers.get("authorization", "").encode("latin-1", "replace")
        if not hmac.compare_digest(presented, expected):
            raise ProblemError(
                "unauthorized",
                "a metrics token is required (Authorization: Bearer <STILLFRAME_METRICS_TOKEN>)",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    return Response(render(await live_state(request)), media_type=CONTENT_TYPE)


async def live_state(request: Request) -> LiveState:
    """The state the metrics read at scrape time: the pool, the image cache, jobs by status."""
    state = request.app.state
    cache = state.image_cache
    live = LiveState(image_cache_hits=cache.hits, image_cache_misses=cache.misses, image_cache_bytes=cache.size_bytes)
    pool = getattr(state, "pool", None)
    if pool is not None:
        live.pool = pool.state()
    runner = getattr(state, "jobs", None)
    if runner is not None:
        try:
            live.jobs_by_status = await runner.store.status_counts()
        except Exception:  # an unwritable/unreadable store is /readyz's to report; the rest still scrapes
            live.jobs_by_status = {}
    return live
