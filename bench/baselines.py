"""What stillframe is measured against: the ffmpeg CLI, a naive PyAV script, and the decode floor."""

from __future__ import annotations

import io
import resource
import subprocess
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from app.engine.decode import set_decoder_threads
from bench.media import Asset, ffmpeg_exe


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CliResult:
    wall: float
    cpu: float  # user + system seconds of the ffmpeg process (it threads, so this can exceed wall)
    ok: bool


def ffmpeg_cli_grab(source: str | Path, t: float, out: Path, *, keyframe: bool = False) -> CliResult:
    """``ffmpeg -ss T -i FILE -frames:v 1 out.jpg`` (with ``-skip_frame nokey`` for keyframe grabs):
    one process per grab, as a script shelling out to the CLI would do it."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    if keyframe:
        cmd += ["-skip_frame", "nokey"]
    cmd += ["-ss", f"{t:.6f}", "-i", str(source), "-frames:v", "1", str(out)]
    cpu0 = _child_cpu()
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    return CliResult(wall, _child_cpu() - cpu0, proc.returncode == 0 and out.exists() and out.stat().st_size > 0)


def naive_pyav_grab(path: Path, t: float) -> float:
    """The script most people write first: open, seek, decode forward to t, ``to_image()``, save as JPEG.
    Returns the wall time. (In-process: no interpreter start-up or import cost is counted.)"""
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        time_base = stream.time_base or Fraction(1, 1_000_000)
        container.seek(start + int(t / time_base), stream=stream)
        chosen = None
        for frame in container.decode(stream):
            if chosen is not None and frame.time is not None and frame.time - float(start * time_base) > t:
                break
            chosen = frame
        assert chosen is not None
        buffer = io.BytesIO()
        chosen.to_image().save(buffer, "JPEG", quality=85)
    return time.perf_counter() - started


@dataclass
class FloorResult:
    seconds: float
    decoded: int  # frames the decoder output
    pts: int  # the frame reached
    seek_landed_early: bool = False  # the demuxer's seek started before the keyframe we aimed at
    fell_back: bool = False  # skipping non-reference frames lost the target: decoded everything instead


class Floor:
    """The least decoding a grab must do, timed with the container already open.

    * exact: seek to the keyframe before the target frame, decode forward in decode order with
      ``skip_frame=NONREF`` (non-reference frames are dropped by the decoder without being decoded,
      which cannot change any other frame), except for the target's own packet, then drain the
      decoder so the target comes out at once. No colour conversion, no encode.
    * keyframe: seek to the keyframe nearest the target and decode that one packet.
    * span: seek to the keyframe before the first frame and decode every frame up to the last one:
      one forward decode of the span a batch covers.

    ``threads`` = 1 is the decoder as it comes (slice threads only, which single-slice streams do not
    use): the decoding work on one core, and the floor the targets are measured against. More is the
    decoder as the server sets one up for a grab while other workers are idle (``set_decoder_threads``:
    frame threads, slices for HEVC): what that work takes on as many cores (draining at the end costs
    it none of the frame threads' delay).
    """

    def __init__(self, asset: Asset, threads: int = 1) -> None:
        self.asset = asset
        self.container = av.open(str(asset.path))
        self.stream = self.container.streams.video[0]
        self.codec = self.stream.codec_context
        set_decoder_threads(self.stream, self.codec.name, threads)

    def close(self) -> None:
        self.container.close()

    def _seek(self, pts: int) -> None:
        self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)  # flushes the decoder
        self.codec.flush_buffers()

    def _aims(self, key: int) -> list[int]:
        """Where to seek for a frame of the GOP starting at ``key``: the keyframe itself, then earlier,
        for demuxers without an index (MPEG-TS) whose bisection seeks can land past it."""
        second = int(1 / self.asset.time_base)
        return [key, key - second, key - 4 * second, self.asset.first_pts - 3600 * second]

    def exact(self, t: float) -> FloorResult:
        target = self.asset.on_screen(t)
        key = self.asset.key_before(target)
        started = time.perf_counter()
        for skip_nonref in (True, False):
            for attempt, aim in enumerate(self._aims(key)):
                decoded, landed_early, found = self._decode_to(aim, key, target, skip_nonref)
                if found:
                    return FloorResult(
                        time.perf_counter() - started, decoded, target, landed_early or attempt > 0, not skip_nonref
                    )
        raise RuntimeError(f"floor: never reached pts {target} in {self.asset.key}")

    def _decode_to(self, aim: int, key: int, target: int, skip_nonref: bool) -> tuple[int, bool, bool]:
        self._seek(aim)
        decoded, landed_early, found = 0, False, False
        first = True
        codec = self.codec
        try:
            for packet in self.container.demux(self.stream):
                if first:
                    landed_early = packet.pts is not None and packet.pts < key
                    first = False
                is_target = packet.pts == target
                if skip_nonref:
                    codec.skip_frame = "DEFAULT" if is_target else "NONREF"
                frames = codec.decode(packet) if packet.size else codec.decode(None)
                for frame in frames:
                    decoded += 1
                    found = found or frame.pts == target
                if found or packet.size == 0:
                    break
                if is_target and skip_nonref:
                    for frame in codec.decode(None):  # drain: the target now, not after the next packets
                        decoded += 1
                        found = found or frame.pts == target
                    break
        finally:
            codec.skip_frame = "DEFAULT"
        return decoded, landed_early, found

    def keyframe(self, t: float) -> FloorResult:
        key = self.asset.nearest_key(t)
        started = time.perf_counter()
        for attempt, aim in enumerate(self._aims(key)):
            self._seek(aim)
            decoded = 0
            for packet in self.container.demux(self.stream):
                if packet.size == 0:
                    break
                if packet.pts != key:  # an index-less seek landed elsewhere: read on to the keyframe
                    if packet.pts is not None and packet.pts > key:
                        break
                    continue
                decoded += len(self.codec.decode(packet))
                decoded += len(self.codec.decode(None))
                break
            if decoded:
                return FloorResult(time.perf_counter() - started, decoded, key, attempt > 0)
        raise RuntimeError(f"floor: could not decode keyframe {key} in {self.asset.key}")

    def span(self, first_t: float, last_t: float) -> FloorResult:
        first = self.asset.on_screen(first_t)
        last = self.asset.on_screen(last_t)
        started = time.perf_counter()
        self._seek(self.asset.key_before(first))
        decoded = 0
        done = False
        for packet in self.container.demux(self.stream):
            for frame in self.codec.decode(packet) if packet.size else self.codec.decode(None):
                decoded += 1
                done = done or frame.pts == last
            if done or packet.size == 0:
                break
        return FloorResult(time.perf_counter() - started, decoded, last)
