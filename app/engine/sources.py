"""Where asset bytes come from: local files under the media root, or guarded HTTP(S).

FFmpeg never opens a URL or path itself: it reads through the file-like objects made here.
(Placeholder interface; implementation lands with the sources work.)
"""

from __future__ import annotations

from typing import BinaryIO, Protocol


class Source(Protocol):
    """An asset the engine can read. ``identity`` changes whenever the bytes may have changed."""

    identity: str  # e.g. "file:<relpath>:<size>:<mtime_ns>" or "http:<url>:<etag or last-modified>"
    display_name: str  # safe to show a client: never an absolute path or an internal address

    def open(self) -> BinaryIO:
        """A readable, seekable binary file object over the asset's bytes."""
        ...

    def open_related(self, url: str) -> BinaryIO:
        """Open a resource the container refers to (an HLS playlist or segment), resolved relative to
        this source and passed through the same rules (media root confinement or the SSRF guard)."""
        ...
