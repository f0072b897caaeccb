"""The decoder worker process: it decodes, the API process never does.

Each worker keeps recently used assets open (container, stream, keyframe index) in a small LRU,
so a second grab from the same video skips the open and the probe. It runs under resource limits
(address space, open files, CPU time per task) so that a hostile file costs one worker at most.

Protocol, one pipe each way. Parent -> worker: ``("run", task_id, GrabTask, decode_threads)``,
``("cancel", task_id)``, ``None`` to exit. Worker -> parent: ``("ready", pid)``,
``("item", task_id, FrameResult | FrameFailure)``, ``("done", task_id)``,
``("error", task_id, EngineError)`` for a task that failed as a whole, ``("memory", resident bytes,
open-asset bytes)`` after "ready" and before each ``done``, and ``("retire", pid)`` just before the
``done`` of its last task when it exits to be replaced (see ``_MemoryKeeper``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import resource
import time
from collections import OrderedDict
from fractions import Fraction
from multiprocessing.connection import Connection
from typing import Any

from app.config import Settings
from app.engine import FrameResult, ImageGenerator
from app.engine.errors import EngineError
from app.engine.options import SourceLimits
from app.pool.base import GrabTask
from app.pool.memory import process_rss
from app.pool.tasks import run_asset_task

REMOTE_REVALIDATE_SECONDS = 10.0  # how long a remote asset's identity is trusted without asking again
CPU_SECONDS_PER_TASK_FACTOR = 2  # CPU time a task may use, as a multiple of the wall-clock decode timeout


_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> None:
    """Keep the per-frame arrays of rendering (MiBs each, made and freed on every grab) in the heap.

    glibc serves allocations over its mmap threshold with a fresh mmap each: at 1080p every grab then
    page-faults ~10 MiB in and unmaps it again, which made the YUV->JPEG step 16 ms instead of 4 ms. A
    fixed threshold (32 MiB, glibc's maximum: a 4K plane's int16 copy fits) and a trim threshold above
    it keep those pages mapped between grabs; the cost is at most that much heap kept per process.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024**2)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024**2)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator has its own ways


_HEAP_RELEASE_GROWTH = 64 * 1024**2  # resident growth since the last release that makes another worth it


def release_free_heap() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``; a few ms).

    Grabs of different assets and sizes leave the heap fragmented: its free space grows ~70 KB per
    grab (measured: in-use flat at ~110 MiB while free space went 37 -> 124 MiB over 1,250 grabs),
    and glibc returns only what sits at the top of the heap. ``malloc_trim`` releases free pages
    wherever they are."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _statm_bytes(field: int) -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[field]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _rss_bytes() -> int:
    return process_rss()


def _over_budget(settings: Settings) -> bool:
    """Resident memory over ``worker_recycle_rss``, or address space within a quarter of the cap (the
    heap's span keeps growing with its fragmentation even where its pages are given back)."""
    return _rss_bytes() > settings.worker_recycle_rss or _statm_bytes(0) > settings.worker_memory_limit * 3 // 4


class _MemoryKeeper:
    """What a worker does about its memory between tasks: close least recently used assets past the
    budget, give free heap pages back after each ``_HEAP_RELEASE_GROWTH`` of growth, and say when
    even that is not enough (the worker should make way for a fresh process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.released_at = _rss_bytes()

    def must_retire(self, assets: _OpenAssets) -> bool:
        assets.trim(self.settings.worker_recycle_rss, self.settings.open_asset_bytes)
        resident = _rss_bytes()
        if resident > self.released_at + _HEAP_RELEASE_GROWTH:
            release_free_heap()
            self.released_at = _rss_bytes()
        else:
            self.released_at = min(self.released_at, resident)
        if not _over_budget(self.settings):
            return False
        assets.close()
        release_free_heap()
        return _over_budget(self.settings)  # with no asset open and the free heap given back


def source_limits(settings: Settings) -> SourceLimits:
    return SourceLimits(
        max_pixels=settings.max_source_pixels,
        max_duration=Fraction(str(settings.max_duration)),
        max_streams=settings.max_streams,
    )


def _set_limits(settings: Settings) -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (settings.worker_memory_limit, settings.worker_memory_limit))
    with contextlib.suppress(ValueError, OSError):
        files = settings.worker_max_open_files
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _limit_cpu_for_next_task(settings: Settings, threads: int, times: int = 1) -> None:
    """RLIMIT_CPU counts the whole process, so each task gets "used so far + its budget"; a task that
    spins past it gets SIGXCPU and dies, and the parent reports a timeout. The budget is per time the
    task asks for: a batch lane, or grabs coalesced into one pass, may take as long as that many grabs
    (the watchdog still stops any of them that stalls)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    budget = int(settings.decode_timeout * CPU_SECONDS_PER_TASK_FACTOR * threads * max(1, times)) + 1
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (used + budget, resource.RLIM_INFINITY))


class _OpenAssets:
    """Generators kept open by (source identity, stream, decoder threads), least recently used first out:
    at most ``capacity`` of them, and at most ``max_bytes`` by their estimated size (the one in use stays
    whatever its size)."""

    def __init__(self, capacity: int, max_bytes: int = 1 << 62) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int | None, int], ImageGenerator] = OrderedDict()
        self._remote: dict[str, tuple[str, float]] = {}  # url -> (identity, when it was last checked)

    def get(self, task: GrabTask, settings: Settings, threads: int = 1) -> tuple[ImageGenerator, str]:
        """The open generator for this task (its decoder set up with ``threads``), opened if need be."""
        from app.engine.sources import HttpSource, S3Source, resolve_source

        recent = self._remote.get(task.url)
        if recent is not None and time.monotonic() - recent[1] < REMOTE_REVALIDATE_SECONDS:
            # A remote asset checked moments ago: revalidating costs a request (and a block of
            # bytes) per grab, so trust it for a few seconds, as an HTTP cache would.
            key = (recent[0], task.options.stream, threads)
            if (generator := self._items.pop(key, None)) is not None:
                generator.options = task.options
                self._items[key] = generator
                return generator, recent[0]
        source = resolve_source(task.url, settings.source_policy())
        identity = source.identity  # changes with the bytes: size + mtime, or ETag / Last-Modified
        if isinstance(source, HttpSource | S3Source):
            self._remote[task.url] = (identity, time.monotonic())
            if len(self._remote) > 4 * self.capacity:
                self._remote.pop(next(iter(self._remote)))
        key = (identity, task.options.stream, threads)
        generator = self._items.pop(key, None)
        if generator is None:
            # One decoder per asset: the one set up for the other thread count goes (the load changed).
            for other in [k for k in self._items if k[:2] == key[:2]]:
                self._items.pop(other).close()
            generator = ImageGenerator(
                source,
                task.options,
                max_output_pixels=settings.max_output_pixels,
                limits=source_limits(settings),
                decode_threads=threads,
            )
        else:
            generator.options = task.options
        self._items[key] = generator
        while len(self._items) > self.capacity or (len(self._items) > 1 and self.estimated_bytes > self.max_bytes):
            _, evicted = self._items.popitem(last=False)
            evicted.close()
        return generator, identity

    @property
    def estimated_bytes(self) -> int:
        """The open assets' estimated size (``ImageGenerator.resident_estimate``)."""
        return sum(generator.resident_estimate for generator in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        while self._items:
            self._items.popitem()[1].close()

    def trim(self, rss_budget: int, asset_bytes: int) -> None:
        """Bound by memory as well as count: decoders of large video hold tens of MiB each, so past
        either budget (the process's resident bytes, the assets' estimated ones: a decoder's frames
        grow with the grabs) the least recently used assets are closed (the one just used stays)."""
        while len(self._items) > 1 and (_rss_bytes() > rss_budget or self.estimated_bytes > asset_bytes):
            _, evicted = self._items.popitem(last=False)
            evicted.close()

    def drop(self, task: GrabTask) -> None:
        """Forget every generator for this task's stream choice after a failure mid-decode: its
        decoder state is suspect."""
        for key in [k for k in self._items if k[1] == task.options.stream]:
            self._items.pop(key).close()


def with_encoder_effort(task: GrabTask, settings: Settings) -> GrabTask:
    """The task with this deployment's encoder effort (``webp_method``, ``avif_speed``)."""
    encode = dataclasses.replace(task.options.encode, webp_method=settings.webp_method, avif_speed=settings.avif_speed)
    return dataclasses.replace(task, options=dataclasses.replace(task.options, encode=encode))


def _cancelled(conn: Connection, task_id: int, pending: list[Any]) -> bool:
    """Read messages that arrived while decoding; keep anything that is not our cancel for later."""
    cancelled = False
    while conn.poll():
        message = conn.recv()
        if message is not None and message[0] == "cancel" and message[1] == task_id:
            cancelled = True
        elif message is None or message[0] != "cancel":
            pending.append(message)
    return cancelled


def worker_main(conn: Connection, replies: Connection, settings: Settings) -> None:
    """Entry point of a decoder process: tasks come on ``conn``, all it says goes on ``replies``."""
    tune_allocator()
    _set_limits(settings)
    # Rendering's modules (Pillow, libjpeg-turbo, numpy colour code: ~140 ms) load now, before "ready",
    # not in the first request a fresh worker serves (at start, and after each crash or recycling).
    import app.engine.encode  # noqa: F401

    assets = _OpenAssets(settings.open_assets_per_worker, settings.open_asset_bytes)
    memory = _MemoryKeeper(settings)
    replies.send(("ready", os.getpid()))
    replies.send(("memory", _rss_bytes(), 0))
    pending: list[Any] = []
    while True:
        message = pending.pop(0) if pending else conn.recv()
        if message is None:
            assets.close()
            break
        if message[0] != "run":
            continue  # a cancel for a task that already finished
        _, task_id, task, threads = message
        task = with_encoder_effort(task, settings)
        _limit_cpu_for_next_task(settings, threads, len(task.times))
        try:
            if task.kind != "grab":  # a description or a poster: one answer (app.pool.tasks)
                replies.send(("item", task_id, run_asset_task(task, settings, source_limits(settings), threads)))
            else:
                generator, identity = assets.get(task, settings, threads)
                for item in generator.images_for(list(task.times), ordered=False):
                    if isinstance(item, FrameResult):
                        item = dataclasses.replace(item, source_identity=identity)
                    replies.send(("item", task_id, item))
                    if _cancelled(conn, task_id, pending):
                        break
        except EngineError as exc:
            assets.drop(task)
            replies.send(("error", task_id, exc))
        except MemoryError:
            assets.drop(task)
            replies.send(("error", task_id, EngineError("decode_failed", "decoding needed more memory than allowed")))
        retiring = memory.must_retire(assets)
        replies.send(("memory", _rss_bytes(), assets.estimated_bytes))
        if retiring:
            # Say so before "done", so that no task is sent here again, and make way for a fresh process.
            replies.send(("retire", os.getpid()))
            replies.send(("done", task_id))
            break
        replies.send(("done", task_id, len(assets)))
