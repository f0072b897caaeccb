"""Encoded images kept in memory, and identical requests in flight sharing one decode."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ImageCache:
    """An LRU of responses bounded by their total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes, dict[str, str]]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        """The cached images' size."""
        return self._bytes

    def get(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: str, body: bytes, headers: dict[str, str]) -> None:
        if len(body) > self.max_bytes // 4:  # one huge image must not flush everything else
            return
        if key in self._items:
            self._bytes -= len(self._items.pop(key)[0])
        self._items[key] = (body, headers)
        self._bytes += len(body)
        self.shrink(self.max_bytes)

    def shrink(self, to_bytes: int) -> None:
        """Drop the least recently used images until the rest fit in ``to_bytes``."""
        while self._bytes > to_bytes:
            _, (evicted, _) = self._items.popitem(last=False)
            self._bytes -= len(evicted)


async def shrink_under_pressure(cache: ImageCache, over_budget: Callable[[], bool], interval: float = 1.0) -> None:
    """While the service is over its memory budget, halve the image cache every ``interval`` seconds
    (it is the API process's largest holding; it refills as memory allows)."""
    while True:
        await asyncio.sleep(interval)
        if over_budget() and cache.size_bytes:
            cache.shrink(cache.size_bytes // 2)


class Coalescer:
    """Runs one call per key at a time; callers arriving meanwhile await the same result."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[Any]] = {}

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        running = self._running.get(key)
        if running is not None:
            result: T = await asyncio.shield(running)
            return result
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            result = await call()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody else may be waiting
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._running[key]
