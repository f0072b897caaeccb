"""The time contract on clips made here with the ffmpeg CLI: runs without the shared corpus.

Each clip isolates one hard case (B-pyramids, start offsets, VFR, hidden VP9 frames, open GOPs, no
timestamps at all, AVI's missing pts, audio starting before video); the same oracle and checks as
test_conformance.py apply. The oracle itself is checked against the timeline the clip was built with.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from tests import oracle
from tests.media import check_conformance, make_clip, strict_xfails

FPS = 25
FRAMES = 48
# name -> make_clip keywords; the suffix picks the container.
CLIPS: dict[str, dict[str, Any]] = {
    "h264_bpyramid.mp4": {"bframes": 3},
    "h264_no_bframes.mp4": {"bframes": 0},
    "h264_start_1.5s.mp4": {"start": 1.5},
    "h264_bframes_start_10s.ts": {"bframes": 3, "start": 10},
    "h264_vfr.mp4": {"vfr": True},
    "h264_vfr.mkv": {"vfr": True},
    "h264_bframes.avi": {"bframes": 2},  # AVI has no pts: FFmpeg's best-effort timestamps come from dts
    "h264_annexb_raw.h264": {"bframes": 2},  # no timestamps at all
    "h264_audio_first.mp4": {"audio_lead": 0.5},  # container starts with the audio
    "h264_audio_first.ts": {"audio_lead": 0.5},
    "hevc_open_gop.mp4": {"codec": "hevc", "bframes": 3, "open_gop": True, "gop": 16},
    "vp9_altref.webm": {"codec": "vp9"},  # alt-ref (hidden) frames: more packets than frames
    "vp9.ivf": {"codec": "vp9", "gop": 24},
    "mpeg2_bframes.ts": {"codec": "mpeg2", "bframes": 2},
    "mpeg4_bframes.avi": {"codec": "mpeg4", "bframes": 2},
}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


def _clip(clip_dir: Path, name: str) -> Path:
    return make_clip(clip_dir / name, fps=FPS, frames=FRAMES, **CLIPS[name])


def _vfr_time(k: int) -> Fraction:
    """Frame k of a ``vfr=True`` clip: intervals of 1, 1, 2, 3 frames, repeating."""
    return Fraction(7 * (k // 4) + (0, 1, 2, 4)[k % 4], FPS)


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_oracle_sees_the_built_timeline(clip_dir: Path, name: str) -> None:
    """Every frame of the clip, in order, at the time it was made for (shifted by where it starts)."""
    info = oracle.probe(_clip(clip_dir, name))
    assert len(info.frames) == FRAMES
    built = [_vfr_time(k) if CLIPS[name].get("vfr") else Fraction(k, FPS) for k in range(FRAMES)]
    first = info.frames[0].time
    assert [frame.time - first for frame in info.frames] == built
    assert info.end >= info.times[-1]
    if not CLIPS[name].get("audio_lead") and not name.endswith(".avi"):
        assert abs(first) <= info.slack, "the video starts the container"


def test_oracle_frame_at_follows_the_contract(clip_dir: Path) -> None:
    info = oracle.probe(_clip(clip_dir, "h264_vfr.mp4"))
    tick = Fraction(1, 1_000_000)
    assert info.frame_at(Fraction(0)) == 0
    assert info.frame_at(-tick) is None
    assert info.frame_at(_vfr_time(3) - tick) == 2  # frame 2 shows for two intervals
    assert info.frame_at(_vfr_time(3)) == 3
    assert info.frame_at(info.end) == FRAMES - 1
    assert info.frame_at(info.end + tick) is None
    # The last frame's display ends at its pts + duration, after the container's stated duration.
    assert info.container_duration is not None and info.end > info.container_duration


# (none now: MPEG-4 packed B-frames in AVI agree since the DTS clock restarts at a seek)
KNOWN_DIVERGENCES: dict[str, str] = {}


@pytest.mark.parametrize("name", strict_xfails(sorted(CLIPS), KNOWN_DIVERGENCES))
def test_frame_at_time_matches_ffmpeg(clip_dir: Path, name: str) -> None:
    check_conformance(oracle.probe(_clip(clip_dir, name)))


@pytest.mark.parametrize("name", strict_xfails(sorted(CLIPS), KNOWN_DIVERGENCES))
def test_random_access_on_one_generator_matches_ffmpeg(clip_dir: Path, name: str) -> None:
    """The requests one at a time, shuffled, on one generator (see ``run_engine``)."""
    check_conformance(oracle.probe(_clip(clip_dir, name)), random_access=True)
