"""The benchmark's inputs: clips it makes itself with the ffmpeg CLI, plus real files from ../shared/media.

Everything lives under one cache directory (``bench/.cache`` by default), which is also the media root
of the stillframe server under test. Files are made once and reused; delete the directory to rebuild.
"""

from __future__ import annotations

import bisect
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"

# Real-world files from ../shared/media worth timing (longer, larger, or a different decode path).
SHARED_PICKS = (
    "h264_long_6min_longgop.mp4",  # 1080p Baseline, ~8 s GOP, 6 minutes
    "hevc_cra_opengop.mp4",  # 1080p HEVC, open GOP (CRA + RASL)
    "fmp4_multiple_sidx.mp4",  # 1080p fragmented MP4
    "ts_mpeg2_1080p.ts",  # MPEG-2 in MPEG-TS (no index: bisection seeks)
    "iphone_hevc_hlg_editlist_rot90_opengop.mp4",  # HEVC 10-bit HLG (tone mapping), rotation, edit list
)

SYNTHETIC_SECONDS = 30
FPS = 25


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


@dataclass(frozen=True)
class Spec:
    """One clip the benchmark makes."""

    name: str  # file stem, without the layout suffix
    codec: str  # h264 | hevc10
    width: int
    height: int
    gop_seconds: int
    seconds: int


SPECS = (
    *(
        Spec(f"h264_{h}p_gop{g}", "h264", w, h, g, SYNTHETIC_SECONDS)
        for (w, h) in ((1920, 1080), (1280, 720))
        for g in (1, 2, 10)
    ),
    Spec("hevc10_2160p_gop2", "hevc10", 3840, 2160, 2, 6),
)
LAYOUTS = ("faststart", "moovend")


@dataclass
class Asset:
    """A media file under the cache dir with what the benchmark needs to know about its video stream."""

    key: str  # short name used in results, e.g. "1080p_gop2" or "shared:hevc_cra_opengop"
    rel: str  # path relative to the media root (what the API is given)
    path: Path
    group: str  # synthetic | shared
    layout: str  # faststart | moovend | other
    codec: str = ""
    width: int = 0
    height: int = 0
    pix_fmt: str = ""
    gop_seconds: float | None = None
    duration: float = 0.0
    size: int = 0
    time_base: Fraction = Fraction(1, 1)
    pts: list[int] = field(default_factory=list)  # every video packet's pts, sorted
    keys: list[int] = field(default_factory=list)  # keyframe pts, sorted
    sizes: dict[int, int] = field(default_factory=dict)  # pts -> packet bytes
    first_pts: int = 0

    def probe(self) -> Asset:
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            self.codec = stream.codec_context.name
            self.width, self.height = stream.width, stream.height
            self.pix_fmt = str(stream.codec_context.pix_fmt)
            self.time_base = Fraction(stream.time_base or Fraction(1, 1_000_000))
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0 or packet.is_discard:
                    continue  # discarded packets (before an edit list's start) are never shown
                self.pts.append(packet.pts)
                self.sizes[packet.pts] = packet.size
                if packet.is_keyframe:
                    self.keys.append(packet.pts)
        self.pts.sort()
        self.keys.sort()
        if not self.pts:
            raise RuntimeError(f"{self.path}: no video packets with timestamps")
        self.first_pts = self.pts[0]
        if not self.keys or self.keys[0] > self.first_pts:
            self.keys.insert(0, self.first_pts)
        end = self.pts[-1] - self.first_pts
        self.duration = float(end * self.time_base)
        self.size = self.path.stat().st_size
        return self

    # -- timeline helpers (t in seconds from the first frame) --------------------------------------

    def target_pts(self, t: float) -> int:
        return self.first_pts + int(Fraction(t).limit_denominator(10**9) / self.time_base)

    def on_screen(self, t: float) -> int:
        """The pts of the frame on screen at t (the last one with pts <= target)."""
        i = bisect.bisect_right(self.pts, self.target_pts(t)) - 1
        return self.pts[max(i, 0)]

    def key_before(self, pts: int) -> int:
        i = bisect.bisect_right(self.keys, pts) - 1
        return self.keys[max(i, 0)]

    def nearest_key(self, t: float) -> int:
        target = self.target_pts(t)
        return min(self.keys, key=lambda k: abs(k - target))

    def time_of(self, pts: int) -> float:
        return float((pts - self.first_pts) * self.time_base)

    def gop_bytes(self, pts: int) -> int:
        """Bytes of the video packets of the GOP holding this frame (keyframe to next keyframe)."""
        start = self.key_before(pts)
        i = bisect.bisect_right(self.keys, start)
        end = self.keys[i] if i < len(self.keys) else None
        return sum(size for p, size in self.sizes.items() if p >= start and (end is None or p < end))

    def mean_gop_bytes(self) -> float:
        return sum(self.sizes.values()) / max(1, len(self.keys))

    def describe(self) -> dict[str, object]:
        return {
            "rel": self.rel,
            "group": self.group,
            "layout": self.layout,
            "codec": self.codec,
            "size": f"{self.width}x{self.height}",
            "pix_fmt": self.pix_fmt,
            "gop_seconds": self.gop_seconds,
            "keyframes": len(self.keys),
            "frames": len(self.pts),
            "duration_s": round(self.duration, 3),
            "file_bytes": self.size,
            "mean_gop_bytes": round(self.mean_gop_bytes()),
        }


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)


def _make(spec: Spec, out_dir: Path, log: list[str]) -> None:
    exe = ffmpeg_exe()
    moovend = out_dir / f"{spec.name}_moovend.mp4"
    faststart = out_dir / f"{spec.name}_faststart.mp4"
    if moovend.exists() and faststart.exists():
        return
    started = time.perf_counter()
    gop = spec.gop_seconds * FPS
    # Moving test pattern with light temporal noise: ~7 Mbit/s at 1080p, like real footage, where a
    # clean testsrc2 compresses to almost nothing and decodes unrealistically fast.
    source = f"testsrc2=size={spec.width}x{spec.height}:rate={FPS},noise=alls=6:allf=t"
    if spec.codec == "h264":
        codec = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-bf", "3", "-pix_fmt", "yuv420p"]
        codec += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    else:
        params = f"log-level=error:keyint={gop}:min-keyint={gop}:scenecut=0:bframes=3"
        codec = ["-c:v", "libx265", "-preset", "ultrafast", "-crf", "26", "-x265-params", params]
        codec += ["-pix_fmt", "yuv420p10le", "-tag:v", "hvc1"]
    tmp = moovend.with_suffix(".tmp.mp4")
    _run(
        [
            exe,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            source,
            "-t",
            str(spec.seconds),
            *codec,
            "-an",
            str(tmp),
        ]
    )
    tmp.replace(moovend)  # the mp4 muxer writes the moov at the end by default
    tmp = faststart.with_suffix(".tmp.mp4")
    _run(
        [
            exe,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(moovend),
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            str(tmp),
        ]
    )
    tmp.replace(faststart)
    log.append(f"made {spec.name} in {time.perf_counter() - started:.1f} s")


def build(cache: Path, *, shared: bool = True, say=print) -> dict[str, Asset]:
    """Make (or reuse) every input; returns them by key."""
    synth = cache / "synthetic"
    synth.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    for spec in SPECS:
        if not ((synth / f"{spec.name}_moovend.mp4").exists() and (synth / f"{spec.name}_faststart.mp4").exists()):
            say(f"  making {spec.name} ({spec.width}x{spec.height}, {spec.codec}, GOP {spec.gop_seconds} s)...")
        _make(spec, synth, log)
    for line in log:
        say("  " + line)
    assets: dict[str, Asset] = {}
    for spec in SPECS:
        short = spec.name.removeprefix("h264_")
        for layout in LAYOUTS:
            key = short if layout == "faststart" else f"{short}_moovend"
            path = synth / f"{spec.name}_{layout}.mp4"
            assets[key] = Asset(
                key, str(path.relative_to(cache)), path, "synthetic", layout, gop_seconds=spec.gop_seconds
            ).probe()
    if shared and SHARED_MEDIA.is_dir():
        dest = cache / "shared"
        dest.mkdir(exist_ok=True)
        for name in SHARED_PICKS:
            src = SHARED_MEDIA / name
            if not src.is_file():
                continue
            copy = dest / name  # a copy: the server refuses symlinks that leave its media root
            if not copy.exists() or copy.stat().st_size != src.stat().st_size:
                shutil.copyfile(src, copy)
            key = "shared:" + name.rsplit(".", 1)[0]
            try:
                asset = Asset(key, str(copy.relative_to(cache)), copy, "shared", "other").probe()
            except Exception as exc:  # a corpus file PyAV cannot read is skipped, not fatal
                say(f"  skipping {name}: {exc}")
                continue
            if len(asset.keys) > 1:
                asset.gop_seconds = round(asset.duration / max(1, len(asset.keys) - 1), 2)
            assets[key] = asset
    return assets


def cold_copies(asset: Asset, cache: Path, run_id: str, count: int) -> list[str]:
    """Hard links of an asset under new names: to the server each is a new asset (its identity includes
    the path), so the first request for one pays the open and probe. The OS page cache stays warm."""
    folder = cache / "cold" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    rels = []
    for i in range(count):
        link = folder / f"{asset.key.replace(':', '_')}-{i}{asset.path.suffix}"
        if not link.exists():
            try:
                os.link(asset.path, link)
            except OSError:
                shutil.copyfile(asset.path, link)
        rels.append(str(link.relative_to(cache)))
    return rels
