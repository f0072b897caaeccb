"""The service's Prometheus metrics: the objects the API, the pool and the jobs record into, and
:func:`render`, the text ``GET /metrics`` answers with.

Counters and histograms are recorded where the event is known, in the API process: a decoder worker
measures its own stages (``FrameResult.timings``) and they come back with each result, so the worker
processes record nothing themselves. State that is already kept (the pool's queues and workers, the
image cache's hits, jobs by state) is read at scrape time by :class:`LiveCollector` instead of being
updated on every request. When ``PROMETHEUS_MULTIPROC_DIR`` is set (``stillframe serve`` sets it up
under the data directory before this module is imported), prometheus-client keeps the values in
files there and :func:`render` sums every process's, so the text is right however many record.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
disable_created_metrics()  # (a ``_created`` series per label set doubles the text and no dashboard reads it)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds, from a cached grab (~1 ms) to a slow remote open (tens of seconds).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter(
    "stillframe_http_requests",
    "HTTP requests answered, by route template, method, status and problem code ('' when none).",
    ["route", "method", "status", "code"],
)
REQUEST_SECONDS = Histogram(
    "stillframe_http_request_duration_seconds",
    "Time from a request's arrival to its response's start, by route template.",
    ["route"],
    buckets=_BUCKETS,
)
GRAB_SECONDS = Histogram(
    "stillframe_grab_duration_seconds",
    "A one-time grab through the decoder pool, from submission to its image (queue included).",
    buckets=_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "stillframe_grab_stage_duration_seconds",
    "Where a grab's time went: open (fetch and probe; first use of an asset in its worker), decode, render, "
    "encode (measured in the decoder worker), and queue (waiting for a worker).",
    ["stage"],
    buckets=_BUCKETS,
)
OPEN_ASSET_LOOKUPS = Counter(
    "stillframe_open_asset_lookups",
    "Grabs served from an asset already open in its worker (hit) or that opened it (miss).",
    ["result"],
)
WORKER_RESTARTS = Counter(
    "stillframe_pool_worker_restarts",
    "Decoder processes replaced, by cause: crash, timeout (no progress), cpu_limit, recycled (memory).",
    ["cause"],
)
WEBHOOK_ATTEMPTS = Counter(
    "stillframe_webhook_attempts",
    "Webhook delivery attempts, by outcome: delivered, gone, retry, gave_up.",
    ["outcome"],
)


def record_timings(timings: Mapping[str, float]) -> None:
    """A result's stage timings (see :func:`app.api.frames.server_timing`), and whether it opened its asset."""
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(stage).observe(seconds)
    if "open" in timings:
        OPEN_ASSET_LOOKUPS.labels("miss" if timings["open"] > 0 else "hit").inc()


@dataclass
class PoolState:
    """What the decoder pool reports at scrape time."""

    queued: int
    busy: int
    alive: int
    workers: int
    open_assets: int
    memory_limit_bytes: int = 0
    api_resident_bytes: int = 0
    worker_resident_bytes: list[int] = field(default_factory=list)  # per decoder slot, as last reported
    open_asset_bytes: int = 0  # estimated


@dataclass
class LiveState:
    """Gauges read from the running service at scrape time (see :func:`render`)."""

    pool: PoolState | None = None
    image_cache_hits: int = 0
    image_cache_misses: int = 0
    image_cache_bytes: int = 0
    jobs_by_status: dict[str, int] = field(default_factory=dict)


class LiveCollector(Collector):
    def __init__(self, state: LiveState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        if state.pool is not None:
            pool = state.pool
            yield _gauge("stillframe_pool_queue_depth", "Grabs waiting for a decoder worker.", pool.queued)
            yield _gauge("stillframe_pool_workers_busy", "Decoder workers running a task.", pool.busy)
            yield _gauge("stillframe_pool_workers_alive", "Decoder workers up and ready.", pool.alive)
            yield _gauge("stillframe_pool_workers", "Decoder worker slots (STILLFRAME_WORKERS).", pool.workers)
            yield _gauge("stillframe_open_assets", "Assets open in the decoder workers.", pool.open_assets)
            yield _gauge(
                "stillframe_memory_limit_bytes", "The memory budget (STILLFRAME_MEMORY_LIMIT).", pool.memory_limit_bytes
            )
            resident = GaugeMetricFamily(
                "stillframe_resident_bytes",
                "Resident memory of each process (decoders: as last reported).",
                labels=["process"],
            )
            resident.add_metric(["api"], pool.api_resident_bytes)
            for slot, value in enumerate(pool.worker_resident_bytes):
                resident.add_metric([f"decoder-{slot}"], value)
            yield resident
            yield _gauge(
                "stillframe_open_asset_bytes", "Estimated bytes the decoders' open assets hold.", pool.open_asset_bytes
            )
        hits = CounterMetricFamily(
            "stillframe_image_cache_lookups", "Encoded-image cache lookups, hit or miss.", labels=["result"]
        )
        hits.add_metric(["hit"], state.image_cache_hits)
        hits.add_metric(["miss"], state.image_cache_misses)
        yield hits
        yield _gauge("stillframe_image_cache_bytes", "Bytes of encoded images in the cache.", state.image_cache_bytes)
        jobs = GaugeMetricFamily("stillframe_jobs", "Jobs in the store, by status.", labels=["status"])
        for status, count in sorted(state.jobs_by_status.items()):
            jobs.add_metric([status], count)
        yield jobs


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def render(state: LiveState, extra: Iterable[Collector] = ()) -> bytes:
    """The exposition text: every recorded metric (summed over processes in multiprocess mode) and
    the live state. ``extra`` collectors (e.g. memory gauges) are added as they are."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Recorded())
    registry.register(LiveCollector(state))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


class _Recorded(Collector):
    """This process's recorded metrics (the default registry), for a scrape registry of its own."""

    def collect(self) -> Iterator[Metric]:
        return iter(REGISTRY.collect())
