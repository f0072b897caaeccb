"""The ffmpeg CLI as the oracle for the time contract.

What the oracle does, per file:

1. **Frame list** (one ffmpeg run, decode only): ``ffmpeg -copyts -noautorotate -i F -map 0:v:0
   -vf showinfo -f null -``. ``showinfo`` prints every frame that leaves the decoder, in
   presentation order, with its ``pts`` (ffmpeg's best-effort timestamp, the one the CLI uses) and
   ``duration`` as integers in the filter input time base, which is the stream time base. The
   container start time is the ``start:`` of ffmpeg's input dump, exact to the microsecond
   (``AVFormatContext.start_time``). A frame's time on the asset timeline is
   ``pts * time_base - start_time``.

   ``-copyts`` keeps the raw stream timestamps (to identify frames exactly). The *origin* (t=0) is
   where the CLI puts it by default: a second, one-frame run without ``-copyts`` shows how far the
   CLI shifts the first frame. That is the container's start time, except in formats with
   discontinuous timestamps (MPEG-TS, MPEG-PS, HLS), where the CLI starts the timeline at the
   streams it uses (an audio track that starts earlier doesn't count): "an MPEG-TS that starts at
   1.48 s has t=0 at its first frame", as the product's time contract says.
2. **Container duration**: ffmpeg's dump prints it only to 10 ms, so the exact microsecond value is
   read with PyAV (the same libavformat field) and checked against the CLI's rounded display.
3. **Expected frame** for a time ``t``, from the contract: negative ``t`` or ``t`` past the end (the
   last frame's pts + duration, or the container duration if later) has no image; otherwise the last
   frame whose time is <= ``t``, or the first frame for ``t`` before it.
4. **Pixels** (a second ffmpeg run, only for the frames needed): ``select`` by frame number, scaled
   down to a comparison size (area filter) and converted to rgb24, raw over a pipe. The selected
   frames' pts are checked against the frame list.

Frame lists are cached in-process and on disk (a temp directory, keyed by file size/mtime and
ffmpeg binary); decoded pixels are cached in-process for the most recent files only.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache, cached_property
from pathlib import Path

import numpy as np

ORACLE_VERSION = 5
MICROSECOND = Fraction(1, 1_000_000)
# The contract's origin is the container start time. ffmpeg keeps it in microseconds, rounded from
# a stream's own time base (ts_h264.ts starts at 132000/90000 s = 1.4666...: ffmpeg says 1.466667),
# so an engine that takes the origin exactly from the stream ticks and one that takes ffmpeg's
# microseconds differ by less than 1 us. Where the origin is not a whole number of the video
# stream's ticks, timestamps are compared with this slack; elsewhere exactly.
ORIGIN_SLACK = Fraction(2, 1_000_000)
# Pixels are compared at no more than this many pixels per frame (area-downscaled on both sides):
# plenty to tell neighbouring frames apart, and it keeps 4K files cheap.
MAX_COMPARE_PIXELS = 160_000
FFMPEG_TIMEOUT_S = 600


class OracleError(RuntimeError):
    """ffmpeg could not open or decode the file (or its output made no sense)."""


@cache
def ffmpeg_exe() -> str:
    """The ffmpeg binary from the imageio-ffmpeg wheel (``STILLFRAME_FFMPEG`` overrides it)."""
    override = os.environ.get("STILLFRAME_FFMPEG")
    if override:
        return override
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def _run(inputs: Sequence[str], outputs: Sequence[str], *, stdout: bool = False) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", *inputs, *outputs],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=FFMPEG_TIMEOUT_S,
        check=False,
    )


def _tail(stderr: bytes, lines: int = 6) -> str:
    text = stderr.decode("utf-8", "replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:])


# --------------------------------------------------------------------------- the frame list


@dataclass(frozen=True)
class OracleFrame:
    index: int  # position in ffmpeg's output order (presentation order)
    pts: int  # ffmpeg's best-effort timestamp, raw stream ticks (-copyts)
    time_base: Fraction
    time: Fraction  # seconds on the asset timeline: pts * time_base - origin
    duration: Fraction  # seconds; 0 where the frame carries none
    width: int
    height: int
    key: bool
    pict_type: str


@dataclass(frozen=True)
class OracleInfo:
    path: Path
    origin: Fraction  # container start time in seconds (microsecond resolution); 0 where none
    container_duration: Fraction | None  # seconds, exact to the microsecond; None where unknown
    frames: tuple[OracleFrame, ...]
    cache_key: str = field(compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def times(self) -> list[Fraction]:
        return [frame.time for frame in self.frames]

    @property
    def time_base(self) -> Fraction:
        return self.frames[0].time_base

    @property
    def last_frame_end(self) -> Fraction:
        last = self.frames[-1]
        return last.time + last.duration

    @property
    def end(self) -> Fraction:
        """The last time that still has an image: the last frame's end, or the container's if later."""
        if self.container_duration is None:
            return self.last_frame_end
        return max(self.last_frame_end, self.container_duration)

    @property
    def slack(self) -> Fraction:
        """How far an engine's times may legitimately differ from ours (see ORIGIN_SLACK)."""
        ticks = self.origin / self.time_base
        return Fraction(0) if ticks.denominator == 1 else ORIGIN_SLACK

    @property
    def sizes(self) -> set[tuple[int, int]]:
        return {(frame.width, frame.height) for frame in self.frames}

    @property
    def monotonic(self) -> bool:
        return all(b > a for a, b in zip(self.times, self.times[1:], strict=False))

    def frame_at(self, t: Fraction) -> int | None:
        """The contract: the index of the frame on screen at ``t``, or None for ``no_image_at_time``."""
        if t < 0 or t > self.end:
            return None
        # Times are non-decreasing in ffmpeg's output for every file we know; where several frames
        # share a time (an IVF with every pts 0), the last of them is the one "on screen".
        return max(bisect.bisect_right(self.times, t) - 1, 0)

    def outcomes_near(self, t: Fraction, slack: Fraction | None = None) -> set[int | None]:
        """Every contract outcome for a time within ``slack`` of ``t`` (just ``{frame_at(t)}`` at 0)."""
        slack = self.slack if slack is None else slack
        lo, hi = t - slack, t + slack
        outcomes: set[int | None] = set()
        if lo < 0 or hi > self.end:
            outcomes.add(None)
        lo, hi = max(lo, Fraction(0)), min(hi, self.end)
        if lo <= hi:
            first, last = self.frame_at(lo), self.frame_at(hi)
            assert first is not None and last is not None
            outcomes.update(range(first, last + 1))
        return outcomes

    def describe(self) -> str:
        first, last = self.frames[0], self.frames[-1]
        durations = sorted({frame.duration for frame in self.frames})
        return (
            f"{self.name}: {len(self.frames)} frames, tb={self.time_base}, origin={self.origin}, "
            f"first={_fmt(first.time)} last={_fmt(last.time)} (+{_fmt(last.duration)}) "
            f"container_duration={_fmt(self.container_duration)} end={_fmt(self.end)} "
            f"slack={_fmt(self.slack)} sizes={sorted(self.sizes)} monotonic={self.monotonic} "
            f"durations={[_fmt(d) for d in durations[:4]]}{'...' if len(durations) > 4 else ''}"
        )


def _fmt(value: Fraction | None) -> str:
    if value is None:
        return "None"
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text if value == Fraction(text) else f"{value} (~{text})"


_DURATION_RE = re.compile(r"^\s*Duration: (N/A|(\d+):(\d\d):(\d\d)\.(\d\d))(?:, start: (-?\d+\.\d+))?", re.M)
_CONFIG_RE = re.compile(r"^\[Parsed_showinfo_\d+ @ (0x[0-9a-f]+)\] config in time_base: (\d+)/(\d+)", re.M)
_FRAME_RE = re.compile(
    r"^\[Parsed_showinfo_\d+ @ (0x[0-9a-f]+)\] n:\s*\d+ pts:\s*(\S+) pts_time:\S+\s+duration:\s*(\S+) "
    r".*? s:(\d+)x(\d+) i:\S+ iskey:([01]) type:(\S)",
    re.M,
)


def _parse_showinfo(stderr: str) -> list[tuple[int, Fraction, int, int, int, bool, str]]:
    """(pts, time_base, duration ticks, width, height, key, type) per frame, in output order."""
    stderr = stderr.replace("\r", "\n")
    events: list[tuple[int, re.Match[str]]] = [(m.start(), m) for m in _CONFIG_RE.finditer(stderr)]
    events += [(m.start(), m) for m in _FRAME_RE.finditer(stderr)]
    events.sort(key=lambda item: item[0])
    time_bases: dict[str, Fraction] = {}
    frames = []
    for _, m in events:
        if m.re is _CONFIG_RE:
            time_bases[m.group(1)] = Fraction(int(m.group(2)), int(m.group(3)))
            continue
        address, pts, duration = m.group(1), m.group(2), m.group(3)
        if address not in time_bases:
            raise OracleError(f"showinfo frame before its filter's config line: {m.group(0)!r}")
        if not re.fullmatch(r"-?\d+", pts):
            raise OracleError(f"frame without a timestamp in ffmpeg's output: {m.group(0)!r}")
        frames.append(
            (
                int(pts),
                time_bases[address],
                int(duration) if re.fullmatch(r"-?\d+", duration) else 0,
                int(m.group(4)),
                int(m.group(5)),
                m.group(6) == "1",
                m.group(7),
            )
        )
    return frames


def _cache_dir() -> Path:
    root = os.environ.get("STILLFRAME_ORACLE_CACHE")
    path = Path(root) if root else Path(tempfile.gettempdir()) / "stillframe-oracle-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cache_key(path: Path) -> str:
    """Changes with the file (and, for a playlist, every file beside it) and with the ffmpeg binary."""
    path = path.resolve()
    parts = [str(ORACLE_VERSION), ffmpeg_exe(), str(path)]
    members = sorted(path.parent.iterdir()) if path.suffix == ".m3u8" else [path]
    for member in members:
        stat = member.stat()
        parts.append(f"{member.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _container_duration_us(path: Path) -> int | None:
    """AVFormatContext.duration in microseconds (the CLI prints it only to 10 ms)."""
    import av

    with av.open(str(path)) as container:
        return None if container.duration is None else int(container.duration)


def _default_origin(path: Path, first_pts: int, time_base: Fraction) -> Fraction:
    """The CLI's default t=0, in the video stream's clock: raw first pts minus the shifted one."""
    proc = _run(
        ["-noautorotate", "-i", str(path), "-map", "0:v:0"],
        ["-vf", "showinfo=checksum=0", "-frames:v", "1", "-f", "null", "-"],
    )
    parsed = _parse_showinfo(proc.stderr.decode("utf-8", "replace"))
    if not parsed or parsed[0][1] != time_base:
        raise OracleError(f"{path.name}: the default-timeline run disagrees with the -copyts run")
    return (first_pts - parsed[0][0]) * time_base


def _probe_uncached(path: Path, key: str) -> OracleInfo:
    proc = _run(
        ["-copyts", "-noautorotate", "-i", str(path), "-map", "0:v:0"],
        ["-vf", "showinfo=checksum=0", "-f", "null", "-"],
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    header = _DURATION_RE.search(stderr)
    parsed = _parse_showinfo(stderr)
    if proc.returncode != 0 or not parsed or header is None:
        raise OracleError(f"ffmpeg decoded no frames of {path.name} (exit {proc.returncode}): {_tail(proc.stderr)}")
    origin = _default_origin(path, parsed[0][0], parsed[0][1])
    duration_us = _container_duration_us(path)
    if header.group(1) == "N/A":
        if duration_us is not None:
            raise OracleError(f"{path.name}: ffmpeg shows no duration but libavformat has {duration_us} us")
    else:
        hours, minutes, seconds, centis = (int(header.group(i)) for i in range(2, 6))
        shown = ((hours * 60 + minutes) * 60 + seconds) * 100 + centis
        # The CLI's dump adds 5000 us and truncates to centiseconds.
        if duration_us is None or (duration_us + 5000) // 10_000 != shown:
            raise OracleError(f"{path.name}: libavformat duration {duration_us} us disagrees with ffmpeg's {shown}0 ms")
    frames = tuple(
        OracleFrame(
            index=i,
            pts=pts,
            time_base=tb,
            time=pts * tb - origin,
            duration=max(duration, 0) * tb,
            width=width,
            height=height,
            key=key,
            pict_type=pict_type,
        )
        for i, (pts, tb, duration, width, height, key, pict_type) in enumerate(parsed)
    )
    return OracleInfo(
        path=path,
        origin=origin,
        container_duration=None if duration_us is None else Fraction(duration_us, 1_000_000),
        frames=frames,
        cache_key=key,
    )


def _to_json(info: OracleInfo) -> dict[str, object]:
    return {
        "origin": str(info.origin),
        "container_duration": None if info.container_duration is None else str(info.container_duration),
        "frames": [
            [f.pts, str(f.time_base), str(f.duration), f.width, f.height, f.key, f.pict_type] for f in info.frames
        ],
    }


def _from_json(path: Path, key: str, data: dict[str, object]) -> OracleInfo:
    origin = Fraction(str(data["origin"]))
    duration = data["container_duration"]
    rows = data["frames"]
    assert isinstance(rows, list)
    frames = tuple(
        OracleFrame(
            index=i,
            pts=int(pts),
            time_base=Fraction(tb),
            time=int(pts) * Fraction(tb) - origin,
            duration=Fraction(dur),
            width=int(w),
            height=int(h),
            key=bool(k),
            pict_type=str(t),
        )
        for i, (pts, tb, dur, w, h, k, t) in enumerate(rows)
    )
    return OracleInfo(
        path=path,
        origin=origin,
        container_duration=None if duration is None else Fraction(str(duration)),
        frames=frames,
        cache_key=key,
    )


_infos: dict[str, OracleInfo | OracleError] = {}
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def probe(path: Path) -> OracleInfo:
    """The oracle's frame list for ``path`` (raises OracleError where ffmpeg cannot decode it)."""
    key = _cache_key(path)
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        if key not in _infos:
            _infos[key] = _probe_cached_on_disk(path, key)
        found = _infos[key]
    if isinstance(found, OracleError):
        raise found
    return found


def _probe_cached_on_disk(path: Path, key: str) -> OracleInfo | OracleError:
    cached = _cache_dir() / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AssertionError):
        data = json.loads(cached.read_text())
        if "error" in data:
            return OracleError(str(data["error"]))
        return _from_json(path, key, data)
    try:
        info = _probe_uncached(path, key)
        payload: dict[str, object] = _to_json(info)
        result: OracleInfo | OracleError = info
    except OracleError as exc:
        payload, result = {"error": str(exc)}, exc
    scratch = cached.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    scratch.write_text(json.dumps(payload))
    os.replace(scratch, cached)
    return result


_prefetcher: ThreadPoolExecutor | None = None


def prefetch(paths: Iterable[Path], workers: int | None = None) -> list[Future[OracleInfo]]:
    """Probe files in background threads (ffmpeg runs outside the GIL); ``probe`` then waits for them."""
    global _prefetcher
    if _prefetcher is None:
        _prefetcher = ThreadPoolExecutor(max_workers=workers or max(1, min(4, os.cpu_count() or 1)))
    futures = [_prefetcher.submit(probe, path) for path in paths]
    for future in futures:  # errors surface in probe(); keep them out of the log here
        future.add_done_callback(lambda f: f.exception())
    return futures


# --------------------------------------------------------------------------- pixels


def compare_size(width: int, height: int, max_pixels: int = MAX_COMPARE_PIXELS) -> tuple[int, int]:
    """The size frames are compared at: the frame's own, area-downscaled to at most ``max_pixels``."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(16, round(width * scale)), max(16, round(height * scale))


def info_compare_size(info: OracleInfo) -> tuple[int, int]:
    first = info.frames[0]
    return compare_size(first.width, first.height)


def _select_expression(indices: Sequence[int]) -> str:
    runs: list[tuple[int, int]] = []
    for index in sorted(set(indices)):
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    terms = [f"eq(n\\,{a})" if a == b else f"between(n\\,{a}\\,{b})" for a, b in runs]
    return "+".join(terms)


_pixels: OrderedDict[tuple[str, int, int], dict[int, np.ndarray]] = OrderedDict()
_PIXEL_FILES_KEPT = 2
_pixels_guard = threading.Lock()


def decode_frames(
    info: OracleInfo, indices: Iterable[int], size: tuple[int, int] | None = None
) -> dict[int, np.ndarray]:
    """rgb24 pixels (height x width x 3, uint8) of the given frames at ``size`` (default: the compare size)."""
    width, height = size or info_compare_size(info)
    wanted = sorted({i for i in indices if 0 <= i < len(info.frames)})
    with _pixels_guard:
        store = _pixels.setdefault((info.cache_key, width, height), {})
        _pixels.move_to_end((info.cache_key, width, height))
        while len(_pixels) > _PIXEL_FILES_KEPT:
            _pixels.popitem(last=False)
        missing = [i for i in wanted if i not in store]
    if missing:
        store.update(_decode_uncached(info, missing, width, height))
    return {i: store[i] for i in wanted}


def _decode_uncached(info: OracleInfo, indices: list[int], width: int, height: int) -> dict[int, np.ndarray]:
    # -reinit_filter 0 keeps one filter graph for the whole stream, so select's frame number n counts
    # every decoded frame even where the resolution changes (the auto-scale handles new sizes).
    chain = f"select='{_select_expression(indices)}',showinfo=checksum=0,scale={width}:{height}:flags=area,format=rgb24"
    proc = _run(
        ["-copyts", "-noautorotate", "-reinit_filter", "0", "-i", str(info.path), "-map", "0:v:0"],
        ["-vf", chain, "-fps_mode", "passthrough", "-f", "rawvideo", "pipe:1"],
        stdout=True,
    )
    frame_bytes = width * height * 3
    got = len(proc.stdout) // frame_bytes
    if proc.returncode != 0 or got != len(indices) or len(proc.stdout) % frame_bytes:
        raise OracleError(
            f"{info.name}: pixel pass gave {len(proc.stdout)} bytes for {len(indices)} frames "
            f"(exit {proc.returncode}): {_tail(proc.stderr)}"
        )
    shown = _parse_showinfo(proc.stderr.decode("utf-8", "replace"))
    pts_seen = [row[0] for row in shown]
    pts_expected = [info.frames[i].pts for i in indices]
    if pts_seen != pts_expected:
        raise OracleError(f"{info.name}: pixel pass selected pts {pts_seen[:8]}..., expected {pts_expected[:8]}...")
    array = np.frombuffer(proc.stdout, dtype=np.uint8).reshape(len(indices), height, width, 3)
    return {index: array[k] for k, index in enumerate(indices)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images of the same shape on a 0-255 scale (inf where identical)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean(np.square(a.astype(np.float32) - b.astype(np.float32))))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# Luma weights of BT.601 and BT.709. Which matrix turns a file's YCbCr into RGB is a rendering
# policy (swscale takes BT.601 for an untagged HD file, a player may take BT.709): on saturated
# test patterns the two RGBs differ by 25 dB. Re-deriving luma with each side's own matrix makes the
# comparison blind to that choice, while a different frame still differs in luma.
_LUMA_WEIGHTS = (
    np.array([0.299, 0.587, 0.114], dtype=np.float32),
    np.array([0.2126, 0.7152, 0.0722], dtype=np.float32),
)


def lumas(rgb: np.ndarray) -> tuple[np.ndarray, ...]:
    """The picture's luma under each candidate matrix (float32, 0-255)."""
    data = rgb.astype(np.float32)
    return tuple(data @ weights for weights in _LUMA_WEIGHTS)


def luma_psnr(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> float:
    """PSNR of two pictures' lumas under the matrix pairing that fits best."""
    return max(psnr(x, y) for x in a for y in b)


def image_to_rgb(data: bytes, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """An encoded image (PNG...) as rgb24 at ``size``, area-resampled; also returns its own size."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        own = image.size
        if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
            raise OracleError(f"unexpected single-channel {image.mode} image")
        rgb = image.convert("RGB")
        if rgb.size != size:
            resample = Image.Resampling.BOX if size[0] <= own[0] else Image.Resampling.BILINEAR
            rgb = rgb.resize(size, resample)
        return np.asarray(rgb, dtype=np.uint8), own


# --------------------------------------------------------------------------- what to ask


@dataclass(frozen=True)
class Request:
    t: Fraction  # the time on the asset timeline the request resolves to
    why: str
    spec: str | None = None  # what the engine is given, where not ``t`` itself (e.g. "50%")


def plan_requests(info: OracleInfo, *, max_frames: int = 40, n_random: int = 8, seed: str = "") -> list[Request]:
    """The times a conformance test asks for, deterministic per file.

    Every distinct frame time (a sample of ``max_frames`` for long files: first, last, keyframes and
    their neighbours first, then seeded random ones), just before each, ``n_random`` random times,
    0, half-way to the first frame, the exact end, just past it and negative times.
    """
    rng = random.Random(f"{seed or info.name}:{len(info.frames)}")
    # "Just before": one tick of the stream or 1 us, whichever is finer, and beyond the origin slack.
    eps = min(info.time_base, MICROSECOND) + 2 * info.slack
    by_time: dict[Fraction, int] = {}
    for frame in info.frames:
        by_time.setdefault(frame.time, frame.index)
    distinct = sorted(by_time.values())
    if len(distinct) > max_frames:
        n = len(info.frames)
        preferred = [0, 1, n - 2, n - 1]
        keys = [f.index for f in info.frames if f.key]
        for key in rng.sample(keys, min(len(keys), max_frames // 4)):
            preferred += [key - 1, key, key + 1]
        chosen: list[int] = []
        for index in preferred:
            if 0 <= index < n and index in by_time.values() and index not in chosen:
                chosen.append(index)
        rest = [i for i in distinct if i not in set(chosen)]
        chosen += rng.sample(rest, max(0, max_frames - len(chosen)))
        distinct = sorted(chosen[:max_frames])
    requests: list[Request] = []
    for index in distinct:
        t = info.frames[index].time
        requests.append(Request(t, f"frame {index} exactly"))
        requests.append(Request(t - eps, f"just before frame {index}"))
    end_us = math.floor(info.end * 1_000_000)
    for k in range(n_random):
        requests.append(Request(Fraction(rng.randint(0, max(end_us, 0)), 1_000_000), f"random #{k}"))
    first = info.frames[0].time
    requests += [
        Request(Fraction(0), "zero"),
        Request(info.end, "the exact end"),
        Request(info.end + eps, "just past the end"),
        Request(info.end + 1, "1 s past the end"),
        Request(-eps, "just before zero"),
        Request(Fraction(-1), "-1 s"),
    ]
    if first > 0:
        requests.append(Request(first / 2, "half-way to the first frame"))
    unique: dict[Fraction, Request] = {}
    for request in requests:
        unique.setdefault(request.t, request)
    return list(unique.values())


def percent_requests(duration: Fraction | None, percents: Sequence[int]) -> list[Request]:
    """Requests like "50%", resolved against ``duration`` (the engine's, or the container's to predict)."""
    if duration is None:
        return []
    return [Request(duration * p / 100, f"{p}% of duration {_fmt(duration)}", f"{p}%") for p in percents]


def needed_frames(info: OracleInfo, requests: Iterable[Request], radius: int = 3) -> set[int]:
    """Frames the pixel check needs: every possible outcome and ``radius`` frames either side."""
    needed: set[int] = set()
    for request in requests:
        for outcome in info.outcomes_near(request.t):
            if outcome is not None:
                needed.update(range(outcome - radius, outcome + radius + 1))
    return {i for i in needed if 0 <= i < len(info.frames)}


# --------------------------------------------------------------------------- judging one answer


@dataclass(frozen=True)
class Answer:
    """What the engine said for one request, reduced to what the oracle checks."""

    t: Fraction
    actual_time: Fraction | None = None
    pts: int | None = None
    time_base: Fraction | None = None
    width: int | None = None
    height: int | None = None
    pixels: np.ndarray | None = None  # rgb24 at the compare size
    error_code: str | None = None
    error_status: int | None = None
    exception: str | None = None  # anything that is not an EngineError


PSNR_FLOOR = 30.0
# Another frame is "the one in the image" only if it beats the expected one by this much: below it,
# decoder/scaler noise between two near-identical neighbours decides (vvc_h266.mp4 frames 10/11).
PSNR_MARGIN = 3.0
# At or above this the image is the expected frame to within rounding, whatever its neighbours.
PSNR_SAME = 50.0


def fit_within(width: int, height: int, box: tuple[int, int] | None) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` picture fitted inside ``box`` (never upscaled)."""
    if box is None:
        return width, height
    scale = min(Fraction(box[0], width), Fraction(box[1], height), Fraction(1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def judge(
    info: OracleInfo,
    request: Request,
    answer: Answer,
    frames: dict[int, np.ndarray],
    *,
    radius: int = 3,
    box: tuple[int, int] | None = None,
    unreliable_pixels: frozenset[int] = frozenset(),
) -> str | None:
    """None where the answer keeps the contract, else a one-line description of the failure.

    ``frames`` are the oracle's pixels (compare size), ``box`` the maximum size the engine was asked
    for, ``unreliable_pixels`` frames whose oracle pixels are known not to be the engine's.
    """
    where = f"{info.name} t={request.t} ({_fmt(request.t)} s, {request.why})"
    outcomes = info.outcomes_near(request.t)
    expected = info.frame_at(request.t)
    expect_text = "no_image_at_time" if expected is None else f"frame {expected} at {_fmt(info.times[expected])}"
    if answer.exception is not None:
        return f"{where}: expected {expect_text}, engine raised {answer.exception}"
    if answer.error_code is not None:
        if None in outcomes and answer.error_code == "no_image_at_time":
            return None
        return f"{where}: expected {expect_text}, engine said {answer.error_code} ({answer.error_status})"
    assert answer.actual_time is not None
    candidates = sorted(o for o in outcomes if o is not None)
    # Exact equality unless the origin is not a whole number of ticks (then <= 2 us, see ORIGIN_SLACK).
    matching = [i for i in candidates if abs(info.times[i] - answer.actual_time) <= info.slack]
    if not matching:
        nearest = min(range(len(info.times)), key=lambda i: abs(info.times[i] - answer.actual_time))
        return (
            f"{where}: expected {expect_text}, engine gave actual_time={answer.actual_time} "
            f"({_fmt(answer.actual_time)}; oracle's nearest is frame {nearest} at {_fmt(info.times[nearest])})"
        )
    index = expected if expected in matching else matching[-1]
    frame = info.frames[index]
    if answer.pts is not None and (answer.pts, answer.time_base) != (frame.pts, frame.time_base):
        return (
            f"{where}: frame {index} has pts {frame.pts} in {frame.time_base}, "
            f"engine says pts {answer.pts} in {answer.time_base}"
        )
    want = fit_within(frame.width, frame.height, box)
    size_ok = (
        answer.width is None
        or answer.height is None
        or max(abs(answer.width - want[0]), abs(answer.height - want[1])) <= 1
    )
    if not size_ok:
        return (
            f"{where}: frame {index} is {frame.width}x{frame.height} (want {want[0]}x{want[1]}), "
            f"engine image is {answer.width}x{answer.height}"
        )
    if answer.pixels is None or index in unreliable_pixels or index not in frames:
        return None
    engine = lumas(answer.pixels)
    window = [i for i in range(index - radius, index + radius + 1) if i in frames]
    oracle_lumas = {i: lumas(frames[i]) for i in window}
    scores = {i: luma_psnr(engine, oracle_lumas[i]) for i in window}
    own = scores[index]
    if own < PSNR_FLOOR:
        best = max(scores, key=lambda i: scores[i])
        return (
            f"{where}: frame {index} matches with luma PSNR {own:.1f} dB < {PSNR_FLOOR} "
            f"(best in ±{radius}: frame {best} {scores[best]:.1f} dB; scores {_scores(scores)})"
        )
    if own >= PSNR_SAME:
        return None
    for i, score in scores.items():
        # A neighbour closer to the image than the expected frame, and not merely a near-copy of it.
        if i != index and score > own + PSNR_MARGIN and psnr(oracle_lumas[i][0], oracle_lumas[index][0]) < score:
            return (
                f"{where}: actual_time says frame {index} ({own:.1f} dB) but the image is frame {i} "
                f"({score:.1f} dB, at {_fmt(info.times[i])}); scores {_scores(scores)}"
            )
    return None


def _scores(scores: dict[int, float]) -> str:
    return ", ".join(f"{i}:{s:.1f}" for i, s in sorted(scores.items()))


# --------------------------------------------------------------------------- self-test


def _corpus_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix not in {".md", ".json", ".md5"}:
            yield path
        elif path.is_dir():
            yield from sorted(path.glob("*.m3u8"))


def main(argv: Sequence[str]) -> int:
    """``python -m tests.oracle [FILES...]``: print what the oracle sees (default: the shared corpus)."""
    from tests.media import MEDIA

    paths = [Path(p) for p in argv] or list(_corpus_files(MEDIA))
    futures = prefetch(paths)
    for path, future in zip(paths, futures, strict=True):
        try:
            info = future.result()
        except OracleError as exc:
            print(f"{path.name}: ORACLE ERROR {exc}")
            continue
        requests = plan_requests(info)
        print(info.describe(), f"requests={len(requests)} pixels={len(needed_frames(info, requests))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
