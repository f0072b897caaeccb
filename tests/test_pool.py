"""The decoder pool under faults, with the real server in a child process.

A killed worker fails only the request it was serving; a stalled decode is stopped at its
deadline; a full queue answers 429 at once. The server stays up and serves good requests after.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http_server import LoopbackServer
from tests.live_server import LiveServer, live_server
from tests.media import make_h264_clip


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pool-media")
    make_h264_clip(root / "clip.mp4", size="320x240", rate=25, seconds=4, gop=25)
    return root


@pytest.fixture(scope="module")
def stalling_source() -> Iterator[LoopbackServer]:
    """An origin that sends a few bytes and then next to nothing: a decode that never progresses."""
    with LoopbackServer() as server:
        for name in ("/stall.mp4", "/stall-a.mp4", "/stall-b.mp4"):
            server.add_stream(name, chunk=b"\0" * 8, interval=0.5, total=None)
        yield server


@pytest.fixture(scope="module")
def server(media_root: Path, stalling_source: LoopbackServer) -> Iterator[LiveServer]:
    env = {
        "STILLFRAME_MEDIA_ROOT": str(media_root),
        "STILLFRAME_WORKERS": "1",
        "STILLFRAME_DECODE_TIMEOUT": "3",
        "STILLFRAME_QUEUE_LIMIT": "2",
        "STILLFRAME_ALLOWED_NETWORKS": "127.0.0.0/8",
        "STILLFRAME_ALLOWED_PORTS": str(stalling_source.port),
        "STILLFRAME_FETCH_READ_TIMEOUT": "60",
        "STILLFRAME_FETCH_TOTAL_TIMEOUT": "120",
    }
    with live_server(env) as live:
        yield live


def good_grab(server: LiveServer) -> None:
    response = httpx.get(f"{server.base_url}/v1/frame", params={"url": "clip.mp4", "t": "1.5"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["x-actual-time"] == "1.48"


def test_decoding_happens_in_worker_processes(server: LiveServer) -> None:
    good_grab(server)
    workers = server.wait_workers(1)
    assert server.process.pid not in workers


def test_kill_9_of_a_worker_mid_request_fails_only_that_request(
    server: LiveServer, stalling_source: LoopbackServer
) -> None:
    results: dict[str, httpx.Response] = {}

    def stalled() -> None:
        results["r"] = httpx.get(
            f"{server.base_url}/v1/frame", params={"url": stalling_source.url("/stall.mp4"), "t": "0"}, timeout=60
        )

    thread = threading.Thread(target=stalled)
    thread.start()
    deadline = time.monotonic() + 10
    while stalling_source.request_count("/stall.mp4") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    (victim,) = server.wait_workers(1)
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=30)
    response = results["r"]
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "decode_failed"
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200
    good_grab(server)  # a replacement worker took the slot
    assert victim not in server.worker_pids()


def test_stalled_decode_hits_its_deadline(server: LiveServer, stalling_source: LoopbackServer) -> None:
    started = time.monotonic()
    response = httpx.get(
        f"{server.base_url}/v1/frame", params={"url": stalling_source.url("/stall.mp4"), "t": "0"}, timeout=60
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["code"] == "decode_timeout"
    assert elapsed < 20
    good_grab(server)


def test_queue_limit_answers_429_fast(server: LiveServer, stalling_source: LoopbackServer) -> None:
    # Two different sources: identical requests would share one decode and not fill the queue.
    threads = [
        threading.Thread(
            target=httpx.get,
            args=(f"{server.base_url}/v1/frame",),
            kwargs={"params": {"url": stalling_source.url(name)}, "timeout": 60},
        )
        for name in ("/stall-a.mp4", "/stall-b.mp4")
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # both are now queued or running: the queue (limit 2) is full
    started = time.monotonic()
    response = httpx.get(f"{server.base_url}/v1/frame", params={"url": "clip.mp4", "t": "1"}, timeout=10)
    assert time.monotonic() - started < 2
    assert response.status_code == 429
    assert response.json()["code"] == "queue_full"
    assert int(response.headers["retry-after"]) >= 1
    for thread in threads:
        thread.join(timeout=60)
    good_grab(server)


def test_server_answers_health_while_decoding(server: LiveServer, stalling_source: LoopbackServer) -> None:
    thread = threading.Thread(
        target=httpx.get,
        args=(f"{server.base_url}/v1/frame",),
        kwargs={"params": {"url": stalling_source.url("/stall.mp4")}, "timeout": 60},
    )
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200
    assert time.monotonic() - started < 0.5
    thread.join(timeout=60)


def test_a_task_gets_decoder_threads_only_while_other_workers_are_idle() -> None:
    """A lone grab decodes on two cores; once other workers are busy (or have a backlog), one core
    per task: frame threads would only cost a loaded pool throughput."""
    from app.config import Settings
    from app.pool.base import GrabTask
    from app.pool.process import ProcessDecoderPool, _Request

    pool = ProcessDecoderPool(Settings(workers=3, decode_threads=2))
    first, second, third = pool._workers
    for worker in pool._workers:
        worker.ready = True
    busy = _Request(1, GrabTask(url="a.mp4", times=("1",)))
    assert pool._decode_threads(first) == 2  # everyone else idle
    second.running = busy
    assert pool._decode_threads(first) == 2  # one other worker still idle: its core is free
    third.backlog.append(busy)
    assert pool._decode_threads(first) == 1  # nothing idle
    third.backlog.clear()
    third.ready = False
    assert pool._decode_threads(first) == 1  # a worker still starting lends no core
    for settings in (Settings(workers=2, decode_threads=1), Settings(workers=1, decode_threads=2)):
        other = ProcessDecoderPool(settings)
        for worker in other._workers:
            worker.ready = True
        assert other._decode_threads(other._workers[0]) == 1


def test_a_worker_over_its_memory_budget_hands_its_slot_to_a_fresh_one(media_root: Path) -> None:
    """With a budget every process is over, each task retires its worker: every request still gets its
    image (none lost, none failed), each from a new process."""
    env = {"STILLFRAME_MEDIA_ROOT": str(media_root), "STILLFRAME_WORKERS": "1", "STILLFRAME_WORKER_RECYCLE_RSS": "1"}
    with live_server(env) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        seen = set(server.wait_workers(1))
        for t in ("1.5", "2.5", "3.5"):  # (other times each: a cached image would need no worker)
            assert client.get("/v1/frame", params={"url": "clip.mp4", "t": t}).status_code == 200
            deadline = time.monotonic() + 30
            while not set(server.worker_pids()) - seen and time.monotonic() < deadline:
                time.sleep(0.02)
            fresh = set(server.worker_pids()) - seen
            assert fresh, f"no new worker after the grab at {t}"
            seen |= fresh
        # back to back: none waits in vain on a worker that is going
        for response in [client.get("/v1/frame", params={"url": "clip.mp4", "t": f"0.{n}"}) for n in range(4)]:
            assert response.status_code == 200, response.text


def test_memory_budget_counts_address_space_too() -> None:
    """A fragmented heap keeps growing its span even where its pages are given back: a worker whose
    address space nears its cap retires as one over its resident budget does."""
    from app.config import Settings
    from app.pool.worker import _over_budget, release_free_heap

    release_free_heap()  # safe to call anywhere (a no-op off glibc)
    roomy = Settings(worker_recycle_rss=1 << 50, worker_memory_limit=1 << 50)
    assert not _over_budget(roomy)
    assert _over_budget(Settings(worker_recycle_rss=1 << 50, worker_memory_limit=4096))  # address space
    assert _over_budget(Settings(worker_recycle_rss=1, worker_memory_limit=1 << 50))  # resident


def test_free_heap_pages_go_back_to_the_system() -> None:
    """What the workers do about a fragmented heap: chunks freed between live ones stay resident (glibc
    returns only the top of the heap) until ``release_free_heap`` hands their pages back."""
    import ctypes

    from app.pool.worker import _rss_bytes, release_free_heap

    try:
        has_trim = hasattr(ctypes.CDLL("libc.so.6"), "malloc_trim")
    except OSError:
        has_trim = False
    if not has_trim:
        pytest.skip("not glibc")
    chunk = 64 * 1024  # under glibc's mmap threshold: from the heap
    blocks = [bytearray(b"x" * chunk) for _ in range(1600)]  # ~100 MiB, every page touched
    del blocks[::2]  # every other one freed: ~50 MiB of holes between live chunks
    fragmented = _rss_bytes()
    release_free_heap()
    assert _rss_bytes() < fragmented - 30 * 1024**2
    assert all(block == b"x" * chunk for block in blocks)  # the live ones are untouched


def test_a_worker_gives_free_heap_back_after_growing_between_tasks() -> None:
    """The step a worker runs after each task: past 64 MiB of growth it releases the heap's free
    pages (and, within budget, does not retire)."""
    from app.config import Settings
    from app.pool.worker import _MemoryKeeper, _OpenAssets, _rss_bytes

    memory = _MemoryKeeper(Settings(worker_recycle_rss=1 << 50, worker_memory_limit=1 << 50))
    blocks = [bytearray(b"x" * 64 * 1024) for _ in range(2400)]  # ~150 MiB from the heap
    del blocks[::2]  # ~75 MiB of holes: resident until released
    fragmented = _rss_bytes()
    assert not memory.must_retire(_OpenAssets(1))
    assert _rss_bytes() < fragmented - 40 * 1024**2
    assert memory.released_at <= _rss_bytes() + 1024**2


# ------------------------------------------------------------------ coalescing queued grabs of one asset


@pytest.fixture(scope="module")
def long_gop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30 s clip with one keyframe and no B-frames (a grab near its end decodes ~750 frames, all
    references) and a short one."""
    root = tmp_path_factory.mktemp("coalesce-media")
    make_h264_clip(root / "long.mp4", size="640x360", rate=25, seconds=30, gop=750, extra=["-bf", "0"])
    make_h264_clip(root / "short.mp4", size="320x240", rate=25, seconds=4, gop=25)
    return root


def _pool_run(root: Path, scenario: Any, decode_timeout: float = 30) -> Any:
    """Run ``scenario(pool)`` against a real one-worker pool (its own event loop)."""
    import asyncio

    from app.config import Settings
    from app.pool.process import ProcessDecoderPool

    async def main() -> Any:
        pool = ProcessDecoderPool(Settings(media_root=root, workers=1, decode_timeout=decode_timeout, queue_limit=64))
        await pool.start()
        try:
            deadline = time.monotonic() + 30
            while not pool.ready() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return await scenario(pool)
        finally:
            await pool.stop()

    return asyncio.run(main())


def test_queued_grabs_of_one_asset_share_one_pass_and_get_the_images_they_would_alone(long_gop_root: Path) -> None:
    """While the worker is busy, grabs of the same source and options wait; the next start takes them
    all in one pass. Each still gets exactly the image and time it gets on its own; other options,
    other sources and a bad time are not mixed up with them."""
    import asyncio

    from app.engine.errors import EngineError
    from app.engine.options import GrabOptions
    from app.pool.base import GrabTask

    exact, keyframe = GrabOptions(), GrabOptions(tolerance_before=None, tolerance_after=None)
    requests = [
        ("long.mp4", "19.5", exact),  # the first: runs at once, the rest queue behind it
        ("long.mp4", "3.02", exact),
        ("long.mp4", "3.1", exact),  # same GOP, just after: continues the same decode
        ("long.mp4", "12", exact),
        ("long.mp4", "not-a-time", exact),
        ("long.mp4", "7", keyframe),  # other options: a pass of its own
        ("short.mp4", "1.5", exact),  # another source
        ("long.mp4", "0.5", exact),
        ("long.mp4", "75%", exact),
    ]

    async def together(pool: Any) -> tuple[list[Any], int]:
        jobs = [asyncio.ensure_future(pool.grab(GrabTask(url, (t,), options))) for url, t, options in requests]
        return await asyncio.gather(*jobs, return_exceptions=True), pool.coalesced

    async def alone(pool: Any) -> list[Any]:
        results = []
        for url, t, options in requests:
            try:
                results.append(await pool.grab(GrabTask(url, (t,), options)))
            except EngineError as exc:
                results.append(exc)
        return results

    shared, coalesced = _pool_run(long_gop_root, together)
    solo = _pool_run(long_gop_root, alone)
    assert coalesced == 5  # 3.02, 3.1, 12, not-a-time, 0.5 and 75% in one pass (one of them led it)
    for (url, t, _), got, want in zip(requests, shared, solo, strict=True):
        if isinstance(want, EngineError):
            assert isinstance(got, EngineError) and got.code == want.code == "invalid_parameter", (url, t)
            continue
        assert not isinstance(got, BaseException), (url, t, got)
        assert (got.index, got.actual_time, got.pts) == (0, want.actual_time, want.pts), (url, t)
        assert got.image == want.image, (url, t)
    assert [r.actual_time for r in shared[1:4]] == [Fraction(3), Fraction(77, 25), Fraction(12)]


def test_a_coalesced_pass_whose_worker_dies_hands_back_what_it_had_not_answered(long_gop_root: Path) -> None:
    """The worker is killed mid-pass: the grab it had answered keeps its image, the others run again
    one by one on the fresh worker and get theirs (no request pays for another's crash)."""
    import asyncio

    from app.pool.base import GrabTask

    async def scenario(pool: Any) -> tuple[list[Any], int, int, int]:
        def grab(t: str) -> Any:
            return asyncio.ensure_future(pool.grab(GrabTask("long.mp4", (t,))))

        blocker, first, later, last = grab("0"), grab("0.2"), grab("10"), grab("29.9")
        await blocker
        victim = pool._workers[0].process.pid
        # 0.2 s goes out once its image is made and another frame decoded: by 10 s at the latest, when
        # 29.9 s is still ~500 frames away.
        answered = await first
        assert not last.done()
        os.kill(victim, signal.SIGKILL)
        rest = await asyncio.gather(later, last, return_exceptions=True)
        return [answered, *rest], pool.coalesced, victim, pool._workers[0].process.pid

    results, coalesced, victim, replacement = _pool_run(long_gop_root, scenario)
    assert coalesced == 2
    assert replacement != victim
    assert not any(isinstance(r, BaseException) for r in results), results
    assert [r.actual_time for r in results] == [Fraction(1, 5), Fraction(10), Fraction(747, 25)]


def test_a_caller_that_goes_away_does_not_cancel_the_pass_it_shares(long_gop_root: Path) -> None:
    """One of the grabs in a coalesced pass is cancelled (its client hung up): the others in the pass
    still get their images, and the pool takes new work after."""
    import asyncio

    from app.pool.base import GrabTask

    async def scenario(pool: Any) -> tuple[list[Any], int]:
        def grab(t: str) -> Any:
            return asyncio.ensure_future(pool.grab(GrabTask("long.mp4", (t,))))

        blocker, leaving, staying, last = grab("0"), grab("10"), grab("20"), grab("29.9")
        await blocker
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the three run as one pass
            running = pool._workers[0].running
            if running is not None and len(running.members) == 3:
                break
            await asyncio.sleep(0.001)
        leaving.cancel()
        results = await asyncio.gather(staying, last)
        after = await pool.grab(GrabTask("long.mp4", ("1",)))
        return [*results, after], pool.coalesced

    results, coalesced = _pool_run(long_gop_root, scenario)
    assert coalesced == 2
    assert [r.actual_time for r in results] == [Fraction(20), Fraction(747, 25), Fraction(1)]


def test_a_worker_is_told_to_stop_only_a_pass_with_work_left(long_gop_root: Path) -> None:
    """A grab whose image came is over when its caller leaves: no cancel goes to the worker. A batch
    left after its first image is stopped (once), and the worker takes the next grab."""
    import asyncio
    import contextlib

    from app.pool.base import GrabTask

    async def scenario(pool: Any) -> tuple[int, int, Any]:
        await pool.grab(GrabTask("long.mp4", ("1",)))
        await pool.grab(GrabTask("long.mp4", ("2",)))
        after_grabs = pool.stopped
        times = tuple(f"{n * 0.7:.2f}" for n in range(40))
        async with contextlib.aclosing(pool.grab_many(GrabTask("long.mp4", times))) as items:
            async for _ in items:
                break
        after_batch = pool.stopped
        return after_grabs, after_batch, await asyncio.wait_for(pool.grab(GrabTask("long.mp4", ("3",))), 30)

    after_grabs, after_batch, last = _pool_run(long_gop_root, scenario)
    assert (after_grabs, after_batch) == (0, 1)
    assert last.actual_time == Fraction(3)


def test_a_task_of_many_times_gets_a_cpu_budget_for_each(long_gop_root: Path) -> None:
    """The worker's CPU limit is per time asked for: a pass of 40 grabs (a batch lane, or coalesced
    grabs) may use what 40 grabs may, where a budget for one (here ~2 CPU-seconds) would kill it."""
    from app.engine.options import EncodeOptions, GrabOptions, RenderOptions
    from app.pool.base import GrabTask

    heavy = GrabOptions(  # each image ~0.1 CPU-s: upscaled to 1080p and PNG-encoded
        render=RenderOptions(width=1920, height=1080, fit="fill"), encode=EncodeOptions(format="png")
    )
    times = tuple(f"{n * 0.7:.2f}" for n in range(40))

    async def scenario(pool: Any) -> list[Any]:
        return [item async for item in pool.grab_many(GrabTask("long.mp4", times, heavy))]

    results = _pool_run(long_gop_root, scenario, decode_timeout=0.5)
    assert len(results) == 40 and all(r.ok and r.width == 1920 for r in results)


@pytest.mark.skipif(
    not Path("/proc/sys/fs/pipe-max-size").exists() or int(Path("/proc/sys/fs/pipe-max-size").read_text()) < 1 << 20,
    reason="needs Linux pipes that may hold 1 MiB",
)
def test_a_workers_pipes_hold_a_whole_image(long_gop_root: Path) -> None:
    """Tasks and replies go on pipes widened to 1 MiB (a socket pair stops at ~208 KiB, and a bigger
    image took a second round trip between the processes): both ends in this process are that wide."""
    import fcntl

    from app.pool.base import GrabTask

    def widened_pipes() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"):
                    count += fcntl.fcntl(int(fd), fcntl.F_GETPIPE_SZ) >= 1 << 20
            except OSError:
                continue
        return count

    async def scenario(pool: Any) -> int:
        result = await pool.grab(GrabTask("short.mp4", ("1",)))
        assert result.image
        return widened_pipes()

    before = widened_pipes()
    assert _pool_run(long_gop_root, scenario) - before >= 2  # the tasks' write end, the replies' read end
