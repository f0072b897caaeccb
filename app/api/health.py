"""Liveness and readiness for load balancers and orchestrators. Neither says which versions run:
that is for the operator's own tools, not for anyone who can reach a health check."""

from __future__ import annotations

import logging

import av
from fastapi import APIRouter, Request

from app.api.problems import problem_responses
from app.errors import ProblemError

router = APIRouter(tags=["health"])
log = logging.getLogger("stillframe.health")

_REQUIRED_CODECS = ("h264", "hevc", "vp9", "mjpeg")


@router.get("/healthz", summary="Alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Ready to decode and to take jobs",
    responses=problem_responses("not_ready", notes={503: "no decoder up, a codec missing, or jobs cannot be written"}),
)
async def readyz(request: Request) -> dict[str, str]:
    """200 when a decoder process is up and the job store and data directory can be written now."""
    if any(name not in av.codecs_available for name in _REQUIRED_CODECS):
        raise ProblemError("not_ready", "a required decoder is missing from this build")
    pool = getattr(request.app.state, "pool", None)
    if pool is None or not pool.ready():
        raise ProblemError("not_ready", "no decoder process is ready")
    runner = getattr(request.app.state, "jobs", None)
    if runner is None:
        raise ProblemError("not_ready", "the job store is not open")
    try:
        await runner.store.check_writable()
    except Exception as exc:  # (OSError, sqlite3.Error, or whatever another store raises)
        log.error("not ready: the job store or data directory cannot be written: %s", exc)
        raise ProblemError("not_ready", "the job store or data directory cannot be written") from None
    return {"status": "ready"}
