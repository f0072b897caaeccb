"""Where job result images live (``STILLFRAME_RESULTS_URL``): a local folder (the embedded default,
``STILLFRAME_DATA_DIR``) or an S3 prefix that every API node of a cluster reads.

An image is written once, under a name derived from its job and index (``results/<job>/<index>.<ext>``),
before the row that points at it; it is served streaming, and deleted with its job when it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import obstore

from app.engine.errors import EngineError
from app.net.objectstore import ObjectStorePolicy, store_error, store_for

if TYPE_CHECKING:
    from app.config import Settings

__all__ = ["LocalResultStorage", "ResultStorage", "S3ResultStorage", "result_name", "result_storage"]

RESULTS_DIR = "results"
_CHUNK = 64 * 1024


def result_name(job_id: str, index: int, extension: str) -> str:
    return f"{RESULTS_DIR}/{job_id}/{index}.{extension}"


class ResultStorage(Protocol):
    """Result images by name (see :func:`result_name`)."""

    async def save(self, name: str, data: bytes) -> None:
        """Write the image whole (a reader never sees part of it)."""
        ...

    async def open(self, name: str) -> tuple[int, AsyncIterator[bytes]] | None:
        """(size, the bytes in chunks), or None where the image is gone."""
        ...

    def read_bytes(self, name: str) -> bytes | None:
        """The whole image (blocking), or None where it is gone."""
        ...

    async def signed_url(self, name: str, ttl: float) -> str | None:
        """A URL the client may fetch the image from directly for ``ttl`` seconds; None where the
        storage has none (a local folder)."""
        ...

    async def delete(self, name: str) -> None: ...

    async def delete_job(self, job_id: str) -> None:
        """Remove every image of the job."""
        ...


class LocalResultStorage:
    """Images as files under ``root``, written by rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    async def save(self, name: str, data: bytes) -> None:
        def work() -> None:
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".part")
            partial.write_bytes(data)
            partial.replace(path)

        await asyncio.to_thread(work)

    async def open(self, name: str) -> tuple[int, AsyncIterator[bytes]] | None:
        try:
            file = await asyncio.to_thread(open, self.root / name, "rb")
        except OSError:
            return None
        size = (await asyncio.to_thread(file.seek, 0, 2)) or 0
        file.seek(0)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await asyncio.to_thread(file.read, _CHUNK):
                    yield chunk
            finally:
                file.close()

        return size, chunks()

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except OSError:
            return None

    async def signed_url(self, name: str, ttl: float) -> str | None:
        return None

    async def delete(self, name: str) -> None:
        await asyncio.to_thread((self.root / name).unlink, missing_ok=True)

    async def delete_job(self, job_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root / RESULTS_DIR / job_id, True)


class S3ResultStorage:
    """Images as objects under ``s3://bucket/prefix/`` in the store ``policy`` names (the bucket is
    the operator's, so it needs no place on the sources' allow-list)."""

    def __init__(self, policy: ObjectStorePolicy, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._store = store_for(policy, bucket)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    async def save(self, name: str, data: bytes) -> None:
        try:
            await obstore.put_async(self._store, self._key(name), data)
        except Exception as exc:
            raise _storage_error(exc) from None

    async def open(self, name: str) -> tuple[int, AsyncIterator[bytes]] | None:
        try:
            result = await obstore.get_async(self._store, self._key(name))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise _storage_error(exc) from None

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in result.stream(min_chunk_size=_CHUNK):
                yield bytes(chunk)

        return int(result.meta["size"]), chunks()

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return bytes(obstore.get(self._store, self._key(name)).bytes())
        except Exception:
            return None  # (a webhook then goes without its inlined image, as for a local file gone)

    async def signed_url(self, name: str, ttl: float) -> str | None:
        return await obstore.sign_async(self._store, "GET", self._key(name), timedelta(seconds=ttl))

    async def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await obstore.delete_async(self._store, self._key(name))

    async def delete_job(self, job_id: str) -> None:
        names = [
            meta["path"]
            async for batch in obstore.list(self._store, self._key(f"{RESULTS_DIR}/{job_id}/"))
            for meta in batch
        ]
        if names:
            await obstore.delete_async(self._store, names)


def _storage_error(exc: Exception) -> EngineError:
    err = store_error(exc, "the results store")
    return EngineError("source_unreachable" if err.code == "source_not_found" else err.code, err.detail)


def result_storage(settings: Settings) -> ResultStorage:
    """The storage ``STILLFRAME_RESULTS_URL`` names: ``s3://bucket/prefix``, a folder, or (unset) the data dir."""
    url = settings.results_url
    if url is None:
        return LocalResultStorage(settings.data_dir)
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return S3ResultStorage(settings.object_store_policy(), bucket, prefix)
    return LocalResultStorage(Path(url))
