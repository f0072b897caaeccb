"""Failed authentication is rate-limited per client address: a guesser of keys or signatures gets
``429 rate_limited`` (with ``Retry-After``) after a few failures, whatever it presents next, while
other addresses and requests that fail for other reasons are unaffected."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.auth import UrlSigner
from app.config import Settings
from app.main import create_app
from tests.hostile import assert_problem

KEY = "key-0123456789abcdef-right"
SIGNING = {"web": "web-secret-0123456789"}


@pytest.fixture
def app_settings() -> Settings:
    return Settings(
        workers=1,
        data_dir=Path(tempfile.mkdtemp(prefix="stillframe-authfail-")),
        api_keys=KEY,
        url_signing_keys="web:web-secret-0123456789",
        auth_failure_limit="3/minute",
    )


@pytest.fixture
def clients(app_settings: Settings) -> Iterator[tuple[TestClient, TestClient]]:
    app = create_app(app_settings)
    with TestClient(app, raise_server_exceptions=False, client=("203.0.113.7", 4000)) as guesser:
        other = TestClient(app, raise_server_exceptions=False, client=("198.51.100.9", 4000))
        yield guesser, other


def wrong(n: int) -> dict[str, str]:
    return {"Authorization": f"Bearer wrong-key-{n:04d}-xxxxxxxxxxxx"}


def test_wrong_keys_are_rate_limited_per_address(clients: tuple[TestClient, TestClient]) -> None:
    guesser, other = clients
    right = {"Authorization": f"Bearer {KEY}"}
    for n in range(3):
        assert assert_problem(guesser.get("/v1/jobs/job_x", headers=wrong(n)), statuses=[401])["code"] == "unauthorized"
    response = guesser.get("/v1/jobs/job_x", headers=wrong(3))
    assert assert_problem(response, statuses=[429])["code"] == "rate_limited"
    assert int(response.headers["Retry-After"]) >= 1
    # locked out: even the right key is not tried from this address (no oracle for the guesser)
    assert assert_problem(guesser.get("/v1/jobs/job_x", headers=right), statuses=[429])["code"] == "rate_limited"
    assert guesser.get("/healthz").status_code == 200
    # another address is not affected
    assert assert_problem(other.get("/v1/jobs/job_x", headers=right), statuses=[404])["code"] == "job_not_found"
    assert assert_problem(other.get("/v1/jobs/job_x", headers=wrong(9)), statuses=[401])["code"] == "unauthorized"


def test_bad_signatures_count_as_failures(clients: tuple[TestClient, TestClient]) -> None:
    guesser, other = clients
    url = UrlSigner(SIGNING).sign("/v1/frame?url=a.mp4&t=1", ttl=60)
    forged = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    for _ in range(3):
        assert assert_problem(guesser.get(forged), statuses=[403])["code"] == "signature_invalid"
    assert assert_problem(guesser.get(forged), statuses=[429])["code"] == "rate_limited"
    assert assert_problem(guesser.get(url), statuses=[429])["code"] == "rate_limited"
    assert assert_problem(other.get(forged), statuses=[403])["code"] == "signature_invalid"


def test_other_refusals_and_successes_are_not_failures(clients: tuple[TestClient, TestClient]) -> None:
    guesser, _ = clients
    right = {"Authorization": f"Bearer {KEY}"}
    for _ in range(10):
        assert guesser.get("/v1/jobs/job_x").status_code == 401  # no key at all: nothing guessed
        assert guesser.get("/v1/jobs/job_x", headers=right).status_code == 404
    expired = UrlSigner(SIGNING, clock=lambda: 1000.0).sign("/v1/frame?url=a.mp4&t=1", ttl=60)
    for _ in range(5):
        assert assert_problem(guesser.get(expired), statuses=[403])["code"] == "signature_expired"
    assert guesser.get("/v1/jobs/job_x", headers=right).status_code == 404
