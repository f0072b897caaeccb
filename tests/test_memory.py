"""The memory budget: one limit, split between the API process, the decoders and the caches; open
assets bounded by bytes; shedding past the limit; memory visible in /metrics; and a live server that
stays inside a small budget under concurrent mixed load."""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.pool.memory import (
    MIN_WORKER_BYTES,
    GiB,
    MiB,
    cgroup_memory_limit,
    parse_bytes,
    plan_memory,
    process_rss,
)
from tests.live_server import child_pids, live_server
from tests.media import MEDIA, make_clip, make_h264_clip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5GiB", 1536 * MiB),
        ("512MiB", 512 * MiB),
        ("512Mi", 512 * MiB),
        ("2G", 2_000_000_000),
        ("2gb", 2_000_000_000),
        ("1000000", 1_000_000),
        (" 64 KiB ", 64 * 1024),
        (123, 123),
    ],
)
def test_sizes_are_read_in_binary_and_decimal_units(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "1.5 parsecs", "-1GiB", "1e9"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_the_cgroup_limit_is_read_from_v2_then_v1_and_no_limit_is_none(tmp_path: Path) -> None:
    assert cgroup_memory_limit(tmp_path) is None  # no cgroup files at all
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    assert cgroup_memory_limit(tmp_path) is None
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(f"{GiB}\n")
    assert cgroup_memory_limit(tmp_path) == GiB
    (tmp_path / "memory.max").write_text("max\n")  # v2, unlimited: v1's file is not a v2 host's
    assert cgroup_memory_limit(tmp_path) == GiB
    (tmp_path / "memory.max").write_text(f"{2 * GiB}\n")
    assert cgroup_memory_limit(tmp_path) == 2 * GiB


@pytest.mark.parametrize("limit", [512 * MiB, GiB, 1536 * MiB, 2 * GiB, 8 * GiB, 64 * GiB])
@pytest.mark.parametrize("workers", [1, 2, 16])
def test_a_plan_fits_its_budget(limit: int, workers: int) -> None:
    plan = plan_memory(limit, workers=workers, image_cache_bytes=64 * MiB, queue_limit=64)
    assert 1 <= plan.workers <= workers
    assert plan.api_bytes + plan.workers * plan.worker_bytes <= limit or plan.workers == 1
    assert plan.worker_bytes >= MIN_WORKER_BYTES
    assert plan.image_cache_bytes <= min(64 * MiB, limit // 16)
    assert plan.asset_bytes < plan.worker_bytes


def test_the_settings_are_sized_from_the_budget_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLFRAME_MEMORY_LIMIT", "1.5GiB")
    monkeypatch.setenv("STILLFRAME_WORKERS", "2")
    settings = Settings()
    assert settings.memory_limit == 1536 * MiB and settings.workers == 2
    assert 400 * MiB < settings.worker_recycle_rss < 768 * MiB  # what is left, halved
    assert 0 < settings.open_asset_bytes < settings.worker_recycle_rss
    monkeypatch.delenv("STILLFRAME_WORKERS")
    small = Settings(memory_limit="600MiB")
    assert small.workers == 1  # two decoders do not fit in 600 MiB beside the API process
    assert small.image_cache_bytes <= 600 * MiB // 16
    chosen = Settings(memory_limit="600MiB", workers=3, worker_recycle_rss="1GiB", image_cache_bytes=MiB)
    assert (chosen.workers, chosen.worker_recycle_rss, chosen.image_cache_bytes) == (3, GiB, MiB)
    assert Settings(memory_limit="1GiB", image_cache_bytes="256MiB").image_cache_bytes == 256 * MiB  # as chosen
    roomy = Settings(memory_limit=64 * GiB)
    assert roomy.worker_recycle_rss <= roomy.worker_memory_limit // 2  # never past what its cap allows


def test_open_assets_are_bounded_by_their_estimated_bytes(tmp_path: Path) -> None:
    """A worker keeps as many assets open as fit its bytes (the one in use stays, whatever its size);
    a decoder of a bigger picture, or with more threads, is estimated to hold more."""
    from app.engine import ImageGenerator
    from app.pool.base import GrabTask
    from app.pool.worker import _OpenAssets

    small = [make_clip(tmp_path / f"small{n}.mp4", size=(192, 108), frames=24) for n in range(3)]
    large = make_clip(tmp_path / "large.mp4", size=(1280, 720), frames=12)
    with (
        ImageGenerator(small[0], decode_threads=1) as one,
        ImageGenerator(large, decode_threads=1) as big,
        ImageGenerator(large, decode_threads=2) as two,
    ):
        assert 0 < one.resident_estimate < big.resident_estimate < two.resident_estimate
        per_small = one.resident_estimate
    settings = Settings(media_root=tmp_path)
    assets = _OpenAssets(capacity=8, max_bytes=2 * per_small + per_small // 2)
    for path in small:
        assets.get(GrabTask(path.name, ("0",)), settings)
    assert len(assets._items) == 2 and assets.estimated_bytes <= assets.max_bytes  # the oldest went
    assets.get(GrabTask("large.mp4", ("0",)), settings)
    assert len(assets._items) == 1  # over the budget alone: kept while in use, the others closed
    assets.trim(rss_budget=1 << 50, asset_bytes=1 << 50)
    assert len(assets._items) == 1
    assets.close()
    assert assets.estimated_bytes == 0


def test_the_pool_sheds_new_tasks_with_overloaded_while_over_its_budget(tmp_path: Path) -> None:
    """Past the limit, a task arriving while others run is refused (503 ``overloaded``, not queued to
    grow the tree further); with nothing running, it is taken (the tree shrinks as tasks finish, so
    nothing waits for ever); and the memory report says what each process holds."""
    from app.engine.errors import EngineError
    from app.pool.base import GrabTask
    from app.pool.process import ProcessDecoderPool

    make_h264_clip(tmp_path / "clip.mp4", size="320x240", rate=25, seconds=4, gop=25)

    async def main() -> dict[str, Any]:
        pool = ProcessDecoderPool(Settings(media_root=tmp_path, workers=1, memory_limit=MiB))
        await pool.start()
        try:
            deadline = time.monotonic() + 30
            while not pool.ready() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            first = asyncio.ensure_future(pool.grab(GrabTask("clip.mp4", ("3.9",))))
            await asyncio.sleep(0)  # submitted: one task in flight
            with pytest.raises(EngineError) as shed:
                await pool.grab(GrabTask("clip.mp4", ("1",)))
            assert shed.value.code == "overloaded" and shed.value.status == 503
            assert (await first).ok
            alone = await pool.grab(GrabTask("clip.mp4", ("2",)))  # nothing in flight: taken
            assert alone.ok
            return pool.memory()
        finally:
            await pool.stop()

    memory = asyncio.run(main())
    assert memory["limit_bytes"] == MiB and memory["shed"] == 1
    workers = memory["worker_resident_bytes"]
    assert isinstance(workers, list) and len(workers) == 1 and workers[0] > 10 * MiB
    assert memory["open_asset_bytes"] > 0
    assert memory["resident_bytes"] == memory["api_resident_bytes"] + workers[0]


@pytest.fixture
def client(make_client: Any, tmp_path: Path) -> Any:
    make_h264_clip(tmp_path / "clip.mp4", size="320x240", rate=25, seconds=4, gop=25)
    return make_client(media_root=tmp_path, data_dir=tmp_path / "data")


def test_overloaded_is_a_503_problem_with_retry_after(client: Any) -> None:
    from app.engine.errors import EngineError

    async def shed(task: Any) -> Any:
        raise EngineError("overloaded", "the service is at its memory limit; retry shortly")

    client.app.state.pool.grab = shed
    response = client.get("/v1/frame", params={"url": "clip.mp4", "t": "1"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["code"] == "overloaded"


def test_the_image_cache_halves_while_the_service_is_over_its_budget() -> None:
    from app.api.cache import ImageCache, shrink_under_pressure

    cache = ImageCache(1 << 20)
    for n in range(8):
        cache.put(f"k{n}", bytes(1000), {})
    checks = iter([True])  # over the budget once, then back under it

    async def main() -> None:
        task = asyncio.ensure_future(shrink_under_pressure(cache, lambda: next(checks, False), interval=0.01))
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(main())
    assert cache.size_bytes == 4000  # halved once, and kept once there was room again
    assert cache.get("k7") is not None and cache.get("k0") is None  # the least recently used went first


def _metrics(base: Any) -> dict[str, float]:
    """``/metrics`` as {series: value} (``base``: a client, or a base URL)."""
    text = base.get("/metrics").text if not isinstance(base, str) else httpx.get(f"{base}/metrics").text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}


def test_metrics_show_the_memory_of_every_process(client: Any) -> None:
    assert client.get("/v1/frame", params={"url": "clip.mp4", "t": "1"}).status_code == 200
    deadline = time.monotonic() + 10
    while True:  # the worker reports after its task, a moment after the image it sent
        values = _metrics(client)
        if values["stillframe_open_asset_bytes"] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert values["stillframe_memory_limit_bytes"] == client.app.state.settings.memory_limit
    assert values['stillframe_resident_bytes{process="api"}'] > 10 * MiB
    assert values['stillframe_resident_bytes{process="decoder-0"}'] > 10 * MiB
    assert values["stillframe_image_cache_bytes"] > 0  # the image just made
    assert values["stillframe_open_asset_bytes"] > 0


# ------------------------------------------------------------------ a live server inside a small budget


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += process_rss(current)
        stack.extend(child_pids(current))
    return total


# Real files of other kinds (10-bit VP9, HEVC with B-frames, 1080p MPEG-2), short enough to grab often.
_CORPUS = ["hevc_bframes.mp4", "vp9_profile2_10bit.webm", "ts_mpeg2_1080p.ts"]


def test_a_live_server_stays_inside_a_small_budget_under_mixed_load(tmp_path: Path) -> None:
    """Eight clients, mixed grabs (exact and keyframe, sizes, formats, some bad sources) over several
    files at the issue's 1.5 GiB budget on 2 decoders: the process tree is never over the limit, every
    grab is answered, and none with a 5xx. (Whether it levels off is the soak's to say, in
    ``make bench``: in 40 s on a loaded machine the decoders are still filling their shares.)"""
    make_h264_clip(tmp_path / "a.mp4", size="1280x720", rate=25, seconds=8, gop=50)
    make_h264_clip(tmp_path / "b.mp4", size="640x360", rate=30, seconds=8, gop=250)
    make_clip(tmp_path / "c.webm", codec="vp9", size=(640, 360), frames=120, gop=30)
    make_clip(tmp_path / "d.mkv", codec="hevc", size=(960, 540), frames=120, gop=30)
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)
    names = ["a.mp4", "b.mp4", "c.webm", "d.mkv"]
    for name in _CORPUS:
        if (MEDIA / name).is_file():
            shutil.copyfile(MEDIA / name, tmp_path / name)  # (a link out of the media root is refused)
            names.append(name)
    limit = 1536 * MiB
    env = {
        "STILLFRAME_MEDIA_ROOT": str(tmp_path),
        "STILLFRAME_MEMORY_LIMIT": str(limit),
        "STILLFRAME_WORKERS": "2",
        "STILLFRAME_DATA_DIR": str(tmp_path / "data"),
    }
    seconds, samples, statuses = 40.0, [], []
    lock = threading.Lock()
    with live_server(env) as server:
        stop = time.monotonic() + seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=server.base_url, timeout=60) as http:
                while time.monotonic() < stop:
                    params: dict[str, str] = {"url": rng.choice(names), "t": f"{rng.uniform(0, 100):.2f}%"}
                    if rng.random() < 0.3:
                        params["tolerance"] = "inf"
                    if rng.random() < 0.5:
                        params["width"] = str(rng.choice([160, 320, 640, 1280]))
                    params["format"] = rng.choice(["jpeg", "jpeg", "png", "webp"])
                    if rng.random() < 0.05:
                        params["url"] = rng.choice(["bad.mp4", "missing.mp4"])
                    status = http.get("/v1/frame", params=params).status_code
                    with lock:
                        statuses.append(status)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        while time.monotonic() < stop:
            samples.append(_tree_rss(server.process.pid))
            time.sleep(0.25)
        for thread in threads:
            thread.join()
        metrics = _metrics(server.base_url)
    print(f"{len(statuses)} grabs; tree peak {max(samples) / MiB:.0f} MiB")
    assert statuses and not [s for s in statuses if s >= 500], sorted(set(statuses))
    assert sum(s == 200 for s in statuses) > len(statuses) * 0.8
    assert max(samples) < limit, f"tree at {max(samples) / MiB:.0f} MiB over the {limit / MiB:.0f} MiB limit"
    reported = sum(v for k, v in metrics.items() if k.startswith("stillframe_resident_bytes"))
    assert 0 < reported < limit


def test_a_remote_assets_estimate_counts_its_readers_block_cache(tmp_path: Path) -> None:
    from app.engine import ImageGenerator
    from app.engine.sources import resolve_source
    from app.net.blocks import DEFAULT_BLOCK_SIZE
    from tests.http_server import LoopbackServer

    clip = make_clip(tmp_path / "clip.mp4", size=(192, 108), frames=24)
    with LoopbackServer() as server:
        server.add_file("/clip.mp4", clip.read_bytes())
        settings = Settings(allowed_networks="127.0.0.0/8", allowed_ports=str(server.port), media_root=tmp_path)
        remote = resolve_source(server.url("/clip.mp4"), settings.source_policy())
        with ImageGenerator(remote, decode_threads=1) as far, ImageGenerator(clip, decode_threads=1) as near:
            assert far.resident_estimate - near.resident_estimate >= 8 * DEFAULT_BLOCK_SIZE
