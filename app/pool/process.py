"""A pool of decoder worker processes, driven from the asyncio event loop.

* One task runs at a time per worker; tasks wait in the pool's own queues, so when a worker dies
  we know exactly which task it was running (that one fails with ``decode_failed``; the queued
  ones go to its replacement).
* Affinity: a task goes to the worker that last served its URL while that worker is not
  overloaded, so the asset is already open there; otherwise to the least loaded worker.
* A watchdog kills a worker whose task has produced nothing for ``decode_timeout`` seconds; the
  caller gets ``decode_timeout`` (504) and a fresh worker takes the slot.
* ``queue_limit`` bounds tasks queued or running: past it, ``queue_full`` (429) at once.
* Memory: each worker reports its resident bytes and its open assets' after every task; while the
  tree (this process and its workers) is over ``memory_limit``, new tasks are refused with
  ``overloaded`` (503) as long as others are running (they free what they hold as they finish).
* A task that starts while other workers are idle decodes (and renders) with ``decode_threads``
  threads on their cores; in a busy pool each task gets one (see ``_decode_threads``).
* Coalescing: when a worker starts a one-time grab, the other one-time grabs of the same source and
  options still waiting go with it, as one task: one pass over the asset in time order, each GOP
  decoded once for all the times in it, each distinct frame rendered once. A pass that fails as a
  whole (its worker died, timed out or refused the task) hands what it had not yet answered back to
  the queue one by one, so a hostile time still fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from app.config import Settings
from app.engine import FrameFailure, FrameResult
from app.engine.errors import EngineError
from app.metrics import GRAB_SECONDS, STAGE_SECONDS, WORKER_RESTARTS, PoolState, record_timings
from app.pool.base import GrabTask
from app.pool.memory import process_rss
from app.pool.worker import worker_main

log = logging.getLogger("stillframe.pool")

_AFFINITY_MAX_BACKLOG = 2  # a worker with more queued than this loses its affinity claims
_COALESCE_MAX = 16  # grabs in one pass at most: the last of them waits for the others' frames
_CONTEXT = multiprocessing.get_context("spawn")  # no fork of a threaded, event-looped parent


@dataclass
class _Request:
    """One caller's grab (a ``GrabTask``), from submission to its last result."""

    id: int
    grab: GrabTask
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    answered: bool = False  # a result or an error went to the caller
    outstanding: int = -1  # times not yet answered (set from the grab)
    solo: bool = False  # back from a failed coalesced pass: runs on its own
    submitted: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.outstanding = len(self.grab.times)

    def coalesces_with(self, other: _Request) -> bool:
        return (
            not self.solo
            and not other.solo
            and not other.cancelled
            and len(self.grab.times) == 1
            and len(other.grab.times) == 1
            and self.grab.affinity == other.grab.affinity
            and self.grab.kind == other.grab.kind == "grab"
            and self.grab.options == other.grab.options
        )


@dataclass
class _Run:
    """What a worker is running: one request's grab, or several one-time grabs coalesced into one pass
    (``grab``, whose time ``i`` is member ``i``'s)."""

    id: int
    members: list[_Request]
    grab: GrabTask
    last_progress: float = 0.0

    @property
    def coalesced(self) -> bool:
        return len(self.members) > 1

    def member_for(self, index: int) -> _Request | None:
        if not self.coalesced:
            return self.members[0]
        return self.members[index] if 0 <= index < len(self.members) else None


def _widen(pipe: Connection) -> None:
    """The pipe holds 1 MiB (Linux; elsewhere, or past the system's cap, it keeps its size): a typical
    image goes in one write whether or not the reader is reading yet, and so does the largest task
    (a job's 1000 times), so that the event loop never waits on a write to a worker."""
    with contextlib.suppress(OSError, AttributeError):
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)


class _Worker:
    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.process: Any = None
        self.conn: Connection | None = None
        self.backlog: deque[_Request] = deque()
        self.running: _Run | None = None
        self.ready = False
        self.retiring = False  # said "retire": its exit is a recycling, not a crash
        self.open_assets = 0  # as it last reported
        self.send_lock = threading.Lock()
        self.resident_bytes = 0  # as the process last reported them
        self.asset_bytes = 0

    @property
    def load(self) -> int:
        return len(self.backlog) + (1 if self.running else 0)

    def send(self, message: Any) -> bool:
        with self.send_lock:
            if self.conn is None:
                return False
            try:
                self.conn.send(message)
                return True
            except (OSError, ValueError, BrokenPipeError):
                return False


class ProcessDecoderPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._workers = [_Worker(slot) for slot in range(settings.workers)]
        self._affinity: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False
        self._in_flight = 0
        self.submitted = 0  # tasks accepted since start (for operators and tests)
        self.coalesced = 0  # of those, grabs that ran in another grab's pass
        self.stopped = 0  # passes a worker was told to stop (every caller gone with times left)
        self.shed = 0  # tasks refused for memory (``overloaded``)
        self._api_resident = process_rss()  # sampled by the watchdog

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for worker in self._workers:
            self._spawn(worker)
        self._watchdog = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        self._stopping = True
        if self._watchdog:
            self._watchdog.cancel()
        for worker in self._workers:
            worker.send(None)
        deadline = time.monotonic() + 5
        for worker in self._workers:
            if worker.process is not None:
                await asyncio.to_thread(worker.process.join, max(0.1, deadline - time.monotonic()))
                if worker.process.is_alive():
                    worker.process.kill()
            for request in [*worker.backlog, *(worker.running.members if worker.running else [])]:
                request.queue.put_nowait(("error", EngineError("decode_failed", "the service is shutting down")))

    def ready(self) -> bool:
        return not self._stopping and any(w.ready for w in self._workers)

    def memory(self) -> dict[str, int | list[int]]:
        """Resident bytes of this process and of each decoder (as last reported), and the bytes the
        decoders' open assets hold (estimated), against the budget."""
        workers = [w.resident_bytes for w in self._workers]
        return {
            "limit_bytes": self.settings.memory_limit,
            "resident_bytes": self._api_resident + sum(workers),
            "api_resident_bytes": self._api_resident,
            "worker_resident_bytes": workers,
            "open_asset_bytes": sum(w.asset_bytes for w in self._workers),
            "shed": self.shed,
        }

    def over_memory_budget(self) -> bool:
        return self._api_resident + sum(w.resident_bytes for w in self._workers) > self.settings.memory_limit

    def state(self) -> PoolState:
        """Queue depth, busy and alive workers and open assets, for ``/metrics``."""
        workers = self._workers
        return PoolState(
            queued=sum(len(w.backlog) for w in workers),
            busy=sum(1 for w in workers if w.running is not None),
            alive=sum(1 for w in workers if w.ready),
            workers=len(workers),
            open_assets=sum(w.open_assets for w in workers),
            memory_limit_bytes=self.settings.memory_limit,
            api_resident_bytes=self._api_resident,
            worker_resident_bytes=[w.resident_bytes for w in workers],
            open_asset_bytes=sum(w.asset_bytes for w in workers),
        )

    def _spawn(self, worker: _Worker) -> None:
        # glibc gives every thread its own 64 MiB malloc arena: under the worker's address-space cap
        # that runs out long before memory does. The child reads this at start-up (spawn inherits it).
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
        # Two one-way pipes, not one socket pair: a pipe can be widened (see _widen), a socket's buffer
        # stops at ~208 KiB unprivileged, and a 1080p JPEG over that takes a second round trip between
        # the processes.
        tasks, commands = _CONTEXT.Pipe(duplex=False)  # (read end, write end)
        results, replies = _CONTEXT.Pipe(duplex=False)
        _widen(results)
        _widen(commands)
        process = _CONTEXT.Process(
            target=worker_main,
            args=(tasks, replies, self.settings),
            name=f"stillframe-decoder-{worker.slot}",
            daemon=True,
        )
        process.start()
        tasks.close()
        replies.close()
        worker.process, worker.conn, worker.ready = process, commands, False
        worker.retiring, worker.open_assets = False, 0
        threading.Thread(
            target=self._read, args=(worker, results, process), name=f"pool-reader-{worker.slot}", daemon=True
        ).start()

    # ------------------------------------------------------------------ submitting

    async def grab(self, task: GrabTask) -> FrameResult:
        async with contextlib.aclosing(self.grab_many(task)) as items:  # type: ignore[type-var]
            async for item in items:
                if isinstance(item, FrameFailure):
                    raise item.error
                return item
        raise EngineError("decode_failed", "the decoder produced no result")

    async def grab_many(self, task: GrabTask) -> AsyncIterator[FrameResult | FrameFailure]:
        if self._stopping:
            raise EngineError("queue_full", "the service is shutting down")
        if self._in_flight >= self.settings.queue_limit:
            raise EngineError("queue_full", "too many decodes queued; retry shortly")
        if self._in_flight and self.over_memory_budget():
            self.shed += 1
            raise EngineError("overloaded", "the service is at its memory limit; retry shortly")
        request = _Request(next(self._ids), task)
        self._in_flight += 1
        self.submitted += 1
        worker = self._choose(task.affinity)
        worker.backlog.append(request)
        self._pump(worker)
        single = len(task.times) == 1
        try:
            while True:
                kind, *payload = await request.queue.get()
                if kind == "item":
                    if single:
                        GRAB_SECONDS.observe(time.monotonic() - request.submitted)
                    yield payload[0]
                elif kind == "error":
                    raise payload[0]
                else:  # done
                    return
        finally:
            self._in_flight -= 1
            self._cancel(request)

    def _choose(self, affinity: str) -> _Worker:
        preferred = self._affinity.get(affinity)
        if preferred is not None:
            worker = self._workers[preferred]
            if len(worker.backlog) < _AFFINITY_MAX_BACKLOG:
                return worker
        worker = min(self._workers, key=lambda w: (w.load, not w.ready))
        self._affinity[affinity] = worker.slot
        if len(self._affinity) > 10_000:  # bounded: forget the oldest claims
            for key in list(self._affinity)[:5_000]:
                del self._affinity[key]
        return worker

    def _pump(self, worker: _Worker) -> None:
        """Hand the worker its next task if it is idle and ready."""
        while worker.running is None and worker.ready and worker.backlog:
            request = worker.backlog.popleft()
            if request.cancelled:
                continue
            members = [request, *self._take_coalescable(request)]
            if len(members) == 1:
                run = _Run(request.id, members, request.grab)
            else:
                times = tuple(member.grab.times[0] for member in members)
                run = _Run(
                    next(self._ids), members, GrabTask(request.grab.url, times, request.grab.options, request.grab.lane)
                )
            threads = self._decode_threads(worker)
            worker.running = run
            run.last_progress = time.monotonic()
            if not worker.send(("run", run.id, run.grab, threads)):
                worker.running = None
                worker.backlog.extendleft(reversed(members))
                return
            for member in members:
                STAGE_SECONDS.labels("queue").observe(run.last_progress - member.submitted)
            self.coalesced += len(members) - 1

    def _take_coalescable(self, request: _Request) -> list[_Request]:
        """The grabs still waiting (in any worker's backlog) that can share ``request``'s pass."""
        taken: list[_Request] = []
        if request.solo or len(request.grab.times) != 1:
            return taken
        for worker in self._workers:
            for other in list(worker.backlog):
                if len(taken) + 1 >= _COALESCE_MAX:
                    return taken
                if request.coalesces_with(other):
                    worker.backlog.remove(other)
                    taken.append(other)
        return taken

    def _decode_threads(self, worker: _Worker) -> int:
        """Decoder threads for the task this worker starts now: ``decode_threads`` while the cores they
        would take are idle (other workers with nothing to do), else one. A lone grab then decodes on
        several cores, and a busy pool keeps one core per task, where frame threads' overhead (a
        frame decoded past each target, thread hand-offs) would only cost throughput."""
        wanted = self.settings.decode_threads
        if wanted <= 1:
            return 1
        idle = sum(1 for w in self._workers if w is not worker and w.ready and w.running is None and not w.backlog)
        return wanted if idle >= wanted - 1 else 1

    def _cancel(self, request: _Request) -> None:
        if request.cancelled:
            return
        request.cancelled = True
        for worker in self._workers:
            run = worker.running
            if run is not None and request in run.members:
                # Nobody left waiting for this pass, and it has work left (a grab whose one image came
                # is over: its caller leaving is no reason to message the worker)
                if all(member.cancelled for member in run.members) and any(m.outstanding for m in run.members):
                    self.stopped += 1
                    worker.send(("cancel", run.id))
            elif request in worker.backlog:
                worker.backlog.remove(request)

    # ------------------------------------------------------------------ events from workers

    def _read(self, worker: _Worker, conn: Connection, process: Any) -> None:
        """Per-worker reader thread: blocking reads, handed to the event loop."""
        loop = self._loop
        assert loop is not None
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            loop.call_soon_threadsafe(self._on_message, worker, process, message)
        loop.call_soon_threadsafe(self._on_exit, worker, process)

    def _on_message(self, worker: _Worker, process: Any, message: Any) -> None:
        if worker.process is not process:
            return  # a message from a worker already replaced
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            self._pump(worker)
            return
        if kind == "memory":
            worker.resident_bytes, worker.asset_bytes = message[1], message[2]
            return
        if kind == "retire":  # it exits after this task: nothing more goes to it; its exit respawns it
            worker.ready, worker.retiring = False, True
            log.info("decoder %s (pid %s) retires: memory over worker_recycle_rss", worker.slot, message[1])
            return
        run = worker.running
        if run is None or run.id != message[1]:
            return
        run.last_progress = time.monotonic()
        if kind == "item":
            item = message[2]
            if isinstance(item, FrameResult):
                record_timings(item.timings)
            member = run.member_for(item.index)
            if member is not None:
                member.outstanding -= 1
            if member is not None and not member.cancelled:
                member.answered = True
                member.queue.put_nowait(("item", dataclasses.replace(item, index=0) if run.coalesced else item))
        elif kind == "error":
            self._fail(worker, run, message[2])
        elif kind == "done":
            if len(message) > 2:
                worker.open_assets = message[2]
            for member in run.members:
                member.queue.put_nowait(("done",))
            worker.running = None
            self._pump(worker)

    def _fail(self, worker: _Worker, run: _Run, error: EngineError) -> None:
        """A pass failed as a whole. Alone, its task gets the error. Coalesced, the grabs it had not
        answered go back to the front of the queue, each to run on its own: only the one whose time
        really fails gets an error, and those the pass answered keep their images."""
        if not run.coalesced:
            run.members[0].answered = True
            run.members[0].queue.put_nowait(("error", error))
            return
        retry = [member for member in run.members if not member.answered and not member.cancelled]
        for member in retry:
            member.solo = True
        run.members = [member for member in run.members if member not in retry]
        worker.backlog.extendleft(reversed(retry))

    def _on_exit(self, worker: _Worker, process: Any, reason: EngineError | None = None) -> None:
        if worker.process is not process:
            return
        with contextlib.suppress(Exception):
            process.join(timeout=1)
        run, worker.running = worker.running, None
        if run is not None:
            if reason is None:
                exitcode = process.exitcode
                if exitcode == -signal.SIGXCPU:
                    reason = EngineError("decode_timeout", "decoding took longer than allowed")
                else:
                    reason = EngineError("decode_failed", "the decoder stopped while reading this source")
                log.warning("decoder %s (pid %s) exited with %s", worker.slot, process.pid, exitcode)
            self._fail(worker, run, reason)
            for member in run.members:  # those it answered are complete
                if member.answered and run.coalesced:
                    member.queue.put_nowait(("done",))
        for url, slot in list(self._affinity.items()):
            if slot == worker.slot:
                del self._affinity[url]
        if worker.conn is not None:
            with contextlib.suppress(Exception):
                worker.conn.close()
        worker.conn, worker.ready = None, False
        worker.resident_bytes = worker.asset_bytes = 0
        if not self._stopping:
            WORKER_RESTARTS.labels(_exit_cause(worker, process, reason)).inc()
            self._spawn(worker)  # the backlog waits for the replacement's "ready"

    async def _watch(self) -> None:
        interval = min(0.25, self.settings.decode_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            self._api_resident = process_rss()
            now = time.monotonic()
            for worker in self._workers:
                run = worker.running
                if run is not None and now - run.last_progress > self.settings.decode_timeout:
                    process = worker.process
                    log.warning("decoder %s (pid %s): task over its deadline, killing it", worker.slot, process.pid)
                    process.kill()
                    self._on_exit(worker, process, EngineError("decode_timeout", "decoding took longer than allowed"))


def _exit_cause(worker: _Worker, process: Any, reason: EngineError | None) -> str:
    """Why a decoder process went, for ``stillframe_pool_worker_restarts``."""
    if process.exitcode == -signal.SIGXCPU:
        return "cpu_limit"
    if reason is not None and reason.code == "decode_timeout":
        return "timeout"  # killed by the watchdog
    if worker.retiring:
        return "recycled"
    return "crash"
