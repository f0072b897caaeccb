"""Webhooks with a real receiver on loopback: down, then 500, then 200 (every event arrives, signed,
with stable ids); 410 stops the endpoint; redirects are not followed; the SSRF guard at creation."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from standardwebhooks import Webhook

from app.config import Settings
from app.jobs.model import Delivery
from app.jobs.webhooks import backoff_delay, next_attempt, send, signer
from tests.jobs_support import (
    WEBHOOK_SECRET,
    JobServer,
    Received,
    WebhookReceiver,
    make_clip,
    server_env,
    wait_for,
    wait_job,
)


@pytest.fixture(scope="module")
def receivers() -> dict[str, WebhookReceiver]:
    flaky_calls = {"n": 0}

    def flaky(path: str, n: int) -> int:
        flaky_calls["n"] += 1
        return 500 if flaky_calls["n"] <= 4 else 200

    return {
        "flaky": WebhookReceiver(flaky),
        "gone": WebhookReceiver(lambda path, n: 410),
        "redirect": WebhookReceiver(lambda path, n: 200 if path == "/redirected" else 302),
        "ok": WebhookReceiver(),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receivers: dict[str, WebhookReceiver]) -> Iterator[JobServer]:
    media = tmp_path_factory.mktemp("hook-media")
    make_clip(media / "clip.mp4")
    data = tmp_path_factory.mktemp("hook-data")
    env = server_env(
        media,
        data,
        STILLFRAME_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STILLFRAME_ALLOWED_NETWORKS="127.0.0.0/8",
        STILLFRAME_ALLOWED_PORTS=",".join(str(r.port) for r in receivers.values()),
        STILLFRAME_WEBHOOK_RETRY_BASE="0.2",
        STILLFRAME_WEBHOOK_RETRY_MAX_DELAY="0.8",
        STILLFRAME_WEBHOOK_TIMEOUT="2",
    )
    live = JobServer(env, data / "server.log").start()
    yield live
    live.stop()
    for receiver in receivers.values():
        receiver.stop()


def verified(request: Received) -> dict[str, object]:
    """The payload, after checking the Standard Webhooks signature as a receiver would."""
    payload = Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)
    assert isinstance(payload, dict)
    return payload


def start_job(server: JobServer, callback_url: str, times: list[str], **extra: object) -> str:
    body = {"url": "clip.mp4", "times": times, "callback_url": callback_url, **extra}
    response = httpx.post(server.url("/v1/jobs"), json=body, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_every_event_arrives_signed_with_stable_ids_through_downtime_and_errors(
    server: JobServer, receivers: dict[str, WebhookReceiver]
) -> None:
    receiver = receivers["flaky"]
    times = ["0", "1", "1", "2.5", "99"]
    job_id = start_job(server, receiver.url(), times)
    assert wait_job(server.base_url, job_id)["status"] == "completed"
    time.sleep(1.5)  # the receiver is down: attempts are refused and retried with backoff
    receiver.start()  # up: four answers of 500, then 200
    wait_for(lambda: len({r.headers["webhook-id"] for r in receiver.requests() if r.status == 200}) == 6, 30, "all")

    requests = receiver.requests()
    payloads = [verified(r) for r in requests]  # every request, retries included, is signed correctly
    assert [r.status for r in requests[:4]] == [500] * 4
    delivered = {r.headers["webhook-id"]: p for r, p in zip(requests, payloads, strict=True) if r.status == 200}
    assert len(delivered) == 6
    types = sorted(str(p["type"]) for p in delivered.values())
    assert types == ["frame.failed", "frame.succeeded", "frame.succeeded", "frame.succeeded", "frame.succeeded",
                     "job.completed"]  # fmt: skip
    frames = [p["data"] for p in delivered.values() if p["type"] != "job.completed"]
    assert sorted(d["index"] for d in frames) == [0, 1, 2, 3, 4]  # type: ignore[index]
    (final,) = [p["data"] for p in delivered.values() if p["type"] == "job.completed"]
    assert final == {"job_id": job_id, "status": "completed", "total": 5, "succeeded": 4, "failed": 1, "cancelled": 0}
    for data in frames:
        assert data["job_id"] == job_id  # type: ignore[index]
        if data["status"] == "succeeded":  # type: ignore[index]
            image = httpx.get(str(data["image_url"]))  # type: ignore[index]
            assert image.status_code == 200
            assert image.headers["x-actual-time"] == data["actual_time"]  # type: ignore[index]
    # Retries carry the same id and the same payload; the ids answered 500 were all delivered later.
    for request, payload in zip(requests, payloads, strict=True):
        webhook_id = request.headers["webhook-id"]
        assert webhook_id in delivered
        assert payload == delivered[webhook_id]
    assert {r.headers["webhook-id"] for r in requests[:4]} <= set(delivered)


def test_410_gone_stops_deliveries_to_that_endpoint(server: JobServer, receivers: dict[str, WebhookReceiver]) -> None:
    receiver = receivers["gone"].start()
    job_id = start_job(server, receiver.url(), ["0", "1", "2", "3", "3.5"])
    assert wait_job(server.base_url, job_id)["status"] == "completed"
    wait_for(lambda: len(receiver.requests()) >= 1, 10, "a first delivery")
    time.sleep(2.0)  # many retry intervals: nothing more may come
    count = len(receiver.requests())
    assert count <= 4  # at most the deliveries already in flight when the first 410 came back
    time.sleep(1.0)
    assert len(receiver.requests()) == count


def test_redirects_are_not_followed(server: JobServer, receivers: dict[str, WebhookReceiver]) -> None:
    receiver = receivers["redirect"].start()
    start_job(server, receiver.url("/moved"), ["0"])
    wait_for(lambda: len(receiver.requests("/moved")) >= 4, 15, "retries of the redirected delivery")
    assert receiver.requests("/redirected") == []


def test_callback_include_image_inlines_the_image(server: JobServer, receivers: dict[str, WebhookReceiver]) -> None:
    receiver = receivers["ok"].start()
    job_id = start_job(server, receiver.url(), ["1.5"], callback_include_image=True, format="png")
    wait_for(lambda: len(receiver.requests()) >= 2, 15, "two deliveries")
    frame = next(verified(r) for r in receiver.requests() if json.loads(r.body)["type"] == "frame.succeeded")
    data = frame["data"]
    assert isinstance(data, dict)
    image = httpx.get(server.url(f"/v1/jobs/{job_id}/results/0"))
    assert base64.b64decode(data["image"]) == image.content
    assert data["actual_time"] == image.headers["x-actual-time"] == "1.48"


@pytest.mark.parametrize(
    ("callback_url", "code"),
    [
        ("http://169.254.169.254/latest/meta-data", "source_forbidden"),
        ("http://10.1.2.3/hook", "source_forbidden"),
        ("http://127.0.0.1:1/hook", "source_forbidden"),  # a port that is not allowed
        ("http://user:pw@127.0.0.1/hook", "source_forbidden"),
        ("gopher://127.0.0.1/", None),
    ],
)
def test_callback_urls_pass_the_ssrf_guard_at_creation(server: JobServer, callback_url: str, code: str | None) -> None:
    response = httpx.post(
        server.url("/v1/jobs"), json={"url": "clip.mp4", "times": ["0"], "callback_url": callback_url}
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if code is not None:
        assert response.json()["code"] == code


def test_backoff_is_exponential_with_jitter_and_retries_for_at_least_a_day() -> None:
    settings = Settings(webhook_retry_base=5, webhook_retry_max_delay=3600, webhook_retry_window=86400)
    delays = [backoff_delay(n, settings) for n in range(1, 15)]
    assert 2.5 <= delays[0] <= 5
    assert 40 <= delays[4] <= 80
    assert all(1800 <= d <= 3600 for d in delays[-3:])
    assert len({backoff_delay(3, settings) for _ in range(20)}) > 1  # jittered
    now, attempts = 0.0, 1
    while (retry_at := next_attempt(attempts, 0.0, now, settings)) is not None:
        assert retry_at > now
        now, attempts = retry_at, attempts + 1
    assert now >= 86400  # the last try comes at least 24 h after the first
    assert attempts < 60


def test_the_secret_must_be_a_standard_webhooks_secret() -> None:
    assert signer(WEBHOOK_SECRET) is not None
    with pytest.raises(ValueError):
        signer("not-a-secret")
    with pytest.raises(ValueError):
        signer("whsec_")


def _delivery(url: str) -> Delivery:
    payload = json.dumps({"type": "job.completed", "timestamp": "2026-01-01T00:00:00Z", "data": {"job_id": "j"}})
    return Delivery("msg_j_1", "j", url, payload, None, 0, None, time.time())


def test_every_attempt_is_checked_by_the_ssrf_guard_again() -> None:
    """A URL accepted when the job was made is refused at the attempt once the policy says no."""
    receiver = WebhookReceiver().start()
    try:
        allowed = Settings(allowed_networks="127.0.0.0/8", allowed_ports=str(receiver.port))
        attempt = send(_delivery(receiver.url()), allowed, signer(WEBHOOK_SECRET))
        assert attempt.delivered
        verified(receiver.requests()[0])
        refused = send(_delivery(receiver.url()), Settings(allowed_ports=str(receiver.port)), signer(WEBHOOK_SECRET))
        assert not refused.delivered and refused.status is None
        assert refused.error.startswith("source_forbidden")
        assert len(receiver.requests()) == 1  # nothing was sent
    finally:
        receiver.stop()


def test_an_attempt_has_a_short_timeout() -> None:
    receiver = WebhookReceiver(lambda path, n: time.sleep(3) or 200).start()
    try:
        settings = Settings(allowed_networks="127.0.0.0/8", allowed_ports=str(receiver.port), webhook_timeout=0.5)
        started = time.monotonic()
        attempt = send(_delivery(receiver.url()), settings, signer(WEBHOOK_SECRET))
        assert time.monotonic() - started < 2
        assert not attempt.delivered and attempt.error.startswith("source_unreachable")
    finally:
        receiver.stop()
