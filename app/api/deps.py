"""Dependencies shared by the routers."""

from __future__ import annotations

from fastapi import Request

from app.pool.base import DecoderPool


def get_pool(request: Request) -> DecoderPool:
    pool: DecoderPool = request.app.state.pool
    return pool
