"""Where asset bytes come from: local files under the media root, guarded HTTP(S), or object storage.

FFmpeg never opens a URL or path itself: it reads through the file-like objects made here.

Accepted source strings (see :func:`resolve_source`):

* ``http://…`` / ``https://…``: fetched through the SSRF guard in :mod:`app.net`.
* ``s3://bucket/key``: an object in a bucket on ``SourcePolicy.objects``' allow-list (ranged GETs);
* a relative path (``clips/a.mp4``), resolved under ``SourcePolicy.media_root``, or under
  ``SourcePolicy.base`` (an ``s3://bucket/prefix/``) when one is set;
* ``file:relative/path`` or ``file:///absolute/path`` (percent-encoded), and bare absolute paths:
  only when they land inside the media root after resolving ``..`` and symlinks.

Anything else with a scheme (``ftp:``, ``data:``, ``concat:``, ``pipe:``…) is refused. A relative path
whose first segment contains ``:`` reads as a scheme; write it as ``./name:with:colons.mp4``.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Protocol, cast
from urllib.parse import quote, unquote_to_bytes, urljoin, urlsplit

from app.engine.errors import EngineError
from app.net.blocks import BlockReader
from app.net.objectstore import ObjectMeta, ObjectRangeReader, ObjectStorePolicy, parse_s3_url
from app.net.policy import FetchPolicy
from app.net.ranged import HttpRangeReader
from app.net.urls import DEFAULT_PORTS, Resolver, check_url_full

__all__ = ["HttpSource", "LocalSource", "S3Source", "Source", "SourcePolicy", "resolve_source"]


@dataclass(frozen=True)
class SourcePolicy:
    """What sources may read: files under ``media_root`` (``None``: no local files at all), URLs as
    ``fetch`` allows, and objects in the buckets ``objects`` allows; with a ``base``, a relative
    source names an object under it instead of a file. Frozen and picklable: sources carry it into decoder processes."""

    fetch: FetchPolicy
    media_root: str | None = None
    objects: ObjectStorePolicy = field(default_factory=ObjectStorePolicy)  # buckets and store for s3://
    base: str | None = None  # "s3://bucket/prefix/": relative sources name objects under it


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


_SCHEME_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_HTTP_SCHEMES: Final = ("http", "https")


def _scheme_of(url: str) -> str | None:
    m = _SCHEME_RE.match(url)
    return m.group(1).lower() if m else None


def _refuse_scheme(scheme: str) -> EngineError:
    return EngineError(
        "source_forbidden",
        f"source scheme '{scheme}:' is not supported; use an http(s) or s3 URL or a path under the media root",
    )


def _check_chars(text: str) -> None:
    if not text:
        raise EngineError("invalid_parameter", "the source is empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise EngineError("invalid_parameter", "the source contains control characters")


# --------------------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------------------


# Paths here are plain strings, not pathlib objects: this runs twice per grab (API and decoder worker),
# and pathlib's parsing was a large part of its cost.


def _media_root(policy: SourcePolicy) -> str:
    """The media root, resolved on every call (a root that is a symlink may be repointed)."""
    if policy.media_root is None:
        raise EngineError("source_forbidden", "local files are disabled on this server (no media root)")
    root = os.path.realpath(policy.media_root)
    if not os.path.isdir(root):
        raise EngineError("source_not_found", "local source not found")
    return root


def _relative_inside(root: str, real: str) -> str | None:
    """``real`` relative to ``root``, whole components only ('' for the root itself), or None when
    ``real`` is not inside ``root``. Both are resolved, absolute paths."""
    if real == root:
        return ""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return real[len(prefix) :] if real.startswith(prefix) else None


class LocalSource:
    """A regular file inside the media root.

    ``path`` is relative to the media root, or absolute; either way it must resolve (``..`` and
    symlinks included) to a regular file inside the root.
    """

    def __init__(self, path: str | os.PathLike[str], policy: SourcePolicy, *, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self._resolver = resolver
        root = _media_root(policy)
        text = os.fspath(path)
        if not text or "\x00" in text:
            raise EngineError("invalid_parameter", "malformed local path")
        candidate = text if os.path.isabs(text) else os.path.join(root, text)
        real = os.path.realpath(candidate)
        relative = _relative_inside(root, real)
        if relative is None:
            raise EngineError("source_forbidden", "the path is outside the media root")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise EngineError("source_not_found", "local source not found") from None
        except PermissionError:
            raise EngineError("source_forbidden", "local source is not readable") from None
        except (OSError, ValueError):
            raise EngineError("source_not_found", "local source not found") from None
        if stat.S_ISDIR(st.st_mode):
            raise EngineError("invalid_parameter", "the source is a directory, not a media file")
        if not stat.S_ISREG(st.st_mode):
            raise EngineError("invalid_parameter", "the source is not a regular file")
        self.path = Path(real)  # absolute, resolved; never shown to clients
        self.relpath = relative.replace(os.sep, "/")
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.identity = f"file:{self.relpath}:{self.size}:{self.mtime_ns}"
        self.display_name = self.relpath

    def __repr__(self) -> str:
        return f"LocalSource({self.relpath!r})"

    def open(self) -> BinaryIO:
        # The file was resolved already; refuse if its last component became a symlink since.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            raise EngineError("source_not_found", "local source not found") from None
        except OSError:
            raise EngineError("source_forbidden", "local source cannot be opened") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise EngineError("invalid_parameter", "the source is not a regular file")
            return cast(BinaryIO, os.fdopen(fd, "rb"))
        except BaseException:
            os.close(fd)
            raise

    def related_source(self, url: str) -> Source:
        """The source ``url`` (from a playlist in this file) refers to, resolved against this file."""
        _check_chars(url)
        scheme = _scheme_of(url)
        if scheme in _HTTP_SCHEMES:
            return HttpSource(url, self.policy.fetch, resolver=self._resolver)
        if scheme is not None and scheme != "file":
            raise _refuse_scheme(scheme)
        base = "file://" + quote(os.fsencode(self.path), safe="/")
        return _local_from_file_url(_join(base, url), self.policy, resolver=self._resolver)

    def open_related(self, url: str) -> BinaryIO:
        return self.related_source(url).open()


def _join(base: str, url: str) -> str:
    """``url`` (from a playlist) resolved against ``base``; a malformed one is the client's error."""
    try:
        return urljoin(base, url)
    except ValueError as exc:  # e.g. "//[x/a.ts": an unclosed IPv6 host
        raise EngineError("invalid_parameter", "malformed URL in the source") from exc


def _local_from_file_url(url: str, policy: SourcePolicy, *, resolver: Resolver | None = None) -> LocalSource:
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. "file://[": an unclosed IPv6 host
        raise EngineError("invalid_parameter", "malformed file: URL") from exc
    if parts.netloc not in ("", "localhost"):
        raise EngineError("source_forbidden", "file: URLs naming a host are not allowed")
    if parts.query:
        raise EngineError("invalid_parameter", "file: URLs cannot carry a query")
    raw = unquote_to_bytes(parts.path)
    if not raw or b"\x00" in raw:
        raise EngineError("invalid_parameter", "malformed file: URL")
    return LocalSource(os.fsdecode(raw), policy, resolver=resolver)


# --------------------------------------------------------------------------------------------------
# HTTP(S)
# --------------------------------------------------------------------------------------------------


class _RemoteSource:
    """A source whose ``identity`` is learnt from the first read (a request): reading it opens a
    reader, which the next :meth:`open` is handed instead of opening another."""

    def __init__(self) -> None:
        self._identity: str | None = None
        self._spare: BlockReader | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        # Picklable for worker processes: the lock and any open reader stay behind.
        state = dict(self.__dict__)
        state["_lock"] = None
        state["_spare"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _new_reader(self) -> BlockReader:
        raise NotImplementedError

    def _learn(self, reader: BlockReader) -> None:
        """Set ``_identity`` (and what else the source tells) from the first reader opened."""
        raise NotImplementedError

    @property
    def identity(self) -> str:
        with self._lock:
            if self._identity is None:
                reader = self._new_reader()
                self._learn(reader)
                self._spare = reader
            assert self._identity is not None
            return self._identity

    @identity.setter
    def identity(self, value: str) -> None:
        with self._lock:
            self._identity = value

    def open(self) -> BinaryIO:
        with self._lock:
            reader, self._spare = self._spare, None
        if reader is None or reader.closed:
            reader = self._new_reader()
            with self._lock:
                if self._identity is None:
                    self._learn(reader)
        return cast(BinaryIO, reader)

    def close(self) -> None:
        """Release a reader opened for ``identity`` and never handed out."""
        with self._lock:
            reader, self._spare = self._spare, None
        if reader is not None:
            reader.close()


class HttpSource(_RemoteSource):
    """A remote asset read with HTTP Range requests through the SSRF guard.

    The URL is checked when the source is made and again (with every redirect hop) on each request.
    ``identity`` is learnt from the first response (ETag, Last-Modified, size).
    """

    def __init__(self, url: str, policy: FetchPolicy, *, resolver: Resolver | None = None) -> None:
        super().__init__()
        checked = check_url_full(url, policy, resolver)
        self.url = checked.url  # normalised
        self.policy = policy
        self._resolver = resolver
        host = f"[{checked.host}]" if ":" in checked.host else checked.host
        port = "" if checked.port == DEFAULT_PORTS[checked.scheme] else f":{checked.port}"
        path = urlsplit(checked.url).path or "/"
        self.display_name = f"{checked.scheme}://{host}{port}{path}"  # no query: it may hold tokens
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.size: int | None = None
        self.final_url: str | None = None

    def __repr__(self) -> str:
        return f"HttpSource({self.display_name!r})"

    def _learn(self, reader: BlockReader) -> None:
        assert isinstance(reader, HttpRangeReader)
        self.etag, self.last_modified, self.size = reader.etag, reader.last_modified, reader.size
        self.final_url = reader.final_url
        size = "" if reader.size is None else str(reader.size)
        self._identity = f"http:{self.url}:{reader.etag or ''}:{reader.last_modified or ''}:{size}"

    def _new_reader(self) -> HttpRangeReader:
        return HttpRangeReader(self.url, self.policy, resolver=self._resolver)

    def related_source(self, url: str) -> HttpSource:
        """The source ``url`` (from a playlist fetched here) refers to: http(s) only, guarded."""
        _check_chars(url)
        scheme = _scheme_of(url)
        if scheme is not None and scheme not in _HTTP_SCHEMES:
            raise _refuse_scheme(scheme)
        return HttpSource(_join(self.final_url or self.url, url), self.policy, resolver=self._resolver)

    def open_related(self, url: str) -> BinaryIO:
        return self.related_source(url).open()


# --------------------------------------------------------------------------------------------------
# Object storage
# --------------------------------------------------------------------------------------------------


class S3Source(_RemoteSource):
    """An object in an S3 (or S3-compatible) store, read with ranged GETs (:mod:`app.net.objectstore`).

    The bucket must be on the policy's allow-list. ``identity`` is the object's ETag and version,
    learnt from the first read.
    """

    def __init__(self, url: str, policy: SourcePolicy) -> None:
        super().__init__()
        self.bucket, self.key = parse_s3_url(url)
        if self.bucket not in policy.objects.buckets:
            raise EngineError("source_forbidden", f"the bucket '{self.bucket}' is not open to this service")
        self.policy = policy
        self.display_name = f"s3://{self.bucket}/{self.key}"
        self.meta: ObjectMeta | None = None

    def __repr__(self) -> str:
        return f"S3Source({self.display_name!r})"

    def _new_reader(self) -> ObjectRangeReader:
        return ObjectRangeReader(self.policy.objects, self.bucket, self.key)

    def _learn(self, reader: BlockReader) -> None:
        assert isinstance(reader, ObjectRangeReader) and reader.meta is not None
        self.meta = meta = reader.meta
        self._identity = f"s3:{self.bucket}/{self.key}:{meta.etag or ''}:{meta.version or ''}:{meta.size}"

    def related_source(self, url: str) -> Source:
        """The source ``url`` (from a playlist in this object) refers to: another object (relative,
        or ``s3://`` on the allow-list) or a guarded http(s) URL."""
        _check_chars(url)
        scheme = _scheme_of(url)
        if scheme in _HTTP_SCHEMES:
            return HttpSource(url, self.policy.fetch)
        if scheme == "s3":
            return S3Source(url, self.policy)
        if scheme is not None:
            raise _refuse_scheme(scheme)
        return S3Source(_object_url(self.display_name, url), self.policy)

    def open_related(self, url: str) -> BinaryIO:
        return self.related_source(url).open()


def _object_url(base: str, relative: str) -> str:
    """``relative`` (a key path, ``..`` allowed) resolved against the object URL ``base`` (a
    "folder" when it ends in ``/``), never above its bucket."""
    bucket, _, base_key = base[len("s3://") :].partition("/")
    path = relative.split("?", 1)[0].split("#", 1)[0]
    parts = [] if path.startswith("/") else base_key.split("/")[:-1]
    for part in path.split("/"):
        if part == "..":
            if not parts:
                raise EngineError("source_forbidden", "the path goes above its bucket")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return f"s3://{bucket}/{'/'.join(parts)}"


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def is_remote(url: str) -> bool:
    """Whether resolving ``url`` goes to the network (DNS, the SSRF checks); local paths only stat."""
    return _scheme_of(url) in _HTTP_SCHEMES


def resolve_source(url: str, policy: SourcePolicy, *, resolver: Resolver | None = None) -> Source:
    """Turn the client's ``url`` parameter into a :class:`Source`, applying every access rule.

    Raises ``EngineError``: ``source_forbidden`` (local files disabled, outside the media root,
    scheme not allowed, SSRF guard), ``source_not_found``, ``invalid_parameter``, or
    ``source_unreachable`` (the host does not resolve).
    """
    _check_chars(url)
    scheme = _scheme_of(url)
    if scheme in _HTTP_SCHEMES:
        return HttpSource(url, policy.fetch, resolver=resolver)
    if scheme == "s3":
        return S3Source(url, policy)
    if scheme == "file":
        _media_root(policy)  # "disabled" beats any other complaint
        return _local_from_file_url(url, policy, resolver=resolver)
    if scheme is not None:
        raise _refuse_scheme(scheme)
    if policy.base is not None:
        return S3Source(_under_base(policy.base, url), policy)
    return LocalSource(url, policy, resolver=resolver)


def _under_base(base: str, path: str) -> str:
    """The object ``path`` names under the source base (a prefix: ``s3://bucket/prefix/``); ``..``
    may not leave the prefix."""
    folder = base if base.endswith("/") else base + "/"
    url = _object_url(folder, path)
    if not url.startswith(folder) or url == folder:
        raise EngineError("source_forbidden", "the path is outside the source base")
    return url
