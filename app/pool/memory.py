"""The service's memory budget: how much it may take, and how that is split between its processes.

One number, ``STILLFRAME_MEMORY_LIMIT`` (bytes, or ``1.5GiB``; by default the container's cgroup limit,
else half the machine), sizes everything that holds memory: the API process with its image cache and
the results in flight, the number of decoder processes, and in each decoder its resident ceiling
(past it the least recently used assets close, then the process hands its slot to a fresh one) and the
bytes its open assets may hold. ``bench/README.md`` has the measurements the constants come from.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MiB = 1024**2
GiB = 1024**3

API_BASE_BYTES = 192 * MiB  # the API process at rest (interpreter, FastAPI, PyAV, the job store)
RESULT_BYTES_IN_FLIGHT = 1 * MiB  # a typical encoded image on its way to a client, per queued task
WORKER_BASE_BYTES = 128 * MiB  # a decoder process at rest (PyAV, Pillow, numpy, the codecs' code)
GRAB_WORKING_BYTES = 256 * MiB  # the heap a decoder's grabs of mixed sizes and formats keep in use besides its assets
MIN_ASSET_BYTES = 32 * MiB  # open assets a decoder may keep at least (one 1080p H.264 asset)
MIN_WORKER_BYTES = WORKER_BASE_BYTES + GRAB_WORKING_BYTES + MIN_ASSET_BYTES
IMAGE_CACHE_SHARE = 16  # the image cache takes at most 1/16 of the budget
RESERVE_SHARE = 16  # 1/16 is left to what no process's RSS shows (page tables, socket and pipe buffers)
DEFAULT_MACHINE_SHARE = 2  # with no cgroup limit: half the machine

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": MiB,
    "mib": MiB,
    "gi": GiB,
    "gib": GiB,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_bytes(text: str | int) -> int:
    """``1.5GiB``, ``512MiB``, ``2G`` (decimal, as Kubernetes writes it), ``1000000`` -> bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size in bytes: {text!r} (e.g. 1073741824, 1.5GiB, 512MiB, 2G)")
    return int(float(match.group(1)) * _UNITS[unit])


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's memory limit (cgroup v2 ``memory.max``, or v1 ``memory.limit_in_bytes``), if any."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < machine_memory():  # v1 writes "no limit" as a huge number
            return int(value)
    return None


def machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 4 * GiB


def default_memory_limit() -> int:
    """The container's limit where there is one, else a share of the machine."""
    return cgroup_memory_limit() or machine_memory() // DEFAULT_MACHINE_SHARE


@dataclass(frozen=True)
class MemoryPlan:
    """How a budget is split: the API process (with its image cache and results in flight), and
    ``workers`` decoder processes of ``worker_bytes`` each, of which ``asset_bytes`` for open assets."""

    limit: int
    workers: int
    worker_bytes: int
    asset_bytes: int
    image_cache_bytes: int
    api_bytes: int


def plan_memory(
    limit: int,
    *,
    workers: int,
    image_cache_bytes: int,
    queue_limit: int,
    fit_workers: bool = True,
    fit_cache: bool = True,
) -> MemoryPlan:
    """Split ``limit`` between the API process and as many of ``workers`` decoder processes as fit.

    The image cache gets at most its share of the budget (and no more than asked); each decoder gets an
    equal part of the rest, less a reserve, at least ``MIN_WORKER_BYTES`` (fewer processes where that does not fit:
    one at least, whatever the budget). With ``fit_workers`` or ``fit_cache`` false (an operator chose
    them), exactly ``workers`` processes, or a cache of ``image_cache_bytes``."""
    cache = min(image_cache_bytes, limit // IMAGE_CACHE_SHARE) if fit_cache else image_cache_bytes
    api = API_BASE_BYTES + cache + queue_limit * RESULT_BYTES_IN_FLIGHT
    for_workers = max(0, limit - limit // RESERVE_SHARE - api)
    count = max(1, min(workers, for_workers // MIN_WORKER_BYTES)) if fit_workers else workers
    worker = max(MIN_WORKER_BYTES, for_workers // count)
    assets = max(MIN_ASSET_BYTES, worker - WORKER_BASE_BYTES - GRAB_WORKING_BYTES)
    return MemoryPlan(limit, count, worker, assets, cache, api)


def process_rss(pid: int | None = None) -> int:
    """Resident bytes of a process (this one by default), from /proc; 0 where it cannot be read."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
