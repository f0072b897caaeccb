"""Object storage (S3 and S3-compatible stores) through obstore: the policy, ``s3://`` URLs, the
store handles, and a ranged reader that fetches blocks of an object as the HTTP reader does.

The store's endpoint is operator-given (``ObjectStorePolicy.endpoint_url``) and trusted as configured;
what a caller chooses is only the bucket, which must be on the allow-list, and the key. Credentials
come from where the AWS SDKs look (``AWS_*`` variables, web identity, the container or instance
metadata service): obstore reads them itself.

An object's identity is its ETag and version: every read after the first asks for that ETag
(``If-Match``) and that version, so a rewritten object fails the read instead of mixing two objects'
bytes, and the next open sees the new identity.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import obstore
from obstore.exceptions import NotFoundError, PermissionDeniedError, PreconditionError, UnauthenticatedError
from obstore.store import S3Store

from app.engine.errors import EngineError
from app.net.blocks import DEFAULT_BLOCK_SIZE, BlockReader

if TYPE_CHECKING:
    from obstore import GetOptions

__all__ = ["ObjectMeta", "ObjectRangeReader", "ObjectStorePolicy", "parse_s3_url", "store_error", "store_for"]

# S3's bucket naming rules (virtual-hosted style puts the name in a host name).
_BUCKET_RE: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


@dataclass(frozen=True)
class ObjectStorePolicy:
    """Where objects may be read from: the store (``endpoint_url``; ``None``: AWS itself), the buckets
    callers may name, and the limits of one read. Frozen and picklable: sources carry it into
    decoder processes."""

    buckets: frozenset[str] = frozenset()  # empty: no bucket may be read
    endpoint_url: str | None = None
    region: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    max_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class ObjectMeta:
    """What the store says of an object: its size, ETag and version (``None`` where unversioned)."""

    size: int
    etag: str | None
    version: str | None


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` as (bucket, key); the key is taken as written (S3 keys are not URL paths)."""
    if not url[:5].lower() == "s3://":
        raise EngineError("invalid_parameter", "not an s3:// URL")
    bucket, _, key = url[5:].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise EngineError("invalid_parameter", "malformed bucket name in the s3:// URL")
    if not key or key.endswith("/"):
        raise EngineError("invalid_parameter", "the s3:// URL names no object")
    return bucket, key


_stores: dict[tuple[ObjectStorePolicy, str], S3Store] = {}
_stores_lock = threading.Lock()


def store_for(policy: ObjectStorePolicy, bucket: str) -> S3Store:
    """The store handle for ``bucket`` (one per process and bucket: it keeps its connections)."""
    key = (policy, bucket)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            config: dict[str, Any] = {}
            if policy.endpoint_url:
                config["endpoint"] = policy.endpoint_url
            if policy.region:
                config["region"] = policy.region
            timeout = timedelta(seconds=policy.read_timeout)
            store = S3Store(
                bucket,
                config=config,  # type: ignore[arg-type]
                client_options={
                    "allow_http": bool(policy.endpoint_url and policy.endpoint_url.startswith("http://")),
                    "connect_timeout": timedelta(seconds=policy.connect_timeout),
                    "timeout": timeout,
                },
                # A store that went away fails the grab quickly (502) rather than after minutes of retries.
                retry_config={
                    "max_retries": 2,
                    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1)},
                    "retry_timeout": timeout,
                },
            )
            _stores[key] = store
        return store


def store_error(exc: Exception, name: str) -> EngineError:
    """The problem for a failed store call about object ``name`` (the store's own message, which
    names internal addresses, stays out of it)."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, NotFoundError | FileNotFoundError):
        return EngineError("source_not_found", f"no object '{name}' in the store")
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return EngineError("source_forbidden", f"the store refused access to '{name}'")
    if isinstance(exc, PreconditionError):
        return EngineError("source_unreachable", f"the object '{name}' changed while reading")
    return EngineError("source_unreachable", f"the object store could not be reached for '{name}'")


class ObjectRangeReader(BlockReader):
    """A read-only, seekable file over one object, read with ranged GETs in blocks (see
    :class:`~app.net.blocks.BlockReader`). The first GET (the first block) learns the object's size,
    ETag and version; later ones are pinned to them. ``meta`` may be given when already known."""

    def __init__(
        self,
        policy: ObjectStorePolicy,
        bucket: str,
        key: str,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        cache_blocks: int = 32,
        max_readahead_blocks: int = 8,
    ) -> None:
        super().__init__(block_size=block_size, cache_blocks=cache_blocks, max_readahead_blocks=max_readahead_blocks)
        self.policy = policy
        self.bucket = bucket
        self.key = key
        self.name = f"s3://{bucket}/{key}"
        self.meta: ObjectMeta | None = None
        self._handle = store_for(policy, bucket)
        self._open_first()

    def _open_first(self) -> None:
        try:
            result = obstore.get(self._handle, self.key, options={"range": (0, self.block_size)})
            data = self._take(result.bytes())
        except Exception as exc:
            err = store_error(exc, self.name)
            if err.code != "source_unreachable":
                raise err from None
            self._open_empty(err)  # a zero-byte object has no range to ask for
            return
        meta = result.meta
        self.meta = ObjectMeta(int(meta["size"]), meta["e_tag"], meta["version"])
        self.size = self.meta.size
        self._store(0, data)
        self._next_sequential_block = -(-len(data) // self.block_size)

    def _open_empty(self, err: EngineError) -> None:
        try:
            meta = obstore.head(self._handle, self.key)
        except Exception as exc:
            raise store_error(exc, self.name) from None
        self.requests_made += 1
        if int(meta["size"]) != 0:
            raise err
        self.meta = ObjectMeta(0, meta["e_tag"], meta["version"])
        self.size = 0

    def _take(self, data: Any) -> bytes:
        self.requests_made += 1
        chunk = bytes(data)
        self.bytes_fetched += len(chunk)
        if self.bytes_fetched > self.policy.max_bytes:
            raise EngineError("source_too_large", f"the object '{self.name}' exceeds the size limit")
        return chunk

    def _fetch_blocks(self, first_block: int, last_block: int) -> dict[int, bytes]:
        assert self.meta is not None and self.size is not None
        start = first_block * self.block_size
        end = min((last_block + 1) * self.block_size, self.size)
        if end <= start:
            return {}
        if self.bytes_fetched + (end - start) > self.policy.max_bytes:
            raise EngineError("source_too_large", f"the object '{self.name}' exceeds the size limit")
        options: GetOptions = {"range": (start, end)}
        if self.meta.etag:
            options["if_match"] = self.meta.etag
        if self.meta.version:
            options["version"] = self.meta.version
        try:
            data = self._take(obstore.get(self._handle, self.key, options=options).bytes())
        except Exception as exc:
            raise store_error(exc, self.name) from None
        if len(data) != end - start:
            raise EngineError("source_unreachable", f"the object '{self.name}' changed while reading")
        return self._store(start, data)
