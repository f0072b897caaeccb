"""Per-caller rate limiting: a token bucket per key, behind a small interface.

``STILLFRAME_RATE_LIMIT`` reads like ``100/minute``: each caller has a bucket of 100 tokens that
refills at 100 per minute; a request takes one, and an empty bucket answers ``429`` with the seconds
until a token is back. :class:`MemoryRateLimiter` keeps the buckets in this process; a shared store
(Redis, say) only has to implement :class:`RateLimiter`.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = ["MemoryRateLimiter", "Rate", "RateDecision", "RateLimiter", "parse_rate"]

_UNITS: Final = {
    **dict.fromkeys(("s", "sec", "second"), 1),
    **dict.fromkeys(("m", "min", "minute"), 60),
    **dict.fromkeys(("h", "hour"), 3600),
    **dict.fromkeys(("d", "day"), 86400),
}
# ``N/unit`` or ``N/Munit``: ``100/minute``, ``10/s``, ``500/5min``, ``1000/hours``.
_RATE_RE: Final = re.compile(r"^\s*([1-9][0-9]*)\s*/\s*([1-9][0-9]*)?\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class Rate:
    """``limit`` requests per ``period`` seconds (also the burst: a full bucket holds ``limit``)."""

    limit: int
    period: float

    @property
    def per_second(self) -> float:
        return self.limit / self.period

    def __str__(self) -> str:
        return f"{self.limit}/{self.period:g}s"


def parse_rate(text: str) -> Rate:
    """``"100/minute"`` -> ``Rate(100, 60.0)``; raises ValueError on anything else."""
    m = _RATE_RE.match(text.lower())
    unit = m.group(3) if m else ""
    if unit not in _UNITS and unit.endswith("s") and len(unit) > 3:
        unit = unit[:-1]  # plurals: "minutes", "hours" (not "ms")
    if not m or unit not in _UNITS:
        raise ValueError(f"invalid rate limit {text!r}: expected N/unit, e.g. 100/minute, 10/second, 500/5min")
    count = int(m.group(2) or 1)
    return Rate(int(m.group(1)), float(count * _UNITS[unit]))


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: float  # seconds until the next request would be allowed (0 when allowed)

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, rounded up, at least 1 (RFC 9110 ``Retry-After``)."""
        return str(max(1, math.ceil(self.retry_after)))


class RateLimiter(Protocol):
    def hit(self, key: str, cost: float = 1.0) -> RateDecision:
        """Take ``cost`` tokens from ``key``'s bucket if it holds them."""
        ...


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class MemoryRateLimiter:
    """Token buckets in a dict, thread-safe. At most ``max_keys`` buckets are kept: the ones used
    least recently go first (a forgotten bucket comes back full, so memory stays bounded whatever
    the number of callers, at worst a little leniency for the oldest)."""

    def __init__(self, rate: Rate, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if rate.limit <= 0 or rate.period <= 0:
            raise ValueError("a rate needs a positive limit and period")
        self.rate = rate
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, key: str) -> RateDecision:
        """Whether a hit on ``key`` would be allowed now, taking nothing."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return RateDecision(True, self.rate.limit, self.rate.limit, 0.0)
            tokens = min(
                float(self.rate.limit), bucket.tokens + (self._clock() - bucket.updated) * self.rate.per_second
            )
        if tokens >= 1:
            return RateDecision(True, self.rate.limit, int(tokens), 0.0)
        return RateDecision(False, self.rate.limit, 0, (1 - tokens) / self.rate.per_second)

    def hit(self, key: str, cost: float = 1.0) -> RateDecision:
        capacity = float(self.rate.limit)
        refill = self.rate.per_second
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(capacity, now)
                self._buckets[key] = bucket
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * refill)
                bucket.updated = now
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return RateDecision(True, self.rate.limit, int(bucket.tokens), 0.0)
            wait = (cost - bucket.tokens) / refill
            return RateDecision(False, self.rate.limit, 0, wait)
