"""Runs jobs on the decoder pool: resume after a restart, cancel, drain on SIGTERM, expire results.

A job runs as ``grab_many`` tasks over its pending times, in time order and a chunk at a time (so
interactive requests get a turn between chunks); a long job in one lane per decoder worker, each over
a contiguous span of its times. The pool decodes a chunk in one forward pass per GOP, duplicates once,
and hands each result over as soon as it exists; the runner stores it (image file, then row + event +
webhook delivery in one transaction) and wakes SSE listeners.
Only pending times are ever asked for, so a job resumed after a crash redoes just what is missing
and records every time exactly once. A decoder that dies or times out mid-job costs a retry of the
remaining times (a few at most); a source that cannot be used fails the remaining times.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from fractions import Fraction
from typing import Any, Protocol

from app.config import Settings
from app.engine import FrameFailure, FrameResult
from app.engine.errors import EngineError
from app.engine.options import GrabOptions
from app.engine.timeparse import parse_time
from app.jobs.model import Job, JobError, JobEvent, JobSpec, JobStatus, ResultRecord
from app.jobs.store import JobStore
from app.jobs.webhooks import WebhookDispatcher
from app.pool.base import DecoderPool, GrabTask
from app.schemas import GrabParams

log = logging.getLogger("stillframe.jobs")

_RETRIES_AFTER_WORKER_LOSS = 3  # decode_failed / decode_timeout of a whole task: retry what is left
_QUEUE_FULL_PAUSE = 0.5
_CHUNK = 50  # times per pool task
_MIN_LANE_TIMES = 20  # fewer times than this per lane are not worth a second worker opening the asset
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/avif": "avif"}


class JobQueue(Protocol):
    """Job ids waiting for a runner. The embedded queue lives in memory: the store is the truth,
    and a restarted server re-enqueues every unfinished job from it."""

    async def put(self, job_id: str) -> None: ...

    async def get(self) -> str: ...


class LocalJobQueue:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()

    async def put(self, job_id: str) -> None:
        self._queue.put_nowait(job_id)

    async def get(self) -> str:
        return await self._queue.get()


class JobEvents:
    """Wakes SSE streams when a job has new events (in this process)."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.closing = asyncio.Event()  # set on drain: streams end, clients reconnect elsewhere

    def waiter(self, job_id: str) -> asyncio.Event:
        event = self._events.get(job_id)
        if event is None:
            event = self._events[job_id] = asyncio.Event()
        return event

    def publish(self, job_id: str) -> None:
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()


def request_hash(spec_fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec_fields, sort_keys=True, default=str).encode()).hexdigest()


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        pool: DecoderPool,
        *,
        queue: JobQueue | None = None,
        webhooks: WebhookDispatcher | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.pool = pool
        self.queue = queue or LocalJobQueue()
        self.webhooks = webhooks or WebhookDispatcher(settings, store)
        self.events = JobEvents()
        self.draining = False
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._restore_signals: list[Callable[[], None]] = []
        self.chunk_size = _CHUNK

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for job_id in await self.store.unfinished():
            log.info("resuming job %s", job_id)
            await self.queue.put(job_id)
        concurrency = self.settings.job_concurrency or self.settings.workers
        self._workers = [asyncio.create_task(self._work(), name=f"job-runner-{n}") for n in range(concurrency)]
        self._sweeper = asyncio.create_task(self._sweep(), name="job-expiry")
        await self.webhooks.start()
        self._install_signal_drain()

    def begin_drain(self) -> None:
        """SIGTERM: take no new jobs, end event streams; running jobs get ``drain_timeout`` in stop()."""
        if self.draining:
            return
        log.info("draining: no new jobs; running ones get %.0f s", self.settings.drain_timeout)
        self.draining = True
        self.events.closing.set()
        for worker in self._workers:
            worker.cancel()

    async def stop(self) -> None:
        self.begin_drain()
        for restore in self._restore_signals:
            restore()
        running = dict(self._running)
        if running:
            _, pending = await asyncio.wait(running.values(), timeout=self.settings.drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for job_id in running:
            with contextlib.suppress(Exception):
                await self.store.requeue(job_id)  # handed back: the next start resumes it
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.webhooks.stop()

    def _install_signal_drain(self) -> None:
        """Chain in front of the server's own SIGTERM/SIGINT handlers (uvicorn's), so the drain starts
        the moment the signal arrives, while the server waits for open connections (SSE) to end."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.getsignal(signum)
            except ValueError:
                return

            if not callable(previous):
                continue  # no server handler to chain (not under uvicorn): leave the signal alone

            def handler(number: int, frame: Any, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.begin_drain)
                previous(number, frame)

            try:
                signal.signal(signum, handler)
            except ValueError:  # not the main thread (e.g. a TestClient): no signals to chain
                return
            self._restore_signals.append(functools.partial(_restore, signum, previous))

    # ------------------------------------------------------------------ API-facing

    async def submit(self, spec: JobSpec) -> tuple[Job, bool]:
        if self.draining:
            raise JobError("shutting_down", "the service is shutting down; retry shortly")
        job, created = await self.store.create(spec)
        if created:
            await self.queue.put(job.id)
        return job, created

    async def cancel(self, job_id: str, owner: str | None = None) -> Job | None:
        events = await self.store.cancel(job_id, owner)
        if events is None:
            return None
        if events:
            self._cancelled.add(job_id)
            task = self._running.get(job_id)
            if task is not None:
                task.cancel()  # closes the pool iterator: the worker stops decoding this job
            self._published(job_id, events)
        return await self.store.get(job_id, owner)

    async def cancel_all(self, owner: str | None = None) -> list[str]:
        cancelled = []
        for job_id in await self.store.pending_jobs(owner):
            job = await self.cancel(job_id, owner)
            if job is not None and job.status == "cancelled":
                cancelled.append(job_id)
        return cancelled

    # ------------------------------------------------------------------ running

    async def _work(self) -> None:
        while not self.draining:
            job_id = await self.queue.get()
            if self.draining:
                return
            if job_id in self._running:
                continue
            task = asyncio.current_task()
            assert task is not None
            runner = asyncio.create_task(self._run(job_id), name=f"job-{job_id}")
            self._running[job_id] = runner
            try:
                await asyncio.shield(runner)  # a drain cancels this loop, not the job
            except asyncio.CancelledError:
                if not runner.done():
                    return  # the drain: stop() waits for the job, then cancels it
            finally:
                if runner.done():
                    self._running.pop(job_id, None)

    async def _run(self, job_id: str) -> None:
        try:
            await self._run_job(job_id)
        except asyncio.CancelledError:
            if job_id in self._cancelled:
                self._cancelled.discard(job_id)
                return
            raise
        except Exception:
            log.exception("job %s failed unexpectedly", job_id)
            with contextlib.suppress(Exception):
                error = EngineError("decode_failed", "the job failed unexpectedly").problem()
                await self._fail_pending(job_id, error)
                self._published(job_id, [await self.store.finish(job_id, "failed", error)])
        finally:
            self._running.pop(job_id, None)

    async def _run_job(self, job_id: str) -> None:
        job = await self.store.get(job_id)
        if job is None or job.terminal or not await self.store.mark_running(job_id):
            return
        options = GrabParams(**job.params).grab_options()
        # A long job is cut into contiguous spans of its times, one lane per decoder worker, decoded side
        # by side: each lane is one forward pass over its span, so the cores share the decode instead of
        # one doing it all (the span boundary costs at most one GOP decoded twice).
        pending = sorted(await self.store.pending_indices(job_id), key=lambda i: _time_order(job.times[i]))
        lanes = max(1, min(self.settings.workers, len(pending) // _MIN_LANE_TIMES))
        size = -(-len(pending) // lanes)
        spans = [pending[start : start + size] for start in range(0, len(pending), size)]
        errors = await asyncio.gather(
            *(self._run_lane(job, options, lane, set(span)) for lane, span in enumerate(spans))
        )
        whole_error = next((error for error in errors if error is not None), None)
        status: JobStatus = "completed"
        error = None
        if whole_error is not None:
            error = whole_error.problem()
            await self._fail_pending(job_id, error)
            current = await self.store.get(job_id)
            if current is not None and not current.counts.get("succeeded"):
                status = "failed"
        event = await self.store.finish(job_id, status, error if status == "failed" else None)
        if event is not None:
            self._published(job_id, [event])

    async def _run_lane(self, job: Job, options: GrabOptions, lane: int, mine: set[int]) -> EngineError | None:
        """The job's times in ``mine``, a chunk at a time; the error that ended the lane early, if any."""
        losses = 0
        while True:
            pending = [i for i in await self.store.pending_indices(job.id) if i in mine]
            if not pending:
                return None
            # In time order, a chunk at a time: each chunk is one forward pass on a worker that keeps
            # the asset open, and interactive /v1/frame requests get a turn between chunks.
            chunk = sorted(pending, key=lambda i: _time_order(job.times[i]))[: self.chunk_size]
            answered = 0
            task = GrabTask(job.url, tuple(job.times[i] for i in chunk), options, lane=lane)
            try:
                items = self.pool.grab_many(task)
                try:
                    async for item in items:
                        await self._record(job, chunk[item.index], item)
                        answered += 1
                finally:
                    await _aclose(items)  # closing the iterator cancels what the pool has left
            except EngineError as exc:
                if exc.code in ("queue_full", "overloaded"):  # the pool is busy or at its memory limit
                    await asyncio.sleep(_QUEUE_FULL_PAUSE)
                    continue
                if exc.code in ("decode_failed", "decode_timeout") and losses < _RETRIES_AFTER_WORKER_LOSS:
                    losses += 1
                    log.warning("job %s: %s; retrying the remaining times", job.id, exc.code)
                    continue
                return exc
            if answered < len(chunk):
                losses += 1  # the task ended with times unanswered: ask again, a few times at most
                if losses > _RETRIES_AFTER_WORKER_LOSS:
                    return EngineError("decode_failed", "the decoder produced no result for some times")

    async def _fail_pending(self, job_id: str, problem: dict[str, Any]) -> None:
        job = await self.store.get(job_id)
        if job is None:
            return
        for index in await self.store.pending_indices(job_id):
            event = await self.store.record(
                job_id, ResultRecord(index=index, requested=job.times[index], status="failed", problem=problem)
            )
            if event is not None:
                self._published(job_id, [event])

    async def _record(self, job: Job, index: int, item: FrameResult | FrameFailure) -> None:
        if isinstance(item, FrameFailure):
            record = ResultRecord(
                index=index, requested=job.times[index], status="failed", problem=item.error.problem()
            )
        else:
            extension = _EXTENSIONS.get(item.content_type, "img")
            file = await self.store.save_image(job.id, index, item.image, extension)
            record = ResultRecord(
                index=index,
                requested=job.times[index],
                status="succeeded",
                requested_time=item.requested_time,
                actual_time=item.actual_time,
                pts=item.pts,
                time_base=item.time_base,
                width=item.width,
                height=item.height,
                content_type=item.content_type,
                file=file,
                etag='"' + hashlib.sha256(item.image).hexdigest()[:32] + '"',
            )
        event = await self.store.record(job.id, record)
        if event is not None:
            self._published(job.id, [event])

    def _published(self, job_id: str, events: Sequence[JobEvent | None]) -> None:
        self.events.publish(job_id)
        if self.webhooks.enabled and any(events):
            self.webhooks.poke()

    # ------------------------------------------------------------------ expiry

    async def _sweep(self) -> None:
        interval = max(0.5, min(60.0, self.settings.result_ttl / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self.store.expire(time.time())
            except Exception:
                log.exception("expiring jobs failed")
                continue
            if removed:
                log.info("expired %d jobs", len(removed))


def _time_order(text: str) -> tuple[bool, Fraction]:
    """Sort key of a requested time: seconds first, percentages (unknown duration) after."""
    spec = parse_time(text)
    return spec.percent, spec.value


async def _aclose(items: AsyncIterator[Any]) -> None:
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()


def _restore(signum: int, previous: Any) -> None:
    with contextlib.suppress(ValueError, TypeError):
        signal.signal(signum, previous)
