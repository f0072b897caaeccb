"""The helper threads that split one picture's work (a JPEG's halves, HDR tone mapping's blocks)
across the cores a grab may use. numpy, libjpeg-turbo and FFmpeg's filters let go of the GIL, so the
parts really run side by side.

Where the thread asking for help runs matters: Linux often wakes a helper on the waker's own core
(measured on 2-core VMs after a frame-threaded decode: about half of the grabs), where it waits for the
waker's share to finish, and the "parallel" step takes as long as doing it alone. So before each
hand-off the helpers are kept off the asking thread's current core (their CPU affinity: every allowed
core but that one), which costs a few syscalls only when the asker has moved. Where affinity cannot be
set (not Linux, a single allowed core), nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

_T = TypeVar("_T")
_I = TypeVar("_I")


def _current_cpu_reader() -> Callable[[], int] | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        sched_getcpu = ctypes.CDLL(None, use_errno=True).sched_getcpu  # glibc and musl (vDSO: ~50 ns)
    except (OSError, AttributeError):
        return None
    sched_getcpu.restype = ctypes.c_int
    sched_getcpu.argtypes = []
    return lambda: int(sched_getcpu())


class HelperThreads:
    """A thread pool whose threads run on other cores than the thread that submits work to it."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name, initializer=self._joined)
        self._lock = threading.Lock()
        self._threads: list[int] = []  # native ids
        self._current_cpu = _current_cpu_reader()
        self._allowed = frozenset(os.sched_getaffinity(0)) if self._current_cpu else frozenset()
        self._off: int | None = None  # the core the helpers are kept off (None: any)

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        if self._current_cpu is not None and len(self._allowed) > 1:
            self._keep_off(self._current_cpu())
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self) -> None:
        self._executor.shutdown()

    def _keep_off(self, cpu: int) -> None:
        if cpu == self._off or cpu not in self._allowed:
            return
        with self._lock:
            self._off = cpu
            for thread in self._threads:
                self._pin(thread)

    def _pin(self, thread: int) -> None:
        cores = self._allowed - {self._off} if self._off is not None else self._allowed
        with contextlib.suppress(OSError):  # a thread that has exited, or a core taken away meanwhile
            os.sched_setaffinity(thread, cores)

    def _joined(self) -> None:
        if self._current_cpu is None:
            return
        with self._lock:
            thread = threading.get_native_id()
            self._threads.append(thread)
            self._pin(thread)


@functools.cache
def helper_threads() -> HelperThreads:
    return HelperThreads(max_workers=3, name="stillframe-band")


def in_parallel(work: Callable[[_I], _T], items: Sequence[_I], threads: int) -> list[_T]:
    """``work`` on every item, in their order: on this thread and on ``threads - 1`` helpers, each
    taking every n-th item (this thread the first share). One thread: a plain loop."""
    threads = max(1, min(threads, len(items)))
    if threads == 1:
        return [work(item) for item in items]
    shares = [range(first, len(items), threads) for first in range(threads)]

    def run(share: range) -> list[_T]:
        return [work(items[index]) for index in share]

    pending = [helper_threads().submit(run, share) for share in shares[1:]]
    done = [run(shares[0]), *(future.result() for future in pending)]
    return [done[index % threads][index // threads] for index in range(len(items))]
