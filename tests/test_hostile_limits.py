"""Source limits hold before memory is spent on them: a small file with hundreds of streams is
refused (``source_too_many_streams``) before the probe has grown memory with every stream, and the
pixel cap is set again on the decoder of every reopened asset."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.engine import GrabOptions, ImageGenerator
from app.engine.errors import EngineError
from app.engine.options import SourceLimits
from tests.live_server import REPO
from tests.oracle import ffmpeg_exe

STREAMS = 200


@pytest.fixture(scope="module")
def many_streams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("many-streams")
    mp4, ts = root / "many.mp4", root / "many.ts"
    maps = [arg for _ in range(STREAMS) for arg in ("-map", "0:v")]
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=32x32:rate=5:duration=1", *maps,
         "-c:v", "libx264", "-preset", "ultrafast", str(mp4)],
        check=True,
    )  # fmt: skip
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(mp4), "-map", "0", "-c", "copy", str(ts)], check=True)
    return {"mp4": mp4, "ts": ts}


def _open_in_a_fresh_process(path: Path, max_streams: int) -> dict[str, object]:
    """Open ``path`` in a new interpreter (as a decoder worker would) and report the error and how
    much the peak resident memory grew while opening."""
    code = textwrap.dedent(
        f"""
        import json, resource, sys
        from app.engine import GrabOptions, ImageGenerator
        from app.engine.errors import EngineError
        from app.engine.options import SourceLimits
        import app.engine.encode  # what a worker loads before its first task
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        code = None
        try:
            ImageGenerator({str(path)!r}, GrabOptions(), limits=SourceLimits(max_streams={max_streams})).close()
        except EngineError as exc:
            code = exc.code
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({{"code": code, "grown_kib": grown}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("kind", ["mp4", "ts"])
def test_hundreds_of_streams_are_refused_before_they_are_probed(many_streams: dict[str, Path], kind: str) -> None:
    report = _open_in_a_fresh_process(many_streams[kind], max_streams=64)
    assert report["code"] == "source_too_many_streams", report
    # probing all 200 streams grows the process by 80-150 MiB; refusing at the 65th, by a few
    assert int(report["grown_kib"]) < 30 * 1024, report  # type: ignore[call-overload]


@pytest.mark.parametrize("kind", ["mp4", "ts"])
def test_a_source_at_the_stream_limit_still_opens(many_streams: dict[str, Path], kind: str) -> None:
    with ImageGenerator(many_streams[kind], GrabOptions(), limits=SourceLimits(max_streams=STREAMS)) as generator:
        assert generator.image_at("0.5").width == 32


def test_the_pixel_cap_is_set_again_after_a_reopen(tmp_path: Path) -> None:
    from tests.media import make_h264_clip

    clip = make_h264_clip(tmp_path / "clip.mp4", size="64x48", rate=10, seconds=3, gop=10)
    limits = SourceLimits(max_pixels=64 * 48)
    with ImageGenerator(clip, GrabOptions(), limits=limits) as generator:
        generator.image_at("2.5")
        playhead = generator._playhead
        playhead.reopen()
        assert playhead.stream.codec_context.options.get("max_pixels") == str(64 * 48)
        assert generator.image_at("0.2").width == 64
    with pytest.raises(EngineError) as info:
        ImageGenerator(clip, GrabOptions(), limits=SourceLimits(max_pixels=64 * 48 - 1))
    assert info.value.code == "source_too_many_pixels"


@pytest.fixture(scope="module")
def size_switch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One second at 64x48, then one at 640x480, as raw H.264 and as MPEG-TS (10 fps)."""
    root = tmp_path_factory.mktemp("size-switch")
    parts = []
    for size in ("64x48", "640x480"):
        part = root / f"{size}.h264"
        subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=10:duration=1",
             "-c:v", "libx264", "-preset", "ultrafast", "-bsf:v", "h264_mp4toannexb", str(part)],
            check=True,
        )  # fmt: skip
        parts.append(part.read_bytes())
    raw = root / "switch.h264"
    raw.write_bytes(b"".join(parts))
    ts = root / "switch.ts"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "h264", "-i", str(raw), "-c", "copy", str(ts)], check=True)
    return {"h264": raw, "ts": ts}


@pytest.mark.parametrize("kind", ["h264", "ts"])
def test_a_picture_size_change_mid_stream_is_held_to_the_cap(size_switch: dict[str, Path], kind: str) -> None:
    limits = SourceLimits(max_pixels=64 * 48)
    with ImageGenerator(size_switch[kind], GrabOptions(), limits=limits) as generator:
        small = generator.image_at("0.5")
        assert (small.width, small.height) == (64, 48)
    for t in ("1.5", "1.0", "1.9"):
        for options in (GrabOptions(), GrabOptions(tolerance_before=None, tolerance_after=None)):
            with ImageGenerator(size_switch[kind], options, limits=limits) as generator:
                # never the last small frame standing in for the refused big one
                with pytest.raises(EngineError) as info:
                    generator.image_at(t)
                assert info.value.code == "source_too_many_pixels", (t, options)
    with ImageGenerator(size_switch[kind], GrabOptions(), limits=limits) as generator:
        results = list(generator.images_for(["0.2", "1.5", "0.8"]))
    assert [getattr(r, "width", None) for r in results] == [64, None, 64]
    assert results[1].error.code == "source_too_many_pixels"  # type: ignore[union-attr]
    with ImageGenerator(size_switch[kind], GrabOptions()) as generator:  # under the default cap: both sizes
        assert generator.image_at("1.5").width == 640
