"""The FastAPI application: ``app.main:app``."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from app import __version__
from app.api import frames, health
from app.api.problems import install_problem_handlers
from app.config import get_settings

log = logging.getLogger("stillframe")


def create_app() -> FastAPI:
    settings = get_settings()
    application = FastAPI(
        title="stillframe",
        version=__version__,
        summary="The frame at a time: AVAssetImageGenerator as an HTTP service.",
        description=(
            "Times are exact: `X-Actual-Time` is the returned frame's presentation time on the asset "
            "timeline (t=0 at the container's start). The default tolerance is 0 (the frame on screen at t), "
            "unlike AVAssetImageGenerator's infinite default; pass `tolerance=inf` for the nearest keyframe."
        ),
    )
    install_problem_handlers(application)
    application.include_router(frames.router)
    application.include_router(health.router)
    if settings.media_root is None:
        log.info("no STILLFRAME_MEDIA_ROOT: local files are disabled, only http(s) sources are served")
    return application


app = create_app()
