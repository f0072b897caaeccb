"""The ranged reader: a seekable file object over a remote URL, read with HTTP Range requests.

FFmpeg reads remote media through it (see :mod:`app.engine.sources`): every request goes through a
:class:`~app.net.client.GuardedClient`, so each one is checked and pinned, within the fetch policy.
"""

from __future__ import annotations

import io
import re
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import IO, Final

from app.engine.errors import EngineError
from app.net.client import FetchResponse, GuardedClient
from app.net.policy import FetchPolicy
from app.net.urls import Resolver, display_host

__all__ = ["DEFAULT_BLOCK_SIZE", "HttpRangeReader"]

DEFAULT_BLOCK_SIZE: Final = 256 * 1024

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


class HttpRangeReader(io.RawIOBase):
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
        super().__init__()
        if block_size <= 0 or cache_blocks <= 0 or max_readahead_blocks <= 0:
            raise ValueError("block_size, cache_blocks and max_readahead_blocks must be positive")
        self.url = url
        self.policy = policy
        self.block_size = block_size
        self.cache_blocks = cache_blocks
        self.max_readahead_blocks = max_readahead_blocks
        self.requests_made = 0
        self.bytes_fetched = 0
        self.size: int | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.content_type: str | None = None
        self.final_url = url
        self.supports_ranges = True
        self._host = display_host(url)
        self._owns_client = client is None
        self._client = client if client is not None else GuardedClient(policy, resolver=resolver)
        self._pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._next_sequential_block = -1
        self._streak = 0
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

    # -- block cache ---------------------------------------------------------------------------------

    def _store(self, start: int, data: bytes) -> dict[int, bytes]:
        """Split ``data`` (starting at block-aligned ``start``) into blocks and cache them."""
        bs = self.block_size
        out: dict[int, bytes] = {}
        for off in range(0, len(data), bs):
            idx = (start + off) // bs
            block = data[off : off + bs]
            out[idx] = block
            self._blocks[idx] = block
            self._blocks.move_to_end(idx)
        while len(self._blocks) > self.cache_blocks:
            self._blocks.popitem(last=False)
        return out

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

    def _read_ranged(self, start: int, n: int) -> bytes:
        if self.size is not None:
            n = min(n, self.size - start)
        if n <= 0:
            return b""
        bs = self.block_size
        first, last = start // bs, (start + n - 1) // bs
        have: dict[int, bytes] = {}
        idx = first
        while idx <= last:
            cached = self._blocks.get(idx)
            if cached is not None:
                self._blocks.move_to_end(idx)
                have[idx] = cached
                idx += 1
                continue
            run_end = idx
            while run_end + 1 <= last and (run_end + 1) not in self._blocks:
                run_end += 1
            # Readahead: grow the window while the reader keeps going forward block after block.
            if idx == self._next_sequential_block:
                self._streak = min(self._streak + 1, 16)
            else:
                self._streak = 0
            extra = min(self.max_readahead_blocks, 2**self._streak) - (run_end - idx + 1)
            fetch_end = run_end
            while extra > 0 and (fetch_end + 1) not in self._blocks:
                if self.size is not None and (fetch_end + 1) * bs >= self.size:
                    break
                fetch_end += 1
                extra -= 1
            got = self._fetch_blocks(idx, fetch_end)
            self._next_sequential_block = fetch_end + 1
            for i in range(idx, run_end + 1):
                if i not in got:
                    break  # end of file
                have[i] = got[i]
            idx = run_end + 1
        pieces: list[bytes] = []
        pos = start
        remaining = n
        while remaining > 0:
            block = have.get(pos // bs)
            piece = b"" if block is None else block[pos % bs : pos % bs + remaining]
            if not piece:
                break  # end of file
            pieces.append(piece)
            pos += len(piece)
            remaining -= len(piece)
        return b"".join(pieces)

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

    # -- file API ------------------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            if self.size is None and self._spool is not None:
                self._fill(None)
            if self.size is None:
                raise OSError("size of the remote file is unknown")
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError("negative seek position")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()  # type: ignore[attr-defined]
        if size is None or size < 0:
            if self.size is None and self._spool is not None:
                self._fill(None)
            if self.size is None:
                raise OSError("size of the remote file is unknown")
            size = max(0, self.size - self._pos)
        if size == 0:
            return b""
        ranged = self._spool is None
        data = self._read_ranged(self._pos, size) if ranged else self._read_spooled(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

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
