"""Jobs as data: a job, its per-time results, its events, and the errors with stable codes.

Nothing here knows about HTTP or SQLite; the store persists these, the runner fills them in, the API
shows them (the errors' codes are in :data:`app.errors.PROBLEM_CODES`). A job's events (one per
requested time, then one final ``job.completed``) are numbered from 1 per job: the number is the SSE
event id and part of the webhook id, so both are stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from app.errors import ProblemError

JobStatus = Literal["queued", "running", "completed", "cancelled", "failed"]
ResultStatus = Literal["pending", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "cancelled", "failed"})

FRAME_EVENTS = {"succeeded": "frame.succeeded", "failed": "frame.failed", "cancelled": "frame.cancelled"}
JOB_COMPLETED = "job.completed"


class JobError(ProblemError):
    """A job-level failure with a stable code (turned into an RFC 9457 problem by the API)."""


@dataclass(frozen=True)
class JobSpec:
    """What a client asked for, validated: everything needed to create (and later redo) a job."""

    url: str
    times: tuple[str, ...]
    params: dict[str, Any]  # GrabParams as JSON, with ``format`` resolved
    base_url: str  # where the API was reached, for absolute image URLs in events and webhooks
    callback_url: str | None = None
    callback_include_image: bool = False
    owner: str | None = None
    idempotency_key: str | None = None
    request_hash: str = ""


@dataclass(frozen=True)
class Job:
    id: str
    status: JobStatus
    url: str
    times: tuple[str, ...]
    params: dict[str, Any]
    base_url: str
    created_at: float
    updated_at: float
    callback_url: str | None = None
    callback_include_image: bool = False
    owner: str | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    error: dict[str, Any] | None = None  # the problem that failed the job as a whole
    counts: dict[str, int] = field(default_factory=dict)  # result status -> count

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def image_url(self, index: int) -> str:
        return f"{self.base_url.rstrip('/')}/v1/jobs/{self.id}/results/{index}"


@dataclass(frozen=True)
class ResultRecord:
    """One requested time of a job and what became of it."""

    index: int
    requested: str  # the time as the client wrote it
    status: ResultStatus
    requested_time: Fraction | None = None  # resolved seconds (known once decoded, for percentages)
    actual_time: Fraction | None = None
    pts: int | None = None
    time_base: Fraction | None = None
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    file: str | None = None  # path of the image relative to the data directory
    etag: str | None = None
    problem: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    seq: int
    type: str
    data: dict[str, Any]
    created_at: float

    @property
    def webhook_id(self) -> str:
        return f"msg_{self.job_id}_{self.seq}"


@dataclass(frozen=True)
class Delivery:
    """A webhook message waiting to be delivered (or retried)."""

    id: str  # the webhook-id: stable across retries
    job_id: str
    url: str
    payload: str  # the JSON body without the inline image
    image_file: str | None  # inlined at send time when the job asked for it
    attempts: int
    first_attempt_at: float | None
    next_attempt_at: float
