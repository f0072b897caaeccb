"""Where jobs live: the async ``JobStore`` protocol the runner, the webhook dispatcher and the API use.

The embedded implementation is :class:`app.jobs.sqlite.SqliteJobStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from app.jobs.model import Delivery, Job, JobEvent, JobSpec, JobStatus, ResultRecord
from app.jobs.storage import ResultStorage


class JobStore(Protocol):
    """What the runner, the webhook dispatcher and the API need from persistence."""

    data_dir: Path
    images: ResultStorage  # where the result images are

    async def create(self, spec: JobSpec) -> tuple[Job, bool]:
        """The new job (and True), or the job an earlier request with the same idempotency key made
        (and False); raises ``JobError("idempotency_key_reused")`` when that request differed."""
        ...

    async def get(self, job_id: str, owner: str | None = None) -> Job | None: ...

    async def results(self, job_id: str) -> list[ResultRecord]: ...

    async def result(self, job_id: str, index: int) -> ResultRecord | None: ...

    async def pending_indices(self, job_id: str) -> list[int]: ...

    async def unfinished(self) -> list[str]:
        """Jobs queued or running (oldest first): what a restarted server resumes."""
        ...

    async def mark_running(self, job_id: str) -> bool: ...

    async def status_counts(self) -> dict[str, int]:
        """How many jobs are in each status (for ``/metrics``)."""
        ...

    async def check_writable(self) -> None:
        """Raise unless jobs and their images can be written now (for ``/readyz``)."""
        ...

    async def requeue(self, job_id: str) -> None: ...

    async def save_image(self, job_id: str, index: int, data: bytes, extension: str) -> str: ...

    async def record(self, job_id: str, record: ResultRecord) -> JobEvent | None:
        """Store the outcome of a pending time with its event; None (and nothing stored) when the
        time is no longer pending (cancelled meanwhile, or recorded before a crash)."""
        ...

    async def finish(self, job_id: str, status: JobStatus, error: dict[str, Any] | None = None) -> JobEvent | None: ...

    async def cancel(self, job_id: str, owner: str | None = None) -> list[JobEvent] | None:
        """Cancel what is pending; None when there is no such job, [] when it had already ended."""
        ...

    async def pending_jobs(self, owner: str | None = None) -> list[str]: ...

    async def events_after(self, job_id: str, seq: int) -> list[JobEvent]: ...

    async def expire(self, now: float) -> list[str]: ...

    async def due_deliveries(self, now: float, limit: int, exclude: Sequence[str] = ()) -> list[Delivery]: ...

    async def next_delivery_at(self) -> float | None: ...

    async def delivery_succeeded(self, delivery_id: str) -> None: ...

    async def delivery_retry(self, delivery_id: str, attempted_at: float, next_at: float, error: str) -> None: ...

    async def delivery_gave_up(self, delivery_id: str, attempted_at: float, error: str) -> None: ...

    async def stop_endpoint(self, url: str) -> None: ...
