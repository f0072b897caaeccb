"""The bodies of a job's events: what SSE clients, webhook receivers and the job API show.

The store writes them with each state change, the webhook dispatcher sends them and the API reuses
them for its views, so they live here, below all three.
"""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from app.engine.timeparse import format_fraction, format_rational_time, parse_time
from app.jobs.model import Job, ResultRecord


def format_seconds(value: Fraction | None) -> str | None:
    """Seconds as the API writes them (exact decimal where finite, to the nanosecond)."""
    return None if value is None else format_fraction(value)


def format_timestamp(epoch: float | None) -> str | None:
    """A unix time as the API writes it: ISO 8601 in UTC, to the millisecond (``2026-01-02T03:04:05.678Z``)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def frame_event_data(job: Job, record: ResultRecord) -> dict[str, Any]:
    """The body of a ``frame.*`` event: what SSE clients and webhook receivers get for one time."""
    data: dict[str, Any] = {
        "job_id": job.id,
        "index": record.index,
        "requested": record.requested,
        "requested_time": format_seconds(record.requested_time) or _plain_seconds(record.requested),
        "status": record.status,
    }
    if record.status == "succeeded":
        data.update(
            actual_time=format_seconds(record.actual_time),
            actual_time_rational=_rational(record),
            width=record.width,
            height=record.height,
            content_type=record.content_type,
            image_url=job.image_url(record.index),
        )
    elif record.problem is not None:
        data["problem"] = record.problem
    return data


def job_event_data(job: Job) -> dict[str, Any]:
    """The body of the final ``job.completed`` event."""
    counts = job.counts
    return {
        "job_id": job.id,
        "status": job.status,
        "total": len(job.times),
        "succeeded": counts.get("succeeded", 0),
        "failed": counts.get("failed", 0),
        "cancelled": counts.get("cancelled", 0),
        **({"problem": job.error} if job.error else {}),
    }


def _plain_seconds(text: str) -> str | None:
    """A requested time in seconds before any decode (None for a percentage: that needs the asset)."""
    spec = parse_time(text)
    return None if spec.percent else format_seconds(spec.value)


def _rational(record: ResultRecord) -> str | None:
    if record.actual_time is None or record.time_base is None:
        return None
    return format_rational_time(record.actual_time, record.time_base)
