"""The embedded job store: one SQLite database (WAL) with the result images beside it.

Every state change is one transaction that also appends the job's event and, for jobs with a
callback, the webhook delivery for it: a result, its event and its delivery exist together or not
at all, so a crash (kill -9 included) loses nothing and never records a time twice. Result images
are kept by a :class:`~app.jobs.storage.ResultStorage` (files under ``<data_dir>/results/<job id>/`` by
default), written whole before the row that points at them; an image whose row never committed is
simply written again when the time is redone.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from app.jobs.events import format_timestamp, frame_event_data, job_event_data
from app.jobs.model import (
    FRAME_EVENTS,
    JOB_COMPLETED,
    TERMINAL,
    Delivery,
    Job,
    JobError,
    JobEvent,
    JobSpec,
    JobStatus,
    ResultRecord,
)
from app.jobs.storage import LocalResultStorage, ResultStorage, result_name

T = TypeVar("T")

DB_NAME = "jobs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT,
    status TEXT NOT NULL,
    url TEXT NOT NULL,
    times TEXT NOT NULL,
    params TEXT NOT NULL,
    base_url TEXT NOT NULL,
    callback_url TEXT,
    callback_include_image INTEGER NOT NULL DEFAULT 0,
    idempotency_scope TEXT UNIQUE,
    request_hash TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    expires_at REAL,
    error TEXT,
    last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_expires ON jobs (expires_at);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    requested TEXT NOT NULL,
    status TEXT NOT NULL,
    requested_time TEXT,
    actual_time TEXT,
    pts INTEGER,
    time_base TEXT,
    width INTEGER,
    height INTEGER,
    content_type TEXT,
    file TEXT,
    etag TEXT,
    problem TEXT,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    image_file TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt_at REAL,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS stopped_endpoints (
    url TEXT PRIMARY KEY,
    stopped_at REAL NOT NULL
);
"""


def _frac(value: str | None) -> Fraction | None:
    return None if value is None else Fraction(value)


def _text(value: Fraction | None) -> str | None:
    return None if value is None else f"{value.numerator}/{value.denominator}"


class SqliteJobStore:
    """The embedded store: one SQLite database in WAL mode, result images beside it.

    SQLite calls run in worker threads (``asyncio.to_thread``) behind one lock, so the event loop
    never blocks on the disk. The database is created on first use: an app that never sees a job
    leaves no files behind.
    """

    def __init__(self, data_dir: Path, result_ttl: float, images: ResultStorage | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.result_ttl = result_ttl
        self.images: ResultStorage = images if images is not None else LocalResultStorage(self.data_dir)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_NAME

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=30)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; fsync at checkpoints
            db.execute("PRAGMA foreign_keys=OFF")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, create: bool = True) -> T:
        def work() -> T:
            with self._lock:
                if self._db is None and not create and not self.db_path.exists():
                    return fn(_EMPTY)
                db = self._connect()
                db.execute("BEGIN IMMEDIATE")
                try:
                    value = fn(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return value

        return await asyncio.to_thread(work)

    async def status_counts(self) -> dict[str, int]:
        def work(db: sqlite3.Connection) -> dict[str, int]:
            rows = db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
            return {str(status): int(count) for status, count in rows}

        return await self._run(work, create=False)

    async def check_writable(self) -> None:
        """Raise OSError or sqlite3.Error unless a job (and local result images) could be written now: a file
        created, written, synced and removed in the data directory, and the database's write lock
        taken (the same ``BEGIN IMMEDIATE`` every change starts with)."""

        def probe() -> None:
            path = self.data_dir / f".ready-{os.getpid()}-{threading.get_ident()}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ready")
                os.fsync(fd)
            finally:
                os.close(fd)
                path.unlink(missing_ok=True)

        await self._run(lambda db: None)  # (creates the directory and the database on first use)
        await asyncio.to_thread(probe)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ------------------------------------------------------------------ jobs

    async def create(self, spec: JobSpec) -> tuple[Job, bool]:
        def work(db: sqlite3.Connection) -> tuple[Job, bool]:
            scope = None
            if spec.idempotency_key is not None:
                scope = f"{spec.owner or ''}\n{spec.idempotency_key}"
                row = db.execute("SELECT id, request_hash FROM jobs WHERE idempotency_scope = ?", (scope,)).fetchone()
                if row is not None:
                    if row["request_hash"] != spec.request_hash:
                        raise JobError(
                            "idempotency_key_reused", "this Idempotency-Key was used with a different request"
                        )
                    job = _load_job(db, row["id"])
                    assert job is not None
                    return job, False
            job_id = "job_" + secrets.token_hex(12)
            now = time.time()
            db.execute(
                "INSERT INTO jobs (id, owner, status, url, times, params, base_url, callback_url,"
                " callback_include_image, idempotency_scope, request_hash, created_at, updated_at)"
                " VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    spec.owner,
                    spec.url,
                    json.dumps(list(spec.times)),
                    json.dumps(spec.params, sort_keys=True),
                    spec.base_url,
                    spec.callback_url,
                    int(spec.callback_include_image),
                    scope,
                    spec.request_hash,
                    now,
                    now,
                ),
            )
            db.executemany(
                "INSERT INTO results (job_id, idx, requested, status) VALUES (?, ?, ?, 'pending')",
                [(job_id, index, text) for index, text in enumerate(spec.times)],
            )
            if spec.callback_url is not None:  # asking again for an endpoint that answered 410 re-enables it
                db.execute("DELETE FROM stopped_endpoints WHERE url = ?", (spec.callback_url,))
            job = _load_job(db, job_id)
            assert job is not None
            return job, True

        return await self._run(work)

    async def get(self, job_id: str, owner: str | None = None) -> Job | None:
        def work(db: sqlite3.Connection) -> Job | None:
            job = _load_job(db, job_id)
            if job is None or (owner is not None and job.owner != owner):
                return None
            if job.expires_at is not None and job.expires_at <= time.time():
                return None  # expired: gone, even before the sweeper removes it
            return job

        return await self._run(work, create=False)

    async def results(self, job_id: str) -> list[ResultRecord]:
        def work(db: sqlite3.Connection) -> list[ResultRecord]:
            rows = db.execute("SELECT * FROM results WHERE job_id = ? ORDER BY idx", (job_id,)).fetchall()
            return [_result(row) for row in rows]

        return await self._run(work, create=False)

    async def result(self, job_id: str, index: int) -> ResultRecord | None:
        def work(db: sqlite3.Connection) -> ResultRecord | None:
            row = db.execute("SELECT * FROM results WHERE job_id = ? AND idx = ?", (job_id, index)).fetchone()
            return None if row is None else _result(row)

        return await self._run(work, create=False)

    async def pending_indices(self, job_id: str) -> list[int]:
        def work(db: sqlite3.Connection) -> list[int]:
            rows = db.execute(
                "SELECT idx FROM results WHERE job_id = ? AND status = 'pending' ORDER BY idx", (job_id,)
            ).fetchall()
            return [row[0] for row in rows]

        return await self._run(work)

    async def unfinished(self) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT id FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at"
            ).fetchall()
            return [row[0] for row in rows]

        return await self._run(work, create=False)

    async def pending_jobs(self, owner: str | None = None) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            sql = "SELECT id FROM jobs WHERE status IN ('queued', 'running')"
            args: tuple[Any, ...] = ()
            if owner is not None:
                sql += " AND owner = ?"
                args = (owner,)
            return [row[0] for row in db.execute(sql + " ORDER BY created_at", args).fetchall()]

        return await self._run(work, create=False)

    async def mark_running(self, job_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE jobs SET status = 'running', updated_at = ? WHERE id = ? AND status IN ('queued', 'running')",
                (time.time(), job_id),
            )
            return cursor.rowcount == 1

        return await self._run(work)

    async def requeue(self, job_id: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE jobs SET status = 'queued', updated_at = ? WHERE id = ? AND status = 'running'",
                (time.time(), job_id),
            )

        await self._run(work)

    async def save_image(self, job_id: str, index: int, data: bytes, extension: str) -> str:
        name = result_name(job_id, index, extension)
        await self.images.save(name, data)
        return name

    async def record(self, job_id: str, record: ResultRecord) -> JobEvent | None:
        def work(db: sqlite3.Connection) -> JobEvent | None:
            cursor = db.execute(
                "UPDATE results SET status = ?, requested_time = ?, actual_time = ?, pts = ?, time_base = ?,"
                " width = ?, height = ?, content_type = ?, file = ?, etag = ?, problem = ?"
                " WHERE job_id = ? AND idx = ? AND status = 'pending'",
                (
                    record.status,
                    _text(record.requested_time),
                    _text(record.actual_time),
                    record.pts,
                    _text(record.time_base),
                    record.width,
                    record.height,
                    record.content_type,
                    record.file,
                    record.etag,
                    None if record.problem is None else json.dumps(record.problem),
                    job_id,
                    record.index,
                ),
            )
            if cursor.rowcount != 1:
                return None
            job = _load_job(db, job_id)
            assert job is not None
            stored = _result(
                db.execute("SELECT * FROM results WHERE job_id = ? AND idx = ?", (job_id, record.index)).fetchone()
            )
            db.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (time.time(), job_id))
            return _append_event(db, job, FRAME_EVENTS[stored.status], frame_event_data(job, stored), stored.file)

        event = await self._run(work)
        if event is None and record.file is not None:
            await self.images.delete(record.file)  # not ours to keep
        return event

    async def finish(self, job_id: str, status: JobStatus, error: dict[str, Any] | None = None) -> JobEvent | None:
        def work(db: sqlite3.Connection) -> JobEvent | None:
            now = time.time()
            cursor = db.execute(
                "UPDATE jobs SET status = ?, error = ?, updated_at = ?, finished_at = ?, expires_at = ?"
                " WHERE id = ? AND status IN ('queued', 'running')",
                (status, None if error is None else json.dumps(error), now, now, now + self.result_ttl, job_id),
            )
            if cursor.rowcount != 1:
                return None
            job = _load_job(db, job_id)
            assert job is not None
            return _append_event(db, job, JOB_COMPLETED, job_event_data(job), None)

        return await self._run(work)

    async def cancel(self, job_id: str, owner: str | None = None) -> list[JobEvent] | None:
        def work(db: sqlite3.Connection) -> list[JobEvent] | None:
            job = _load_job(db, job_id)
            if job is None or (owner is not None and job.owner != owner):
                return None
            if job.status in TERMINAL:
                return []
            now = time.time()
            pending = db.execute(
                "SELECT * FROM results WHERE job_id = ? AND status = 'pending' ORDER BY idx", (job_id,)
            ).fetchall()
            db.execute("UPDATE results SET status = 'cancelled' WHERE job_id = ? AND status = 'pending'", (job_id,))
            db.execute(
                "UPDATE jobs SET status = 'cancelled', updated_at = ?, finished_at = ?, expires_at = ? WHERE id = ?",
                (now, now, now + self.result_ttl, job_id),
            )
            job = _load_job(db, job_id)
            assert job is not None
            events = []
            for row in pending:
                cancelled = _result(row)
                cancelled = ResultRecord(index=cancelled.index, requested=cancelled.requested, status="cancelled")
                events.append(_append_event(db, job, FRAME_EVENTS["cancelled"], frame_event_data(job, cancelled), None))
            events.append(_append_event(db, job, JOB_COMPLETED, job_event_data(job), None))
            return events

        return await self._run(work, create=False)

    async def events_after(self, job_id: str, seq: int) -> list[JobEvent]:
        def work(db: sqlite3.Connection) -> list[JobEvent]:
            rows = db.execute(
                "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT 500", (job_id, seq)
            ).fetchall()
            return [
                JobEvent(row["job_id"], row["seq"], row["type"], json.loads(row["data"]), row["created_at"])
                for row in rows
            ]

        return await self._run(work, create=False)

    async def expire(self, now: float) -> list[str]:
        """Remove jobs past their expiry with their events and images; forget deliveries that ended
        long ago. Returns the removed job ids."""

        def work(db: sqlite3.Connection) -> list[str]:
            ids = [row[0] for row in db.execute("SELECT id FROM jobs WHERE expires_at <= ?", (now,)).fetchall()]
            for job_id in ids:
                db.execute("DELETE FROM results WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute("DELETE FROM deliveries WHERE status != 'pending' AND created_at <= ?", (now - self.result_ttl,))
            return ids

        ids = await self._run(work, create=False)
        for job_id in ids:
            await self.images.delete_job(job_id)
        return ids

    # ------------------------------------------------------------------ deliveries

    async def due_deliveries(self, now: float, limit: int, exclude: Sequence[str] = ()) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                "SELECT * FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, created_at, id LIMIT ?",
                (now, limit + len(exclude)),
            ).fetchall()
            skip = set(exclude)
            return [_delivery(row) for row in rows if row["id"] not in skip][:limit]

        return await self._run(work, create=False)

    async def next_delivery_at(self) -> float | None:
        def work(db: sqlite3.Connection) -> float | None:
            row = db.execute("SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'").fetchone()
            return None if row is None else row[0]

        return await self._run(work, create=False)

    async def delivery_succeeded(self, delivery_id: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))

        await self._run(work)

    async def delivery_retry(self, delivery_id: str, attempted_at: float, next_at: float, error: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, ?),"
                " next_attempt_at = ?, last_error = ? WHERE id = ? AND status = 'pending'",
                (attempted_at, next_at, error[:500], delivery_id),
            )

        await self._run(work)

    async def delivery_gave_up(self, delivery_id: str, attempted_at: float, error: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, ?),"
                " status = 'failed', last_error = ? WHERE id = ?",
                (attempted_at, error[:500], delivery_id),
            )

        await self._run(work)

    async def stop_endpoint(self, url: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO stopped_endpoints (url, stopped_at) VALUES (?, ?)", (url, time.time()))
            db.execute(
                "UPDATE deliveries SET status = 'stopped', last_error = 'endpoint answered 410 Gone'"
                " WHERE url = ? AND status = 'pending'",
                (url,),
            )

        await self._run(work)


class _Empty:
    """Stands in for a database that does not exist yet: every query finds nothing."""

    def execute(self, *args: Any) -> _Empty:
        return self

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[Any]:
        return []


_EMPTY: Any = _Empty()


def _load_job(db: sqlite3.Connection, job_id: str) -> Job | None:
    row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    counts = {
        status: count
        for status, count in db.execute(
            "SELECT status, COUNT(*) FROM results WHERE job_id = ? GROUP BY status", (job_id,)
        ).fetchall()
    }
    return Job(
        id=row["id"],
        status=row["status"],
        url=row["url"],
        times=tuple(json.loads(row["times"])),
        params=json.loads(row["params"]),
        base_url=row["base_url"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        callback_url=row["callback_url"],
        callback_include_image=bool(row["callback_include_image"]),
        owner=row["owner"],
        finished_at=row["finished_at"],
        expires_at=row["expires_at"],
        error=None if row["error"] is None else json.loads(row["error"]),
        counts=counts,
    )


def _result(row: sqlite3.Row) -> ResultRecord:
    return ResultRecord(
        index=row["idx"],
        requested=row["requested"],
        status=row["status"],
        requested_time=_frac(row["requested_time"]),
        actual_time=_frac(row["actual_time"]),
        pts=row["pts"],
        time_base=_frac(row["time_base"]),
        width=row["width"],
        height=row["height"],
        content_type=row["content_type"],
        file=row["file"],
        etag=row["etag"],
        problem=None if row["problem"] is None else json.loads(row["problem"]),
    )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        job_id=row["job_id"],
        url=row["url"],
        payload=row["payload"],
        image_file=row["image_file"],
        attempts=row["attempts"],
        first_attempt_at=row["first_attempt_at"],
        next_attempt_at=row["next_attempt_at"],
    )


def _append_event(
    db: sqlite3.Connection, job: Job, event_type: str, data: dict[str, Any], image_file: str | None
) -> JobEvent:
    """Append the job's next event and, when it has a callback, its webhook delivery."""
    now = time.time()
    seq = db.execute("UPDATE jobs SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq", (job.id,)).fetchone()[0]
    event = JobEvent(job.id, seq, event_type, data, now)
    db.execute(
        "INSERT INTO events (job_id, seq, type, data, created_at) VALUES (?, ?, ?, ?, ?)",
        (job.id, seq, event_type, json.dumps(data), now),
    )
    if job.callback_url is not None:
        stopped = db.execute("SELECT 1 FROM stopped_endpoints WHERE url = ?", (job.callback_url,)).fetchone()
        message = {"type": event_type, "timestamp": format_timestamp(now), "data": data}
        payload = json.dumps(message, separators=(",", ":"))
        db.execute(
            "INSERT OR IGNORE INTO deliveries (id, job_id, url, payload, image_file, status, next_attempt_at,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.webhook_id,
                job.id,
                job.callback_url,
                payload,
                image_file if job.callback_include_image else None,
                "stopped" if stopped else "pending",
                now,
                now,
            ),
        )
    return event
