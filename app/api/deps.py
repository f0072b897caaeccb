"""Dependencies shared by the routers. All ``async``: FastAPI runs a plain ``def`` dependency on its
thread pool, a thread hop per dependency per request for what is an attribute read."""

from __future__ import annotations

from fastapi import Request

from app.api.cache import Coalescer, ImageCache
from app.config import Settings
from app.pool.base import DecoderPool


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was made with (not a dependency override: FastAPI re-analyses every
    dependency of every request while any override is set, ~1.5 ms a request)."""
    settings: Settings = request.app.state.settings
    return settings


async def get_pool(request: Request) -> DecoderPool:
    pool: DecoderPool = request.app.state.pool
    return pool


async def get_image_cache(request: Request) -> ImageCache:
    cache: ImageCache = request.app.state.image_cache
    return cache


async def get_in_flight(request: Request) -> Coalescer:
    coalescer: Coalescer = request.app.state.in_flight
    return coalescer
