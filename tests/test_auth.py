"""Access control: API keys, signed URLs, rate limiting, CORS, the caller identity, `stillframe sign`."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.api.auth import (
    AccessDenied,
    ApiKeyring,
    CallerId,
    UrlSigner,
    canonical_message,
    install_access_control,
    key_id,
)
from app.api.ratelimit import MemoryRateLimiter, Rate, parse_rate
from app.cli import main as cli_main
from app.config import Settings, get_settings
from app.main import create_app
from tests.media import make_h264_clip

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"
SIGNING = "web:web-secret-0123456789,old:old-secret-9876543210"


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("auth-media")
    make_h264_clip(root / "clip.mp4", size="64x48", rate=5, seconds=2)
    return root


def _client(**settings: Any) -> Iterator[TestClient]:
    settings.setdefault("workers", 1)
    settings.setdefault("data_dir", Path(tempfile.mkdtemp(prefix="stillframe-auth-")))
    with TestClient(create_app(Settings(**settings)), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def keyed(media_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Keys, signing keys, CORS for one origin; no rate limit."""
    yield from _client(
        media_root=media_root,
        data_dir=tmp_path_factory.mktemp("auth-data"),
        api_keys=f"{KEY_A},{KEY_B}",
        url_signing_keys=SIGNING,
        cors_origins="https://a.example",
    )


@pytest.fixture(scope="module")
def open_app(media_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from _client(media_root=media_root, data_dir=tmp_path_factory.mktemp("open-data"))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status and body["type"] == f"/problems/{code}"
    return body


# ------------------------------------------------------------------------------------------ settings


def test_settings_parse_access_control_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLFRAME_API_KEYS", f"{KEY_A}, {KEY_B}")
    monkeypatch.setenv("STILLFRAME_URL_SIGNING_KEYS", "web:s:e:c,old:x")
    monkeypatch.setenv("STILLFRAME_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("STILLFRAME_RATE_LIMIT", "100/minute")
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == [KEY_A, KEY_B]
    assert {k: v.get_secret_value() for k, v in settings.url_signing_keys.items()} == {"web": "s:e:c", "old": "x"}
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.rate_limit == "100/minute"
    assert KEY_A not in repr(settings) and "s:e:c" not in repr(settings)  # secrets stay out of logs


@pytest.mark.parametrize(
    ("name", "value"),
    [("STILLFRAME_URL_SIGNING_KEYS", "nocolon"), ("STILLFRAME_URL_SIGNING_KEYS", ":secret"),
     ("STILLFRAME_RATE_LIMIT", "lots"), ("STILLFRAME_RATE_LIMIT", "10/ms")],
)  # fmt: skip
def test_bad_access_settings_fail_at_startup(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_empty_access_settings_mean_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_KEYS", "URL_SIGNING_KEYS", "CORS_ORIGINS", "RATE_LIMIT"):
        monkeypatch.setenv(f"STILLFRAME_{name}", "")
    settings = Settings()
    assert settings.api_keys == [] and settings.url_signing_keys == {} and settings.cors_origins == []
    assert settings.rate_limit is None


# ------------------------------------------------------------------------------------------ keys


def test_keyring_keeps_only_digests_and_identifies_keys() -> None:
    ring = ApiKeyring([KEY_A, KEY_B])
    assert ring.identify(KEY_A) == key_id(KEY_A) and ring.identify(KEY_B) == key_id(KEY_B)
    assert key_id(KEY_A) != key_id(KEY_B) and len(key_id(KEY_A)) == 8
    assert ring.identify(KEY_A + "x") is None and ring.identify("") is None and ring.identify(KEY_A[:-1]) is None
    assert ring.identify("\udcff surrogate") is None
    assert KEY_A not in repr(vars(ring)) and KEY_A.encode() not in repr(vars(ring)).encode()


def test_short_keys_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stillframe.auth"):
        ApiKeyring(["short"])
    assert "shorter than" in caplog.text and "short" not in caplog.text.replace("shorter", "")


# ------------------------------------------------------------------------------------------ rate limiting


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [("100/minute", 100, 60), ("10/s", 10, 1), ("500/5min", 500, 300), ("1000/hours", 1000, 3600),
     ("2/day", 2, 86400), (" 7 / 2 seconds ", 7, 2)],
)  # fmt: skip
def test_parse_rate(text: str, limit: int, period: float) -> None:
    assert parse_rate(text) == Rate(limit, period)


@pytest.mark.parametrize("text", ["", "100", "0/minute", "-1/s", "10/ms", "10/fortnight", "ten/minute", "1/0s"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_token_bucket_bursts_refills_and_says_when() -> None:
    now = [1000.0]
    limiter = MemoryRateLimiter(Rate(3, 60), clock=lambda: now[0])
    assert [limiter.hit("a").allowed for _ in range(3)] == [True, True, True]
    denied = limiter.hit("a")
    assert not denied.allowed and denied.retry_after == pytest.approx(20.0) and denied.retry_after_header == "20"
    assert limiter.hit("b").allowed  # buckets are per key
    now[0] += 19.9
    assert not limiter.hit("a").allowed
    now[0] += 0.2
    assert limiter.hit("a").allowed and not limiter.hit("a").allowed
    now[0] += 3600  # refills to the burst size, no more
    assert sum(limiter.hit("a").allowed for _ in range(10)) == 3


def test_token_bucket_memory_is_bounded() -> None:
    limiter = MemoryRateLimiter(Rate(1, 60), max_keys=100)
    for i in range(1000):
        limiter.hit(f"k{i}")
    assert len(limiter._buckets) == 100


# ------------------------------------------------------------------------------------------ signed URLs


def test_canonical_message_ignores_order_and_encoding_but_nothing_else() -> None:
    a = canonical_message("/v1/frame", "url=clips%2Fa+b.mp4&t=2.5&kid=web&exp=10&sig=zzz")
    assert a == canonical_message("/v1/frame", "exp=10&t=2.5&kid=web&url=clips/a%20b.mp4")
    assert a == b"/v1/frame?exp=10&kid=web&t=2.5&url=clips%2Fa%20b.mp4"
    assert a != canonical_message("/v1/frame", "url=clips%2Fa+b.mp4&t=2.5&kid=web&exp=10&width=1")
    assert a != canonical_message("/v1/framex", "url=clips%2Fa+b.mp4&t=2.5&kid=web&exp=10")
    # byte-exact: distinct invalid UTF-8 sequences stay distinct
    assert canonical_message("/", "url=%FF") != canonical_message("/", "url=%FE")


def _signer(now: float = 1_000_000.0) -> UrlSigner:
    return UrlSigner({"web": "web-secret", "old": "old-secret"}, clock=lambda: now)


def test_sign_then_verify_and_every_tampering_fails() -> None:
    signer = _signer()
    url = signer.sign("https://frames.example/v1/frame?url=a.mp4&t=2.5", ttl=60)
    parts = urlsplit(url)
    assert parts.netloc == "frames.example" and parts.path == "/v1/frame"
    query = dict(parse_qsl(parts.query))
    assert query["kid"] == "web" and query["exp"] == str(1_000_060) and len(query["sig"]) == 43
    assert signer.verify(parts.path, parts.query) == "web"

    def verify(path: str, **changes: str | None) -> str:
        q = {**query, **changes}
        return signer.verify(path, urlencode({k: v for k, v in q.items() if v is not None}))

    assert verify("/v1/frame") == "web"
    tampered: list[tuple[str, dict[str, str | None]]] = [
        ("/v1/frame", {"t": "2.6"}), ("/v1/frame", {"url": "b.mp4"}), ("/v1/frame", {"width": "10"}),
        ("/v1/frame", {"t": None}), ("/v1/frame", {"exp": str(1_000_061)}), ("/v1/frame", {"kid": "old"}),
        ("/v1/frame", {"kid": "nope"}), ("/v1/frame", {"sig": query["sig"][:-1] + "A"}),
        ("/v1/frame", {"sig": "!!!"}), ("/v1/frame", {"sig": ""}), ("/v1/frame", {"sig": None}),
        ("/v1/frame", {"exp": "soon"}), ("/v1/frame", {"exp": "-1"}), ("/other", {}),
    ]  # fmt: skip
    for path, change in tampered:
        with pytest.raises(AccessDenied) as info:
            verify(path, **change)
        assert (info.value.status, info.value.code) == (403, "signature_invalid"), (path, change)
    with pytest.raises(AccessDenied) as info:  # a second sig or kid is ambiguous
        signer.verify(parts.path, parts.query + "&kid=web")
    assert info.value.code == "signature_invalid"
    padded = parts.query.replace(query["sig"], query["sig"] + "=")
    with pytest.raises(AccessDenied):  # one spelling per signature (tests/test_hostile_signatures.py)
        signer.verify(parts.path, padded)


def test_expired_and_other_key() -> None:
    url = _signer(now=1000.0).sign("/v1/frame?url=a.mp4", kid="old", ttl=10)
    parts = urlsplit(url)
    assert _signer(now=1010.0).verify(parts.path, parts.query) == "old"
    with pytest.raises(AccessDenied) as info:
        _signer(now=1011.0).verify(parts.path, parts.query)
    assert (info.value.status, info.value.code) == (403, "signature_expired")
    with pytest.raises(ValueError, match="unknown signing key"):
        _signer().sign("/v1/frame?url=a.mp4", kid="nope")
    with pytest.raises(ValueError, match="no URL signing keys"):
        UrlSigner({}).sign("/v1/frame?url=a.mp4")


def test_signing_replaces_old_signature_parameters() -> None:
    signer = _signer()
    first = signer.sign("/v1/frame?url=a.mp4&t=1", ttl=5)
    again = signer.sign(first, ttl=99)
    assert again.count("sig=") == 1 and again.count("kid=") == 1 and "exp=1000099" in again
    parts = urlsplit(again)
    assert signer.verify(parts.path, parts.query) == "web"


# ------------------------------------------------------------------------------------------ the app


def test_keys_required_when_configured(keyed: TestClient) -> None:
    params = {"url": "clip.mp4", "t": "1"}
    body = assert_problem(keyed.get("/v1/frame", params=params), 401, "unauthorized")
    assert KEY_A not in str(body)
    missing = keyed.get("/v1/frame", params=params)
    assert missing.headers["www-authenticate"] == 'Bearer realm="stillframe"'
    for header in (bearer("wrong-key-0123456789"), bearer(KEY_A + "x"), {"Authorization": KEY_A},
                   {"Authorization": f"Basic {KEY_A}"}, bearer("")):  # fmt: skip
        response = keyed.get("/v1/frame", params=params, headers=header)
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert_problem(keyed.post("/v1/frame", json=params), 401, "unauthorized")
    ok = keyed.get("/v1/frame", params=params, headers=bearer(KEY_A))
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    assert keyed.post("/v1/frame", json=params, headers=bearer(KEY_B)).status_code == 200
    # refusals of the source still come after authentication, as problems
    assert_problem(keyed.get("/v1/frame", params={"url": "nope.mp4"}, headers=bearer(KEY_A)), 404, "source_not_found")


def test_jobs_belong_to_the_key_that_made_them(keyed: TestClient) -> None:
    body = {"url": "clip.mp4", "times": ["0.2", "1"]}
    assert_problem(keyed.post("/v1/jobs", json=body), 401, "unauthorized")
    created = keyed.post("/v1/jobs", json=body, headers=bearer(KEY_A))
    assert created.status_code == 202, created.text
    job = created.json()["id"]
    assert keyed.get(f"/v1/jobs/{job}", headers=bearer(KEY_A)).status_code == 200
    assert keyed.get(f"/v1/jobs/{job}", headers=bearer(KEY_B)).status_code == 404
    assert_problem(keyed.get(f"/v1/jobs/{job}"), 401, "unauthorized")
    assert keyed.delete(f"/v1/jobs/{job}", headers=bearer(KEY_B)).status_code == 404
    cancelled = keyed.post("/v1/jobs/cancel", headers=bearer(KEY_B))
    assert cancelled.status_code == 200 and job not in cancelled.json()["cancelled"]
    # a signed URL for /v1/frame opens nothing else
    signed = forge(UrlSigner({"web": "web-secret-0123456789"}), f"/v1/jobs/{job}", "", exp=int(time.time()) + 60)
    assert_problem(keyed.get(signed), 401, "unauthorized")


def test_health_and_docs_stay_open(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code in (200, 503)
    assert keyed.get("/openapi.json").status_code == 200


def forge(signer: UrlSigner, path: str, query: str, *, exp: int, kid: str = "web") -> str:
    """A URL signed as ``sign`` would, for what ``sign`` refuses to sign (another path, a past time)."""
    query = "&".join(part for part in (query, f"kid={kid}", f"exp={exp}") if part)
    return f"{path}?{query}&sig={signer.signature(kid, path, query)}"


def test_signed_url_needs_no_key(keyed: TestClient) -> None:
    keys = {kid: s.get_secret_value() for kid, s in Settings(url_signing_keys=SIGNING).url_signing_keys.items()}
    signer = UrlSigner(keys)
    url = signer.sign("/v1/frame?url=clip.mp4&t=1&width=32", ttl=60)
    response = keyed.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["x-actual-time"] == "1"
    assert keyed.get(signer.sign("/v1/frame?url=clip.mp4&t=1", kid="old", ttl=60)).status_code == 200
    # re-ordered query: same signature
    parts = urlsplit(url)
    assert keyed.get(f"{parts.path}?{'&'.join(reversed(parts.query.split('&')))}").status_code == 200
    assert_problem(keyed.get(url.replace("t=1", "t=0.5")), 403, "signature_invalid")
    assert_problem(keyed.get(url + "&height=10"), 403, "signature_invalid")
    assert_problem(keyed.get(url.replace("kid=web", "kid=old")), 403, "signature_invalid")
    expired = forge(signer, "/v1/frame", "url=clip.mp4", exp=int(time.time()) - 1)
    assert_problem(keyed.get(expired), 403, "signature_expired")
    # a foreign key's signature, and a signature for another path
    foreign = UrlSigner({"web": "not-the-secret"}).sign("/v1/frame?url=clip.mp4&t=1", ttl=60)
    assert_problem(keyed.get(foreign), 403, "signature_invalid")
    elsewhere = urlsplit(forge(signer, "/v1/other", "url=clip.mp4&t=1", exp=int(time.time()) + 60))
    assert_problem(keyed.get(f"/v1/frame?{elsewhere.query}"), 403, "signature_invalid")
    # the signature is for GET /v1/frame only: POST still needs a key
    assert_problem(keyed.post(url, json={"url": "clip.mp4", "t": "1"}), 401, "unauthorized")


def test_signature_errors_win_over_a_key(keyed: TestClient) -> None:
    """A tampered URL is refused even when the caller also sends a key: the URL says what was signed."""
    url = UrlSigner({"web": "web-secret-0123456789"}).sign("/v1/frame?url=clip.mp4&t=1", ttl=60)
    assert_problem(keyed.get(url.replace("t=1", "t=0"), headers=bearer(KEY_A)), 403, "signature_invalid")


def test_open_service_warns_loudly(media_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stillframe.auth"):
        for client in _client(media_root=media_root):
            assert client.get("/v1/frame", params={"url": "clip.mp4", "t": "1"}).status_code == 200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "stillframe.auth"]
    assert warnings and "OPEN" in warnings[0].getMessage() and "STILLFRAME_API_KEYS" in warnings[0].getMessage()


def test_open_service_refuses_signatures_it_cannot_check(open_app: TestClient) -> None:
    assert open_app.get("/v1/frame", params={"url": "clip.mp4", "t": "1"}).status_code == 200
    url = UrlSigner({"web": "x"}).sign("/v1/frame?url=clip.mp4&t=1", ttl=60)
    assert_problem(open_app.get(url), 403, "signature_invalid")


def test_cors_off_by_default(open_app: TestClient) -> None:
    response = open_app.get("/v1/frame", params={"url": "clip.mp4", "t": "1"}, headers={"Origin": "https://a.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = open_app.options(
        "/v1/frame", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_for_configured_origins(keyed: TestClient) -> None:
    origin = {"Origin": "https://a.example"}
    preflight = keyed.options(
        "/v1/frame",
        headers={**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"},
    )
    assert preflight.status_code == 200  # no key needed for a preflight
    assert preflight.headers["access-control-allow-origin"] == "https://a.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    response = keyed.get("/v1/frame", params={"url": "clip.mp4", "t": "1"}, headers={**origin, **bearer(KEY_A)})
    assert response.headers["access-control-allow-origin"] == "https://a.example"
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "x-actual-time" in exposed and "x-actual-time-rational" in exposed and "etag" in exposed
    refused = keyed.get("/v1/frame", params={"url": "clip.mp4"}, headers=origin)  # a 401 is readable cross-origin
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://a.example"
    other = keyed.get("/v1/frame", params={"url": "clip.mp4"}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_rate_limit_per_key(media_root: Path) -> None:
    for client in _client(media_root=media_root, api_keys=f"{KEY_A},{KEY_B}", rate_limit="2/minute"):
        params = {"url": "nope.mp4"}  # 404s: cheap, and they count
        for _ in range(2):
            assert client.get("/v1/frame", params=params, headers=bearer(KEY_A)).status_code == 404
        limited = client.get("/v1/frame", params=params, headers=bearer(KEY_A))
        assert_problem(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 30
        assert client.get("/v1/frame", params=params, headers=bearer(KEY_B)).status_code == 404  # its own bucket
        assert all(client.get("/healthz").status_code == 200 for _ in range(5))  # health is never limited
        assert_problem(client.get("/v1/frame", params=params), 401, "unauthorized")  # no key: refused, not counted


def test_rate_limit_when_open_is_per_client_address(media_root: Path) -> None:
    for client in _client(media_root=media_root, rate_limit="1/hour"):
        assert client.get("/v1/frame", params={"url": "nope.mp4"}).status_code == 404
        assert_problem(client.get("/v1/frame", params={"url": "nope.mp4"}), 429, "rate_limited")


def test_caller_identity_for_routers() -> None:
    """What the jobs router sees: the key id, ``url:<kid>`` for a signed URL, None when open."""

    def make(**settings: Any) -> TestClient:
        app = FastAPI()
        install_access_control(app, Settings(**settings))

        @app.get("/v1/frame")
        async def whoami(caller: CallerId) -> dict[str, str | None]:
            return {"caller": caller}

        return TestClient(app, raise_server_exceptions=False)

    keyed_app = make(api_keys=KEY_A, url_signing_keys="web:abc")
    assert keyed_app.get("/v1/frame", headers=bearer(KEY_A)).json() == {"caller": key_id(KEY_A)}
    signed = UrlSigner({"web": "abc"}).sign("/v1/frame?x=1", ttl=60)
    assert keyed_app.get(signed).json() == {"caller": "url:web"}
    assert keyed_app.get("/v1/frame").status_code == 401
    assert make().get("/v1/frame").json() == {"caller": None}


def test_openapi_documents_the_schemes(keyed: TestClient) -> None:
    document = keyed.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"]["scheme"].lower() == "bearer"
    assert schemes["SignedURL"]["in"] == "query" and schemes["SignedURL"]["name"] == "sig"
    frame = document["paths"]["/v1/frame"]["get"]
    assert {"401", "403", "429"} <= set(frame["responses"])
    assert "security" not in document["paths"]["/healthz"]["get"]


# ------------------------------------------------------------------------------------------ the CLI


def test_cli_sign(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keyed: TestClient) -> None:
    monkeypatch.setenv("STILLFRAME_URL_SIGNING_KEYS", SIGNING)
    get_settings.cache_clear()
    try:
        assert cli_main(["sign", "http://testserver/v1/frame?url=clip.mp4&t=0.4", "--kid", "old", "--ttl", "120"]) == 0
        url = capsys.readouterr().out.strip()
        assert "kid=old" in url
        exp = int(dict(parse_qsl(urlsplit(url).query))["exp"])
        assert time.time() + 100 < exp <= time.time() + 121
        response = keyed.get(url)
        assert response.status_code == 200 and response.headers["x-actual-time"] == "0.4"
        assert cli_main(["sign", "/v1/frame?url=a.mp4", "--kid", "nope"]) == 2
        assert "unknown signing key" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
