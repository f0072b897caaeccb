"""The FastAPI application: ``app.main:app``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from app import __version__
from app.api import animated, frames, health, info, joblinks, jobs, metrics, page, storyboard
from app.api.auth import AUTH_RESPONSES, caller_identity, install_access_control, log_access_mode
from app.api.bodylimit import BodyLimit
from app.api.cache import Coalescer, ImageCache, shrink_under_pressure
from app.api.head import HeadAsGet
from app.api.observe import ObserveMiddleware
from app.api.problems import install_problem_handlers
from app.config import Settings, get_settings
from app.jobs.runner import JobRunner
from app.jobs.sqlite import SqliteJobStore
from app.jobs.storage import result_storage
from app.pool.process import ProcessDecoderPool
from app.tracing import install_tracing

log = logging.getLogger("stillframe")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app, with ``settings`` (default: from the environment) for every route and the pool."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        log_access_mode(settings)
        pool = ProcessDecoderPool(settings)
        await pool.start()
        application.state.pool = pool
        store = SqliteJobStore(settings.data_dir, settings.result_ttl, result_storage(settings))
        runner = JobRunner(settings, store, pool)
        await runner.start()  # resumes jobs a stopped (or killed) server left unfinished
        application.state.jobs = runner
        shedder = asyncio.create_task(shrink_under_pressure(application.state.image_cache, pool.over_memory_budget))
        try:
            yield
        finally:
            shedder.cancel()
            await runner.stop()  # drain: running jobs finish or are handed back
            await pool.stop()
            store.close()
            if application.state.tracer_provider is not None:
                application.state.tracer_provider.shutdown()  # sends the spans still buffered

    # /docs and /redoc from the Swagger UI and ReDoc files the fastapi-offline package ships (pinned
    # with it), served here under /docs/static: the docs work with no Internet and load nothing from a CDN.
    application = FastAPIOffline(
        static_url="/docs/static",
        lifespan=lifespan,
        title="stillframe",
        version=__version__,
        summary="The frame at a time: AVAssetImageGenerator as an HTTP service.",
        description=(
            "Times are exact: `X-Actual-Time` is the returned frame's presentation time on the asset "
            "timeline (t=0 at the container's start). The default tolerance is 0 (the frame on screen at t), "
            "unlike AVAssetImageGenerator's infinite default; pass `tolerance=inf` for the nearest keyframe."
        ),
    )
    application.state.settings = settings
    application.state.image_cache = ImageCache(settings.image_cache_bytes)
    application.state.in_flight = Coalescer()
    install_problem_handlers(application)
    install_access_control(application, settings)
    application.add_middleware(BodyLimit, limit=settings.max_request_bytes)  # outside the routes: before any reading
    # (GET /v1/frame checks its caller itself, POST depends on caller_identity: see app.api.frames)
    application.include_router(frames.router, responses=AUTH_RESPONSES)
    application.include_router(jobs.router, dependencies=[Depends(caller_identity)], responses=AUTH_RESPONSES)
    application.include_router(joblinks.router, dependencies=[Depends(caller_identity)], responses=AUTH_RESPONSES)
    application.include_router(info.router, dependencies=[Depends(caller_identity)], responses=AUTH_RESPONSES)
    application.include_router(storyboard.router, dependencies=[Depends(caller_identity)], responses=AUTH_RESPONSES)
    application.include_router(animated.router, dependencies=[Depends(caller_identity)], responses=AUTH_RESPONSES)
    application.state.storyboards = storyboard.StoryboardCache(settings.image_cache_bytes // 4)
    application.include_router(page.router, dependencies=[Depends(caller_identity)], responses=AUTH_RESPONSES)
    application.include_router(page.page_router)
    application.include_router(health.router)
    application.include_router(metrics.router)
    application.add_middleware(HeadAsGet)  # HEAD is a GET to everything inside (logs and metrics still say HEAD)
    application.add_middleware(
        ObserveMiddleware, server_timing=settings.server_timing
    )  # outer: every answer gets its log line and metrics
    application.state.tracer_provider = install_tracing(application, settings)  # outermost, when configured
    if settings.media_root is None:
        log.info("no STILLFRAME_MEDIA_ROOT: local files are disabled, only http(s) sources are served")
    return application


app = create_app()
