"""/v1/jobs: many times from one asset, asynchronously; results over polling, SSE or webhooks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field, model_validator
from starlette.concurrency import run_in_threadpool

from app.api.deps import get_app_settings
from app.api.images import image_headers, none_match
from app.api.poster import poster_time
from app.api.problems import problem_json, problem_responses
from app.config import Settings
from app.engine.encode import negotiate_format
from app.engine.errors import InvalidParameter
from app.engine.poster import POSTER_TIME
from app.engine.sources import LocalSource, resolve_source
from app.engine.timeparse import format_rational_time, parse_time
from app.errors import problem_body
from app.jobs.events import format_timestamp, frame_event_data
from app.jobs.model import JOB_COMPLETED, Job, JobError, JobSpec, ResultRecord
from app.jobs.runner import JobRunner, request_hash
from app.net.urls import check_url
from app.schemas import FrameParams, GrabParams, TimeText

router = APIRouter(tags=["jobs"])

_PROBLEMS = problem_responses(
    "invalid_parameter",
    "source_forbidden",
    "source_not_found",
    "job_not_found",
    "result_not_found",
    "result_pending",
    "cancelled",
    "idempotency_key_reused",
    "shutting_down",
    notes={403: "the source or the callback URL", 422: "or the failed time's own problem"},
)

_KEEPALIVE_SECONDS = 15.0
MAX_EVENT_ID = 2**63 - 1  # event ids are SQLite integers


def parse_event_id(text: str) -> int:
    """A ``Last-Event-ID``: the decimal id of an event this job could have sent, nothing else."""
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(MAX_EVENT_ID))) or int(text) > MAX_EVENT_ID:
        raise InvalidParameter(
            f"Last-Event-ID: an event id (an integer from 0 to {MAX_EVENT_ID})", parameter="Last-Event-ID"
        )
    return int(text)


class JobCreate(GrabParams):
    """A job: one source, many times, the same options as `/v1/frame`."""

    url: str = Field(min_length=1, max_length=8192, description="`http(s)://` URL, or a path under the media root.")
    times: list[Annotated[TimeText, Field(max_length=64)]] = Field(
        min_length=1, description="Times as for `t` of `/v1/frame`; results keep this order."
    )
    callback_url: str | None = Field(
        default=None, max_length=2048, description="Where to POST one signed event per time, then `job.completed`."
    )
    callback_include_image: bool = Field(default=False, description="Inline each image (base64) in its webhook.")

    @model_validator(mode="after")
    def _check_times(self) -> JobCreate:
        for index, text in enumerate(self.times):
            try:
                if text != POSTER_TIME:
                    parse_time(text)
            except InvalidParameter as exc:
                raise InvalidParameter(f"times[{index}]: {exc.detail}", parameter=f"times[{index}]") from None
        return self


async def get_runner(request: Request) -> JobRunner:
    runner: JobRunner = request.app.state.jobs
    return runner


async def get_owner(request: Request) -> str | None:
    """The caller that owns jobs (set by authentication, when there is any); None: no owner. A signed
    URL (a job's result or events, for an <img> or an EventSource) names its job itself: any owner."""
    owner = getattr(request.state, "owner", None)
    return owner if isinstance(owner, str) and not owner.startswith("url:") else None


Runner = Annotated[JobRunner, Depends(get_runner)]
Owner = Annotated[str | None, Depends(get_owner)]


# ---------------------------------------------------------------------------------------------- views


def _links(job: Job) -> dict[str, str]:
    base = f"/v1/jobs/{job.id}"
    return {"self": base, "events": f"{base}/events", "cancel": base}


def job_view(job: Job, results: list[ResultRecord] | None = None) -> dict[str, Any]:
    counts = job.counts
    total = len(job.times)
    done = total - counts.get("pending", 0)
    view: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "url": job.url,
        "created_at": format_timestamp(job.created_at),
        "updated_at": format_timestamp(job.updated_at),
        "finished_at": format_timestamp(job.finished_at),
        "expires_at": format_timestamp(job.expires_at),
        "progress": {
            "total": total,
            "done": done,
            "succeeded": counts.get("succeeded", 0),
            "failed": counts.get("failed", 0),
            "cancelled": counts.get("cancelled", 0),
            "fraction": round(done / total, 6) if total else 1.0,
        },
        "options": {k: v for k, v in job.params.items() if v is not None},
        "callback_url": job.callback_url,
        "links": _links(job),
    }
    if job.error:
        view["problem"] = job.error
    if results is not None:
        view["results"] = [_result_view(job, record) for record in results]
    return view


def _result_view(job: Job, record: ResultRecord) -> dict[str, Any]:
    data = frame_event_data(job, record)
    data.pop("job_id")
    return data


def _accepted(job: Job, created: bool, extra_headers: dict[str, str] | None = None) -> JSONResponse:
    headers = {"Location": f"/v1/jobs/{job.id}", **(extra_headers or {})}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(job_view(job), status_code=202, headers=headers)


# ---------------------------------------------------------------------------------------------- creating


async def _create(
    request: Request,
    runner: JobRunner,
    settings: Settings,
    *,
    url: str,
    times: list[str],
    grab: GrabParams,
    image_format: str,
    callback_url: str | None,
    callback_include_image: bool,
    owner: str | None,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    if len(times) > settings.max_times_per_job:
        raise InvalidParameter(f"times: at most {settings.max_times_per_job} per job", parameter="times")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise InvalidParameter("Idempotency-Key: 1 to 255 characters", parameter="Idempotency-Key")
    source = await run_in_threadpool(resolve_source, url, settings.source_policy())  # refused now, not later
    if POSTER_TIME in times:  # chosen now: the job asks for the poster's time (X-Actual-Time says which)
        identity = source.identity if isinstance(source, LocalSource) else None
        chosen = await poster_time(request.app.state.pool, url, grab.stream, identity)
        times = [chosen if t == POSTER_TIME else t for t in times]
    if callback_url is not None:
        if not settings.webhook_secret:
            raise InvalidParameter(
                "callback_url: webhooks are not enabled on this server (no STILLFRAME_WEBHOOK_SECRET)",
                parameter="callback_url",
            )
        await run_in_threadpool(check_url, callback_url, settings.fetch_policy())  # the SSRF guard, as for sources
    params = grab.model_dump(mode="json", include=set(GrabParams.model_fields))
    params["format"] = image_format
    fields = {
        "url": url,
        "times": times,
        "params": params,
        "callback_url": callback_url,
        "callback_include_image": callback_include_image,
    }
    spec = JobSpec(
        url=url,
        times=tuple(times),
        params=params,
        base_url=str(request.base_url).rstrip("/"),
        callback_url=callback_url,
        callback_include_image=callback_include_image,
        owner=owner,
        idempotency_key=idempotency_key,
        request_hash=request_hash(fields),
    )
    return await runner.submit(spec)


async def times_counted(request: Request, settings: Annotated[Settings, Depends(get_app_settings)]) -> None:
    """Refuse too many times before any is validated or parsed (a dependency runs before the body is
    validated; the JSON it reads is the one FastAPI parsed, under the body cap)."""
    try:
        body = await request.json()
    except ValueError:
        return  # FastAPI answers for the body itself
    times = body.get("times") if isinstance(body, dict) else None
    if isinstance(times, list) and len(times) > settings.max_times_per_job:
        raise InvalidParameter(f"times: at most {settings.max_times_per_job} per job", parameter="times")


@router.post(
    "/v1/jobs",
    status_code=202,
    dependencies=[Depends(times_counted)],
    summary="Start a job: many times from one asset",
    responses={202: {"description": "The job, with `Location` and links."}, **_PROBLEMS},
)
async def create_job(
    body: JobCreate,
    request: Request,
    settings: Annotated[Settings, Depends(get_app_settings)],
    runner: Runner,
    owner: Owner,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Like `AVAssetImageGenerator.generateCGImagesAsynchronously(forTimes:)`: every time gets a result
    (`succeeded`, `failed` or `cancelled`), published as soon as it exists. The same `Idempotency-Key`
    with the same body returns the same job."""
    job, created = await _create(
        request,
        runner,
        settings,
        url=body.url,
        times=list(body.times),
        grab=body,
        image_format=body.format or "jpeg",
        callback_url=body.callback_url,
        callback_include_image=body.callback_include_image,
        owner=owner,
        idempotency_key=idempotency_key,
    )
    return _accepted(job, created)


async def respond_async(request: Request, params: FrameParams, accept: str | None) -> Response:
    """``POST /v1/frame`` with ``Prefer: respond-async`` (RFC 7240): a one-time job instead of the image."""
    settings: Settings = request.app.state.settings
    job, created = await _create(
        request,
        await get_runner(request),
        settings,
        url=params.url,
        times=[params.t],
        grab=params,
        image_format=params.format or negotiate_format(accept),
        callback_url=None,
        callback_include_image=False,
        owner=await get_owner(request),
        idempotency_key=request.headers.get("idempotency-key"),
    )
    return _accepted(job, created, {"Preference-Applied": "respond-async"})


def wants_async(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header asks for ``respond-async``."""
    if not prefer:
        return False
    return any(part.split(";")[0].strip().lower() == "respond-async" for part in prefer.split(","))


# ---------------------------------------------------------------------------------------------- reading


async def _job_or_404(runner: JobRunner, job_id: str, owner: str | None) -> Job:
    job = await runner.store.get(job_id, owner)
    if job is None:
        raise JobError("job_not_found", f"no job '{job_id[:64]}' (it may have expired)")
    return job


@router.get("/v1/jobs/{job_id}", summary="A job: status, progress, one entry per time", responses=_PROBLEMS)
async def get_job(
    job_id: str,
    runner: Runner,
    owner: Owner,
) -> JSONResponse:
    job = await _job_or_404(runner, job_id, owner)
    return JSONResponse(job_view(job, await runner.store.results(job_id)))


@router.get(
    "/v1/jobs/{job_id}/results/{index}",
    response_class=Response,
    summary="The image of one time of a job",
    responses={200: {"description": "The image, with `X-Actual-Time` as for `/v1/frame`."}, **_PROBLEMS},
)
async def get_result(
    job_id: str,
    index: int,
    runner: Runner,
    owner: Owner,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    job = await _job_or_404(runner, job_id, owner)
    # (an index past the job's times needs no look-up, and one past 64 bits would not fit SQLite's integers)
    record = await runner.store.result(job_id, index) if 0 <= index < len(job.times) else None
    if record is None:
        raise JobError("result_not_found", f"job '{job.id}' has no time at index {index}")
    if record.status == "pending":
        raise JobError("result_pending", f"time {index} of job '{job.id}' is not done yet")
    if record.status == "cancelled":
        return problem_json(problem_body("cancelled", f"time {index} was cancelled"))
    if record.status == "failed":
        return problem_json({"status": 422, **(record.problem or {})})
    assert record.file is not None and record.actual_time is not None and record.requested_time is not None
    headers = {"ETag": record.etag or "", "Cache-Control": "private, max-age=3600"}
    if none_match(if_none_match, record.etag):
        return Response(status_code=304, headers=headers)
    rational = format_rational_time(record.actual_time, record.time_base or record.actual_time)
    image_format = (record.content_type or "image/jpeg").removeprefix("image/")
    headers.update(image_headers(record.actual_time, rational, record.requested_time, image_format))
    storage = runner.store.images
    if runner.settings.results_redirect and (
        url := await storage.signed_url(record.file, runner.settings.results_redirect)
    ):
        return Response(status_code=307, headers={**headers, "Location": url})  # large results bypass the API
    opened = await storage.open(record.file)
    if opened is None:
        raise JobError("result_not_found", f"the image of time {index} has expired")
    size, chunks = opened
    headers["Content-Length"] = str(size)
    return StreamingResponse(chunks, media_type=record.content_type or "application/octet-stream", headers=headers)


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    summary="Server-Sent Events: one per time as it is produced, then `job.completed`",
    responses={200: {"content": {"text/event-stream": {}}}, **_PROBLEMS},
)
async def job_events(
    job_id: str,
    runner: Runner,
    owner: Owner,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="Resume after this event id (as `Last-Event-ID`).")
    ] = None,
) -> StreamingResponse:
    """Event ids count from 1 per job; reconnect with `Last-Event-ID` to get exactly what was missed."""
    await _job_or_404(runner, job_id, owner)
    start = after or 0
    if last_event_id is not None:
        start = parse_event_id(last_event_id)
    return StreamingResponse(
        _event_stream(runner, job_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _event_stream(runner: JobRunner, job_id: str, last: int) -> AsyncIterator[str]:
    store, events = runner.store, runner.events
    yield "retry: 1000\n\n"
    terminal_seen = False
    while True:
        waiter = events.waiter(job_id)  # taken before reading, so no event slips between the two
        batch = await store.events_after(job_id, last)
        for event in batch:
            yield f"id: {event.seq}\nevent: {event.type}\ndata: {json.dumps(event.data, separators=(',', ':'))}\n\n"
            last = event.seq
            if event.type == JOB_COMPLETED:
                return
        if batch:
            continue
        if terminal_seen:
            return  # ended, and its final event was sent before this stream began
        job = await store.get(job_id)
        if job is None:
            return
        if job.terminal:
            terminal_seen = True  # read once more: the final event commits with the status
            continue
        if events.closing.is_set():
            return  # draining: the client reconnects (Last-Event-ID) to the next server
        wake = asyncio.ensure_future(waiter.wait())
        closing = asyncio.ensure_future(events.closing.wait())
        try:
            done, _ = await asyncio.wait({wake, closing}, timeout=_KEEPALIVE_SECONDS, return_when="FIRST_COMPLETED")
        finally:
            wake.cancel()
            closing.cancel()
        if not done:
            yield ": keepalive\n\n"


# ---------------------------------------------------------------------------------------------- cancelling


@router.delete("/v1/jobs/{job_id}", summary="Cancel a job", responses=_PROBLEMS)
async def cancel_job(
    job_id: str,
    runner: Runner,
    owner: Owner,
) -> JSONResponse:
    """Times not yet done end `cancelled`; finished ones stay. Cancelling an ended job changes nothing."""
    job = await runner.cancel(job_id, owner)
    if job is None:
        raise JobError("job_not_found", f"no job '{job_id[:64]}' (it may have expired)")
    return JSONResponse(job_view(job))


@router.post("/v1/jobs/cancel", summary="Cancel every pending job of the caller", responses=_PROBLEMS)
async def cancel_all_jobs(
    runner: Runner,
    owner: Owner,
) -> dict[str, Any]:
    """`cancelAllCGImageGeneration()`: every queued or running job of the caller ends `cancelled`."""
    cancelled = await runner.cancel_all(owner)
    return {"cancelled": cancelled}
