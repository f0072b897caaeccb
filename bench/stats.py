"""Percentiles and the small summaries every scenario reports."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(seconds: Iterable[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/mean in milliseconds and the sample count."""
    data = list(seconds)
    ms = [s * 1000 for s in data]

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "n": len(ms),
        "p50_ms": r(percentile(ms, 50)),
        "p90_ms": r(percentile(ms, 90)),
        "p99_ms": r(percentile(ms, 99)),
        "mean_ms": r(sum(ms) / len(ms)) if ms else None,
        "min_ms": r(min(ms)) if ms else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``name;dur=12.3, other;dur=4`` -> {name: ms}."""
    out: dict[str, float] = {}
    if not header:
        return out
    for part in header.split(","):
        name, *params = [p.strip() for p in part.split(";")]
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "dur":
                with contextlib.suppress(ValueError):
                    out[name] = out.get(name, 0.0) + float(value)
    return out


def timing_breakdown(timings: list[dict[str, float]]) -> dict[str, float | None]:
    """Median of each Server-Timing component (ms) over a list of responses."""
    names = sorted({name for t in timings for name in t})
    return {name: _round(percentile([t.get(name, 0.0) for t in timings], 50)) for name in names}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)
