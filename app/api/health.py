"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

import av
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready to decode", responses={503: {"description": "Not ready"}})
async def readyz(request: Request) -> Any:
    missing = [name for name in ("h264", "hevc", "vp9", "mjpeg") if name not in av.codecs_available]
    if missing:
        return JSONResponse({"status": "not ready", "missing_codecs": missing}, status_code=503)
    pool = getattr(request.app.state, "pool", None)
    if pool is None or not pool.ready():
        return JSONResponse({"status": "not ready", "reason": "no decoder process is ready"}, status_code=503)
    memory = {**pool.memory(), "image_cache_bytes": request.app.state.image_cache.size_bytes}
    return {"status": "ready", "ffmpeg": av.ffmpeg_version_info, "memory": memory}
