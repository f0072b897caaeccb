"""The time contract on the real corpus (../shared/media), with the ffmpeg CLI as the oracle.

For each decodable file: every frame's exact time (a sample for long files), just before each,
seeded random times, 0, the end, past the end and negative times; each answer's actual_time must be
the oracle's frame on screen and its pixels that frame's (best PSNR among the frames around it).
Undecodable files must give EngineError with a 4xx status, never another exception.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction
from pathlib import Path

import pytest

from tests import oracle
from tests.media import (
    DAMAGED,
    MEDIA,
    UNDECODABLE,
    check_conformance,
    conformance_options,
    corpus_files,
    corpus_id,
    require_corpus,
    strict_xfails,
)

pytestmark = pytest.mark.media

FILES = corpus_files()
# Without the corpus each test runs once and skips, saying where the corpus was looked for.
_MISSING = [MEDIA / "(corpus missing)"]
DECODABLE = [path for path in FILES if path.name not in UNDECODABLE] or _MISSING
BROKEN = [path for path in FILES if path.name in UNDECODABLE] or _MISSING
# Frames whose oracle pixels are not what the libav API decodes, so only their times are checked.
# The ffmpeg CLI conceals damage differently from a plain avcodec_send_packet loop (PyAV's own
# decode of these frames is 19-28 dB from the CLI's and matches the engine):
# - mp4_annexb_h264_truncated.mp4: the file is cut inside the last packet (frame 5);
# - corrupt_decord.mp4: packet 29 fails to decode ("Invalid NAL unit size"), every frame after it
#   is concealed from different references.
UNRELIABLE_PIXELS: dict[str, frozenset[int]] = {
    "mp4_annexb_h264_truncated.mp4": frozenset({5}),
    "corrupt_decord.mp4": frozenset(range(29, 49)),
}


def _name(path: Path) -> str:
    return path.name


@pytest.fixture(scope="module", autouse=True)
def _prefetch_oracle() -> None:
    """Start every ffmpeg frame-list run in the background: the engine runs meanwhile."""
    if FILES:
        oracle.prefetch(DECODABLE)


def _manifest_frames() -> dict[str, int]:
    """'Frames decoded' per file from MANIFEST.md (PyAV's count)."""
    counts: dict[str, int] = {}
    for line in (MEDIA / "MANIFEST.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 12 and (m := re.fullmatch(r"`(.+)`", cells[1])):
            frames = re.match(r"(\d+) / \d+", cells[12])
            if frames:
                counts[m.group(1)] = int(frames.group(1))
    return counts


@pytest.mark.parametrize("path", DECODABLE, ids=corpus_id)
def test_oracle_sees_manifest_frames(path: Path) -> None:
    """The oracle decodes as many frames as MANIFEST.md says PyAV does (a check on the oracle)."""
    require_corpus()
    info = oracle.probe(path)
    expected = _manifest_frames().get(corpus_id(path))
    if expected is not None and path.name not in DAMAGED:  # damaged: ffmpeg conceals more than PyAV
        assert len(info.frames) == expected
    assert info.frames[0].time <= info.end


# Known divergences, each a degenerate file; every other probe of these files still passes when run alone.
KNOWN_DIVERGENCES = {
    "vp9_resolution_change.ivf": (
        "all 500 frames have pts 0 and the CLI says duration 0, so t=1us is past the end; PyAV hands the "
        "frame flushed at EOF a duration of 1 tick, so the engine still answers 1us with the last frame"
    ),
}


@pytest.mark.parametrize("path", strict_xfails(DECODABLE, KNOWN_DIVERGENCES, _name), ids=corpus_id)
def test_frame_at_time_matches_ffmpeg(path: Path) -> None:
    require_corpus()
    info = oracle.probe(path)
    if path.suffix == ".m3u8":
        _xfail_if_hls_unsupported(path)
    check_conformance(
        info, damaged=path.name in DAMAGED, unreliable_pixels=UNRELIABLE_PIXELS.get(path.name, frozenset())
    )


# Answers that depend on what the decoder did before (none at present).
RANDOM_ACCESS_DIVERGENCES: dict[str, str] = {}


@pytest.mark.parametrize(
    "path", strict_xfails(DECODABLE, {**RANDOM_ACCESS_DIVERGENCES, **KNOWN_DIVERGENCES}, _name), ids=corpus_id
)
def test_random_access_on_one_generator_matches_ffmpeg(path: Path) -> None:
    """The same contract for grabs that come one at a time in no order to one open asset, as a decoder
    worker gets them: each seek, continuation and image reuse from the grab before must still land on
    the CLI's frame (the sorted pass above never seeks back, and missed a broken HLS seek)."""
    require_corpus()
    info = oracle.probe(path)
    if path.suffix == ".m3u8":
        _xfail_if_hls_unsupported(path)
    check_conformance(
        info,
        damaged=path.name in DAMAGED,
        unreliable_pixels=UNRELIABLE_PIXELS.get(path.name, frozenset()),
        random_access=True,
    )


def _xfail_if_hls_unsupported(path: Path) -> None:
    from app.engine import ImageGenerator
    from app.engine.errors import EngineError

    try:
        ImageGenerator(path, conformance_options()).close()
    except EngineError as exc:
        if exc.code == "unsupported_media":
            pytest.xfail(f"engine refuses HLS playlists ({exc.code}: {exc.detail})")


@pytest.mark.parametrize("path", BROKEN, ids=corpus_id)
def test_undecodable_file_gives_4xx_engine_error(path: Path) -> None:
    """Open failures, missing decoders, all-invalid bitstreams: EngineError 4xx for every request."""
    from app.engine import FrameFailure, ImageGenerator
    from app.engine.errors import EngineError

    require_corpus()
    with pytest.raises(oracle.OracleError):
        oracle.probe(path)  # ffmpeg cannot decode it either
    times: list[str | Fraction] = ["0", Fraction(1, 2), "50%", "-1"]
    try:
        generator = ImageGenerator(path, conformance_options())
    except EngineError as exc:
        assert 400 <= exc.status < 500, f"{exc!r} is not a client error"
        return
    with generator:
        results = list(generator.images_for(times))
        assert len(results) == len(times)
        for t, result in zip(times, results, strict=True):
            assert isinstance(result, FrameFailure), f"t={t}: got an image from an undecodable file"
            assert 400 <= result.error.status < 500, f"t={t}: {result.error!r}"
        with pytest.raises(EngineError) as raised:
            generator.image_at("0")
        assert 400 <= raised.value.status < 500


# Files whose keyframe grabs miss the nearest keyframe the CLI's decode shows.
KEYFRAME_DIVERGENCES = {
    "h264_interlaced_raw_annexb.h264": (
        "raw Annex B, no timestamps: keyframes are not looked for, and t gets the frame on screen"
    ),
    "corrupt_mpeg_ps_with_junk.mpg": (
        "damaged MPEG-PS: the picture its packets flag as a keyframe is not the one the CLI decodes as one"
    ),
}


@pytest.mark.parametrize("path", strict_xfails(DECODABLE, KEYFRAME_DIVERGENCES, _name), ids=corpus_id)
def test_infinite_tolerance_gets_the_nearest_keyframe(path: Path) -> None:
    """tolerance=inf, one grab at a time in no order on one generator: the CLI's keyframe nearest to t
    (either, where two are as near). A file with no keyframe in view gets a frame of its own."""
    from app.engine import ImageGenerator
    from app.engine.options import EncodeOptions, GrabOptions

    require_corpus()
    info = oracle.probe(path)
    if path.suffix == ".m3u8":
        _xfail_if_hls_unsupported(path)
    keys = [frame.time for frame in info.frames if frame.key]
    times = [frame.time for frame in info.frames]
    rng = random.Random(corpus_id(path))
    requests = [Fraction(round(rng.uniform(0, float(times[-1])), 3)) for _ in range(6)] + [Fraction(0), times[-1]]
    options = GrabOptions(tolerance_before=None, tolerance_after=None, encode=EncodeOptions(format="jpeg"))
    failures = []
    with ImageGenerator(path, options) as generator:
        for t in requests:
            actual = generator.image_at(t).actual_time
            if not keys:
                ok = any(abs(actual - time) <= info.slack for time in times)
            else:
                best = min(abs(key - t) for key in keys)
                ok = any(abs(actual - key) <= info.slack and abs(key - t) <= best + info.slack for key in keys)
            if not ok:
                failures.append(f"t={float(t):.3f}: got {float(actual):.4f}, keyframes {[float(k) for k in keys][:12]}")
    assert not failures, "\n".join(failures)
