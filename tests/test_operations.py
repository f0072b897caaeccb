"""The operator surface: /metrics, request ids and JSON request logs, /readyz that means it, /docs
with no CDN, proxy headers from trusted peers only (a real `stillframe serve`), the CPU quota."""

from __future__ import annotations

import itertools
import json
import logging
import logging.config
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings, available_cpus, cgroup_cpu_limit
from app.logs import JsonFormatter, log_config
from tests.jobs_support import make_clip
from tests.live_server import REPO, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient | httpx.Client, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ops-media")
    make_clip(root / "clip.mp4", seconds=2)
    return root


def ready(client: TestClient) -> TestClient:
    """The client once its decoder process is up (the lifespan starts it; it reports when ready)."""
    deadline = time.monotonic() + 60
    while not client.app.state.pool.ready():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "no decoder became ready"
        time.sleep(0.02)
    return client


@pytest.fixture
def ops_client(make_client: Callable[..., TestClient], media: Path, tmp_path: Path) -> TestClient:
    return ready(make_client(media_root=media, data_dir=tmp_path / "data"))


# ---------------------------------------------------------------- /metrics


def test_metrics_count_requests_by_route_status_and_code(ops_client: TestClient) -> None:
    before = scrape(ops_client)
    assert ops_client.get("/v1/frame", params={"url": "clip.mp4", "t": "1"}).status_code == 200
    assert ops_client.get("/v1/frame", params={"url": "clip.mp4", "t": "1"}).status_code == 200  # cached
    assert ops_client.get("/v1/frame", params={"url": "absent.mp4", "t": "1"}).status_code == 404
    assert ops_client.get("/v1/frame", params={"url": "clip.mp4", "t": "nope"}).status_code == 400
    assert ops_client.get("/no/such/route/12345").status_code == 404
    after = scrape(ops_client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "stillframe_http_requests_total"
    assert delta(requests, route="/v1/frame", method="GET", status="200", code="") == 2
    assert delta(requests, route="/v1/frame", method="GET", status="404", code="source_not_found") == 1
    assert delta(requests, route="/v1/frame", method="GET", status="400", code="invalid_parameter") == 1
    # an unmatched path is one label, not one series per path a scanner tries
    assert delta(requests, route="(unmatched)", method="GET", status="404", code="not_found") == 1
    assert not any("12345" in str(labels) for _, labels in after)
    # nor is a made-up method
    assert ops_client.request("BREW", "/v1/frame").status_code == 405
    brewed = value(
        scrape(ops_client), requests, route="/v1/frame", method="other", status="405", code="method_not_allowed"
    )
    assert brewed >= 1
    assert delta("stillframe_http_request_duration_seconds_count", route="/v1/frame") == 4
    # one grab went to the pool (the second was the image cache's), its stages measured in the worker
    assert delta("stillframe_grab_duration_seconds_count") == 1
    for stage in ("open", "decode", "render", "encode", "queue"):
        assert delta("stillframe_grab_stage_duration_seconds_count", stage=stage) >= 1, stage
    assert delta("stillframe_open_asset_lookups_total", result="miss") >= 1
    assert delta("stillframe_image_cache_lookups_total", result="hit") == 1
    assert value(after, "stillframe_image_cache_bytes") > 0
    assert value(after, "stillframe_pool_workers") == 1
    assert value(after, "stillframe_pool_workers_alive") == 1
    assert value(after, "stillframe_pool_workers_busy") == 0
    assert value(after, "stillframe_pool_queue_depth") == 0
    assert value(after, "stillframe_open_assets") == 1


def test_metrics_count_jobs_by_status_and_asset_reuse(ops_client: TestClient) -> None:
    job = ops_client.post("/v1/jobs", json={"url": "clip.mp4", "times": ["0", "0.5", "1"]})
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 60
    while ops_client.get(f"/v1/jobs/{job.json()['id']}").json()["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = scrape(ops_client)
    assert ops_client.get("/v1/frame", params={"url": "clip.mp4", "t": "1.5"}).status_code == 200
    after = scrape(ops_client)
    assert value(after, "stillframe_jobs", status="completed") == 1
    # the job opened the asset: the grab after it found it open in its worker
    hits = "stillframe_open_asset_lookups_total"
    assert value(after, hits, result="hit") - value(before, hits, result="hit") == 1


def test_worker_restarts_are_counted_with_their_cause(ops_client: TestClient) -> None:
    pool = ops_client.app.state.pool  # type: ignore[attr-defined]
    before = value(scrape(ops_client), "stillframe_pool_worker_restarts_total", cause="crash")
    victim = pool._workers[0].process
    victim.kill()
    deadline = time.monotonic() + 30
    while pool._workers[0].process is victim or not pool.ready():
        assert time.monotonic() < deadline, "the decoder was not replaced"
        time.sleep(0.05)
    after = scrape(ops_client)
    assert value(after, "stillframe_pool_worker_restarts_total", cause="crash") == before + 1
    assert value(after, "stillframe_pool_workers_alive") == 1


def test_metrics_token_guards_metrics_only(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(metrics_token="scrape-me", api_keys="an-api-key-of-some-length", data_dir=tmp_path)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer an-api-key-of-some-length"}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        assert refused.headers["content-type"] == "application/problem+json"
        assert "scrape-me" not in refused.text
    samples = scrape(client, Authorization="Bearer scrape-me")
    assert (
        value(
            samples, "stillframe_http_requests_total", route="/metrics", method="GET", status="401", code="unauthorized"
        )
        >= 3
    )
    # the token opens nothing else
    assert (
        client.post(
            "/v1/jobs", json={"url": "a.mp4", "times": ["1"]}, headers={"Authorization": "Bearer scrape-me"}
        ).status_code
        == 401
    )


# ---------------------------------------------------------------- request ids and request logs


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("req-42.a:b@c/d+e=f", True),
        ("x" * 128, True),
        ("x" * 129, False),  # too long
        ("two words", False),
        ("a\tb", False),
        ("<script>", False),
        ("ünï", False),
        ("", False),
    ],
)
def test_request_id_is_honoured_only_when_safe(ops_client: TestClient, given: str, kept: bool) -> None:
    response = ops_client.get("/healthz", headers={"X-Request-ID": given.encode("utf-8")})  # type: ignore[dict-item]
    returned = response.headers["x-request-id"]
    if kept:
        assert returned == given
    else:
        assert returned != given and re.fullmatch(r"[0-9a-f]{32}", returned)


def test_one_json_line_per_request(ops_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="stillframe.access"):
        ok = ops_client.get("/v1/frame", params={"url": "clip.mp4", "t": "0.5"}, headers={"X-Request-ID": "grab-1"})
        missing = ops_client.get("/v1/frame", params={"url": "absent.mp4", "t": "1"})
    assert ok.status_code == 200 and missing.status_code == 404
    records = [r for r in caplog.records if r.name == "stillframe.access"]
    assert len(records) == 2
    lines = [json.loads(JsonFormatter().format(record)) for record in records]
    first, second = lines
    assert first["request_id"] == "grab-1" and first["route"] == "/v1/frame" and first["status"] == 200
    assert first["code"] is None and first["duration_ms"] > 0 and first["client"] == "testclient"
    assert set(first["timings_ms"]) >= {"open", "decode", "render", "encode", "pool"}
    assert second["status"] == 404 and second["code"] == "source_not_found"
    assert second["request_id"] == missing.headers["x-request-id"]
    assert second["path"] == "/v1/frame"  # never the query: it may carry signatures and source URLs
    assert "absent.mp4" not in json.dumps(second)


def test_the_caller_is_logged_by_key_id(
    make_client: Callable[..., TestClient], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = "k" * 40
    client = make_client(api_keys=key, data_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="stillframe.access"):
        client.get("/v1/jobs/nope", headers={"Authorization": f"Bearer {key}"})
    (record,) = [r for r in caplog.records if r.name == "stillframe.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["code"] == "job_not_found" and re.fullmatch(r"[0-9a-f]{8}", line["caller"])
    assert key not in json.dumps(line)


def test_json_formatter_and_log_config() -> None:
    record = logging.makeLogRecord({"name": "stillframe.x", "levelname": "WARNING", "msg": "a %s", "args": ("b",)})
    record.request_id = "r1"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "a b" and line["level"] == "warning" and line["request_id"] == "r1"
    assert line["ts"].endswith("Z")
    names = ("stillframe", "uvicorn", "uvicorn.error")
    saved = [(logging.getLogger(n), logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in names]
    propagate = [logger.propagate for logger, _, _ in saved]
    try:
        for fmt in ("json", "text"):
            logging.config.dictConfig(log_config(fmt, "info"))
            assert logging.getLogger("stillframe.access").isEnabledFor(logging.INFO)
        logging.config.dictConfig(log_config("json", "warning"))
        assert not logging.getLogger("stillframe.access").isEnabledFor(logging.INFO)  # (--log-level warning: no lines)
    finally:  # the rest of the suite keeps pytest's logging
        for (logger, handlers, level), flag in zip(saved, propagate, strict=True):
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = flag


# ---------------------------------------------------------------- /readyz


def test_readyz_tells_no_versions(ops_client: TestClient) -> None:
    ready = ops_client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert not re.search(r"\d+\.\d+", ready.text)


def test_readyz_is_503_when_the_data_dir_cannot_be_written(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    client = ready(make_client(data_dir=data))
    assert client.get("/readyz").status_code == 200
    # The data directory goes away under the running service and a file takes its place (a volume
    # unmounted, a disk swapped): nothing can be written there now, root or not.
    data.rename(tmp_path / "elsewhere")
    data.write_text("not a directory")
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["code"] == "not_ready"
    assert "elsewhere" not in not_ready.text and str(tmp_path) not in not_ready.text


def test_readyz_is_503_when_the_data_dir_is_a_file_from_the_start(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("")
    client = ready(make_client(data_dir=blocker))
    assert client.get("/healthz").status_code == 200
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["code"] == "not_ready"


# ---------------------------------------------------------------- /docs offline


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_nothing_from_elsewhere(ops_client: TestClient, page: str) -> None:
    html = ops_client.get(page)
    assert html.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
    assert assets, "no assets found in the page"
    assert "cdn" not in html.text.lower() and "fonts.googleapis" not in html.text
    for asset in assets:
        assert asset.startswith("/"), asset
        fetched = ops_client.get(asset)
        assert fetched.status_code == 200 and len(fetched.content) > 1000, asset
    assert ops_client.get("/openapi.json").status_code == 200


# ---------------------------------------------------------------- the CPU quota


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two decoders, the second one half-fed
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota(tmp_path: Path, files: dict[str, str], limit: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit
    cpus = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (min(cpus, limit) if limit else cpus)


def test_decoder_count_defaults_to_the_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    monkeypatch.setattr("app.config.CGROUP_ROOT", tmp_path)
    monkeypatch.delenv("STILLFRAME_WORKERS", raising=False)
    assert Settings().workers == 1
    assert Settings(workers=3).workers == 3


# ---------------------------------------------------------------- a real server behind a proxy


class Served:
    def __init__(self, process: subprocess.Popen[bytes], base_url: str, log_path: Path, data: Path) -> None:
        self.process, self.base_url, self.log_path, self.data = process, base_url, log_path, data

    def access_lines(self) -> list[dict[str, object]]:
        lines = []
        for text in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if entry.get("logger") == "stillframe.access":
                lines.append(entry)
        return lines

    def line_for(self, request_id: str) -> dict[str, object]:
        deadline = time.monotonic() + 10
        while True:
            found = [line for line in self.access_lines() if line["request_id"] == request_id]
            if found:
                return found[0]
            assert time.monotonic() < deadline, self.log_path.read_text()[-3000:]
            time.sleep(0.05)


def serve(tmp: Path, media: Path, **env: str) -> Iterator[Served]:
    port = free_port()
    data = tmp / "data"
    log_path = tmp / "server.log"
    full_env = {
        **os.environ,
        "STILLFRAME_MEDIA_ROOT": str(media),
        "STILLFRAME_DATA_DIR": str(data),
        "STILLFRAME_WORKERS": "1",
        **env,
    }
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=log,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        yield Served(process, base_url, log_path, data)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory, media: Path) -> Iterator[Served]:
    # The test talks from 127.0.0.1: it is the trusted proxy here. One request a minute per caller.
    yield from serve(
        tmp_path_factory.mktemp("proxied"),
        media,
        STILLFRAME_FORWARDED_ALLOW_IPS="127.0.0.1",
        STILLFRAME_RATE_LIMIT="1/minute",
    )


@pytest.fixture(scope="module")
def not_behind_proxy(tmp_path_factory: pytest.TempPathFactory, media: Path) -> Iterator[Served]:
    # A proxy is configured, but not at the address the test talks from.
    yield from serve(tmp_path_factory.mktemp("direct"), media, STILLFRAME_FORWARDED_ALLOW_IPS="192.0.2.7")


def test_forwarded_headers_from_a_trusted_proxy_give_the_real_client(behind_proxy: Served) -> None:
    def grab(client_ip: str, request_id: str) -> httpx.Response:
        headers = {"X-Forwarded-For": client_ip, "X-Forwarded-Proto": "https", "X-Request-ID": request_id}
        return httpx.get(f"{behind_proxy.base_url}/v1/frame", params={"url": "clip.mp4", "t": "1"}, headers=headers)

    assert grab("203.0.113.9", "fwd-1").status_code == 200
    assert behind_proxy.line_for("fwd-1")["client"] == "203.0.113.9"
    # the rate limit is per real client: another one has its own bucket, the first one's is spent
    assert grab("198.51.100.4", "fwd-2").status_code == 200
    limited = grab("203.0.113.9", "fwd-3")
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert behind_proxy.line_for("fwd-3")["code"] == "rate_limited"
    # absolute URLs use the scheme the client used at the proxy
    assert job_image_url(behind_proxy, {"X-Forwarded-For": "192.0.2.200", "X-Forwarded-Proto": "https"}).startswith(
        "https://127.0.0.1:"
    )


def job_image_url(server: Served, headers: dict[str, str]) -> str:
    """The absolute image URL a job's result gets (in its events and webhooks)."""
    job = httpx.post(f"{server.base_url}/v1/jobs", json={"url": "clip.mp4", "times": ["1"]}, headers=headers)
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 60
    for poll in itertools.count():  # each poll from another client: the rate limit is one a minute each
        poll_headers = {**headers, "X-Forwarded-For": f"10.{poll // 65536 % 256}.{poll // 256 % 256}.{poll % 256}"}
        document = httpx.get(f"{server.base_url}/v1/jobs/{job.json()['id']}", headers=poll_headers).json()
        if document["status"] == "completed" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    url = document["results"][0]["image_url"]
    assert isinstance(url, str)
    return url


def test_forwarded_headers_from_anyone_else_are_ignored(not_behind_proxy: Served) -> None:
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "X-Request-ID": "spoof-1"}
    assert httpx.get(f"{not_behind_proxy.base_url}/healthz", headers=headers).status_code == 200
    assert not_behind_proxy.line_for("spoof-1")["client"] == "127.0.0.1"
    assert job_image_url(not_behind_proxy, headers).startswith("http://127.0.0.1:")


def test_served_metrics_add_up_across_processes(not_behind_proxy: Served) -> None:
    """`stillframe serve` runs prometheus-client in multiprocess mode, under the data directory."""
    with httpx.Client(base_url=not_behind_proxy.base_url) as client:
        before = scrape(client)
        assert client.get("/v1/frame", params={"url": "clip.mp4", "t": "0.2"}).status_code == 200
        after = scrape(client)
    name = "stillframe_http_requests_total"
    labels = {"route": "/v1/frame", "method": "GET", "status": "200", "code": ""}
    assert value(after, name, **labels) == value(before, name, **labels) + 1
    assert value(after, "stillframe_grab_stage_duration_seconds_count", stage="decode") >= 1
    assert list((not_behind_proxy.data / "prometheus").glob("*.db"))


# ---------------------------------------------------------------- deploy/docker-compose.yml (no Docker engine here)

COMPOSE = REPO / "deploy" / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: ``${X}``, ``${X:-default}``, ``${X-default}``, ``${X?error}``, ``${X:?error}``."""

    def one(match: re.Match[str]) -> str:
        name, dash, default, question, error = match.groups()
        if question:
            if name not in env or (question == ":?" and not env[name]):
                raise LookupError(f"{name}: {error}")
            return env[name]
        if dash and (name not in env or (dash == ":-" and not env[name])):
            return default
        return env.get(name, "")

    return _VARIABLE.sub(one, text)


def compose_service(env: dict[str, str]) -> dict[str, object]:
    import yaml

    document = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    service = document["services"]["stillframe"]
    assert isinstance(service, dict)
    assert "stillframe-data" in document["volumes"]
    return service


def test_compose_requires_an_api_key_unless_opened_on_purpose() -> None:
    with pytest.raises(LookupError, match="STILLFRAME_API_KEYS"):
        compose_service({})
    keyed = compose_service({"STILLFRAME_API_KEYS": "k" * 43})
    environment = keyed["environment"]
    assert isinstance(environment, dict)
    assert Settings(**{k.removeprefix("STILLFRAME_").lower(): v for k, v in environment.items()}).api_keys
    opened = compose_service({"STILLFRAME_API_KEYS": ""})["environment"]
    assert isinstance(opened, dict) and opened["STILLFRAME_API_KEYS"] == ""


def test_compose_environment_is_settings_the_service_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    service = compose_service({"STILLFRAME_API_KEYS": "k" * 43})
    environment = service["environment"]
    assert isinstance(environment, dict)
    for name in environment:
        assert name.startswith("STILLFRAME_") and name.removeprefix("STILLFRAME_").lower() in Settings.model_fields, (
            name
        )
    for name, text in environment.items():
        monkeypatch.setenv(name, str(text))
    settings = Settings()  # every value, defaults and empties included, is one the settings accept
    assert settings.media_root == Path("/media") and settings.data_dir == Path("/data")
    assert settings.metrics_token is None and settings.forwarded_allow_ips is None and settings.rate_limit
    volumes = service["volumes"]
    assert isinstance(volumes, list)
    assert "./media:/media:ro" in volumes and "stillframe-data:/data" in volumes
    assert service["read_only"] is True and float(str(service["cpus"])) == 2


def test_compose_healthcheck_is_readiness(not_behind_proxy: Served) -> None:
    healthcheck = compose_service({"STILLFRAME_API_KEYS": ""})["healthcheck"]
    assert isinstance(healthcheck, dict)
    test = healthcheck["test"]
    assert isinstance(test, list) and test[0] == "CMD" and "/readyz" in test[-1]
    port = not_behind_proxy.base_url.rsplit(":", 1)[1]
    command = [sys.executable, *test[2:]]  # the image's python, here ours
    ok = subprocess.run([*command[:-1], command[-1].replace(":8000", f":{port}")], timeout=30)
    assert ok.returncode == 0
    down = subprocess.run(
        [*command[:-1], command[-1].replace(":8000", f":{free_port()}")], capture_output=True, timeout=30
    )
    assert down.returncode != 0


# ---------------------------------------------------------------- tracing (the `tracing` extra, installed with dev)


def test_tracing_is_off_unless_configured(ops_client: TestClient) -> None:
    assert ops_client.app.state.tracer_provider is None  # type: ignore[attr-defined]
    assert not any("OpenTelemetry" in str(m.cls) for m in ops_client.app.user_middleware)  # type: ignore[attr-defined]


def test_tracing_sends_a_span_per_request_over_otlp(
    make_client: Callable[..., TestClient], media: Path, tmp_path: Path
) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the tracing extra is not installed")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):  # a real OTLP/HTTP endpoint, as far as traces go
        def do_POST(self) -> None:
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
        client = ready(make_client(media_root=media, data_dir=tmp_path, tracing_endpoint=endpoint))
        assert (
            client.get("/v1/frame", params={"url": "clip.mp4", "t": "1"}, headers={"X-Request-ID": "t-1"}).status_code
            == 200
        )
        assert (
            client.get("/v1/frame", params={"url": "absent.mp4", "t": "1"}, headers={"X-Request-ID": "t-2"}).status_code
            == 404
        )
        client.app.state.tracer_provider.force_flush()  # type: ignore[attr-defined]
    finally:
        collector.shutdown()
    spans = {}
    for path, body in received:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            assert service == "stillframe"
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: a.value for a in span.attributes}
                    spans[attributes["stillframe.request_id"].string_value] = (span.name, attributes)
    name, attributes = spans["t-1"]
    assert name == "GET /v1/frame" and attributes["http.route"].string_value == "/v1/frame"
    assert "stillframe.problem_code" not in attributes
    name, attributes = spans["t-2"]
    assert attributes["stillframe.problem_code"].string_value == "source_not_found"
    assert any(v.int_value == 404 for k, v in attributes.items() if "status_code" in k)
