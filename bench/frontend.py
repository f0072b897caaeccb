"""The frontend scenario (issue 16): storyboards, animated previews and posters over HTTP.

* storyboard: one sprite sheet (the default spacing: a tile every 5 s) of a 10-minute 1080p file,
  against the ffmpeg CLI's keyframe-only ``fps,scale,tile`` of the same tile count (want >= 5x
  faster) and against the floor of decoding those keyframes (each nearest keyframe, one packet each).
* animated: a 2 s WebP at 10 fps against the floor of decoding its frames (one forward decode of the
  span; want <= 1.5x).
* poster: ``t=auto`` against one keyframe grab, both on names the server has not seen (nothing remembered).
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.baselines import Floor
from bench.media import FPS, Asset, Spec, _make, cold_copies, ffmpeg_exe
from bench.stats import summary

LONG_SPEC = Spec("h264_1080p_10min_gop2", "h264", 1920, 1080, 2, 600)
QUICK_SPEC = Spec("h264_1080p_1min_gop2", "h264", 1920, 1080, 2, 60)
TILE_INTERVAL = 5  # seconds: the default spacing for a long video
TILE_WIDTH = 160


def _long_asset(ctx: Any, spec: Spec) -> Asset:
    folder = ctx.cache / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    _make(spec, folder, log)
    for line in log:
        ctx.say("  " + line)
    path = folder / f"{spec.name}_faststart.mp4"
    key = spec.name.removeprefix("h264_")
    return Asset(key, str(path.relative_to(ctx.cache)), path, "synthetic", "faststart", gop_seconds=2).probe()


def _cli_storyboard(asset: Asset, tiles: int, out: Path) -> float:
    columns = 10
    rows = math.ceil(tiles / columns)
    chain = f"fps=1/{TILE_INTERVAL},scale={TILE_WIDTH}:-2,tile={columns}x{rows}"
    started = time.perf_counter()
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-y",
            "-skip_frame",
            "nokey",
            "-i",
            str(asset.path),
            "-vf",
            chain,
            "-frames:v",
            "1",
            str(out),
        ],
        check=True,
    )
    return time.perf_counter() - started


def _timed_get(ctx: Any, path: str, params: dict[str, str]) -> tuple[float, Any]:
    started = time.perf_counter()
    response = ctx.client.get(path, params=params)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{path} {params}: {response.status_code} {response.text[:200]}")
    return seconds, response


def scenario_frontend(ctx: Any, spec: Spec | None = None) -> dict[str, Any]:
    """``spec``: the long video (default: 10 minutes of 1080p, one minute in a quick run)."""
    samples = 2 if ctx.cfg.quick else 4
    asset = _long_asset(ctx, spec or (QUICK_SPEC if ctx.cfg.quick else LONG_SPEC))
    tiles = math.ceil(asset.duration / TILE_INTERVAL)
    out: dict[str, Any] = {"asset": asset.key, "duration_s": round(asset.duration, 3), "tiles": tiles}

    # Storyboard: a fresh sheet each sample (the tile width differs by a pixel: nothing cached).
    ours = []
    for i in range(samples):
        params = {"url": asset.rel, "interval": str(TILE_INTERVAL), "tile_width": str(TILE_WIDTH + i)}
        ours.append(_timed_get(ctx, "/v1/storyboard.jpg", params)[0])
    cli = [_cli_storyboard(asset, tiles, ctx.tmp / f"cli-sheet-{i}.jpg") for i in range(max(1, samples // 2))]
    floor = Floor(asset)
    try:
        keyframe_floor = [sum(floor.keyframe(k * TILE_INTERVAL).seconds for k in range(tiles)) for _ in range(2)]
    finally:
        floor.close()
    out["storyboard"] = {
        "stillframe": summary(ours),
        "ffmpeg_cli": summary(cli),
        "keyframe_floor": summary(keyframe_floor),
        "x_cli": round(min(ours) / min(cli), 3),
        "x_floor": round(min(ours) / min(keyframe_floor), 3),
    }
    ctx.say(
        f"  storyboard of {tiles} tiles: {min(ours) * 1000:.0f} ms, CLI {min(cli) * 1000:.0f} ms "
        f"({min(cli) / min(ours):.1f}x faster; want >= 5x), floor {min(keyframe_floor) * 1000:.0f} ms"
    )

    # Animated: 2 s at 10 fps, at a different start each sample.
    ours, spans = [], []
    floor = Floor(asset)
    try:
        for i in range(samples):
            start = round((asset.duration - 2.2) * (i + 1) / (samples + 1), 3)  # spread, inside the asset
            params = {"url": asset.rel, "start": f"{start}", "end": f"{start + 2}", "fps": "10"}
            seconds, _ = _timed_get(ctx, "/v1/animated.webp", params)
            ours.append(seconds)
            spans.append(floor.span(start, start + 2 - 1 / FPS).seconds)
    finally:
        floor.close()
    out["animated"] = {
        "stillframe": summary(ours),
        "span_floor": summary(spans),
        "x_floor": round(sorted(ours)[len(ours) // 2] / sorted(spans)[len(spans) // 2], 3),
    }
    ctx.say(f"  animated 2 s: x floor {out['animated']['x_floor']} (want <= 1.5)")

    # Poster: t=auto on names the server has never seen, against one keyframe grab.
    # Both on names the server has never seen (each pays its open and probe alike).
    names = cold_copies(asset, ctx.cache, ctx.run_id, 2 * samples)
    posters = [_timed_get(ctx, "/v1/frame", {"url": name, "t": "auto"})[0] for name in names[:samples]]
    keyframes = [
        _timed_get(
            ctx, "/v1/frame", {"url": name, "t": f"{asset.duration * (i + 1) / (samples + 2):.3f}", "tolerance": "inf"}
        )[0]
        for i, name in enumerate(names[samples:])
    ]
    out["poster"] = {
        "stillframe_auto": summary(posters),
        "keyframe_grab": summary(keyframes),
        "x_keyframe_grab": round(sorted(posters)[len(posters) // 2] / sorted(keyframes)[len(keyframes) // 2], 3),
    }
    ctx.say(f"  poster (t=auto, cold): x one keyframe grab {out['poster']['x_keyframe_grab']}")
    return out
