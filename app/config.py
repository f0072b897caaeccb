"""Service settings, read from the environment (prefix ``STILLFRAME_``)."""

from __future__ import annotations

import ipaddress
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.engine.options import DEFAULT_AVIF_SPEED, DEFAULT_WEBP_METHOD
from app.engine.sources import SourcePolicy
from app.net.objectstore import ObjectStorePolicy
from app.net.policy import FetchPolicy, IPNetwork
from app.pool.memory import default_memory_limit, parse_bytes, plan_memory


def _split_list(value: object) -> object:
    """Accept a comma- or space-separated string for list settings, as people write them in env files."""
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    return value


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path | None = None) -> int | None:
    """CPUs the container's CPU quota allows (rounded up), or None with no quota: cgroup v2
    ``cpu.max`` (``"200000 100000"``: two CPUs; ``"max 100000"``: none), else v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (a quota of -1: none)."""
    root = CGROUP_ROOT if root is None else root
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        if quota.strip() == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else max(1, math.ceil(quota_us / period_us))
    return None


def available_cpus(cgroup_root: Path | None = None) -> int:
    """CPUs this process may run on (its affinity mask), capped by a cgroup CPU quota: a container
    limited to two CPUs on a 64-core host gets two decoders, not 64."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    return max(1, min(count, quota) if quota else count)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STILLFRAME_", env_file=None, extra="ignore")

    media_root: Path | None = Field(
        default=None, description="Directory served for local sources; unset means no local files at all."
    )
    allowed_networks: Annotated[list[IPNetwork], NoDecode] = Field(
        default_factory=list,
        description="CIDR ranges exempt from the SSRF guard (e.g. an internal origin server).",
    )
    allowed_ports: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [80, 443])
    fetch_connect_timeout: float = 5.0
    fetch_read_timeout: float = 10.0
    fetch_total_timeout: float = 60.0
    max_source_bytes: int = Field(default=2 * 1024**3, description="Cap on bytes read from one source.")
    max_redirects: int = 5
    # Object storage (app/net/objectstore.py): credentials from the standard AWS places (AWS_* variables,
    # web identity, instance or container metadata).
    s3_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible store (MinIO, R2, Ceph); unset: AWS S3 itself."
    )
    s3_region: str | None = Field(default=None, description="The store's region; unset: from AWS_REGION.")
    s3_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Buckets s3:// sources may name (comma list); empty: none."
    )
    source_base: str | None = Field(
        default=None, description="`s3://bucket/prefix/`: a relative source names an object under it."
    )
    max_source_pixels: int = Field(default=7680 * 4320, description="Largest video frame (width x height) decoded.")
    max_duration: float = Field(default=24 * 3600, gt=0, description="Longest source accepted, in seconds.")
    max_streams: int = Field(default=64, ge=1, description="Most streams a source may have.")
    max_request_bytes: int = Field(
        default=1024**2, ge=1024, description="Largest request body; past it, 413 before anything is parsed."
    )
    server_timing: bool = Field(
        default=False,
        description="`Server-Timing` on images (open, decode, render, encode, pool; cache). Off by default: whether "
        "a grab had to open the asset or found the image made tells a caller what others fetched.",
    )
    cache_control: str = "public, max-age=86400, immutable"
    max_output_pixels: int = 7680 * 4320
    webp_method: int = Field(
        default=DEFAULT_WEBP_METHOD, ge=0, le=6, description="libwebp effort, 0 (fastest) to 6 (smallest)."
    )
    avif_speed: int = Field(
        default=DEFAULT_AVIF_SPEED, ge=0, le=10, description="libavif speed, 0 (smallest) to 10 (fastest)."
    )

    # The memory budget (app/pool/memory.py): the decoder count, each decoder's resident ceiling and its
    # open assets' bytes, and the image cache are sized from it unless set explicitly.
    memory_limit: int = Field(
        default_factory=default_memory_limit,
        gt=0,
        description="Memory the whole service may take (bytes, or e.g. `1.5GiB`); default: the container's "
        "cgroup limit, else half the machine.",
    )

    # Decoder pool: worker processes, so a crash or a runaway decode costs one worker, not the server.
    workers: int = Field(
        default_factory=lambda: available_cpus(),
        ge=1,
        description="Decoder processes; default: the CPUs this process may use (affinity and cgroup CPU quota).",
    )
    decode_threads: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Decoder and render threads (frame threads; slice threads for HEVC) for a task started "
        "while as many other workers are idle; one otherwise.",
    )
    decode_timeout: float = Field(default=30.0, gt=0, description="Seconds a task may go without producing a frame.")
    queue_limit: int = Field(default=64, ge=1, description="Tasks queued or running; past it the API answers 429.")
    open_assets_per_worker: int = Field(default=8, ge=1, description="Assets each worker keeps open (LRU).")
    open_asset_bytes: int = Field(
        default=0,
        ge=0,
        description="Estimated bytes the assets each worker keeps open may hold (LRU); default: from memory_limit.",
    )
    worker_memory_limit: int = Field(default=4 * 1024**3, description="Address-space cap of a decoder process.")
    worker_recycle_rss: int = Field(
        default=1024**3,
        ge=1,
        description="A decoder process whose resident memory stays above this with no asset open and its free "
        "heap given back hands its slot to a fresh one after its task.",
    )
    worker_max_open_files: int = 256

    # Jobs: many times per request, persisted in SQLite (WAL) with their images beside it.
    data_dir: Path = Field(default=Path("./data"), description="Jobs database and result images.")
    results_url: str | None = Field(
        default=None, description="Where result images go: `s3://bucket/prefix` or a folder; unset: the data dir."
    )
    # (0: results stream through the API; else they redirect (307) to a presigned URL living this long)
    results_redirect: float = Field(default=0, ge=0, description="Seconds a presigned result URL lives; 0: off.")
    max_times_per_job: int = Field(default=1000, ge=1, description="Times one job may ask for.")
    result_ttl: float = Field(default=86400.0, gt=0, description="Seconds a finished job and its images are kept.")
    job_concurrency: int = Field(default=0, ge=0, description="Jobs decoding at once; 0: one per decoder worker.")
    drain_timeout: float = Field(default=10.0, ge=0, description="Seconds SIGTERM waits for running jobs.")
    # Webhooks: Standard Webhooks signatures, at-least-once delivery with backoff.
    webhook_secret: str | None = Field(default=None, description="`whsec_...` signing secret; unset: no callbacks.")
    webhook_timeout: float = Field(default=5.0, gt=0, description="Seconds one delivery attempt may take.")
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0, description="Response bytes read per attempt.")
    webhook_retry_base: float = Field(default=5.0, gt=0, description="First retry delay, doubled per attempt.")
    webhook_retry_max_delay: float = Field(default=3600.0, gt=0, description="Longest delay between attempts.")
    webhook_retry_window: float = Field(default=86400.0, gt=0, description="Seconds deliveries are retried for.")
    webhook_concurrency: int = Field(default=4, ge=1, description="Deliveries in flight at once.")
    image_cache_bytes: int = Field(default=64 * 1024**2, ge=0, description="Encoded images kept in memory.")

    # Frontend endpoints: storyboards and animated previews, bounded in size and CPU.
    storyboard_max_tiles: int = Field(default=400, ge=1, le=5000, description="Tiles in one storyboard.")
    storyboard_max_sheet_pixels: int = Field(default=16 * 1024**2, ge=1, description="Pixels of one sprite sheet.")
    animated_max_seconds: float = Field(default=10.0, gt=0, description="Longest animated preview, in seconds.")
    animated_max_fps: int = Field(default=30, ge=1, le=60, description="Highest animated preview frame rate.")
    animated_max_side: int = Field(default=640, ge=16, le=4096, description="Largest width or height of a preview.")

    # Access control (app/api/auth.py): API keys, signed URLs, CORS, rate limiting.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Accepted `Authorization: Bearer` keys (comma list); none: the API is open."
    )
    url_signing_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict, description="`kid:secret,...` keys for signed `GET /v1/frame` URLs."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (`*` for any); none: CORS off."
    )
    rate_limit: str | None = Field(default=None, description="Per caller, e.g. `100/minute`; unset: no limit.")
    auth_failure_limit: str | None = Field(
        default="10/minute",
        description="Failed authentications (wrong key, bad signature) per client address; past it, every "
        "authenticated request from that address is 429 until the bucket refills. Empty: no limit.",
    )

    # Operations: metrics, logs, running behind a proxy.
    metrics_token: SecretStr | None = Field(
        default=None, description="Bearer token `GET /metrics` requires; unset: /metrics is open like /readyz."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="Server logs (one line per request included): JSON objects or plain text."
    )
    tracing_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces endpoint (e.g. `http://collector:4318/v1/traces`); unset: no tracing. "
        "Needs the `tracing` extra.",
    )
    tracing_service_name: str = Field(default="stillframe", description="`service.name` of the spans.")
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="Proxy addresses (comma list, CIDRs allowed, `*` for any) whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed (uvicorn's proxy headers); unset: none, the peer is the client.",
    )

    def fetch_policy(self) -> FetchPolicy:
        """What guarded fetches (sources, webhooks) may do, from these settings."""
        return FetchPolicy(
            allowed_networks=tuple(self.allowed_networks),
            allowed_ports=frozenset(self.allowed_ports),
            connect_timeout=self.fetch_connect_timeout,
            read_timeout=self.fetch_read_timeout,
            total_timeout=self.fetch_total_timeout,
            max_bytes=self.max_source_bytes,
            max_redirects=self.max_redirects,
        )

    def source_policy(self) -> SourcePolicy:
        """What sources may read, from these settings: the media root and the fetch policy."""
        media_root = None if self.media_root is None else os.fspath(self.media_root)
        return SourcePolicy(
            fetch=self.fetch_policy(), media_root=media_root, objects=self.object_store_policy(), base=self.source_base
        )

    def object_store_policy(self) -> ObjectStorePolicy:
        """The store s3:// sources are read from and the buckets they may name, from these settings."""
        return ObjectStorePolicy(
            buckets=frozenset(self.s3_buckets),
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            connect_timeout=self.fetch_connect_timeout,
            read_timeout=self.fetch_read_timeout,
            max_bytes=self.max_source_bytes,
        )

    @field_validator("memory_limit", "open_asset_bytes", "worker_recycle_rss", "image_cache_bytes", mode="before")
    @classmethod
    def _parse_size(cls, value: object) -> object:
        return parse_bytes(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _apply_memory_budget(self) -> Settings:
        """What was not set explicitly is sized from ``memory_limit``."""
        chosen = self.model_fields_set
        plan = plan_memory(
            self.memory_limit,
            workers=self.workers,
            image_cache_bytes=self.image_cache_bytes,
            queue_limit=self.queue_limit,
            fit_workers="workers" not in chosen,
            fit_cache="image_cache_bytes" not in chosen,
        )
        self.workers = plan.workers
        self.image_cache_bytes = plan.image_cache_bytes
        # (a decoder's pages can never pass half its address-space cap: a larger share would go unused)
        ceiling = self.worker_memory_limit // 2
        if "worker_recycle_rss" not in chosen:
            self.worker_recycle_rss = min(plan.worker_bytes, ceiling)
        if "open_asset_bytes" not in chosen:
            self.open_asset_bytes = min(plan.asset_bytes, ceiling)
        return self

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        value = _split_list(value)
        if isinstance(value, list):
            return [ipaddress.ip_network(str(v), strict=False) for v in value]
        return value

    @field_validator("allowed_ports", mode="before")
    @classmethod
    def _parse_ports(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("source_base")
    @classmethod
    def _check_source_base(cls, value: str | None) -> str | None:
        if value is not None:
            bucket, _, prefix = value.removeprefix("s3://").partition("/")
            if not value.startswith("s3://") or not bucket:
                raise ValueError("source_base: expected s3://bucket/ or s3://bucket/prefix/")
            value = f"s3://{bucket}/{prefix.strip('/')}/" if prefix.strip("/") else f"s3://{bucket}/"
        return value

    @field_validator("api_keys", "cors_origins", "s3_buckets", mode="before")
    @classmethod
    def _parse_list(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("url_signing_keys", mode="before")
    @classmethod
    def _parse_signing_keys(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        keys: dict[str, str] = {}
        for item in value.replace(",", " ").split():
            kid, sep, secret = item.partition(":")
            if not sep or not kid or not secret:
                raise ValueError("url_signing_keys: expected kid:secret pairs, comma-separated")
            keys[kid] = secret
        return keys

    @field_validator("rate_limit", "auth_failure_limit", mode="before")
    @classmethod
    def _check_rate_limit(cls, value: object) -> object:
        if value in ("", None):
            return None
        from app.api.ratelimit import parse_rate  # the one parser of the syntax

        parse_rate(str(value))
        return value

    @field_validator(
        "media_root",
        "webhook_secret",
        "s3_endpoint_url",
        "s3_region",
        "source_base",
        "results_url",
        "metrics_token",
        "forwarded_allow_ips",
        "tracing_endpoint",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


@lru_cache
def get_settings() -> Settings:
    return Settings()
