"""GET /v1/jobs/{id}/links: signed URLs of a job's event stream and result images, for a page whose
``<img>`` and ``EventSource`` cannot send an API key."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from app.api.auth import AccessControl
from app.api.jobs import get_owner
from app.api.problems import problem_responses
from app.engine.errors import InvalidParameter
from app.jobs.model import JobError
from app.jobs.runner import JobRunner

router = APIRouter(tags=["jobs"])


@router.get(
    "/v1/jobs/{job_id}/links",
    summary="Signed URLs of a job's events and result images",
    responses=problem_responses("invalid_parameter", "job_not_found", notes={400: "no URL signing configured"}),
)
async def signed_job_links(
    request: Request,
    job_id: str,
    ttl: Annotated[int, Query(ge=60, le=86400, description="Seconds the URLs stay valid.")] = 3600,
) -> dict[str, Any]:
    """`events` and one `results` URL per requested time (request order), each signed with the first
    of `STILLFRAME_URL_SIGNING_KEYS` and valid for `ttl` seconds: usable as they stand in `<img src>`
    and `new EventSource(...)`."""
    access: AccessControl = request.app.state.access_control
    if not access.signer:
        raise InvalidParameter("URL signing is not configured (STILLFRAME_URL_SIGNING_KEYS)", parameter="ttl")
    runner: JobRunner = request.app.state.jobs
    job = await runner.store.get(job_id, await get_owner(request))
    if job is None:
        raise JobError("job_not_found", f"no job '{job_id[:64]}' (it may have expired)")
    expires = int(time.time()) + ttl
    root = request.scope.get("root_path", "")
    base = f"{root}/v1/jobs/{job.id}"
    return {
        "expires": expires,
        "events": access.signer.sign(f"{base}/events", expires=expires),
        "results": [access.signer.sign(f"{base}/results/{i}", expires=expires) for i in range(len(job.times))],
    }
