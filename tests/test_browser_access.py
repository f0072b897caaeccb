"""What a page in a browser needs: CORS for the documented headers, HEAD wherever GET works, weak
If-None-Match, and JPEG for a browser's default Accept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.auth import UrlSigner
from app.config import Settings
from app.main import create_app
from tests.media import make_h264_clip

KEY = "browser-test-key-0123456789"
ORIGIN = {"Origin": "https://page.example"}
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("browser-media")
    make_h264_clip(root / "clip.mp4", size="64x48", rate=5, seconds=2)
    settings = Settings(
        media_root=root,
        workers=1,
        api_keys=KEY,
        cors_origins="https://page.example",
        data_dir=tmp_path_factory.mktemp("browser-data"),
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("header", ["Idempotency-Key", "Prefer", "Last-Event-ID", "If-None-Match", "Authorization"])
def test_preflight_allows_the_documented_headers(client: TestClient, header: str) -> None:
    preflight = client.options(
        "/v1/jobs",
        headers={**ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": header.lower()},
    )
    assert preflight.status_code == 200, preflight.text
    assert header.lower() in preflight.headers["access-control-allow-headers"].lower()


def test_location_etag_and_time_headers_are_exposed(client: TestClient) -> None:
    created = client.post("/v1/jobs", json={"url": "clip.mp4", "times": ["0.5"]}, headers={**ORIGIN, **AUTH})
    assert created.status_code == 202
    exposed = {h.strip().lower() for h in created.headers["access-control-expose-headers"].split(",")}
    assert {"location", "etag", "x-actual-time", "x-actual-time-rational", "x-requested-time"} <= exposed


@pytest.mark.parametrize(
    "path",
    ["/v1/frame?url=clip.mp4&t=1", "/v1/info?url=clip.mp4", "/v1/storyboard.jpg?url=clip.mp4&count=2", "/healthz"],
)
def test_head_answers_like_get(client: TestClient, path: str) -> None:
    got = client.get(path, headers=AUTH)
    head = client.head(path, headers=AUTH)
    assert got.status_code == head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "etag", "x-actual-time", "content-length"):
        assert head.headers.get(name) == got.headers.get(name), name


def test_head_of_a_problem_and_of_a_job(client: TestClient) -> None:
    assert client.head("/v1/frame?url=clip.mp4&t=1").status_code == 401
    assert client.head("/v1/frame?url=missing.mp4&t=1", headers=AUTH).status_code == 404
    created = client.post("/v1/jobs", json={"url": "clip.mp4", "times": ["0.5"]}, headers=AUTH).json()
    events = client.head(f"/v1/jobs/{created['id']}/events", headers=AUTH)  # a stream: headers only, at once
    assert events.status_code == 200 and events.content == b""
    assert client.head(f"/v1/jobs/{created['id']}", headers=AUTH).status_code == 200


def test_if_none_match_compares_weakly(client: TestClient) -> None:
    first = client.get("/v1/frame?url=clip.mp4&t=1", headers=AUTH)
    etag = first.headers["etag"]
    for presented in (etag, "W/" + etag, f'"other", W/{etag}', "*"):
        again = client.get("/v1/frame?url=clip.mp4&t=1", headers={**AUTH, "If-None-Match": presented})
        assert again.status_code == 304, presented
    assert client.get("/v1/frame?url=clip.mp4&t=1", headers={**AUTH, "If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize(
    "accept",
    [
        "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",  # Chrome
        "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",  # Firefox
        "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,image/*;q=0.8",
    ],
)
def test_a_browsers_default_accept_gets_jpeg(client: TestClient, accept: str) -> None:
    response = client.get("/v1/frame?url=clip.mp4&t=1", headers={**AUTH, "Accept": accept})
    assert response.headers["content-type"] == "image/jpeg"


def test_job_results_and_events_by_signed_url(tmp_path: Path) -> None:
    make_h264_clip(tmp_path / "clip.mp4", size="64x48", rate=5, seconds=2)
    secret = "s" * 32
    settings = Settings(
        media_root=tmp_path, workers=1, api_keys=KEY, url_signing_keys=f"web:{secret}", data_dir=tmp_path / "data"
    )
    signer = UrlSigner({"web": secret})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        job = client.post("/v1/jobs", json={"url": "clip.mp4", "times": ["0.5"]}, headers=AUTH).json()
        for _ in range(500):
            if client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()["status"] not in {"queued", "running"}:
                break
            time.sleep(0.01)
        result, events = f"/v1/jobs/{job['id']}/results/0", f"/v1/jobs/{job['id']}/events"
        assert client.get(result).status_code == 401  # an <img> sends no key...
        image = client.get(signer.sign(result))  # ...but a signed URL will do
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        stream = client.get(signer.sign(events))
        assert stream.status_code == 200 and "event: job.completed" in stream.text
        other = signer.sign(result).replace(job["id"], "0" * len(job["id"]))
        assert client.get(other).json()["code"] == "signature_invalid"
        with pytest.raises(ValueError, match="results and events"):  # only results and events
            signer.sign(f"/v1/jobs/{job['id']}")
        # nor does the server take a signature on the job itself (its status is a key's to read)
        signed_result = signer.sign(result)
        assert client.get(signed_result.replace("/results/0?", "?")).status_code == 401


def test_a_jobs_signed_links(tmp_path: Path) -> None:
    make_h264_clip(tmp_path / "clip.mp4", size="64x48", rate=5, seconds=2)
    settings = Settings(
        media_root=tmp_path, workers=1, api_keys=KEY, url_signing_keys="web:" + "k" * 32, data_dir=tmp_path / "d"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        job = client.post("/v1/jobs", json={"url": "clip.mp4", "times": ["0.5", "1"]}, headers=AUTH).json()
        assert client.get(f"/v1/jobs/{job['id']}/links").status_code == 401
        links = client.get(f"/v1/jobs/{job['id']}/links", headers=AUTH).json()
        assert len(links["results"]) == 2
        stream = client.get(links["events"])  # no key: the signature opens it, and it ends with the job
        assert stream.status_code == 200 and stream.text.count("event: frame.succeeded") == 2
        for url in links["results"]:
            assert client.get(url).headers["content-type"] == "image/jpeg"
        assert client.get("/v1/jobs/nope/links", headers=AUTH).json()["code"] == "job_not_found"
        bad_ttl = client.get(f"/v1/jobs/{job['id']}/links", params={"ttl": "5"}, headers=AUTH)
        assert bad_ttl.json()["parameter"] == "ttl"
    unsigned = Settings(media_root=tmp_path, workers=1, data_dir=tmp_path / "e")
    with TestClient(create_app(unsigned), raise_server_exceptions=False) as client:
        job = client.post("/v1/jobs", json={"url": "clip.mp4", "times": ["0.5"]}).json()
        assert client.get(f"/v1/jobs/{job['id']}/links").json()["code"] == "invalid_parameter"
