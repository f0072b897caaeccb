"""The generator's choices beyond the exact case: tolerances, batches, percentages, HLS, the CLI."""

from __future__ import annotations

import gc
import subprocess
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from app.config import Settings
from app.engine import DecodeStats, FrameFailure, FrameResult, ImageGenerator
from app.engine.errors import EngineError
from app.engine.options import EncodeOptions, GrabOptions, SourceLimits
from app.engine.sources import resolve_source
from tests import oracle
from tests.media import check_conformance, cut_clip, ffmpeg_exe, make_clip

PNG = EncodeOptions(format="png")


def tolerant(before: Fraction | None, after: Fraction | None) -> GrabOptions:
    return GrabOptions(tolerance_before=before, tolerance_after=after, encode=PNG)


def keyframe_times(path: Path) -> list[Fraction]:
    """Keyframe presentation times on the asset timeline, by decoding everything (the slow, sure way)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        origin = (stream.start_time or 0) * stream.time_base
        return [f.pts * stream.time_base - origin for f in container.decode(stream) if f.key_frame]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 25 fps, a keyframe every 25 frames (each second), B-frames: 4 s.
    return make_clip(tmp_path_factory.mktemp("gen") / "clip.mp4", frames=100, gop=25, bframes=2)


def test_infinite_tolerance_gives_the_nearest_keyframe(clip: Path) -> None:
    keys = keyframe_times(clip)
    assert len(keys) >= 4
    with ImageGenerator(clip, tolerant(None, None)) as generator:
        for t in (Fraction(0), Fraction(4, 10), Fraction(6, 10), Fraction(19, 10), Fraction(37, 10)):
            result = generator.image_at(t)
            nearest = min(keys, key=lambda k: (abs(k - t), k))
            assert result.actual_time == nearest, t


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("clip.mkv", []),  # cues: PyAV lists only the first keyframe up front
        ("clip.webm", []),
        ("clip.flv", []),
        ("clip.ts", []),  # no index at all
        ("fragmented.mp4", ["-movflags", "frag_keyframe+empty_moov"]),  # indexed fragment by fragment
        ("bframes_late_keys.mp4", []),  # a full index, of decode times 2 frames before the keyframes show
    ],
)
def test_nearest_keyframe_without_a_full_index(tmp_path: Path, name: str, extra: list[str]) -> None:
    """Where the container's index does not list every keyframe up front, the keyframes around t come
    from the packets after a seek; where it holds decode times, from their presentation times. Before,
    every tolerance=inf grab of a Matroska, FLV or fragmented MP4 file got its last keyframe (the one
    index entry, then a seek an hour on), and B-frames tipped near-halfway times to the farther one."""
    codec = {"clip.webm": "vp9", "clip.flv": "h264"}.get(name, "h264")
    clip = make_clip(
        tmp_path / name, codec=codec, frames=150, gop=25, bframes=0 if codec == "vp9" else 3, extra_output=extra
    )
    keys = keyframe_times(clip)
    assert len(keys) >= 5
    times = [Fraction(t, 100) for t in (0, 40, 149, 151, 260, 374, 410, 590)]
    with ImageGenerator(clip, tolerant(None, None)) as generator:
        for t in times:
            nearest = min(keys, key=lambda k: (abs(k - t), k))
            assert generator.image_at(t).actual_time == nearest, t


def test_window_without_keyframe_gives_a_frame_inside_it(clip: Path) -> None:
    keys = keyframe_times(clip)
    with ImageGenerator(clip, tolerant(Fraction(1, 10), Fraction(1, 10))) as generator:
        for t in (Fraction(1, 2), Fraction(23, 10), Fraction(33, 10)):
            result = generator.image_at(t)
            assert t - Fraction(1, 10) <= result.actual_time <= t + Fraction(1, 10)
            assert all(abs(k - t) > Fraction(1, 10) for k in keys)  # really no keyframe in the window


def test_window_with_keyframe_takes_it(clip: Path) -> None:
    with ImageGenerator(clip, tolerant(Fraction(1, 5), Fraction(1, 5))) as generator:
        assert generator.image_at("2.1").actual_time == 2
        assert generator.image_at("0.9").actual_time == 1


def test_tolerance_after_only_looks_forward(clip: Path) -> None:
    with ImageGenerator(clip, tolerant(Fraction(0), None)) as generator:
        assert generator.image_at("1.5").actual_time == 2  # the next keyframe at or after t
    with ImageGenerator(clip, tolerant(None, Fraction(0))) as generator:
        assert generator.image_at("1.5").actual_time == 1  # the keyframe at or before t


def test_tolerance_reaches_past_the_end_and_before_the_start(clip: Path) -> None:
    with ImageGenerator(clip, GrabOptions(encode=PNG)) as exact:
        with pytest.raises(EngineError) as info:
            exact.image_at("4.5")
        assert info.value.code == "no_image_at_time"
        with pytest.raises(EngineError):
            exact.image_at("-0.1")
    with ImageGenerator(clip, tolerant(Fraction(1), Fraction(1))) as generator:
        assert generator.image_at("4.5").actual_time == Fraction(99, 25)
        assert generator.image_at("-0.5").actual_time == 0
    with ImageGenerator(clip, tolerant(Fraction(1, 10), Fraction(1, 10))) as generator, pytest.raises(EngineError):
        generator.image_at("4.5")


def test_images_for_keeps_request_order_and_reports_failures(clip: Path) -> None:
    times = ["3", "0.5", "abc", "3", "50%", "99", "1001/25000"]
    with ImageGenerator(clip, GrabOptions(encode=PNG)) as generator:
        results = list(generator.images_for(times))
    assert [r.index for r in results] == list(range(len(times)))
    ok = {r.index: r for r in results if isinstance(r, FrameResult)}
    failed = {r.index: r for r in results if isinstance(r, FrameFailure)}
    assert set(failed) == {2, 5}
    assert failed[2].error.code == "invalid_parameter" and failed[5].error.code == "no_image_at_time"
    assert ok[0].actual_time == ok[3].actual_time == 3 and ok[0].image == ok[3].image
    assert ok[4].actual_time == 2 and ok[4].requested_time == 2
    assert ok[6].actual_time == Fraction(1, 25)


def test_unordered_results_come_in_time_order(clip: Path) -> None:
    with ImageGenerator(clip, GrabOptions(encode=PNG)) as generator:
        results = list(generator.images_for(["3", "1", "2", "0"], ordered=False))
    assert [r.index for r in results] == [3, 1, 2, 0]


def test_batch_renders_on_a_helper_thread_with_the_same_bytes(clip: Path) -> None:
    """A batch renders each frame while the next decodes: every image is the one a single grab gives,
    and a failing render (an output over the pixel cap) fails its own times only."""
    times = [f"{n / 25:.2f}" for n in range(0, 100, 3)]
    for encode in (PNG, EncodeOptions(format="jpeg")):
        with ImageGenerator(clip, GrabOptions(encode=encode)) as generator:
            batch = list(generator.images_for(times))
        assert all(isinstance(r, FrameResult) for r in batch)
        for t, result in zip(times[::5], batch[::5], strict=True):
            with ImageGenerator(clip, GrabOptions(encode=encode)) as single:
                assert single.image_at(t).image == result.image, t
    with ImageGenerator(clip, GrabOptions(encode=PNG), max_output_pixels=100) as capped:
        failed = list(capped.images_for(times))
    assert [r.index for r in failed] == list(range(len(times)))
    assert all(isinstance(r, FrameFailure) and r.error.code == "invalid_parameter" for r in failed)


def test_abandoning_a_batch_waits_for_its_renders(clip: Path) -> None:
    """Closing a batch half-way (a cancelled job) and then the asset must not leave a render reading
    a closed container (PyAV would crash the process)."""
    generator = ImageGenerator(clip, GrabOptions())
    results = generator.images_for([f"{n / 25:.2f}" for n in range(0, 100, 2)], ordered=False)
    assert isinstance(next(results), FrameResult)
    results.close()
    generator.close()
    with ImageGenerator(clip, GrabOptions()) as again:
        assert again.image_at("1").actual_time == 1


@pytest.mark.parametrize("codec", ["h264", "hevc", "mpeg2"])
def test_forward_scrubbing_on_one_generator_gets_every_frame(tmp_path: Path, codec: str) -> None:
    """Grabs that go forward through GOPs on one open asset (exact times, times between frames,
    repeats) continue one decode, stopping as soon as the answer is certain: each gives the frame on
    screen, as a fresh open does. B-pyramids (3 B-frames) put the answer before or after the next
    frame in decode order, so both the early stop and the decode on from it are exercised."""
    path = make_clip(
        tmp_path / f"pyramid.{'ts' if codec == 'mpeg2' else 'mp4'}", codec=codec, frames=60, gop=20, bframes=3
    )
    times = [t for n in range(60) for t in (Fraction(n, 25), Fraction(2 * n + 1, 50), Fraction(n, 25))]
    with ImageGenerator(path, GrabOptions()) as warm:
        got = [warm.image_at(t).actual_time for t in times]
    assert got == [Fraction(int(t * 25), 25) for t in times]
    with ImageGenerator(path, GrabOptions(encode=PNG)) as warm:
        for t in times[::7]:
            with ImageGenerator(path, GrabOptions(encode=PNG)) as fresh:
                assert warm.image_at(t).image == fresh.image_at(t).image, t


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_grabs_leave_no_garbage_cycles_per_frame(clip: Path, fmt: str) -> None:
    """Reading a frame's side data makes a reference cycle in PyAV 18.1 that holds the frame's
    buffers until a full garbage collection: a worker grew by hundreds of MiB. It is read once per
    asset, so the cyclic garbage of a batch does not grow with its frames."""
    found = {}
    for count in (5, 40):
        gc.collect()
        gc.disable()
        try:
            with ImageGenerator(clip, GrabOptions(encode=EncodeOptions(format=fmt))) as generator:
                list(generator.images_for([f"{2 * n / 25:.2f}" for n in range(count)]))
            found[count] = gc.collect()
        finally:
            gc.enable()
    assert found[40] <= found[5] + 3, found


def test_same_frame_twice_on_one_generator_matches_a_fresh_one(clip: Path) -> None:
    """The open-asset path (continue decoding, seek back) gives the bytes a fresh open gives."""
    with ImageGenerator(clip, GrabOptions(encode=PNG)) as warm:
        warm_images = {t: warm.image_at(t).image for t in ("2.5", "2.6", "0.3", "3.9", "2.5")}
    for t, image in warm_images.items():
        with ImageGenerator(clip, GrabOptions(encode=PNG)) as fresh:
            assert fresh.image_at(t).image == image, t


def test_hls_playlists_through_sources(corpus: Path) -> None:
    policy = Settings(media_root=corpus).source_policy()
    for url, expected in [("hls_ts/manifest.m3u8", Fraction(1)), ("hls_fmp4/playlist.m3u8", Fraction(29029, 30000))]:
        with ImageGenerator(resolve_source(url, policy), GrabOptions(encode=PNG)) as generator:
            assert generator.image_at("1").actual_time == expected


@pytest.fixture(scope="module")
def hls_vod(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished HLS playlist of ten 2 s MPEG-TS segments (25 fps, a keyframe each second)."""
    folder = tmp_path_factory.mktemp("hls")
    source = make_clip(folder / "source.mp4", frames=500, gop=25, bframes=2)
    args = ["-i", str(source), "-c", "copy", "-f", "hls", "-hls_time", "2", "-hls_playlist_type", "vod"]
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args, str(folder / "vod.m3u8")], check=True
    )
    return folder / "vod.m3u8"


def test_hls_grabs_that_seek_back_into_the_segment_read_last(hls_vod: Path) -> None:
    """Seeking back into the segment read last reopens it. FFmpeg counted such reopenings as reloads
    without new segments and, past a low cap we had set against live playlists, ended the stream there:
    15.5 s then got the last frame before that segment (13.96 s) as if past the end. Each answer here
    is the CLI's, on one generator, in an order that seeks back and forth."""
    info = oracle.probe(hls_vod)
    with ImageGenerator(hls_vod, GrabOptions(encode=PNG)) as generator:
        for t in ("15", "14", "15.5", "3", "19.9", "14.2", "15.1"):
            index = info.frame_at(Fraction(t))
            assert index is not None
            assert generator.image_at(t).actual_time == info.frames[index].time, t


def test_a_live_hls_playlist_is_read_as_the_segments_it_lists(hls_vod: Path) -> None:
    """A playlist without #EXT-X-ENDLIST (live, or an event still being written) is the video listed so
    far, from its first segment: no wait for more, no start a few segments before the end (FFmpeg's way
    for live playback)."""
    live = hls_vod.with_name("live.m3u8")
    live.write_text(hls_vod.read_text().replace("#EXT-X-ENDLIST", "").replace("#EXT-X-PLAYLIST-TYPE:VOD", ""))
    with (
        ImageGenerator(hls_vod, GrabOptions(encode=PNG)) as finished,
        ImageGenerator(live, GrabOptions(encode=PNG)) as now,
    ):
        assert now.duration == finished.duration
        for t in ("0", "9.5", "19.96"):
            ours, theirs = now.image_at(t), finished.image_at(t)
            assert (ours.actual_time, ours.image) == (theirs.actual_time, theirs.image), t


def test_cli_grab_writes_files_and_prints_times(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "shot.png"
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "grab", str(clip), "--at", "1.03", "--at", "50%", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line.split("\t") for line in completed.stdout.strip().splitlines()]
    assert [(requested, actual) for requested, actual, _ in lines] == [("1.03", "1"), ("50%", "2")]
    for _, _, name in lines:
        assert Path(name).read_bytes().startswith(b"\x89PNG")
    failed = subprocess.run(
        [sys.executable, "-m", "app.cli", "grab", str(clip), "--at", "99"], capture_output=True, text=True
    )
    assert failed.returncode == 1 and "no_image_at_time" in failed.stderr


@pytest.mark.parametrize(
    ("limits", "code"),
    [
        (SourceLimits(max_pixels=192 * 108 - 1), "source_too_many_pixels"),
        (SourceLimits(max_duration=Fraction(3)), "source_too_long"),
        (SourceLimits(max_streams=0), "source_too_many_streams"),
    ],
)
def test_source_limits_are_checked_before_decoding(clip: Path, limits: SourceLimits, code: str) -> None:
    with pytest.raises(EngineError) as info:
        ImageGenerator(clip, limits=limits)
    assert info.value.code == code and info.value.status == 422


def test_limits_through_the_api(make_client: Any, clip: Path) -> None:
    client = make_client(media_root=clip.parent, max_duration=2)
    response = client.get("/v1/frame", params={"url": clip.name, "t": "1"})
    assert response.status_code == 422 and response.json()["code"] == "source_too_long"


def test_grabs_that_land_on_the_last_frame_again_reuse_its_decode_and_image(clip: Path) -> None:
    """A scrubbing client asks for many times that land on one keyframe (tolerance=inf) or one frame:
    the keyframe is not decoded again and the image not made again, and each answer is exactly what a
    fresh generator gives. Other options, or another frame, make a new image."""
    from app.engine.options import RenderOptions

    keyframe = tolerant(None, None)
    with ImageGenerator(clip, keyframe) as generator:
        decoded_before = generator.stats.keyframes_decoded
        first = generator.image_at("2.1")
        again = generator.image_at("1.9")  # nearest keyframe: 2 s again
        assert (first.actual_time, again.actual_time) == (Fraction(2), Fraction(2))
        assert generator.stats.keyframes_decoded - decoded_before == 1
        assert again.image == first.image
        assert (again.timings["render"], again.timings["encode"]) == (0.0, 0.0)
        other = generator.image_at("3.1")
        assert other.actual_time == Fraction(3) and other.timings["encode"] > 0
        assert generator.stats.keyframes_decoded - decoded_before == 2
        generator.options = GrabOptions(
            tolerance_before=None, tolerance_after=None, encode=PNG, render=RenderOptions(width=64)
        )
        resized = generator.image_at("2.9")  # the same keyframe, other options: no pixels were kept
        assert resized.actual_time == Fraction(3) and resized.width == 64
        assert generator.stats.keyframes_decoded - decoded_before == 3

        generator.options = GrabOptions(encode=PNG)  # exact, as a worker switches between tasks
        on_frame = generator.image_at("1.5")
        same_frame = generator.image_at("1.51")  # frame 37 (1.48 s) is on screen at both
        assert on_frame.actual_time == same_frame.actual_time == Fraction(37, 25)
        assert same_frame.image == on_frame.image and same_frame.timings["encode"] == 0.0
        generator.options = GrabOptions(encode=PNG, render=RenderOptions(width=64))
        smaller = generator.image_at("1.51")  # the same frame, other options: made anew
        assert smaller.width == 64 and smaller.image != on_frame.image and smaller.timings["encode"] > 0

    for result, t, options in ((again, "1.9", keyframe), (same_frame, "1.51", GrabOptions(encode=PNG))):
        with ImageGenerator(clip, options) as fresh:
            alone = fresh.image_at(t)
        assert (alone.actual_time, alone.image) == (result.actual_time, result.image)


def test_a_reused_keyframe_carries_its_image_if_another_render_finishes_meanwhile(clip: Path) -> None:
    """In a batch, renders finish on a helper thread: the last image made may change between the moment
    a keyframe is found to be reusable and the moment its image is taken. The image goes with it."""
    with ImageGenerator(clip, tolerant(None, None)) as generator:
        first = generator.image_at("2.1")
        entry = generator.cursor.last_keyframe
        assert entry is not None and entry[0] in generator.keyframes.index
        decoded_before = generator.stats.keyframes_decoded
        reused = generator.keyframes.keyframe_at(entry[0], generator.options)
        assert generator.stats.keyframes_decoded == decoded_before  # reused, not decoded again
        generator.cursor.last_image = None  # as if another frame's render had just replaced it
        assert reused is not None and reused.image is not None
        assert reused.image[0] == first.image


def test_a_clip_cut_mid_gop_takes_one_seek_per_grab(tmp_path: Path) -> None:
    """A clip cut from a longer one without re-encoding starts mid-GOP: an edit list hides the pictures
    before the cut, its first keyframe among them, so the decoder decodes that keyframe but never outputs
    it. The frames after it are still sound, and a grab in that first GOP takes one seek, where waiting
    for a keyframe to come out walked back five times and then decoded from the very start (the iPhone
    clip in the corpus, 1080p HEVC: 1.9 s -> 0.3 s for t = 0.468). Every answer is the ffmpeg CLI's."""
    source = make_clip(tmp_path / "source.mp4", frames=100, gop=25, bframes=3)
    cut = cut_clip(source, tmp_path / "cut.mp4", 1.5)  # keyframes at 1 s (hidden) and 2 s of the source
    with av.open(str(cut)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    assert packets[0].is_keyframe and packets[0].is_discard  # what this test is about
    check_conformance(oracle.probe(cut))
    for t in ("0", "0.2", "0.44", "0.48"):  # the second keyframe shows at 0.48
        with ImageGenerator(cut, GrabOptions(encode=PNG)) as generator:
            before = replace(generator.stats)
            result = generator.image_at(t)
            work = _seeks_and_reopens(before, generator.stats)
        assert work == (1, 0), (t, work)
        assert result.actual_time == Fraction(t)  # (each a frame time)


def _seeks_and_reopens(before: DecodeStats, after: DecodeStats) -> tuple[int, int]:
    """The seeks and the reopens (reads from the very start) a generator made between two counts."""
    return after.seeks - before.seeks, after.reopens - before.reopens


def test_a_time_before_the_first_frame_walks_back_no_further_than_the_start(tmp_path: Path) -> None:
    """Where the audio starts first, the asset begins before its first video frame: a time in between
    gets that first frame. The seek lands on it, after the target; stepping back again would seek to
    before the start of the asset (where every seek lands the same), so the generator reads from the
    start at once: one seek, then the start, where it took four more seeks first."""
    clip = make_clip(tmp_path / "audio_first.mp4", frames=50, gop=25, audio_lead=0.5)
    with ImageGenerator(clip, GrabOptions(encode=PNG)) as generator:
        before = replace(generator.stats)
        result = generator.image_at("0.2")
        work = _seeks_and_reopens(before, generator.stats)
    info = oracle.probe(clip)
    assert info.frame_at(Fraction(1, 5)) == 0
    assert result.actual_time == info.frames[0].time > Fraction(1, 5)
    assert work == (1, 1)  # one seek, then the start


def test_without_an_index_decoding_goes_on_as_far_as_the_longest_gop_seen(tmp_path: Path) -> None:
    """Matroska (without its Cues read) says nowhere where the next keyframe is. Once a decode has run
    from one keyframe to the next, a target up to that GOP's length ahead is reached by decoding on,
    where a seek would decode the same GOP again from its start; before, only half a second ahead."""
    clip = make_clip(tmp_path / "gop4.mkv", frames=250, gop=100, bframes=2)  # keyframes at 0, 4 and 8 s
    with ImageGenerator(clip, GrabOptions(encode=PNG)) as generator:
        assert generator.keyframes.index == []
        for t in ("3.5", "3.9", "4.3"):  # 0.4 s apart: on across the keyframe at 4 s
            generator.image_at(t)
        before = replace(generator.stats)
        result = generator.image_at("6.5")
        work = _seeks_and_reopens(before, generator.stats)
    assert result.actual_time == Fraction(162, 25)  # the frame on screen at 6.5 s
    assert work == (0, 0)
