"""Shared media helpers: where the real corpus lives, and synthetic clips made with the ffmpeg CLI."""

from __future__ import annotations

import random
import subprocess
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from tests.oracle import (
    Answer,
    OracleInfo,
    Request,
    decode_frames,
    ffmpeg_exe,
    image_to_rgb,
    info_compare_size,
    judge,
    needed_frames,
    percent_requests,
    plan_requests,
)

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"

# Files in the corpus no decoder can turn into a single frame (MANIFEST.md: open fails, no codec,
# every packet invalid). Every request must end in an EngineError with a 4xx status.
UNDECODABLE = frozenset(
    {
        "corrupt_malformed_free_box.mp4",
        "corrupt_vp9_invalid_bitstream.webm",
        "dolbyvision_av1_dav1_no_decoder.mp4",
    }
)
# Damaged but partly decodable: an engine may refuse a time (4xx EngineError) or return a frame,
# which must then be the oracle's.
DAMAGED = frozenset(
    {
        "corrupt_decord.mp4",
        "corrupt_h264_invalid_nalu.mp4",
        "corrupt_mdat_too_long.mp4",
        "corrupt_mpeg_ps_with_junk.mpg",
    }
)
SIDECAR_SUFFIXES = frozenset({".md", ".json", ".md5"})


def require_corpus() -> Path:
    """The shared corpus directory, or skip the calling test."""
    if not (MEDIA / "MANIFEST.md").is_file():
        pytest.skip(f"shared media corpus not found at {MEDIA}")
    return MEDIA


def corpus_files() -> list[Path]:
    """Every media file of the corpus (sidecars left out), HLS playlists included; [] without it."""
    if not MEDIA.is_dir():
        return []
    found: list[Path] = []
    for path in sorted(MEDIA.iterdir()):
        if path.is_file() and path.suffix not in SIDECAR_SUFFIXES:
            found.append(path)
        elif path.is_dir():
            found += sorted(path.glob("*.m3u8"))
    return found


def corpus_id(path: Path) -> str:
    return str(path.relative_to(MEDIA)) if path.is_relative_to(MEDIA) else path.name


def make_h264_clip(
    path: Path, *, size: str, rate: int, seconds: int, gop: int | None = None, extra: Sequence[str] = ()
) -> Path:
    """A plain H.264 ``testsrc2`` clip (x264 defaults: B-frames on) made with the ffmpeg CLI, for
    tests that need a small real video and nothing special about it (see ``make_clip`` for those)."""
    import imageio_ffmpeg

    keyint = ["-g", str(gop)] if gop is not None else []
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}", "-c:v", "libx264", *keyint, *extra,
         "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    return path


class ClipError(RuntimeError):
    pass


def make_clip(
    path: Path,
    *,
    codec: str = "h264",
    fps: int | str = 25,
    frames: int = 48,
    size: tuple[int, int] = (192, 108),
    gop: int = 12,
    bframes: int = 2,
    open_gop: bool = False,
    start: float | str | None = None,
    vfr: bool = False,
    audio_lead: float | None = None,
    extra_output: list[str] | None = None,
) -> Path:
    """Write a synthetic clip of ``testsrc2`` (moving, every frame distinct) with the ffmpeg CLI.

    The container is the suffix of ``path`` (.mp4, .mov, .mkv, .webm, .ts, .ivf, .h264 raw Annex-B...).
    ``codec``: h264 (libx264), hevc (libx265), vp9 (libvpx-vp9, alt-ref frames on), mpeg2, mpeg4.
    ``gop`` is the keyframe interval, ``bframes`` the B-frame count (h264/hevc), ``start`` an
    ``-output_ts_offset`` in seconds, ``vfr`` makes frame durations irregular (1, 2 or 3 frame
    intervals in a fixed pattern), ``audio_lead`` adds an AAC track that starts that many seconds
    before the video. Returns ``path``; an existing file is kept as is.
    """
    if path.exists():
        return path
    width, height = size
    graph = f"testsrc2=size={width}x{height}:rate={fps}"
    filters: list[str] = []
    if vfr:
        # Stretch each frame's timestamp by a repeating 1,1,2,3 pattern: exact integer ticks of the rate.
        filters.append(
            "setpts='(7*floor(N/4) + if(eq(mod(N,4),0),0,if(eq(mod(N,4),1),1,if(eq(mod(N,4),2),2,4))))/(FRAME_RATE*TB)'"
        )
    filters.append("format=yuv420p")
    args = ["-f", "lavfi"]
    if audio_lead is not None:
        args += ["-itsoffset", str(audio_lead)]
    args += ["-i", graph]
    if audio_lead is not None:
        seconds = audio_lead + frames / float(Fraction(str(fps))) + 0.5
        args += ["-f", "lavfi", "-t", f"{seconds:.3f}", "-i", "sine=frequency=440:sample_rate=48000"]
        args += ["-map", "0:v", "-map", "1:a", "-c:a", "aac", "-b:a", "64k"]
    args += ["-frames:v", str(frames), "-vf", ",".join(filters)]
    if vfr:
        args += ["-fps_mode", "vfr"]
    if codec == "h264":
        args += (
            ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency"]
            if bframes == 0
            else ["-c:v", "libx264", "-preset", "veryfast"]
        )
        args += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", "-bf", str(bframes)]
        if bframes > 1:
            args += ["-x264-params", "b-pyramid=normal" + (":open-gop=1" if open_gop else "")]
        elif open_gop:
            args += ["-x264-params", "open-gop=1"]
    elif codec == "hevc":
        params = [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0", f"bframes={bframes}", "log-level=error"]
        if open_gop:
            params.append("open-gop=1")
        args += ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", ":".join(params)]
        if path.suffix in {".mp4", ".mov"}:
            args += ["-tag:v", "hvc1"]
    elif codec == "vp9":
        args += ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-g", str(gop)]
        args += ["-auto-alt-ref", "1", "-lag-in-frames", "8", "-b:v", "300k"]
    elif codec == "mpeg2":
        args += ["-c:v", "mpeg2video", "-g", str(gop), "-bf", str(bframes), "-q:v", "3"]
    elif codec == "mpeg4":
        args += ["-c:v", "mpeg4", "-g", str(gop), "-bf", str(bframes), "-q:v", "3"]
    else:
        raise ValueError(f"unknown codec {codec!r}")
    if start is not None:
        args += ["-output_ts_offset", str(start)]
    if path.suffix == ".h264":
        args += ["-f", "h264"]
    args += list(extra_output or [])
    return _ffmpeg_writes(path, args, f"ffmpeg could not make {path.name}")


def cut_clip(source: Path, path: Path, at: float) -> Path:
    """``source`` from ``at`` seconds on, cut as a stream copy (``ffmpeg -ss AT -i SOURCE -c copy``): the
    copy starts at the keyframe before ``at``, and an MP4 edit list hides the pictures before the cut,
    that keyframe among them. Returns ``path``; an existing file is kept as is."""
    if path.exists():
        return path
    return _ffmpeg_writes(
        path, ["-ss", str(at), "-i", str(source), "-c", "copy", "-an"], f"ffmpeg could not cut {source.name}"
    )


def _ffmpeg_writes(path: Path, args: list[str], failure: str) -> Path:
    """The ffmpeg CLI with ``args`` writes ``path``, through a scratch name so that a failed or
    interrupted run never leaves a file under the real one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.stem}.partial{path.suffix}")
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error", *args, str(scratch)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        scratch.unlink(missing_ok=True)
        raise ClipError(f"{failure}: {proc.stderr.decode('utf-8', 'replace')[-800:]}")
    scratch.rename(path)
    return path


def strict_xfails(items: Sequence[Any], reasons: dict[str, str], name: Callable[[Any], str] = str) -> list[Any]:
    """``items`` as test parameters, those whose ``name`` has a reason marked as a strict xfail (it must
    still fail: one that starts passing is taken off the list)."""
    return [
        pytest.param(item, marks=pytest.mark.xfail(reason=reasons[name(item)], strict=True))
        if name(item) in reasons
        else item
        for item in items
    ]


# --------------------------------------------------------------------------- running the engine

# Big pictures cost the engine ~0.1-0.6 s each at full size (colour conversion and PNG): above
# BIG_PICTURE pixels ask for at most BOX (the comparison happens at ~0.16 MP anyway) and sample fewer.
BIG_PICTURE = 1_000_000
BOX = (960, 960)


def conformance_options(box: tuple[int, int] | None = None, stream: int | None = 0) -> Any:
    """Options under which the engine's pixels compare with ffmpeg's rgb24 of the decoded frame."""
    from app.engine.options import EncodeOptions, GrabOptions, RenderOptions

    width, height = box or (None, None)
    render = RenderOptions(rotate="none", aperture="encoded", dynamic_range="native", width=width, height=height)
    return GrabOptions(stream=stream, render=render, encode=EncodeOptions(format="png"))


@dataclass
class EngineRun:
    answers: list[Answer]
    requests: list[Request]
    duration: Fraction | None = None
    open_error: str | None = None  # the EngineError code raised while opening, if any
    seconds: float = 0.0


def run_engine(
    path: Path,
    requests: list[Request],
    size: tuple[int, int],
    *,
    box: tuple[int, int] | None = None,
    percents: Sequence[int] = (),
    shuffle: random.Random | None = None,
) -> EngineRun:
    """Ask the engine for every request in one ``images_for`` call; reduce its answers for ``judge``.

    ``percents`` adds requests like "50%", resolved against the engine's own duration. With ``shuffle``,
    the requests go one at a time, in an order it draws, to the one generator, as a decoder worker's
    open asset meets them: every seek, continuation and reuse between unrelated grabs is exercised.
    """
    from app.engine import FrameFailure, FrameResult, ImageGenerator
    from app.engine.errors import EngineError

    started = time.perf_counter()
    try:
        generator = ImageGenerator(path, conformance_options(box))
    except EngineError as exc:
        answers = [Answer(r.t, error_code=exc.code, error_status=exc.status) for r in requests]
        return EngineRun(answers, requests, open_error=exc.code, seconds=time.perf_counter() - started)
    except Exception as exc:  # anything but EngineError is a bug the report must show
        answers = [Answer(r.t, exception=f"{type(exc).__name__}: {exc} (opening)") for r in requests]
        return EngineRun(answers, requests, seconds=time.perf_counter() - started)
    with generator:
        duration = generator.duration
        requests = requests + percent_requests(duration, percents)
        specs: list[str | Fraction] = [r.t if r.spec is None else r.spec for r in requests]
        answers: list[Answer] = []
        try:
            items: Iterable[FrameResult | FrameFailure] = generator.images_for(specs)
            if shuffle is not None:
                one_by_one: dict[int, FrameResult | FrameFailure] = {}
                for index in shuffle.sample(range(len(specs)), len(specs)):
                    one_by_one[index] = next(iter(generator.images_for([specs[index]])))
                items = [one_by_one[index] for index in range(len(specs))]
            for request, item in zip(requests, items, strict=False):
                if isinstance(item, FrameFailure):
                    answers.append(Answer(request.t, error_code=item.error.code, error_status=item.error.status))
                elif item.requested_time != request.t:
                    answers.append(Answer(request.t, exception=f"requested_time {item.requested_time} != {request.t}"))
                else:
                    pixels, (width, height) = image_to_rgb(item.image, size)
                    if (width, height) != (item.width, item.height):
                        answers.append(
                            Answer(
                                request.t,
                                exception=f"image is {width}x{height}, result says {item.width}x{item.height}",
                            )
                        )
                        continue
                    answers.append(
                        Answer(
                            request.t,
                            actual_time=item.actual_time,
                            pts=item.pts,
                            time_base=item.time_base,
                            width=width,
                            height=height,
                            pixels=pixels,
                        )
                    )
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            answers += [Answer(r.t, exception=failure) for r in requests[len(answers) :]]
        answers += [Answer(r.t, exception="images_for gave no result") for r in requests[len(answers) :]]
    return EngineRun(answers, requests, duration=duration, seconds=time.perf_counter() - started)


def check_conformance(
    info: OracleInfo,
    *,
    damaged: bool = False,
    percents: Sequence[int] = (50, 100),
    unreliable_pixels: frozenset[int] = frozenset(),
    random_access: bool = False,
) -> EngineRun:
    """Run the engine over the oracle's planned requests; fail the test listing every broken request.

    ``damaged``: a 4xx EngineError is an acceptable answer to any request (a frame, where given,
    must still be the oracle's). ``random_access``: fewer requests, one at a time in a shuffled order
    on one generator (see ``run_engine``).
    """
    first = info.frames[0]
    big = first.width * first.height > BIG_PICTURE
    box = BOX if big else None
    size = info_compare_size(info)
    # Damaged files are short: every frame time, since the damage sits between two of them.
    max_frames = len(info.frames) if damaged else 10 if big else 32
    n_random = 4 if big else 8
    if random_access:  # the sorted pass covers the frames; this is about getting from one grab to the next
        max_frames, n_random = min(max_frames, 3 if big else 6), 4
    requests = plan_requests(info, max_frames=max_frames, n_random=n_random)
    # The oracle's pixel pass (an ffmpeg process) runs while the engine works.
    predicted = requests + percent_requests(info.container_duration, percents)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(decode_frames, info, needed_frames(info, predicted))
        shuffle = random.Random(zlib.crc32(info.name.encode())) if random_access else None
        run = run_engine(info.path, requests, size, box=box, percents=percents, shuffle=shuffle)
        frames = pending.result()
    frames = decode_frames(info, needed_frames(info, run.requests))  # the engine's own duration may differ
    failures: list[str] = []
    refused = 0
    for request, answer in zip(run.requests, run.answers, strict=True):
        if damaged and answer.error_status is not None and 400 <= answer.error_status < 500:
            refused += info.frame_at(request.t) is not None
            continue
        problem = judge(info, request, answer, frames, box=box, unreliable_pixels=unreliable_pixels)
        if problem:
            failures.append(problem)
    if failures:
        shown = "\n".join(failures[:40])
        more = f"\n... and {len(failures) - 40} more" if len(failures) > 40 else ""
        pytest.fail(
            f"{len(failures)} of {len(run.requests)} requests broke the contract for {info.name} "
            f"(engine {run.seconds:.1f}s{f', {refused} refused as damaged' if refused else ''}):\n{shown}{more}",
            pytrace=False,
        )
    return run
