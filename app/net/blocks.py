"""The block reader: a read-only, seekable file over remote bytes fetched in aligned blocks.

The HTTP ranged reader (:mod:`app.net.ranged`) and the object-store reader (:mod:`app.net.objectstore`)
differ only in how a run of blocks is fetched; the cache, the readahead and the file API are here.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import Final

__all__ = ["DEFAULT_BLOCK_SIZE", "BlockReader"]

DEFAULT_BLOCK_SIZE: Final = 256 * 1024


class BlockReader(io.RawIOBase):
    """Reads served from block-aligned fetches (``block_size``) kept in a small LRU, so a demuxer's many
    small reads become few requests; sequential reading grows a readahead window up to
    ``max_readahead_blocks``. ``requests_made`` and ``bytes_fetched`` count the traffic.

    A subclass fetches with :meth:`_fetch_blocks` (storing what it got with :meth:`_store`) and sets
    ``size`` once known.
    """

    def __init__(self, *, block_size: int, cache_blocks: int, max_readahead_blocks: int) -> None:
        super().__init__()
        if block_size <= 0 or cache_blocks <= 0 or max_readahead_blocks <= 0:
            raise ValueError("block_size, cache_blocks and max_readahead_blocks must be positive")
        self.block_size = block_size
        self.cache_blocks = cache_blocks
        self.max_readahead_blocks = max_readahead_blocks
        self.requests_made = 0
        self.bytes_fetched = 0
        self.size: int | None = None
        self._pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._next_sequential_block = -1
        self._streak = 0

    def _fetch_blocks(self, first_block: int, last_block: int) -> dict[int, bytes]:
        """Fetch blocks ``first_block..last_block`` (fewer at the end of the object), cache them, and
        return them by index."""
        raise NotImplementedError

    def _known_size(self) -> int:
        """The object's size, for reads to the end and seeks from it."""
        if self.size is None:
            raise OSError("size of the remote file is unknown")
        return self.size

    def _read_at(self, start: int, n: int) -> bytes:
        return self._read_ranged(start, n)

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
            pos = self._known_size() + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError("negative seek position")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()  # type: ignore[attr-defined]
        if size is None or size < 0:
            size = max(0, self._known_size() - self._pos)
        if size == 0:
            return b""
        data = self._read_at(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)
