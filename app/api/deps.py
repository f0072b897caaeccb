"""Dependencies shared by the routers."""

from __future__ import annotations

from fastapi import Request

from app.api.cache import Coalescer, ImageCache
from app.pool.base import DecoderPool


def get_pool(request: Request) -> DecoderPool:
    pool: DecoderPool = request.app.state.pool
    return pool


def get_image_cache(request: Request) -> ImageCache:
    cache: ImageCache = request.app.state.image_cache
    return cache


def get_in_flight(request: Request) -> Coalescer:
    coalescer: Coalescer = request.app.state.in_flight
    return coalescer
