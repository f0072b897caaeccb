"""H.264 disposable packets (app.engine.nal), and frame-threaded grabs against single-threaded ones.

A packet called disposable is never handed to the decoder during an exact grab, so the claim is checked
on the decoder itself: decoding a real stream without those packets gives every other frame bit for
bit, and only the dropped pictures go missing.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import av
import pytest

from app.engine import ImageGenerator
from app.engine.nal import H264Disposable
from app.engine.options import GrabOptions
from tests.media import make_clip, make_h264_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nal")
    return {
        # x264 with a B-pyramid: non-reference B-frames, reference B-frames and P-frames
        "mp4": make_h264_clip(root / "pyramid.mp4", size="320x240", rate=25, seconds=4, gop=50, extra=["-bf", "3"]),
        # the same kind of stream in MPEG-TS: Annex B start codes, access unit delimiters
        "ts": make_clip(root / "pyramid.ts", frames=60, gop=30, bframes=3),
        "annexb": make_clip(root / "pyramid.h264", frames=60, gop=30, bframes=3),
    }


def _decode(path: Path, *, drop: bool) -> tuple[dict[int | None, str], int]:
    """pts -> digest of every frame decoded (single thread), and how many packets were dropped."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        disposable = H264Disposable(stream.codec_context.extradata)
        frames: dict[int | None, str] = {}
        dropped = 0
        for packet in container.demux(stream):
            if drop and packet.size and disposable(bytes(packet)):
                dropped += 1
                continue
            for frame in stream.codec_context.decode(packet):
                digest = hashlib.sha256(b"".join(bytes(plane) for plane in frame.planes)).hexdigest()
                frames[frame.pts if frame.pts is not None else len(frames)] = digest
        return frames, dropped


@pytest.mark.parametrize("kind", ["mp4", "ts", "annexb"])
def test_dropping_disposable_packets_changes_no_other_frame(clips: dict[str, Path], kind: str) -> None:
    full, _ = _decode(clips[kind], drop=False)
    kept, dropped = _decode(clips[kind], drop=True)
    assert dropped >= len(full) // 5  # a B-pyramid has many non-reference pictures
    assert len(kept) == len(full) - dropped  # exactly the dropped pictures are missing ...
    if kind != "annexb":  # (raw Annex B has no timestamps to match frames by)
        assert all(full[pts] == digest for pts, digest in kept.items())  # ... and the rest are identical


def test_reference_pictures_and_anything_but_slices_are_kept() -> None:
    avcc = H264Disposable(bytes([1, 0x64, 0, 0x1F, 0xFF, 0xE1, 0]))  # avcC header: 4-byte lengths

    def units(*nals: bytes) -> bytes:
        return b"".join(len(nal).to_bytes(4, "big") + nal for nal in nals)

    non_ref_slice = bytes([0x01, 0x9A, 0x00])  # nal_ref_idc 0, type 1
    assert avcc(units(non_ref_slice))
    assert avcc(units(bytes([0x09, 0xF0]), non_ref_slice, non_ref_slice))  # delimiter + two slices
    assert not avcc(units(bytes([0x41, 0x9A])))  # nal_ref_idc 2: a reference picture
    assert not avcc(units(bytes([0x65, 0x88])))  # IDR
    assert not avcc(units(bytes([0x68, 0xEE]), non_ref_slice))  # a PPS rides along: later pictures need it
    assert not avcc(units(bytes([0x06, 0x06]), non_ref_slice))  # SEI (here a recovery point)
    assert not avcc(units(bytes([0x0E, 0x80]), non_ref_slice))  # SVC prefix
    assert not avcc(units(bytes([0x09, 0xF0])))  # no slice at all
    assert not avcc(units(bytes([0x81, 0x9A])))  # forbidden_zero_bit set
    assert not avcc(units(non_ref_slice)[:-1])  # a length past the end
    assert not avcc(b"")

    annexb = H264Disposable(None)
    assert annexb(b"\x00\x00\x00\x01\x09\xf0\x00\x00\x01\x01\x9a\x00")
    assert not annexb(b"\x00\x00\x00\x01\x41\x9a\x00")
    assert not annexb(b"\x17\x00\x00\x01\x01\x9a")  # garbage before the first start code
    assert not annexb(b"\x01\x9a\x00")  # no start code


def test_frame_threaded_grabs_equal_single_threaded_ones(clips: dict[str, Path]) -> None:
    """Bit-exact frames stay bit-exact: the same times through two frame threads (with dropped
    packets and early answers) and through one, in random order and scrubbing forward."""
    rng = random.Random(7)
    times = [f"{rng.uniform(0, 4):.3f}" for _ in range(25)] + [f"{n / 25:.2f}" for n in range(30, 60)]
    options = GrabOptions()
    for kind in ("mp4", "ts"):
        with (
            ImageGenerator(clips[kind], options, decode_threads=1) as single,
            ImageGenerator(clips[kind], options, decode_threads=2) as threaded,
        ):
            for t in times:
                try:
                    expected = single.image_at(t)
                except Exception as exc:  # past the end of the short TS clip: both must refuse
                    with pytest.raises(type(exc)):
                        threaded.image_at(t)
                    continue
                got = threaded.image_at(t)
                assert (got.actual_time, got.image) == (expected.actual_time, expected.image), (kind, t)
