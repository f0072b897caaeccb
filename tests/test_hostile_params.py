"""Every numeric parameter, however long or large, is a 400 naming its parameter (or a 404) before any
decode: never a 500, never a dead decoder worker. Named cases first, then a property test over the whole
parameter space of /v1/frame (GET and POST), /v1/jobs, job results and job events."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.main import create_app
from tests.hostile import assert_problem
from tests.media import make_h264_clip


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("numeric-media")
    make_h264_clip(root / "clip.mp4", size="64x48", rate=10, seconds=2, gop=5)
    data = Path(tempfile.mkdtemp(prefix="stillframe-numeric-"))
    with TestClient(
        create_app(Settings(media_root=root, workers=1, data_dir=data)), raise_server_exceptions=False
    ) as c:
        yield c


@pytest.fixture(scope="module")
def job_id(client: TestClient) -> str:
    response = client.post("/v1/jobs", json={"url": "clip.mp4", "times": ["0", "1"]})
    assert response.status_code == 202, response.text
    job = response.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job}").json()["status"] not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.05)
    return str(job)


def worker_pids(client: TestClient) -> list[int]:
    return [worker.process.pid for worker in client.app.state.pool._workers]  # type: ignore[attr-defined]


def assert_pool_alive(client: TestClient, pids: list[int]) -> None:
    """The same decoder processes as before, still answering."""
    assert worker_pids(client) == pids, "a decoder worker died"
    response = client.get("/v1/frame", params={"url": "clip.mp4", "t": "0.5"})
    assert response.status_code == 200, response.text
    assert worker_pids(client) == pids


def assert_refused(response: Any, parameter: str) -> None:
    body = assert_problem(response, statuses=[400])
    assert body["code"] == "invalid_parameter", body
    assert body.get("parameter") == parameter, body


HUGE = [
    "1234567890123456789012",
    "9" * 22 + "/1",
    "-" + "9" * 30,
    "9" * 19 + ":00:00",
    "1" + "0" * 40 + "%",
    "9" * 63,
    "1e12" + "0" * 3,
]


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("name", ["t", "tolerance", "tolerance_before", "tolerance_after"])
def test_huge_times_and_tolerances_are_400_before_any_decode(client: TestClient, name: str, value: str) -> None:
    pids = worker_pids(client)
    if name != "t" and value.endswith("%"):
        value = value[:-1]
    assert_refused(client.get("/v1/frame", params={"url": "clip.mp4", name: value}), name)
    assert_refused(client.post("/v1/frame", json={"url": "clip.mp4", name: value}), name)
    assert worker_pids(client) == pids


@pytest.mark.parametrize(
    "colour",
    [
        "rgb(99999999999999999999,0,0)",
        "rgb(0,0,99999999999999999999)",
        "rgb(256,0,0)",
        "rgb(999%,0%,0%)",
        "hsl(0,999%,999%)",
        "hsv(0,999%,999%)",
        "rgba(1,2,3,999)",
    ],
)
def test_colour_channels_out_of_range_are_400(client: TestClient, colour: str) -> None:
    pids = worker_pids(client)
    query = {"url": "clip.mp4", "fit": "pad", "width": "40", "height": "40", "background": colour}
    assert_refused(client.get("/v1/frame", params=query), "background")
    assert_refused(client.post("/v1/frame", json=query), "background")
    assert_pool_alive(client, pids)


def test_job_times_of_any_size_are_400_and_never_reach_a_decoder(client: TestClient) -> None:
    pids = worker_pids(client)
    for value in HUGE:
        response = client.post("/v1/jobs", json={"url": "clip.mp4", "times": ["1", value]})
        assert_refused(response, "times[1]")
    assert_pool_alive(client, pids)


@pytest.mark.parametrize("index", [str(2**63), str(2**64), "9" * 40, "9" * 5000, "-" + "9" * 40, str(2**63 - 1)])
def test_a_result_index_of_any_size_is_a_404_or_a_400(client: TestClient, job_id: str, index: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}/results/{index}")
    body = assert_problem(response, statuses=[400, 404])
    if response.status_code == 400:
        assert body.get("parameter") == "index", body


@pytest.mark.parametrize("value", [str(2**63), str(2**64), "9" * 40, "-1", "1.5", "0x10"])
def test_events_after_of_any_size_is_400(client: TestClient, job_id: str, value: str) -> None:
    assert_refused(client.get(f"/v1/jobs/{job_id}/events", params={"after": value}), "after")


@pytest.mark.parametrize("value", [str(2**63), str(2**64), "9" * 40, "-5", "1.5", "abc", "٣"])
def test_last_event_id_of_any_size_is_400(client: TestClient, job_id: str, value: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": value.encode()})
    assert_refused(response, "Last-Event-ID")


def test_valid_resume_points_still_stream(client: TestClient, job_id: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "1"})
    assert response.status_code == 200
    assert "id: 2\n" in response.text and "id: 1\n" not in response.text
    response = client.get(f"/v1/jobs/{job_id}/events", params={"after": str(2**63 - 1)})
    assert response.status_code == 200 and "job.completed" not in response.text


# ------------------------------------------------------------------------------------ the property test


def big_numbers() -> st.SearchStrategy[str]:
    """Numbers of every length and form: what a client could type into a numeric parameter."""
    digits = st.text("0123456789", min_size=1, max_size=120)
    return st.one_of(
        st.integers(-(2**200), 2**200).map(str),
        st.builds(lambda sign, d: sign + d, st.sampled_from(["", "-", "+"]), digits),
        st.builds(lambda a, b: f"{a}/{b}", digits, digits),
        st.builds(lambda a, b: f"{a}.{b}", digits, digits),
        st.builds(lambda a, e: f"{a}e{e}", digits, st.integers(-400, 400)),
        st.builds(lambda h, m, s: f"{h}:{m}:{s}", digits, digits, digits),
        st.builds(lambda a: f"{a}%", digits),
        st.floats().map(repr),
        st.sampled_from(["inf", "-inf", "nan", "0", "1", "0.5", "1001/30000", "50%"]),
    )


def colours() -> st.SearchStrategy[str]:
    channel = st.one_of(st.integers(-(2**80), 2**80).map(str), st.integers(-(2**80), 2**80).map(lambda v: f"{v}%"))
    return st.one_of(
        st.builds(
            lambda f, a, b, c: f"{f}({a},{b},{c})", st.sampled_from(["rgb", "hsl", "hsv", "hsb"]), *[channel] * 3
        ),
        st.builds(lambda a, b, c, d: f"rgba({a},{b},{c},{d})", *[channel] * 4),
        st.from_regex(r"#[0-9a-fA-F]{0,9}", fullmatch=True),
        st.sampled_from(["black", "red", "white"]),
    )


NUMERIC = ["t", "tolerance", "tolerance_before", "tolerance_after", "stream", "width", "height", "quality"]


@st.composite
def frame_params(draw: st.DrawFn) -> dict[str, str]:
    params = {"url": "clip.mp4"}
    for name in draw(st.lists(st.sampled_from(NUMERIC), min_size=1, max_size=3, unique=True)):
        params[name] = draw(big_numbers())
    if draw(st.booleans()):
        params.update(fit="pad", width=params.get("width", "40"), background=draw(colours()))
    return params


def assert_safe(response: Any) -> None:
    """An image, or a problem that is not the decoder's death: a 400 names its parameter."""
    if response.status_code == 200:
        return
    body = assert_problem(response)
    assert body["code"] != "decode_failed", body
    if response.status_code == 400:
        assert body.get("parameter"), (body.get("detail"), response.request.url, response.request.content)


@pytest.fixture(scope="module")
def pids_before(client: TestClient) -> list[int]:
    return worker_pids(client)


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(params=frame_params(), method=st.sampled_from(["GET", "POST"]))
def test_any_number_in_a_frame_request_is_safe(
    client: TestClient, pids_before: list[int], params: dict[str, str], method: str
) -> None:
    if method == "GET":
        assert_safe(client.get("/v1/frame", params=params))
    else:
        assert_safe(client.post("/v1/frame", json=params))
    assert worker_pids(client) == pids_before


@PROPERTY
@given(times=st.lists(big_numbers(), min_size=1, max_size=4), params=frame_params())
def test_any_number_in_a_job_is_safe(
    client: TestClient, pids_before: list[int], times: list[str], params: dict[str, str]
) -> None:
    params.pop("t", None)
    response = client.post("/v1/jobs", json={**params, "times": times})
    if response.status_code != 202:
        assert_safe(response)
    assert worker_pids(client) == pids_before


@PROPERTY
@given(index=big_numbers(), after=big_numbers(), last_event_id=big_numbers())
def test_any_number_in_a_result_or_an_event_resume_is_safe(
    client: TestClient, job_id: str, index: str, after: str, last_event_id: str
) -> None:
    response = client.get(f"/v1/jobs/{job_id}/results/{index}")
    if response.status_code != 200:
        body = assert_problem(response, statuses=[400, 404])
        assert response.status_code == 404 or body.get("parameter") == "index", body
    for query, headers in (({"after": after}, {}), ({}, {"Last-Event-ID": last_event_id})):
        response = client.get(f"/v1/jobs/{job_id}/events", params=query, headers=headers)
        if response.status_code != 200:
            assert_safe(response)


def test_the_pool_survived_every_property(client: TestClient, pids_before: list[int]) -> None:
    """Runs after the property tests of this module: the decoders they used are the ones that started."""
    jobs_done_deadline = time.monotonic() + 60
    while client.app.state.pool._in_flight and time.monotonic() < jobs_done_deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    assert_pool_alive(client, pids_before)
