"""Request bodies are bounded before they are parsed: a body over the cap is a 413 (declared or
streamed), a job's times are counted before any is parsed, and no body, however large or deeply
nested, is a 500 or keeps the server from answering others."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.hostile import assert_problem
from tests.live_server import live_server

CAP = 64 * 1024


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(workers=1, data_dir=Path(tempfile.mkdtemp(prefix="stillframe-bodies-")), max_request_bytes=CAP)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def times_body(count: int, last: str = "1") -> bytes:
    return b'{"url":"clip.mp4","times":[' + b'"1",' * (count - 1) + f'"{last}"]}}'.encode()


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/frame", "/v1/jobs/cancel", "/v1/nowhere"])
def test_a_declared_body_over_the_cap_is_413_unread(client: TestClient, path: str) -> None:
    response = client.post(path, content=b"x" * (CAP + 1), headers={"content-type": "application/json"})
    assert assert_problem(response, statuses=[413])["code"] == "request_too_large"


def test_a_streamed_body_over_the_cap_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(CAP // 1024 + 2):
            yield b" " * 1024

    response = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert assert_problem(response, statuses=[413])["code"] == "request_too_large"


def test_a_body_at_the_cap_is_read(client: TestClient) -> None:
    body = b'{"url":"clip.mp4","times":["1"]}'
    response = client.post(
        "/v1/jobs", content=body + b" " * (CAP - len(body)), headers={"content-type": "application/json"}
    )
    assert response.status_code != 413  # (no media root here: the source is refused, after parsing)
    assert assert_problem(response)["code"] != "request_too_large"


def test_a_jobs_times_are_counted_before_any_is_parsed(client: TestClient) -> None:
    # 1001 times whose last is not a time: the count refuses it, not the parse of times[1000]
    response = client.post(
        "/v1/jobs", content=times_body(1001, last="nonsense"), headers={"content-type": "application/json"}
    )
    body = assert_problem(response, statuses=[400])
    assert body["parameter"] == "times", body
    response = client.post("/v1/jobs", json={"url": "clip.mp4", "times": "1" * 2000})
    assert assert_problem(response, statuses=[400])["code"] == "invalid_parameter"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * (CAP - 10),
        b'{"url":"clip.mp4","times":' + b"[" * 30000 + b"]" * 30000 + b"}",
        b'{"url":"clip.mp4","times":["1"],"x":' + b'{"a":' * 10000 + b"1" + b"}" * 10000 + b"}",
        b'{"url":' + b'"' + b"\\u0000" * 10000 + b'"}',
        b'{"url":"clip.mp4","t":' + b"9" * 60000 + b"}",
    ],
)
def test_deep_or_odd_bodies_are_4xx_problems(client: TestClient, body: bytes) -> None:
    for path in ("/v1/jobs", "/v1/frame"):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert_problem(response)


def test_a_huge_body_never_stalls_the_server(tmp_path: Path) -> None:
    """While clients send 13 MB bodies (refused unread), /healthz and other requests still answer."""
    env = {"STILLFRAME_WORKERS": "1", "STILLFRAME_DATA_DIR": str(tmp_path / "data")}
    with live_server(env) as server:
        stop = threading.Event()
        refused: list[int] = []

        def flood() -> None:
            body = times_body(3_000_000)
            with httpx.Client(base_url=server.base_url, timeout=60) as http:
                while not stop.is_set():
                    try:
                        response = http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
                        refused.append(response.status_code)
                    except httpx.TransportError:  # the server may close before the body is all sent
                        refused.append(413)

        senders = [threading.Thread(target=flood) for _ in range(2)]
        for sender in senders:
            sender.start()
        try:
            with httpx.Client(base_url=server.base_url, timeout=5.0) as http:  # (a stalled loop would miss this)
                for _ in range(20):
                    assert http.get("/healthz").status_code == 200
        finally:
            stop.set()
            for sender in senders:
                sender.join()
        assert refused and set(refused) == {413}
