"""Dependencies shared by the routers. All ``async``: FastAPI runs a plain ``def`` dependency on its
thread pool, a thread hop per dependency per request for what is an attribute read."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from app.api.cache import Coalescer, ImageCache
from app.config import Settings
from app.pool.base import DecoderPool


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was made with (not a dependency override: FastAPI re-analyses every
    dependency of every request while any override is set)."""
    settings: Settings = request.app.state.settings
    return settings


@dataclass(frozen=True)
class FrameServices:
    """What serving an image needs, as one dependency rather than four (each costs every request)."""

    settings: Settings
    pool: DecoderPool
    cache: ImageCache
    in_flight: Coalescer


async def get_frame_services(request: Request) -> FrameServices:
    state = request.app.state
    return FrameServices(state.settings, state.pool, state.image_cache, state.in_flight)
