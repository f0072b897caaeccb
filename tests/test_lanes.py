"""A long job decodes in lanes, one per decoder worker, each over a contiguous span of its times."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.engine import FrameResult
from app.jobs.model import JobSpec
from app.jobs.runner import JobRunner
from app.jobs.sqlite import SqliteJobStore
from app.pool.base import GrabTask
from app.pool.process import ProcessDecoderPool
from tests.jobs_support import JobServer, make_clip, module_server, wait_job


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lanes-media")
    make_clip(root / "clip.mp4", seconds=4, gop=25)
    return root


def test_lanes_of_one_job_go_to_different_workers(media_root: Path) -> None:
    async def run() -> None:
        pool = ProcessDecoderPool(Settings(media_root=media_root, workers=2))
        await pool.start()
        try:
            for _ in range(600):
                if all(worker.ready for worker in pool._workers):
                    break
                await asyncio.sleep(0.05)
            spans = [tuple(f"{n / 25:.2f}" for n in range(0, 50)), tuple(f"{n / 25:.2f}" for n in range(50, 100))]
            streams = [pool.grab_many(GrabTask("clip.mp4", span, lane=lane)) for lane, span in enumerate(spans)]
            # Both submitted before either finishes: lane 1 must not queue behind lane 0.
            await asyncio.gather(*(anext(stream) for stream in streams))
            assert pool._affinity["clip.mp4"] != pool._affinity[GrabTask("clip.mp4", (), lane=1).affinity]
            for stream in streams:
                async for item in stream:
                    assert isinstance(item, FrameResult)
        finally:
            await pool.stop()

    asyncio.run(run())


def test_the_runner_cuts_a_long_job_into_a_lane_per_worker(media_root: Path, tmp_path: Path) -> None:
    """A 60-time job on 2 workers runs as 2 lanes (a second affinity claim exists), a 10-time one as 1."""

    async def run() -> None:
        settings = Settings(media_root=media_root, workers=2, data_dir=tmp_path)
        pool = ProcessDecoderPool(settings)
        await pool.start()
        store = SqliteJobStore(settings.data_dir, settings.result_ttl)
        runner = JobRunner(settings, store, pool)
        await runner.start()
        try:
            lane_1 = GrabTask("clip.mp4", (), lane=1).affinity
            for count, lanes in ((10, 1), (60, 2)):
                pool._affinity.clear()
                times = tuple(f"{n}/25" for n in range(count))
                spec = JobSpec(url="clip.mp4", times=times, params={"format": "jpeg"}, base_url="http://t")
                job, _ = await runner.submit(spec)
                for _ in range(1200):
                    current = await store.get(job.id)
                    if current is not None and current.terminal:
                        break
                    await asyncio.sleep(0.05)
                assert current is not None and current.status == "completed"
                assert current.counts.get("succeeded") == count
                assert (lane_1 in pool._affinity) == (lanes == 2)
        finally:
            await runner.stop()
            await pool.stop()
            store.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def server(media_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobServer]:
    yield from module_server(media_root, tmp_path_factory, STILLFRAME_WORKERS="2")


def test_a_long_job_in_lanes_gives_every_time_its_frame(server: JobServer) -> None:
    frames = list(range(100))
    random.Random(5).shuffle(frames)
    times = [f"{n}/25" for n in frames[:70]] + ["0.999", "3.99", "50%"]
    response = httpx.post(server.url("/v1/jobs"), json={"url": "clip.mp4", "times": times}, timeout=30)
    assert response.status_code == 202, response.text
    job = wait_job(server.base_url, response.json()["id"])
    assert job["status"] == "completed"
    results = job["results"]
    assert [r["status"] for r in results] == ["succeeded"] * len(times)
    for result, n in zip(results, frames[:70], strict=False):
        assert Fraction(result["actual_time"]) == Fraction(n, 25), result
    assert [r["actual_time"] for r in results[70:]] == ["0.96", "3.96", "2"]
    for result in results[::10]:
        image = httpx.get(result["image_url"], timeout=10)
        direct = httpx.get(server.url("/v1/frame"), params={"url": "clip.mp4", "t": result["requested"]}, timeout=30)
        assert image.content == direct.content
