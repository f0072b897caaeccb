"""Property-based attacks on every query parameter of GET /v1/frame (and on URL signing): whatever
a client sends, the answer is an image or a 4xx problem, never a 500."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api.auth import AccessDenied, UrlSigner
from app.config import Settings
from app.main import create_app
from tests.hostile import assert_problem, assert_served_or_problem
from tests.media import make_h264_clip


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("property-media")
    make_h264_clip(root / "clip.mp4", size="64x48", rate=10, seconds=2, gop=5)
    (root / "notes.txt").write_text("not a video")
    settings = Settings(media_root=root, workers=1, data_dir=Path(tempfile.mkdtemp(prefix="stillframe-props-")))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(max_size=max_size)  # any Unicode, control characters and surrogate-free


def numberish() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(-(10**20), 10**20).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["inf", "-inf", "nan", "1e309", "0x10", "1_000", "½", "٣", "1/0", "0/0", "", " ", "+1"]),
        st.from_regex(r"-?[0-9]{0,30}(\.[0-9]{0,30})?(/[0-9]{0,20})?%?", fullmatch=True),
        st.from_regex(r"-?([0-9]{1,3}:){0,3}[0-9]{0,3}(\.[0-9]{0,12})?", fullmatch=True),
        text(),
    )


def choice(*valid: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(valid), text(12), st.sampled_from([v.upper() for v in valid]))


URLS = st.one_of(
    st.sampled_from(["clip.mp4", "./clip.mp4", "notes.txt", "missing.mp4", ".", "/", "..", "file:clip.mp4",
                     "file:///etc/passwd", "http://127.0.0.1/x.mp4", "http://[::1]:80/", "concat:clip.mp4|clip.mp4",
                     "clip.mp4?x=1", "clip.mp4#frag", "%2e%2e/clip.mp4", "sub/../clip.mp4"]),
    text(200),
    st.from_regex(r"(https?|file|data|ftp|[a-z+]{1,8}):/{0,3}[\x21-\x7e]{0,60}", fullmatch=True),
)  # fmt: skip

PARAMS: dict[str, st.SearchStrategy[str]] = {
    "t": numberish(),
    "tolerance": numberish(),
    "tolerance_before": numberish(),
    "tolerance_after": numberish(),
    "stream": numberish(),
    "rotate": choice("auto", "none"),
    "aperture": choice("clean", "production", "encoded"),
    "width": st.one_of(st.integers(-5, 20000).map(str), numberish()),
    "height": st.one_of(st.integers(-5, 20000).map(str), numberish()),
    "fit": choice("contain", "cover", "fill", "pad"),
    "background": st.one_of(st.sampled_from(["red", "#fff", "#12345678", "rgb(1,2,3)", "hsl(0,0%,0%)"]), text(40)),
    "dynamic_range": choice("sdr", "native"),
    "format": choice("jpeg", "png", "webp", "avif"),
    "quality": st.one_of(st.integers(-5, 200).map(str), numberish()),
}


@st.composite
def queries(draw: st.DrawFn) -> list[tuple[str, str]]:
    query: list[tuple[str, str]] = []
    if draw(st.integers(0, 9)):  # mostly with a url
        query.append(("url", draw(URLS)))
    for name in draw(st.lists(st.sampled_from(sorted(PARAMS)), unique=True, max_size=6)):
        query.append((name, draw(PARAMS[name])))
    if draw(st.integers(0, 7)) == 0:  # unknown, repeated and signature-looking parameters
        query.append((draw(st.sampled_from(["x", "URL", "sig", "kid", "exp", "t", "url"])), draw(text(20))))
    return query


def image_or_problem(response: Any) -> int:
    """An image or a 4xx problem; or, for a URL whose host does not resolve (hypothesis writes
    ``http://A``), the documented ``502 source_unreachable``: never a 500."""
    if response.status_code == 502:
        assert assert_problem(response, statuses=[502])["code"] == "source_unreachable"
        return 502
    return assert_served_or_problem(response)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=queries(), accept=st.sampled_from([None, "image/webp", "*/*", "text/html", "image/avif;q=0", "\x7f"]))
def test_any_query_is_an_image_or_a_problem(
    client: TestClient, query: list[tuple[str, str]], accept: str | None
) -> None:
    headers = {"Accept": accept} if accept and accept.isprintable() else {}
    response = client.get("/v1/frame", params=query, headers=headers)
    status = image_or_problem(response)
    if status == 200:
        assert response.headers["x-actual-time"] and response.headers["etag"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(["url", *sorted(PARAMS)]),
        st.one_of(
            text(30),
            st.integers(),
            st.floats(allow_nan=False, allow_infinity=False),
            st.booleans(),
            st.none(),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_any_json_body_is_an_image_or_a_problem(client: TestClient, body: dict[str, Any]) -> None:
    image_or_problem(client.post("/v1/frame", json=body))


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=12)), max_size=6),
    flip=st.integers(0, 10**6),
)
def test_signed_urls_verify_and_any_change_breaks_them(pairs: list[tuple[str, str]], flip: int) -> None:
    from urllib.parse import urlencode, urlsplit

    pairs = [(k, v) for k, v in pairs if k not in ("sig", "kid", "exp")]
    signer = UrlSigner({"k": "secret"}, clock=lambda: 1000.0)
    url = signer.sign("/v1/frame?" + urlencode(pairs), ttl=60)
    parts = urlsplit(url)
    assert signer.verify(parts.path, parts.query) == "k"
    # change one character of the signed part of the query: refused
    signed, sig = parts.query.rsplit("&sig=", 1)
    i = flip % len(signed)
    changed = signed[:i] + ("A" if signed[i] != "A" else "B") + signed[i + 1 :]
    from app.api.auth import canonical_message

    if canonical_message(parts.path, changed) == canonical_message(parts.path, signed):
        return  # an equivalent encoding of the same query (e.g. %41 for A): same meaning, same signature
    with pytest.raises(AccessDenied):
        signer.verify(parts.path, f"{changed}&sig={sig}")
