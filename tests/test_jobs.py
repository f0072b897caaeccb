"""/v1/jobs against the real server process: results, SSE with resume, cancellation, idempotency,
``Prefer: respond-async``, validation problems and result expiry."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.jobs_support import (
    JobServer,
    iter_files,
    make_clip,
    module_server,
    read_sse,
    server_env,
    wait_for,
    wait_job,
)

TERMINAL_RESULT = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jobs-media")
    make_clip(root / "clip.mp4")
    make_clip(root / "long.mp4", size="640x360", seconds=20, gop=250)  # slow enough to cancel half way
    return root


@pytest.fixture(scope="module")
def server(media_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobServer]:
    yield from module_server(media_root, tmp_path_factory, STILLFRAME_MAX_TIMES_PER_JOB="500")


def post_job(server: JobServer, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(server.url("/v1/jobs"), json=body, headers=headers, timeout=30)


def test_job_gives_every_time_a_result_in_request_order_like_v1_frame(server: JobServer) -> None:
    times = ["1.5", "0", "1.5", "10", "50%", "1001/30000", "0:01.02", "-1"]
    response = post_job(server, {"url": "clip.mp4", "times": times, "width": 160})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert response.json()["links"]["events"] == f"/v1/jobs/{job_id}/events"
    assert response.json()["status"] in ("queued", "running")

    job = wait_job(server.base_url, job_id)
    assert job["status"] == "completed"
    assert job["progress"] == {"total": 8, "done": 8, "succeeded": 6, "failed": 2, "cancelled": 0, "fraction": 1.0}
    results = job["results"]
    assert [r["index"] for r in results] == list(range(len(times)))
    assert [r["requested"] for r in results] == times
    assert [r["status"] for r in results] == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 3 + ["failed"]
    assert results[0]["actual_time"] == "1.48" and results[2]["actual_time"] == "1.48"
    assert results[1]["actual_time"] == "0"
    assert results[4]["requested_time"] == "2" and results[4]["actual_time"] == "2"
    assert results[3]["problem"]["code"] == "no_image_at_time"
    assert results[3]["requested_time"] == "10"
    assert results[7]["problem"]["status"] == 422

    for index, t in enumerate(times):
        if results[index]["status"] != "succeeded":
            continue
        image = httpx.get(results[index]["image_url"], timeout=10)
        direct = httpx.get(server.url("/v1/frame"), params={"url": "clip.mp4", "t": t, "width": 160}, timeout=30)
        assert image.status_code == 200 and direct.status_code == 200
        for header in (
            "x-actual-time",
            "x-actual-time-rational",
            "x-requested-time",
            "content-type",
            "content-disposition",
        ):
            assert image.headers[header] == direct.headers[header], header
        assert image.content == direct.content  # the same pixels, the same bytes
        assert Image.open(io.BytesIO(image.content)).size == (160, 120)
        assert results[index]["actual_time"] == image.headers["x-actual-time"]
        again = httpx.get(results[index]["image_url"], headers={"If-None-Match": image.headers["etag"]})
        assert again.status_code == 304
        weak = httpx.get(results[index]["image_url"], headers={"If-None-Match": f'"x", W/{image.headers["etag"]}'})
        assert weak.status_code == 304  # compared weakly, in a list, as for /v1/frame

    failed = httpx.get(server.url(f"/v1/jobs/{job_id}/results/3"))
    assert failed.status_code == 422
    assert failed.headers["content-type"].startswith("application/problem+json")
    assert failed.json()["code"] == "no_image_at_time"
    missing = httpx.get(server.url(f"/v1/jobs/{job_id}/results/99"))
    assert missing.status_code == 404 and missing.json()["code"] == "result_not_found"


@pytest.mark.parametrize(
    ("body", "status", "code", "parameter"),
    [
        ({"url": "clip.mp4", "times": [str(i) for i in range(501)]}, 400, "invalid_parameter", "times"),
        ({"url": "clip.mp4", "times": ["1", "soon"]}, 400, "invalid_parameter", "times[1]"),
        ({"url": "clip.mp4", "times": []}, 400, "invalid_parameter", "times"),
        ({"url": "clip.mp4", "times": ["1"], "frobnicate": 1}, 400, "invalid_parameter", "frobnicate"),
        ({"url": "clip.mp4", "times": ["1"], "tolerance": "-1"}, 400, "invalid_parameter", None),
        ({"url": "nope.mp4", "times": ["1"]}, 404, "source_not_found", None),
        ({"url": "../etc/passwd", "times": ["1"]}, 403, "source_forbidden", None),
        ({"url": "clip.mp4", "times": ["1"], "callback_url": "http://example.com/"}, 400, "invalid_parameter", None),
    ],
)
def test_bad_job_requests_are_problems(
    server: JobServer, body: dict[str, object], status: int, code: str, parameter: str | None
) -> None:
    response = post_job(server, body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == code
    if parameter is not None:
        assert problem["parameter"] == parameter


def test_unknown_job_is_a_problem(server: JobServer) -> None:
    for method, path in [("GET", "/v1/jobs/job_nope"), ("DELETE", "/v1/jobs/job_nope"),
                         ("GET", "/v1/jobs/job_nope/events"), ("GET", "/v1/jobs/job_nope/results/0")]:  # fmt: skip
        response = httpx.request(method, server.url(path))
        assert response.status_code == 404, (method, path)
        assert response.json()["code"] == "job_not_found"


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(server: JobServer) -> None:
    body = {"url": "clip.mp4", "times": ["0", "1"]}
    first = post_job(server, body, **{"Idempotency-Key": "key-1"})
    second = post_job(server, body, **{"Idempotency-Key": "key-1"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    other = post_job(server, {**body, "times": ["0", "2"]}, **{"Idempotency-Key": "key-1"})
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    fresh = post_job(server, body, **{"Idempotency-Key": "key-2"})
    assert fresh.json()["id"] != first.json()["id"]
    assert post_job(server, body).json()["id"] != first.json()["id"]  # no key: a new job every time


def test_sse_streams_each_result_then_the_job_and_resumes_with_last_event_id(server: JobServer) -> None:
    times = [f"{i * 0.1:.1f}" for i in range(40)] + ["99"]
    job_id = post_job(server, {"url": "long.mp4", "times": times}).json()["id"]
    first = read_sse(server.base_url, job_id, stop_after=5)  # hang up early, mid-job
    assert [e.id for e in first] == [1, 2, 3, 4, 5]
    rest = read_sse(server.base_url, job_id, last_event_id=first[-1].id)
    events = first + rest
    assert [e.id for e in events] == list(range(1, len(times) + 2))  # nothing missed, nothing twice
    frames = events[:-1]
    assert sorted(e.data["index"] for e in frames) == list(range(len(times)))
    assert all(e.event == f"frame.{e.data['status']}" for e in frames)
    assert {e.event for e in frames} == {"frame.succeeded", "frame.failed"}
    final = events[-1]
    assert final.event == "job.completed"
    assert final.data == {
        "job_id": job_id, "status": "completed", "total": 41, "succeeded": 40, "failed": 1, "cancelled": 0
    }  # fmt: skip
    # A stream opened after the end replays everything and ends; one resumed past the end is empty.
    assert [e.id for e in read_sse(server.base_url, job_id)] == [e.id for e in events]
    assert read_sse(server.base_url, job_id, last_event_id=final.id) == []


def test_cancel_mid_job_keeps_what_is_done_and_cancels_the_rest(server: JobServer) -> None:
    times = [f"{i * 0.05:.2f}" for i in range(400)]
    job_id = post_job(server, {"url": "long.mp4", "times": times, "format": "png"}).json()["id"]
    wait_job(server.base_url, job_id, until=lambda j: j["progress"]["succeeded"] >= 10, timeout=30)
    response = httpx.delete(server.url(f"/v1/jobs/{job_id}"), timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    time.sleep(0.3)  # anything the decoder was still making must not land after the cancel
    job = wait_job(server.base_url, job_id)
    assert job["status"] == "cancelled"
    statuses = [r["status"] for r in job["results"]]
    assert set(statuses) == {"succeeded", "cancelled"}
    assert 10 <= statuses.count("succeeded") < 400
    assert job["progress"]["succeeded"] == statuses.count("succeeded")
    events = read_sse(server.base_url, job_id)
    assert sorted(e.data["index"] for e in events[:-1]) == list(range(400))  # each time exactly once
    assert events[-1].event == "job.completed" and events[-1].data["status"] == "cancelled"
    done = next(r for r in job["results"] if r["status"] == "succeeded")
    assert httpx.get(done["image_url"]).status_code == 200
    cancelled = next(r for r in job["results"] if r["status"] == "cancelled")
    assert httpx.get(server.url(f"/v1/jobs/{job_id}/results/{cancelled['index']}")).json()["code"] == "cancelled"
    assert httpx.delete(server.url(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"  # again: no change
    assert wait_job(server.base_url, job_id)["progress"] == job["progress"]


def test_cancel_all_cancels_every_pending_job(server: JobServer) -> None:
    times = [f"{i * 0.05:.2f}" for i in range(300)]
    ids = [post_job(server, {"url": "long.mp4", "times": times, "format": "png"}).json()["id"] for _ in range(3)]
    response = httpx.post(server.url("/v1/jobs/cancel"), timeout=10)
    assert response.status_code == 200
    assert set(ids) <= set(response.json()["cancelled"])
    for job_id in ids:
        job = wait_job(server.base_url, job_id)
        assert job["status"] == "cancelled"
        assert job["progress"]["cancelled"] > 0
        assert {r["status"] for r in job["results"]} <= TERMINAL_RESULT


def test_prefer_respond_async_on_post_frame_answers_202_with_a_job(server: JobServer) -> None:
    body = {"url": "clip.mp4", "t": "2.5", "format": "png"}
    response = httpx.post(server.url("/v1/frame"), json=body, headers={"Prefer": "respond-async, wait=0"})
    assert response.status_code == 202, response.text
    assert response.headers["preference-applied"] == "respond-async"
    location = response.headers["location"]
    job = wait_job(server.base_url, location.rsplit("/", 1)[1])
    (result,) = job["results"]
    assert result["status"] == "succeeded" and result["actual_time"] == "2.48"
    image = httpx.get(result["image_url"])
    direct = httpx.post(server.url("/v1/frame"), json=body)
    assert image.content == direct.content
    assert image.headers["x-actual-time"] == direct.headers["x-actual-time"] == "2.48"
    assert image.headers["content-type"] == "image/png"


def test_results_expire_and_their_files_are_removed(media_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    live = JobServer(server_env(media_root, data, STILLFRAME_RESULT_TTL="1.5"), tmp_path / "server.log")
    live.start()
    try:
        job_id = httpx.post(live.url("/v1/jobs"), json={"url": "clip.mp4", "times": ["0", "1"]}).json()["id"]
        job = wait_job(live.base_url, job_id)
        assert job["status"] == "completed" and job["expires_at"] is not None
        assert len(list(iter_files(data / "results" / job_id))) == 2
        wait_for(lambda: httpx.get(live.url(f"/v1/jobs/{job_id}")).status_code == 404, 10, "expiry")
        assert httpx.get(live.url(f"/v1/jobs/{job_id}/results/0")).json()["code"] == "job_not_found"
        wait_for(lambda: not (data / "results" / job_id).exists(), 10, "files removed")
    finally:
        live.stop()
