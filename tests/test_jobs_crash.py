"""Jobs across failures, with real processes: kill -9 of the whole server mid-job and a restart
(nothing lost, every result once, every webhook delivered), SIGTERM drain and restart, and kill -9
of a decoder mid-job (the job completes)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import httpx
import pytest

from app.engine.timeparse import format_fraction
from tests.jobs_support import (
    WEBHOOK_SECRET,
    JobServer,
    SSEEvent,
    WebhookReceiver,
    iter_files,
    make_clip,
    read_sse,
    server_env,
    wait_for,
    wait_job,
)
from tests.live_server import child_pids

TIMES = [f"{i * 0.08:.2f}" for i in range(120)]  # 120 frames of a 25 fps clip, 640x360 PNG: a few seconds


def expected_actual(t: str) -> str:
    """The frame on screen at t in a 25 fps clip starting at 0."""
    return format_fraction(Fraction(int(Fraction(t) * 25), 25))


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash-media")
    make_clip(root / "long.mp4", size="640x360", seconds=20, gop=250)
    return root


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


def assert_complete(server: JobServer, data: Path, job_id: str) -> dict[str, object]:
    """The job ended with every time succeeded once, its image on disk once, its actual time right."""
    job = wait_job(server.base_url, job_id, timeout=60)
    assert job["status"] == "completed", job["progress"]
    results = job["results"]
    assert [r["index"] for r in results] == list(range(len(TIMES)))
    assert all(r["status"] == "succeeded" for r in results)
    assert [r["actual_time"] for r in results] == [expected_actual(t) for t in TIMES]
    files = sorted(p.name for p in iter_files(data / "results" / job_id))
    assert files == sorted(f"{i}.png" for i in range(len(TIMES)))  # no leftovers, no duplicates
    return job


def assert_events_once(events: list[SSEEvent]) -> None:
    assert [e.id for e in events] == list(range(1, len(TIMES) + 2))
    assert sorted(e.data["index"] for e in events[:-1]) == list(range(len(TIMES)))
    assert events[-1].event == "job.completed" and events[-1].data["succeeded"] == len(TIMES)


def test_kill_9_of_the_whole_server_mid_job_then_restart_loses_nothing(
    media_root: Path, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    data = tmp_path / "data"
    env = server_env(
        media_root,
        data,
        STILLFRAME_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STILLFRAME_ALLOWED_NETWORKS="127.0.0.0/8",
        STILLFRAME_ALLOWED_PORTS=str(receiver.port),
        STILLFRAME_WEBHOOK_RETRY_BASE="0.2",
        STILLFRAME_WEBHOOK_RETRY_MAX_DELAY="0.5",
    )
    server = JobServer(env, tmp_path / "server.log").start()
    try:
        body = {"url": "long.mp4", "times": TIMES, "format": "png", "callback_url": receiver.url()}
        job_id = httpx.post(server.url("/v1/jobs"), json=body, timeout=30).json()["id"]
        before = wait_job(server.base_url, job_id, until=lambda j: j["progress"]["succeeded"] >= 20, timeout=30)
        assert before["status"] == "running"
        server.kill9()  # the API process and its decoders, all at once
        assert server.process is not None and server.process.returncode == -signal.SIGKILL

        server.start()  # same data directory, same port
        assert_complete(server, data, job_id)
        assert_events_once(read_sse(server.base_url, job_id))
        ids = {f"msg_{job_id}_{seq}" for seq in range(1, len(TIMES) + 2)}
        wait_for(lambda: {r.headers["webhook-id"] for r in receiver.requests()} >= ids, 30, "every webhook")
        delivered = {r.headers["webhook-id"] for r in receiver.requests()}
        assert delivered == ids  # each event once by id (a retry of the same id is allowed: at least once)
    finally:
        server.stop()


def test_sigterm_drains_then_a_restart_finishes_the_job(media_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = JobServer(server_env(media_root, data, STILLFRAME_DRAIN_TIMEOUT="0.5"), tmp_path / "server.log")
    server.start()
    try:
        body = {"url": "long.mp4", "times": TIMES, "format": "png"}
        job_id = httpx.post(server.url("/v1/jobs"), json=body, timeout=30).json()["id"]
        wait_job(server.base_url, job_id, until=lambda j: j["progress"]["succeeded"] >= 20, timeout=30)
        streamed: list[SSEEvent] = []
        reader = threading.Thread(target=lambda: read_sse(server.base_url, job_id, timeout=30, sink=streamed))
        reader.start()
        wait_for(lambda: len(streamed) > 0 or not reader.is_alive(), 5, "the stream")
        returncode = server.sigterm(timeout=20)  # open SSE streams must not hold the shutdown up
        assert returncode in (0, -signal.SIGTERM), server.log()
        reader.join(timeout=10)
        assert not reader.is_alive()
        assert "Traceback" not in server.log()

        server.start()
        assert_complete(server, data, job_id)
        events = read_sse(server.base_url, job_id)
        assert_events_once(events)
        assert [e.id for e in streamed] == [e.id for e in events[: len(streamed)]]  # a prefix: resumable
    finally:
        server.stop()


def test_kill_9_of_a_decoder_mid_job_the_job_completes(media_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = JobServer(server_env(media_root, data), tmp_path / "server.log").start()
    try:
        body = {"url": "long.mp4", "times": TIMES, "format": "png"}
        job_id = httpx.post(server.url("/v1/jobs"), json=body, timeout=30).json()["id"]
        wait_job(server.base_url, job_id, until=lambda j: j["progress"]["succeeded"] >= 20, timeout=30)
        assert server.process is not None
        workers = [pid for pid in child_pids(server.process.pid) if b"multiprocessing" in _cmdline(pid)]
        workers = [pid for pid in workers if b"resource_tracker" not in _cmdline(pid)]
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert_complete(server, data, job_id)
        assert httpx.get(server.url("/healthz")).status_code == 200
        assert_events_once(read_sse(server.base_url, job_id))
    finally:
        server.stop()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
