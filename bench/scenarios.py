"""The five scenarios of issue 5, plus a profile of a warm grab. Each returns a JSON-able dict."""

from __future__ import annotations

import asyncio
import cProfile
import functools
import io
import json
import os
import pstats
import random
import resource
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np

from app.config import Settings
from bench import baselines
from bench.client import LeanClient
from bench.media import Asset, cold_copies
from bench.servers import Origin, Stillframe, TreeMonitor, process_tree
from bench.stats import parse_server_timing, percentile, ratio, summary, timing_breakdown
from tests.s3_server import CREDENTIALS, S3Server, S3Unavailable


@dataclass
class Config:
    quick: bool = False
    seed: int = 5
    samples: int = 12  # warm exact grabs per asset and method (at most; see cell_budget)
    min_samples: int = 3
    cell_budget: float = 10.0  # seconds per asset in the exact scenario, once min_samples are in
    cold_samples: int = 3
    shared_samples: int = 4
    keyframe_samples: int = 12
    batch_size: int = 100
    batch_span: float = 8.0  # seconds of the asset the batch times fall in
    batch_repeats: int = 2
    batch_cli_calls: int = 15  # CLI calls actually made (the cost of 100 is extrapolated from them)
    remote_samples: int = 10
    remote_cli_samples: int = 4
    remote_latency: float = 0.020
    throughput_seconds: float = 15.0
    soak_seconds: float = 600.0  # each of the soak's three runs (bench/soak.py)
    clients: tuple[int, ...] = (1, 8, 64)
    profile_grabs: int = 20
    exact_assets: tuple[str, ...] = (
        "720p_gop1",
        "720p_gop2",
        "720p_gop10",
        "1080p_gop1",
        "1080p_gop2",
        "1080p_gop10",
        "hevc10_2160p_gop2",
    )
    cold_assets: tuple[str, ...] = (
        "720p_gop2",
        "1080p_gop1",
        "1080p_gop2",
        "1080p_gop2_moovend",
        "1080p_gop10",
        "hevc10_2160p_gop2",
    )
    keyframe_assets: tuple[str, ...] = ("720p_gop2", "1080p_gop2", "720p_gop10", "1080p_gop10", "hevc10_2160p_gop2")
    one_core_asset: str = "1080p_gop2"  # the keyframe grab measured again with the server on one core
    # each output format over HTTP on these (the real file only where ../shared/media is): the synthetic
    # pattern's per-pixel chroma noise is unlike real footage's, and WebP's size shows it
    formats_assets: tuple[str, ...] = ("1080p_gop2", "shared:hevc_cra_opengop")
    formats_samples: int = 8  # keyframe grabs per output format
    effort_frames: int = 6  # frames the encoder-effort sweep encodes (the asset's, then real media's)
    naive_skip: tuple[str, ...] = ()  # assets the naive script is not run on
    batch_asset: str = "1080p_gop2"
    remote_assets: tuple[str, ...] = ("1080p_gop2", "1080p_gop2_moovend")
    mix_assets: tuple[str, ...] = ("720p_gop1", "720p_gop2", "1080p_gop1", "1080p_gop2")

    @classmethod
    def quick_mode(cls) -> Config:
        return cls(
            quick=True,
            samples=3,
            min_samples=2,
            cell_budget=3.0,
            cold_samples=1,
            shared_samples=0,
            keyframe_samples=4,
            batch_size=30,
            batch_span=4.0,
            batch_repeats=1,
            batch_cli_calls=3,
            remote_samples=3,
            remote_cli_samples=1,
            throughput_seconds=4.0,
            soak_seconds=10.0,
            profile_grabs=5,
            exact_assets=("720p_gop2", "1080p_gop2"),
            cold_assets=("1080p_gop2",),
            keyframe_assets=("720p_gop2", "1080p_gop2"),
            formats_samples=3,
            effort_frames=1,
            remote_assets=("1080p_gop2",),
            mix_assets=("720p_gop2", "1080p_gop2"),
        )


@dataclass
class Context:
    cfg: Config
    cache: Path
    run_id: str
    assets: dict[str, Asset]
    server: Stillframe
    origin: Origin
    tmp: Path
    say: Any = print
    store: S3Server | None = None  # the object store (moto's server), where it can run
    client: httpx.Client = field(init=False)  # jobs and everything but the timed grabs
    grabber: LeanClient = field(init=False)  # the timed grabs (see bench.client)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.server.base_url, timeout=300)
        self.grabber = LeanClient(self.server.base_url)

    def rng(self, *names: str) -> random.Random:
        return random.Random(zlib.crc32("/".join(names).encode()) ^ self.cfg.seed)

    def times(self, asset: Asset, n: int, *names: str, end: float | None = None) -> list[float]:
        """n distinct uniformly random times in the asset (fixed seed): distinct, so the server's image
        cache (keyed by every option, t included) never answers for the decoder."""
        rng = self.rng(asset.key, *names)
        end = max(asset.duration if end is None else end, 0.001)
        seen: set[str] = set()
        out: list[float] = []
        while len(out) < n:
            t = round(rng.uniform(0, end), 6)
            if f"{t:.6f}" not in seen:
                seen.add(f"{t:.6f}")
                out.append(t)
        return out


@dataclass
class Grab:
    seconds: float
    status: int
    actual: float | None
    timing: dict[str, float]
    body: bytes  # (only an error's: a problem)
    size: int  # bytes of the body


def http_grab(ctx: Context, url: str, t: float, *, client: LeanClient | None = None, **extra: str) -> Grab:
    params = {"url": url, "t": f"{t:.6f}", "format": "jpeg", **extra}
    started = time.perf_counter()
    status, headers, body = (client or ctx.grabber).get("/v1/frame", params)
    seconds = time.perf_counter() - started
    actual = headers.get("x-actual-time")
    return Grab(
        seconds,
        status,
        float(actual) if actual else None,
        parse_server_timing(headers.get("server-timing")),
        body if status != 200 else b"",
        len(body),
    )


def _problem_code(body: bytes) -> str:
    """The ``code`` of an RFC 9457 problem body, or ''."""
    try:
        value = json.loads(body)
    except ValueError:
        return ""
    return str(value.get("code", "")) if isinstance(value, dict) else ""


def _record_error(errors: Counter[str], grab: Grab) -> None:
    errors[f"{grab.status} {_problem_code(grab.body)}".strip()] += 1


def _method_block(seconds: list[float], **extra: Any) -> dict[str, Any]:
    return {**summary(seconds), **extra}


# ---------------------------------------------------------------------------------------------- 1. exact


def scenario_exact(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    out: dict[str, Any] = {}
    keys = [k for k in cfg.exact_assets if k in ctx.assets]
    if cfg.shared_samples:
        keys += [k for k in ctx.assets if ctx.assets[k].group == "shared"]
    for key in keys:
        asset = ctx.assets[key]
        shared = asset.group == "shared"
        n = cfg.shared_samples if shared else cfg.samples
        times = ctx.times(asset, n + 1, "exact")
        floor = baselines.Floor(asset)
        methods = ["stillframe_warm", "ffmpeg_cli", "floor"]
        threads = Settings().decode_threads  # the server's, from the same environment
        floor_threads = baselines.Floor(asset, threads) if threads > 1 else None
        if floor_threads is not None:
            methods.append("floor_threads")
        if not shared and key not in cfg.naive_skip:
            methods.insert(2, "naive_pyav")
        samples: dict[str, list[float]] = {m: [] for m in methods}
        cli_cpu: list[float] = []
        timings: list[dict[str, float]] = []
        errors: Counter[str] = Counter()
        mismatches = 0
        floor_fallbacks = 0
        floor_frames: list[int] = []
        warmup = http_grab(ctx, asset.rel, times[0])  # opens the asset in a worker: not counted
        if warmup.status != 200:
            _record_error(errors, warmup)
        started = time.perf_counter()
        for i, t in enumerate(times[1:]):
            order = methods[i % len(methods) :] + methods[: i % len(methods)]  # rotate: no method always first
            for method in order:
                try:
                    if method == "stillframe_warm":
                        grab = http_grab(ctx, asset.rel, t)
                        if grab.status != 200:
                            _record_error(errors, grab)
                            continue
                        samples[method].append(grab.seconds)
                        timings.append(grab.timing)
                        expected = asset.time_of(asset.on_screen(t))
                        if not shared and grab.actual is not None and abs(grab.actual - expected) > 1e-6:
                            mismatches += 1
                    elif method == "ffmpeg_cli":
                        result = baselines.ffmpeg_cli_grab(asset.path, t, ctx.tmp / "cli.jpg")
                        if result.ok:
                            samples[method].append(result.wall)
                            cli_cpu.append(result.cpu)
                        else:
                            errors["ffmpeg_cli failed"] += 1
                    elif method == "naive_pyav":
                        samples[method].append(baselines.naive_pyav_grab(asset.path, t))
                    elif method == "floor_threads" and floor_threads is not None:
                        samples[method].append(floor_threads.exact(t).seconds)
                    else:
                        result_f = floor.exact(t)
                        samples[method].append(result_f.seconds)
                        floor_frames.append(result_f.decoded)
                        floor_fallbacks += result_f.fell_back
                except Exception as exc:
                    errors[f"{method}: {type(exc).__name__}: {exc}"[:160]] += 1
            if i + 1 >= (min(cfg.min_samples, n)) and time.perf_counter() - started > cfg.cell_budget:
                break
        floor.close()
        if floor_threads is not None:
            floor_threads.close()
        block: dict[str, Any] = {
            "asset": asset.describe(),
            "stillframe_warm": _method_block(
                samples["stillframe_warm"], server_timing_p50_ms=timing_breakdown(timings)
            ),
            "ffmpeg_cli": _method_block(
                samples["ffmpeg_cli"], cpu_p50_ms=round((percentile(cli_cpu, 50) or 0) * 1000, 2)
            ),
            "floor": _method_block(
                samples["floor"],
                frames_decoded_p50=percentile(floor_frames, 50),
                fell_back_to_full_decode=floor_fallbacks,
            ),
        }
        if "naive_pyav" in samples:
            block["naive_pyav"] = _method_block(samples["naive_pyav"])
        if "floor_threads" in samples:
            block["floor_threads"] = _method_block(samples["floor_threads"], threads=threads)
        block["frame_mismatches_vs_floor"] = mismatches
        if key in cfg.cold_assets:
            block["stillframe_cold"] = _cold(ctx, asset, errors)
        block["errors"] = dict(errors)
        s, c, f = (block[m]["p50_ms"] for m in ("stillframe_warm", "ffmpeg_cli", "floor"))
        block["ratios"] = {"warm_vs_cli": ratio(s, c), "warm_vs_floor": ratio(s, f)}
        if "floor_threads" in block:
            block["ratios"]["warm_vs_floor_threads"] = ratio(s, block["floor_threads"]["p50_ms"])
        if "stillframe_cold" in block:
            block["ratios"]["cold_vs_cli"] = ratio(block["stillframe_cold"]["p50_ms"], c)
        out[key] = block
        ctx.say(
            f"  exact {key:<42} stillframe {s} ms  cli {c} ms  floor {f} ms"
            + (f" ({block['floor_threads']['p50_ms']} ms on {threads} threads)" if "floor_threads" in block else "")
            + (f"  cold {block['stillframe_cold']['p50_ms']} ms" if "stillframe_cold" in block else "")
            + (f"  errors {dict(errors)}" if errors else "")
        )
    # moov-at-end clips cold (same bytes, index at the end), when asked for without their faststart twin
    for key in ctx.cfg.cold_assets:
        if key in out or key not in ctx.assets:
            continue
        errors = Counter()
        asset = ctx.assets[key]
        block = {"asset": asset.describe(), "stillframe_cold": _cold(ctx, asset, errors), "errors": dict(errors)}
        out[key] = block
        ctx.say(f"  exact {key:<42} cold {block['stillframe_cold']['p50_ms']} ms")
    return out


def _cold(ctx: Context, asset: Asset, errors: Counter[str]) -> dict[str, Any]:
    """The first request for an asset the server has never opened (a new name for the same bytes)."""
    rels = cold_copies(asset, ctx.cache, ctx.run_id, ctx.cfg.cold_samples)
    times = ctx.times(asset, len(rels), "cold")
    seconds, timings = [], []
    for rel, t in zip(rels, times, strict=True):
        grab = http_grab(ctx, rel, t)
        if grab.status != 200:
            _record_error(errors, grab)
            continue
        seconds.append(grab.seconds)
        timings.append(grab.timing)
    return _method_block(seconds, server_timing_p50_ms=timing_breakdown(timings))


# ---------------------------------------------------------------------------------------------- 2. keyframe


def scenario_keyframe(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    out: dict[str, Any] = {}
    for key in [k for k in cfg.keyframe_assets if k in ctx.assets]:
        asset = ctx.assets[key]
        # Times before the last keyframe only: past it ``ffmpeg -skip_frame nokey -ss T`` has no keyframe
        # at or after T to output and writes nothing.
        times = ctx.times(asset, cfg.keyframe_samples + 1, "keyframe", end=asset.time_of(asset.keys[-1]))
        floor = baselines.Floor(asset)
        methods = ["stillframe_warm", "ffmpeg_cli_nokey", "floor"]
        samples: dict[str, list[float]] = {m: [] for m in methods}
        timings: list[dict[str, float]] = []
        errors: Counter[str] = Counter()
        not_key = 0
        reused = 0
        decoded: list[float] = []  # the grabs that decoded their keyframe (not the one before's again)
        key_times = {round(asset.time_of(k), 6) for k in asset.keys}
        warmup = http_grab(ctx, asset.rel, times[0], tolerance="inf")
        if warmup.status != 200:
            _record_error(errors, warmup)
        for i, t in enumerate(times[1:]):
            order = methods[i % 3 :] + methods[: i % 3]
            for method in order:
                try:
                    if method == "stillframe_warm":
                        grab = http_grab(ctx, asset.rel, t, tolerance="inf")
                        if grab.status != 200:
                            _record_error(errors, grab)
                            continue
                        samples[method].append(grab.seconds)
                        timings.append(grab.timing)
                        if grab.timing.get("render") == 0 and grab.timing.get("encode") == 0:
                            reused += 1  # the same keyframe as the grab before: its image again
                        else:
                            decoded.append(grab.seconds)
                        if grab.actual is not None and round(grab.actual, 6) not in key_times:
                            not_key += 1
                    elif method == "ffmpeg_cli_nokey":
                        result = baselines.ffmpeg_cli_grab(asset.path, t, ctx.tmp / "cli.jpg", keyframe=True)
                        if result.ok:
                            samples[method].append(result.wall)
                        else:
                            errors["ffmpeg_cli failed"] += 1
                    else:
                        samples[method].append(floor.keyframe(t).seconds)
                except Exception as exc:
                    errors[f"{method}: {type(exc).__name__}: {exc}"[:160]] += 1
        floor.close()
        block: dict[str, Any] = {
            "asset": asset.describe(),
            "stillframe_warm": _method_block(
                samples["stillframe_warm"], server_timing_p50_ms=timing_breakdown(timings)
            ),
            "stillframe_warm_decoded": _method_block(decoded),
            "ffmpeg_cli_nokey": _method_block(samples["ffmpeg_cli_nokey"]),
            "floor": _method_block(samples["floor"]),
            "reused_previous_image": reused,
            "not_a_keyframe": not_key,
            "errors": dict(errors),
        }
        s, c, f = (block[m]["p50_ms"] for m in methods)
        d = block["stillframe_warm_decoded"]["p50_ms"]
        block["ratios"] = {"warm_vs_cli": ratio(s, c), "warm_vs_floor": ratio(s, f), "decoded_vs_cli": ratio(d, c)}
        out[key] = block
        ctx.say(
            f"  keyframe {key:<24} stillframe {s} ms ({d} ms over the {len(decoded)} that decoded; {reused} reused "
            f"the grab before's keyframe)  cli -skip_frame nokey {c} ms  floor {f} ms"
        )
        if key == cfg.one_core_asset:
            block["stillframe_one_core"] = _keyframe_on_one_core(ctx, asset, times)
            one = block["stillframe_one_core"]
            ctx.say(f"  keyframe {key:<24} on one core: {one.get('p50_ms', one.get('skipped'))} ms")
    return out


def _keyframe_on_one_core(ctx: Context, asset: Asset, times: list[float]) -> dict[str, Any]:
    """The 1080p target's own condition: the same keyframe grabs from a server confined to one core
    (API process and its one decoder worker, one decoder thread), the client (this process) on the
    other cores so that it does not take the server's. Only grabs that decoded are counted."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return {"skipped": "needs two cores: one for the server, the rest for the client"}
    server = Stillframe(
        ctx.cache,
        origin_port=None,
        log_path=ctx.cache / "server-one-core.log",
        workers=1,
        cpus={allowed[0]},
        extra_env={"STILLFRAME_DECODE_THREADS": "1"},
    )
    client = LeanClient(server.base_url)
    os.sched_setaffinity(0, set(allowed[1:]))
    try:
        decoded: list[float] = []
        timings: list[dict[str, float]] = []
        http_grab(ctx, asset.rel, times[0], client=client, tolerance="inf")  # warm: open the asset
        for t in times[1:]:
            grab = http_grab(ctx, asset.rel, t, client=client, tolerance="inf")
            if grab.status == 200 and not (grab.timing.get("render") == 0 and grab.timing.get("encode") == 0):
                decoded.append(grab.seconds)
                timings.append(grab.timing)
        # (checked, not assumed: every process of the server, its decoder worker included)
        server_cores = sorted(set().union(*(os.sched_getaffinity(pid) for pid in process_tree(server.pid))))
    finally:
        os.sched_setaffinity(0, set(allowed))
        client.close()
        server.stop()
    return _method_block(decoded, server_cores=server_cores, server_timing_p50_ms=timing_breakdown(timings))


# ---------------------------------------------------------------------------------------------- formats

OUTPUT_FORMATS = ("jpeg", "webp", "avif", "png")
# The encoder-effort sweep behind the WebP and AVIF defaults (app.engine.options): each setting over the
# same frames, JPEG at its default as the reference.
EFFORTS: tuple[tuple[str, dict[str, int]], ...] = (
    ("jpeg", {}),
    ("webp", {"webp_method": 0}),
    ("webp", {"webp_method": 2}),
    ("webp", {"webp_method": 4}),
    ("avif", {"avif_speed": 8}),
    ("avif", {"avif_speed": 9}),
    ("avif", {"avif_speed": 10}),
)


def scenario_formats(ctx: Context) -> dict[str, Any]:
    """What each output format costs: keyframe grabs over HTTP with the server's settings (only grabs
    that decoded), and, in-process, the encoder-effort sweep over a few frames (the first asset's,
    then real media's): time, bytes and PSNR against the rendered frame."""
    assets = [ctx.assets[key] for key in ctx.cfg.formats_assets if key in ctx.assets]
    out: dict[str, Any] = {"http": {}, "effort_sweep": _effort_sweep(ctx, assets[0])}
    for asset in assets:
        out["http"][asset.key] = _formats_over_http(ctx, asset)
    return out


def _formats_over_http(ctx: Context, asset: Asset) -> dict[str, Any]:
    times = ctx.times(asset, ctx.cfg.formats_samples, "formats", end=asset.time_of(asset.keys[-1]))
    out: dict[str, Any] = {}
    for fmt in OUTPUT_FORMATS:
        seconds, sizes, timings = [], [], []
        errors: Counter[str] = Counter()
        for t in times:
            grab = http_grab(ctx, asset.rel, t, tolerance="inf", format=fmt)
            if grab.status != 200:
                _record_error(errors, grab)
                continue
            if grab.timing.get("render") == 0 and grab.timing.get("encode") == 0:
                continue  # the same keyframe as the grab before: its image again
            seconds.append(grab.seconds)
            sizes.append(grab.size)
            timings.append(grab.timing)
        out[fmt] = block = _method_block(
            seconds,
            bytes_p50=int(percentile(sizes, 50) or 0),
            server_timing_p50_ms=timing_breakdown(timings),
            errors=dict(errors),
        )
        ctx.say(
            f"  formats {asset.key:<24} {fmt:<5} p50 {block['p50_ms']} ms, {block['bytes_p50']} B "
            f"({len(seconds)} grabs)"
        )
    return out


def _effort_sweep(ctx: Context, asset: Asset) -> dict[str, Any]:
    from PIL import Image

    from app.engine.encode import encode_image
    from app.engine.options import EncodeOptions, RenderOptions
    from app.engine.render import render_frame

    sources = [asset] + [a for a in ctx.assets.values() if a.group == "shared"]
    images: list[tuple[str, Image.Image]] = []
    for source in sources[: ctx.cfg.effort_frames]:
        with av.open(str(source.path)) as container:
            stream = container.streams.video[0]
            container.seek(source.pts[len(source.pts) // 2], stream=stream)  # the keyframe before the middle
            frame = next(container.decode(stream))
            images.append((source.key, render_frame(frame, RenderOptions(), stream=stream)))
    rows = []
    for fmt, effort in EFFORTS:
        options = EncodeOptions(format=fmt, **effort)  # type: ignore[arg-type]
        total_s, total_bytes, psnrs = 0.0, 0, []
        for _, image in images:
            best = float("inf")
            for _ in range(2):
                started = time.perf_counter()
                data = encode_image(image, options)
                best = min(best, time.perf_counter() - started)
            total_s += best
            total_bytes += len(data)
            psnrs.append(_psnr(image, data))
        default = all(getattr(EncodeOptions(), knob) == value for knob, value in effort.items())
        rows.append(
            {
                "format": fmt,
                **effort,
                "default": default,
                "ms": round(total_s * 1000, 1),
                "bytes": total_bytes,
                "psnr_db_median": round(percentile(psnrs, 50) or 0, 2),  # (clean frames reach 60 dB and more)
            }
        )
        knobs = ", ".join(f"{k}={v}" for k, v in effort.items()) or "quality 85"
        ctx.say(
            f"  effort {fmt:<4} {knobs:<14}{' (default)' if default else '          '} {rows[-1]['ms']:>7} ms "
            f"{total_bytes:>9} B  PSNR median {rows[-1]['psnr_db_median']} dB over {len(images)} frames"
        )
    return {"frames": [key for key, _ in images], "settings": rows}


def _psnr(image: Any, data: bytes) -> float:
    from PIL import Image

    reference = np.asarray(image.convert("RGB"), dtype=np.float64)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
    mse = float(np.mean((decoded - reference) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


# ---------------------------------------------------------------------------------------------- 3. batch


def scenario_batch(ctx: Context) -> dict[str, Any]:
    from app.engine import FrameResult, ImageGenerator
    from app.engine.options import GrabOptions

    cfg = ctx.cfg
    asset = ctx.assets[cfg.batch_asset]
    rng = ctx.rng(asset.key, "batch")
    lo = min(2.0, max(0.0, asset.duration - cfg.batch_span))
    hi = min(asset.duration, lo + cfg.batch_span)
    times = sorted({round(rng.uniform(lo, hi), 6) for _ in range(cfg.batch_size * 2)})
    times = sorted(rng.sample(times, cfg.batch_size))
    shuffled = times[:]
    rng.shuffle(shuffled)
    out: dict[str, Any] = {
        "asset": asset.describe(),
        "times": len(times),
        "span_s": [times[0], times[-1]],
    }

    def engine(order: list[float]) -> dict[str, Any]:
        runs: list[float] = []
        parts: dict[str, float] = {}
        failures = 0
        for _ in range(1):
            started = time.perf_counter()
            with ImageGenerator(asset.path, GrabOptions()) as generator:
                seeks_at_open = generator.stats.seeks
                results = list(generator.images_for([f"{t:.6f}" for t in order]))
                # (a diagnostic: a forward pass over the span needs one seek per GOP at most)
                seeks = generator.stats.seeks - seeks_at_open
            runs.append(time.perf_counter() - started)
            for item in results:
                if not isinstance(item, FrameResult):
                    failures += 1
                    continue
                for name, value in item.timings.items():
                    parts[name] = parts.get(name, 0.0) + value
        seconds = percentile(runs, 50) or 0
        component_s = {k: round(v, 3) for k, v in parts.items()}
        return {
            "seconds": round(seconds, 3),
            "seeks": seeks,
            "distinct_frames": len({item.pts for item in results if isinstance(item, FrameResult)}),
            "runs": [round(r, 3) for r in runs],
            "failures": failures,
            "components_s": component_s,
        }

    # Repeats are interleaved (sorted, shuffled, jobs, span; again) so that a noisy spell on the machine
    # does not land on one method only; each method reports the median of its runs.
    jobs = ctx.server.has_path("/v1/jobs")
    runs: dict[str, list[dict[str, Any]]] = {}
    floor = baselines.Floor(asset)
    spans = []
    for _ in range(cfg.batch_repeats):
        runs.setdefault("engine_sorted", []).append(engine(times))
        runs.setdefault("engine_shuffled", []).append(engine(shuffled))
        if jobs:
            runs.setdefault("jobs_api_sorted", []).append(_job(ctx, asset, times))
            runs.setdefault("jobs_api_shuffled", []).append(_job(ctx, asset, shuffled))
        spans.append(floor.span(times[0], times[-1]))
    floor.close()
    for name, items in runs.items():
        timed = [item for item in items if item.get("seconds")]
        if len(timed) < len(items):  # a failed run: report it (no time), never the others' median
            failed = next(item for item in items if not item.get("seconds"))
            out[name] = {**failed, "runs": len(items), "failed_runs": len(items) - len(timed)}
            continue
        median = sorted(timed, key=lambda item: item["seconds"])[(len(timed) - 1) // 2]
        out[name] = {**median, "runs": [item["seconds"] for item in timed]}
    if not jobs:
        out["jobs_api"] = "POST /v1/jobs not available on this server"
    out["span_decode"] = {
        "seconds": round(percentile([s.seconds for s in spans], 50) or 0, 3),
        "runs": [round(s.seconds, 3) for s in spans],
        "frames": spans[0].decoded,
    }

    calls = min(cfg.batch_cli_calls, len(times))
    picked = rng.sample(times, calls)
    cli = [baselines.ffmpeg_cli_grab(asset.path, t, ctx.tmp / "cli.jpg") for t in picked]
    per_call = [c.wall for c in cli if c.ok]
    mean = sum(per_call) / len(per_call) if per_call else None
    out["ffmpeg_cli"] = {
        **summary(per_call),
        "calls_made": len(per_call),
        "seconds_for_all": round(mean * len(times), 3) if mean else None,
        "extrapolated": len(per_call) < len(times),
        "cpu_seconds_for_all": round(sum(c.cpu for c in cli) / max(1, len(cli)) * len(times), 3),
    }
    span = out["span_decode"]["seconds"]
    cli_all = out["ffmpeg_cli"]["seconds_for_all"]
    out["ratios"] = {}
    for name in ("engine_sorted", "engine_shuffled", "jobs_api_sorted", "jobs_api_shuffled"):
        if isinstance(out.get(name), dict) and out[name].get("seconds"):
            seconds = out[name]["seconds"]
            out["ratios"][f"{name}_vs_span"] = ratio(seconds, span)
            out["ratios"][f"cli_vs_{name}"] = ratio(cli_all, seconds)
    ctx.say(
        f"  batch {len(times)} times on {asset.key}: engine sorted {out['engine_sorted']['seconds']} s, shuffled "
        f"{out['engine_shuffled']['seconds']} s"
        + (f", jobs API {out['jobs_api_sorted'].get('seconds') or 'FAILED'} s" if "jobs_api_sorted" in out else "")
        + f"; span decode {span} s ({out['span_decode']['frames']} frames); "
        f"{len(times)} CLI calls {cli_all} s"
        + (f" (extrapolated from {len(per_call)})" if len(per_call) < len(times) else "")
    )
    return out


def _job(ctx: Context, asset: Asset, times: list[float]) -> dict[str, Any]:
    """POST /v1/jobs and poll until it finishes; then fetch every image (counted separately)."""
    body = {"url": asset.rel, "times": [f"{t:.6f}" for t in times], "format": "jpeg"}
    started = time.perf_counter()
    response = ctx.client.post("/v1/jobs", json=body)
    if response.status_code not in (200, 201, 202):
        return {"error": f"{response.status_code} {response.text[:200]}"}
    job = response.json()
    location = response.headers.get("location") or f"/v1/jobs/{job['id']}"
    while job.get("status") not in ("completed", "failed", "cancelled"):
        time.sleep(0.02)
        job = ctx.client.get(location).json()
        if time.perf_counter() - started > 600:
            return {"error": "job did not finish in 600 s"}
    seconds = time.perf_counter() - started
    fetched = time.perf_counter()
    results = job.get("results") or ctx.client.get(location).json().get("results", [])
    ok = 0
    problems: Counter[str] = Counter()
    detail = ""
    for index, item in enumerate(results):
        if item.get("status") == "succeeded":
            if ctx.client.get(f"{location}/results/{index}").status_code == 200:
                ok += 1
        else:
            problem = item.get("problem") or item.get("error") or {}
            problem = problem if isinstance(problem, dict) else {}
            problems[f"{item.get('status')} {problem.get('code', '')}".strip()] += 1
            detail = detail or str(problem.get("detail", ""))[:200]
    complete = job.get("status") == "completed" and ok == len(times)
    return {
        # a job that did not produce every image has no comparable time
        "seconds": round(seconds, 3) if complete else None,
        "wall_s": round(seconds, 3),
        "complete": complete,
        "problem_detail": detail or (job.get("problem") or {}).get("detail"),
        "status": job.get("status"),
        "succeeded": job.get("progress", {}).get("succeeded"),
        "failed": dict(problems),
        "fetch_images_seconds": round(time.perf_counter() - fetched, 3),
        "images_fetched": ok,
    }


# ---------------------------------------------------------------------------------------------- 4. remote


def scenario_remote(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    out: dict[str, Any] = {"latency_ms_per_request": cfg.remote_latency * 1000}
    for key in [k for k in cfg.remote_assets if k in ctx.assets]:
        asset = ctx.assets[key]
        url = ctx.origin.url(asset.rel)
        out[key] = _remote_asset(ctx, asset, url, url, functools.partial(ctx.origin.counts, asset.rel), "remote")
    return out


BENCH_BUCKET = "bench-media"


def start_object_store(latency: float) -> tuple[S3Server | None, dict[str, str]]:
    """moto's S3 server behind a front that waits ``latency`` per request, with the bench bucket, and the
    server settings that read from it; (None, {}) where it cannot run."""
    try:
        store = S3Server(latency=latency).start()
    except S3Unavailable as exc:
        print(f"  (no object store: {exc}; the objstore scenario is skipped)")
        return None, {}
    store.create_bucket(BENCH_BUCKET)
    return store, {"STILLFRAME_S3_ENDPOINT_URL": store.endpoint, "STILLFRAME_S3_BUCKETS": BENCH_BUCKET, **CREDENTIALS}


def scenario_objstore(ctx: Context) -> dict[str, Any]:
    """As ``remote``, from an object store (s3://) with the same latency per request: the ffmpeg CLI
    reads the same object through a presigned URL."""
    store = ctx.store
    if store is None:
        return {"skipped": "no S3-API server (moto[server]) here"}
    out: dict[str, Any] = {"latency_ms_per_request": store.latency * 1000}
    for key in [k for k in ctx.cfg.remote_assets if k in ctx.assets]:
        asset = ctx.assets[key]
        store.put(BENCH_BUCKET, asset.rel, asset.path.read_bytes())  # (straight to the store: not counted)
        counts = functools.partial(store.counts, f"/{BENCH_BUCKET}/{asset.rel}")
        cli_url = store.presigned_url(BENCH_BUCKET, asset.rel)
        out[key] = _remote_asset(ctx, asset, f"s3://{BENCH_BUCKET}/{asset.rel}", cli_url, counts, "objstore")
    return out


def _remote_asset(
    ctx: Context, asset: Asset, url: str, cli_url: str, counts: Callable[[], tuple[int, int]], label: str
) -> dict[str, Any]:
    """Grabs of ``url`` (the CLI reads ``cli_url``), with the requests and bytes ``counts`` saw each take."""
    cfg = ctx.cfg
    key = asset.key
    times = ctx.times(asset, cfg.remote_samples * 2 + 1, "remote")
    errors: Counter[str] = Counter()

    def counted(call: Any) -> tuple[Any, int, int]:
        r0, b0 = counts()
        value = call()
        r1, b1 = counts()
        return value, r1 - r0, b1 - b0

    first, first_req, first_bytes = counted(lambda: http_grab(ctx, url, times[0]))
    if first.status != 200:
        _record_error(errors, first)
    exact: dict[str, list[Any]] = {"seconds": [], "requests": [], "bytes": [], "gop_bytes": [], "timing": []}
    for t in times[1 : cfg.remote_samples + 1]:
        grab, n_req, n_bytes = counted(lambda t=t: http_grab(ctx, url, t))
        if grab.status != 200:
            _record_error(errors, grab)
            continue
        exact["seconds"].append(grab.seconds)
        exact["requests"].append(n_req)
        exact["bytes"].append(n_bytes)
        exact["gop_bytes"].append(asset.gop_bytes(asset.on_screen(t)))
        exact["timing"].append(grab.timing)
    keyframe: dict[str, list[Any]] = {"seconds": [], "requests": [], "bytes": []}
    for t in times[cfg.remote_samples + 1 :][: max(1, cfg.remote_samples // 2)]:
        grab, n_req, n_bytes = counted(lambda t=t: http_grab(ctx, url, t, tolerance="inf"))
        if grab.status != 200:
            _record_error(errors, grab)
            continue
        keyframe["seconds"].append(grab.seconds)
        keyframe["requests"].append(n_req)
        keyframe["bytes"].append(n_bytes)
    cli: dict[str, list[Any]] = {"seconds": [], "requests": [], "bytes": []}
    for t in times[1 : cfg.remote_cli_samples + 1]:
        result, n_req, n_bytes = counted(lambda t=t: baselines.ffmpeg_cli_grab(cli_url, t, ctx.tmp / "cli.jpg"))
        if result.ok:
            cli["seconds"].append(result.wall)
            cli["requests"].append(n_req)
            cli["bytes"].append(n_bytes)
        else:
            errors["ffmpeg_cli failed"] += 1
    gop_total = sum(exact["gop_bytes"]) or 1
    block = {
        "asset": asset.describe(),
        "first_request": {
            "ms": round(first.seconds * 1000, 2),
            "requests": first_req,
            "bytes": first_bytes,
            "server_timing_ms": first.timing,
        },
        "stillframe_exact": {
            **summary(exact["seconds"]),
            "requests_per_grab_p50": percentile(exact["requests"], 50),
            "requests_per_grab_max": max(exact["requests"], default=None),
            "bytes_per_grab_p50": percentile(exact["bytes"], 50),
            "bytes_per_grab_mean": round(sum(exact["bytes"]) / max(1, len(exact["bytes"]))),
            "gop_bytes_mean": round(gop_total / max(1, len(exact["gop_bytes"]))),
            "bytes_vs_gop": round(sum(exact["bytes"]) / gop_total, 3),
            "bytes_vs_gop_p50": percentile(
                [b / g for b, g in zip(exact["bytes"], exact["gop_bytes"], strict=True)], 50
            ),
            "server_timing_p50_ms": timing_breakdown(exact["timing"]),
        },
        "stillframe_keyframe": {
            **summary(keyframe["seconds"]),
            "requests_per_grab_p50": percentile(keyframe["requests"], 50),
            "bytes_per_grab_p50": percentile(keyframe["bytes"], 50),
        },
        "ffmpeg_cli": {
            **summary(cli["seconds"]),
            "requests_per_grab_p50": percentile(cli["requests"], 50),
            "bytes_per_grab_p50": percentile(cli["bytes"], 50),
        },
        "errors": dict(errors),
    }
    block["ratios"] = {"exact_vs_cli": ratio(block["stillframe_exact"]["p50_ms"], block["ffmpeg_cli"]["p50_ms"])}
    se = block["stillframe_exact"]
    ctx.say(
        f"  {label} {key:<22} first {block['first_request']['ms']} ms / {first_req} req / {first_bytes} B; "
        f"exact p50 {se['p50_ms']} ms, {se['requests_per_grab_p50']} req, {se['bytes_per_grab_p50']} B "
        f"({se['bytes_vs_gop']}x GOP); cli p50 {block['ffmpeg_cli']['p50_ms']} ms, "
        f"{block['ffmpeg_cli']['requests_per_grab_p50']} req, {block['ffmpeg_cli']['bytes_per_grab_p50']} B"
    )
    return block


# ---------------------------------------------------------------------------------------------- 5. throughput


def scenario_throughput(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    mix = [ctx.assets[k] for k in cfg.mix_assets if k in ctx.assets]
    rng = ctx.rng("throughput")

    def next_request() -> dict[str, str]:
        asset = rng.choice(mix)
        params = {"url": asset.rel, "t": f"{rng.uniform(0, asset.duration):.6f}", "format": "jpeg"}
        if rng.random() < 0.3:
            params["tolerance"] = "inf"
        return params

    # warm every asset of the mix in both workers' reach (affinity then keeps each where it was opened)
    for asset in mix:
        http_grab(ctx, asset.rel, 0.5)
    out: dict[str, Any] = {"mix": [a.key for a in mix], "exact_share": 0.7, "seconds_per_level": cfg.throughput_seconds}
    for clients in cfg.clients:
        out[str(clients)] = asyncio.run(_load(ctx, clients, cfg.throughput_seconds, next_request))
        level = out[str(clients)]
        ctx.say(
            f"  throughput {clients:>3} clients: {level['ok_per_s']} ok/s, p50 {level['p50_ms']} ms, p99 "
            f"{level['p99_ms']} ms, server {level['server_cores_used']} cores (machine busy "
            f"{level['machine_cores_busy']}), peak RSS "
            f"{level['server_peak_rss_mib']} MiB, statuses {level['statuses']}"
        )
    base = out[str(cfg.clients[0])]["ok_per_s"]
    out["scaling"] = {str(c): ratio(out[str(c)]["ok_per_s"], base) for c in cfg.clients}
    return out


async def _load(ctx: Context, clients: int, seconds: float, next_request: Any) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    ok_in_window = 0
    stop_at = 0.0
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal ok_in_window
        while time.perf_counter() < stop_at:
            params = next_request()
            started = time.perf_counter()
            try:
                response = await client.get("/v1/frame", params=params)
                status = str(response.status_code)
                if response.status_code not in (200, 429):
                    status += " " + _problem_code(response.content)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            done = time.perf_counter()
            statuses[status] += 1
            if status == "200":
                latencies.append(done - started)
                if done <= stop_at:
                    ok_in_window += 1
            elif status == "429":
                await asyncio.sleep(0.05)  # back off a little, as a polite client would

    self_cpu0 = _self_cpu()
    async with httpx.AsyncClient(base_url=ctx.server.base_url, timeout=120, limits=limits) as client:
        with TreeMonitor(ctx.server.pid) as monitor:
            started = time.perf_counter()
            stop_at = started + seconds
            await asyncio.gather(*(client_loop(client) for _ in range(clients)))
            elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "ok_per_s": round(ok_in_window / seconds, 2),
        **summary(latencies),
        "statuses": dict(statuses),
        "errors_other_than_429": sum(v for k, v in statuses.items() if k not in ("200", "429")),
        "server_start_rss_mib": round((monitor.samples[0] if monitor.samples else 0) / 2**20, 1),
        "wall_s": round(elapsed, 2),
        "server_cores_used": round(monitor.cores_used, 2),
        "client_cores_used": round((_self_cpu() - self_cpu0) / elapsed, 2),
        # everything busy on the machine meanwhile: minus server and client, what other processes took
        "machine_cores_busy": round(monitor.machine_cores_busy, 2),
        "server_peak_rss_mib": round(monitor.peak_rss / 2**20, 1),
        "server_end_rss_mib": round((monitor.samples[-1] if monitor.samples else 0) / 2**20, 1),
    }


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------- profile


def scenario_profile(ctx: Context) -> dict[str, Any]:
    """cProfile of warm grabs through the engine, in-process (what a decoder worker runs per request)."""
    from app.engine import ImageGenerator
    from app.engine.options import GrabOptions

    asset = ctx.assets[ctx.cfg.batch_asset]
    out: dict[str, Any] = {"asset": asset.key}
    for label, options in (
        ("exact", GrabOptions()),
        ("keyframe", GrabOptions(tolerance_before=None, tolerance_after=None)),
    ):
        times = ctx.times(asset, ctx.cfg.profile_grabs + 1, "profile", label)
        with ImageGenerator(asset.path, options) as generator:
            generator.image_at(f"{times[0]:.6f}")  # warm: open and first decode outside the profile
            components: dict[str, float] = {}
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            for t in times[1:]:
                result = generator.image_at(f"{t:.6f}")
                for name, value in result.timings.items():
                    components[name] = components.get(name, 0.0) + value
            profiler.disable()
            total = time.perf_counter() - started
        stats = pstats.Stats(profiler)
        rows = []
        for (filename, line, func), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
            where = func if filename == "~" else f"{Path(filename).name}:{line}({func})"
            rows.append((tottime, cumtime, calls, where))
        rows.sort(reverse=True)
        grabs = len(times) - 1
        out[label] = {
            "grabs": grabs,
            "ms_per_grab": round(total / grabs * 1000, 2),
            "components_ms_per_grab": {k: round(v / grabs * 1000, 2) for k, v in components.items()},
            "top_self_time": [
                {
                    "function": where,
                    "self_ms_per_grab": round(tt / grabs * 1000, 2),
                    "cum_ms_per_grab": round(ct / grabs * 1000, 2),
                    "share": round(tt / total, 3),
                    "calls": calls,
                }
                for tt, ct, calls, where in rows[:12]
            ],
        }
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("cumulative").print_stats(25)
        out[label]["cumulative_text"] = buffer.getvalue().splitlines()[:60]
        ctx.say(
            f"  profile {label}: {out[label]['ms_per_grab']} ms/grab; components "
            f"{out[label]['components_ms_per_grab']}; top self time: "
            + ", ".join(f"{r['function']} {r['self_ms_per_grab']} ms" for r in out[label]["top_self_time"][:4])
        )
    return out
