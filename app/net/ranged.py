"""The ranged reader: a seekable file object over a remote URL, read with HTTP Range requests.

FFmpeg reads remote media through it (see :mod:`app.engine.sources`): every request goes through a
:class:`~app.net.client.GuardedClient`, so each one is checked and pinned, within the fetch policy.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator
from typing import IO, Final

from app.engine.errors import EngineError
from app.net.blocks import DEFAULT_BLOCK_SIZE, BlockReader
from app.net.client import FetchResponse, GuardedClient
from app.net.policy import FetchPolicy
from app.net.urls import Resolver, display_host

__all__ = ["DEFAULT_BLOCK_SIZE", "HttpRangeReader"]


_CONTENT_RANGE_RE: Final = re.compile(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*\Z", re.IGNORECASE)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """(first, last, total) from a Content-Range header; None for parts absent or ``*``."""
    if value is None:
        return None, None, None
    m = _CONTENT_RANGE_RE.match(value)
    if not m:
        return None, None, None
    first = int(m.group(1)) if m.group(1) is not None else None
    last = int(m.group(2)) if m.group(2) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return first, last, total


class HttpRangeReader(BlockReader):
    """A read-only, seekable binary file over a remote URL, fetched with HTTP Range requests.

    Reads are served from block-aligned fetches (``block_size``, default 256 KiB) kept in a small LRU,
    so a demuxer's many small reads become few requests; sequential reading grows a readahead window
    up to ``max_readahead_blocks``. ``requests_made`` and ``bytes_fetched`` count the traffic.

    If the server ignores ``Range`` (answers 200 with the whole body) the body is spooled to a
    temporary file as far as reads need it, within ``policy.max_bytes``.
    """

    def __init__(
        self,
        url: str,
        policy: FetchPolicy,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        cache_blocks: int = 32,
        max_readahead_blocks: int = 8,
        client: GuardedClient | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        super().__init__(block_size=block_size, cache_blocks=cache_blocks, max_readahead_blocks=max_readahead_blocks)
        self.url = url
        self.policy = policy
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.content_type: str | None = None
        self.final_url = url
        self.supports_ranges = True
        self._host = display_host(url)
        self._owns_client = client is None
        self._client = client if client is not None else GuardedClient(policy, resolver=resolver)
        # fallback (no range support)
        self._spool: IO[bytes] | None = None
        self._spooled = 0
        self._stream: FetchResponse | None = None
        self._chunks: Iterator[bytes] | None = None
        self._stream_done = False
        self._stream_error: EngineError | None = None
        self._network_time = 0.0
        try:
            self._open_first()
        except BaseException:
            self._release()
            raise

    # -- setup ---------------------------------------------------------------------------------------

    def _open_first(self) -> None:
        first_len = self.block_size
        response = self._request_range(self.url, 0, first_len - 1)
        self.final_url = response.url
        self.etag = response.headers.get("etag")
        self.last_modified = response.headers.get("last-modified")
        self.content_type = response.headers.get("content-type")
        if response.status_code == 206:
            try:
                data, total = self._consume_range(response, 0, first_len - 1)
            finally:
                response.close()
            self.size = total
            self._store(0, data)
            self._next_sequential_block = -(-len(data) // self.block_size)
        elif response.status_code == 416:
            response.close()
            _, _, total = _parse_content_range(response.headers.get("content-range"))
            if total != 0:
                raise EngineError("source_unreachable", f"'{self._host}' rejected a range request")
            self.size = 0
        elif response.status_code == 200:
            self.supports_ranges = False
            self._stream = response
            self._chunks = response.iter_chunks(self.policy.max_bytes)
            response.deadline = None  # we account network time ourselves: decoding may be slow
            self._spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 (closed in close())
            if not response.encoded:
                self.size = response.content_length
            if self.size == 0:
                self._finish_stream()
        else:
            response.close()
            raise EngineError(
                "source_unreachable", f"'{self._host}' answered HTTP {response.status_code} to a range request"
            )

    def _request_range(self, url: str, first: int, last: int) -> FetchResponse:
        """GET ``bytes=first-last`` of ``url``; a 416 answer (nothing there) is returned too."""
        response = self._client.open(
            url, headers={"Range": f"bytes={first}-{last}"}, accept_statuses=(416,), max_bytes=self.policy.max_bytes
        )
        self.requests_made += 1
        return response

    def _consume_range(self, response: FetchResponse, first: int, last: int) -> tuple[bytes, int | None]:
        """Validate a 206 answer for ``bytes=first-last`` and read its body. Returns (data, total)."""
        if response.encoded:
            raise EngineError("source_unreachable", f"'{self._host}' sent an encoded range response")
        got_first, got_last, total = _parse_content_range(response.headers.get("content-range"))
        if got_first != first or got_last is None or got_last < first or got_last > last:
            raise EngineError("source_unreachable", f"'{self._host}' sent an unexpected byte range")
        if total is not None and got_last >= total:
            raise EngineError("source_unreachable", f"'{self._host}' sent an unexpected byte range")
        expected = got_last - first + 1
        if self.bytes_fetched + expected > self.policy.max_bytes:
            raise EngineError("source_too_large", f"the source at '{self._host}' exceeds the size limit")
        parts: list[bytes] = []
        got = 0
        for chunk in response.iter_chunks(expected, decoded=False):
            parts.append(chunk)
            got += len(chunk)
        if got != expected:
            raise EngineError("source_unreachable", f"transfer from '{self._host}' was cut short")
        self.bytes_fetched += got
        return b"".join(parts), total

    def _fetch_blocks(self, first_block: int, last_block: int) -> dict[int, bytes]:
        bs = self.block_size
        start = first_block * bs
        end = (last_block + 1) * bs - 1
        if self.size is not None:
            end = min(end, self.size - 1)
        if end < start:
            return {}
        if self.bytes_fetched + (end - start + 1) > self.policy.max_bytes:
            raise EngineError("source_too_large", f"the source at '{self._host}' exceeds the size limit")
        response = self._request_range(self.final_url, start, end)
        try:
            if response.status_code == 416:
                _, _, total = _parse_content_range(response.headers.get("content-range"))
                if total is not None and (self.size is None or total == self.size) and start >= total:
                    self.size = total
                    return {}
                raise EngineError("source_unreachable", f"the source at '{self._host}' changed while reading")
            if response.status_code != 206:
                raise EngineError("source_unreachable", f"the source at '{self._host}' changed while reading")
            etag = response.headers.get("etag")
            if self.etag is not None and etag is not None and etag != self.etag:
                raise EngineError("source_unreachable", f"the source at '{self._host}' changed while reading")
            data, total = self._consume_range(response, start, end)
        finally:
            response.close()
        if total is not None and self.size is not None and total != self.size:
            raise EngineError("source_unreachable", f"the source at '{self._host}' changed while reading")
        if self.size is None and total is not None:
            self.size = total
        return self._store(start, data)

    # -- fallback: sequential spool ------------------------------------------------------------------

    def _finish_stream(self) -> None:
        self._stream_done = True
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._chunks = None
        if self.size is None or self.size != self._spooled:
            if self.size is not None and self._spooled < self.size:
                raise EngineError("source_unreachable", f"transfer from '{self._host}' was cut short")
            self.size = self._spooled

    def _fill(self, upto: int | None) -> None:
        """Spool the body until at least ``upto`` bytes are held (``None``: to the end)."""
        assert self._spool is not None
        if self._stream_error is not None:
            raise self._stream_error  # a failed stream stays failed: never pass a truncated body as EOF
        if self._stream_done:
            return
        started = time.monotonic()
        try:
            while upto is None or self._spooled < upto:
                assert self._chunks is not None
                if self._network_time + (time.monotonic() - started) > self.policy.total_timeout:
                    raise EngineError("source_unreachable", f"timed out reading from '{self._host}'")
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._finish_stream()
                    return
                self._spool.seek(self._spooled)
                self._spool.write(chunk)
                self._spooled += len(chunk)
                self.bytes_fetched += len(chunk)
        except EngineError as exc:
            self._stream_error = exc
            if self._stream is not None:
                self._stream.close()
            raise
        finally:
            self._network_time += time.monotonic() - started

    def _read_spooled(self, start: int, n: int) -> bytes:
        assert self._spool is not None
        self._fill(start + n)
        end = min(start + n, self._spooled)
        if end <= start:
            return b""
        self._spool.seek(start)
        return self._spool.read(end - start)

    def _known_size(self) -> int:
        if self.size is None and self._spool is not None:
            self._fill(None)
        return super()._known_size()

    def _read_at(self, start: int, n: int) -> bytes:
        return self._read_ranged(start, n) if self._spool is None else self._read_spooled(start, n)

    def _release(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._blocks.clear()
        if self._owns_client:
            self._client.close()

    def close(self) -> None:
        if not self.closed:
            try:
                self._release()
            finally:
                super().close()
