"""s3:// sources against a real S3-API server (moto's, as its own process on loopback): frames right
against the ffmpeg CLI in each container, the bytes and requests a grab costs, the bucket allow-list,
missing keys, a store that cannot be reached or goes away mid-grab, and a rewritten object."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import httpx
import obstore
import pytest
from fastapi.testclient import TestClient

from app.engine import GrabOptions, ImageGenerator
from app.engine.errors import EngineError
from app.engine.sources import S3Source, SourcePolicy, resolve_source
from app.net.objectstore import ObjectRangeReader, ObjectStorePolicy
from app.net.policy import FetchPolicy
from tests import oracle
from tests.jobs_support import JobServer, server_env, wait_for, wait_job
from tests.media import make_h264_clip
from tests.s3_server import CREDENTIALS, S3Server, S3Unavailable

BUCKET = "media"
CLOSED = "closed"
CLIPS = {
    "faststart.mp4": ["-movflags", "+faststart"],
    "moov-at-end.mp4": [],
    "clip.mkv": [],
}


def start_store() -> S3Server:
    try:
        return S3Server().start()
    except S3Unavailable as exc:
        pytest.skip(f"no S3-API server here: {exc}")


@pytest.fixture(scope="module")
def credentials() -> Iterator[None]:
    """moto's keys where obstore looks for them (decoder processes inherit them)."""
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("objstore")
    made = {}
    for name, extra in CLIPS.items():
        made[name] = make_h264_clip(
            folder / name, size="1280x720", rate=25, seconds=20, gop=50, extra=["-preset", "ultrafast", *extra]
        )
    return made


@pytest.fixture(scope="module")
def s3(credentials: None, clips: dict[str, Path]) -> Iterator[S3Server]:
    server = start_store()
    with server:
        server.create_bucket(BUCKET, versioned=True)
        server.create_bucket(CLOSED)
        for name, path in clips.items():
            server.put(BUCKET, f"videos/{name}", path.read_bytes())
        server.put(CLOSED, "videos/faststart.mp4", clips["faststart.mp4"].read_bytes())
        yield server


def store_policy(server: S3Server, buckets: frozenset[str] = frozenset({BUCKET})) -> SourcePolicy:
    fetch = FetchPolicy((), frozenset({80, 443}), 2.0, 2.0, 10.0, 2 * 1024**3, 5)
    objects = ObjectStorePolicy(buckets=buckets, endpoint_url=server.endpoint, connect_timeout=2.0, read_timeout=2.0)
    return SourcePolicy(fetch=fetch, objects=objects)


def gop_bytes(path: Path, t: Fraction) -> int:
    """Bytes of the packets of the GOP on screen at ``t`` (from its keyframe to the next)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        gops: list[tuple[Fraction, int]] = []
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            if packet.is_keyframe:
                gops.append((Fraction(packet.pts) * stream.time_base, 0))
            if gops:
                gops[-1] = (gops[-1][0], gops[-1][1] + packet.size)
    return [size for start, size in gops if start <= t][-1]


@pytest.mark.parametrize("name", list(CLIPS))
def test_frames_from_the_store_match_the_ffmpeg_cli(
    make_client: Callable[..., TestClient], s3: S3Server, clips: dict[str, Path], name: str
) -> None:
    info = oracle.probe(clips[name])
    size = oracle.info_compare_size(info)
    client = make_client(s3_endpoint_url=s3.endpoint, s3_buckets=BUCKET)
    url = f"s3://{BUCKET}/videos/{name}"
    for t in ("0", "3.1", "13.37", "7.99", "19.9"):
        response = client.get("/v1/frame", params={"url": url, "t": t, "format": "png"})
        assert response.status_code == 200, response.text
        expected = info.frame_at(Fraction(t))
        assert expected is not None
        pixels, (width, height) = oracle.image_to_rgb(response.content, size)
        answer = oracle.Answer(
            Fraction(t), Fraction(response.headers["x-actual-time"]), None, None, width, height, pixels
        )
        frames = oracle.decode_frames(info, range(expected - 3, expected + 4), size)
        assert oracle.judge(info, oracle.Request(Fraction(t), "s3"), answer, frames) is None


def test_a_grab_reads_the_gop_not_the_object(
    make_client: Callable[..., TestClient], s3: S3Server, clips: dict[str, Path]
) -> None:
    """After the first grab (the index), an exact grab fetches under twice its GOP, in a few requests."""
    path = clips["faststart.mp4"]
    size = path.stat().st_size
    client = make_client(s3_endpoint_url=s3.endpoint, s3_buckets=BUCKET)
    url = f"s3://{BUCKET}/videos/faststart.mp4"
    key = f"/{BUCKET}/videos/faststart.mp4"
    s3.clear_requests()
    first = client.get("/v1/frame", params={"url": url, "t": "3.1"})
    assert first.status_code == 200, first.text
    cold_requests, cold_bytes = s3.counts(key)
    assert cold_bytes < size / 2, (cold_bytes, size)
    assert cold_requests <= 6, cold_requests
    for t in ("15.5", "9.3"):
        s3.clear_requests()
        response = client.get("/v1/frame", params={"url": url, "t": t})
        assert response.status_code == 200, response.text
        requests, fetched = s3.counts(key)
        gop = gop_bytes(path, Fraction(t))
        assert 0 < fetched < 2 * gop, (t, fetched, gop, size)
        assert requests <= 4, (t, requests)


def test_buckets_off_the_list_are_forbidden(make_client: Callable[..., TestClient], s3: S3Server) -> None:
    client = make_client(s3_endpoint_url=s3.endpoint, s3_buckets=BUCKET)
    response = client.get("/v1/frame", params={"url": f"s3://{CLOSED}/videos/faststart.mp4", "t": "1"})
    assert response.status_code == 403 and response.json()["code"] == "source_forbidden", response.text
    closed = make_client(s3_endpoint_url=s3.endpoint)  # no buckets at all: none may be read
    response = closed.get("/v1/frame", params={"url": f"s3://{BUCKET}/videos/faststart.mp4", "t": "1"})
    assert response.status_code == 403 and response.json()["code"] == "source_forbidden", response.text


def test_a_missing_key_is_not_found_and_a_store_out_of_reach_is_a_502(
    make_client: Callable[..., TestClient], s3: S3Server
) -> None:
    client = make_client(s3_endpoint_url=s3.endpoint, s3_buckets=BUCKET)
    response = client.get("/v1/frame", params={"url": f"s3://{BUCKET}/videos/none.mp4", "t": "1"})
    assert response.status_code == 404 and response.json()["code"] == "source_not_found", response.text
    assert "127.0.0.1" not in response.text  # the store's address stays inside
    gone = start_store()
    endpoint = gone.endpoint
    gone.stop()
    nowhere = make_client(s3_endpoint_url=endpoint, s3_buckets=BUCKET, fetch_read_timeout=2)
    response = nowhere.get("/v1/frame", params={"url": f"s3://{BUCKET}/videos/faststart.mp4", "t": "1"})
    assert response.status_code == 502 and response.json()["code"] == "source_unreachable", response.text
    assert endpoint not in response.text


def test_a_store_that_goes_away_mid_grab_fails_the_grab(credentials: None, clips: dict[str, Path]) -> None:
    server = start_store()
    with server:
        server.create_bucket(BUCKET)
        server.put(BUCKET, "videos/clip.mkv", clips["clip.mkv"].read_bytes())
        source = resolve_source(f"s3://{BUCKET}/videos/clip.mkv", store_policy(server))
        with ImageGenerator(source, GrabOptions()) as generator:
            assert generator.image_at("0.5").actual_time == Fraction(12, 25)
            server.go_away()
            with pytest.raises(EngineError) as failure:
                generator.image_at("10.3")
        assert failure.value.code == "source_unreachable"


def test_a_rewritten_object_has_a_new_identity_and_never_mixes_bytes(s3: S3Server, clips: dict[str, Path]) -> None:
    policy = store_policy(s3)
    url = f"s3://{BUCKET}/videos/rewritten.mp4"
    s3.put(BUCKET, "videos/rewritten.mp4", clips["faststart.mp4"].read_bytes())
    before = resolve_source(url, policy)
    identity = before.identity
    reader = before.open()
    assert isinstance(reader, ObjectRangeReader) and reader.meta is not None and reader.meta.version
    s3.put(BUCKET, "videos/rewritten.mp4", clips["moov-at-end.mp4"].read_bytes())
    after = resolve_source(url, policy)
    assert after.identity != identity
    reader.seek(5 * 1024 * 1024)  # a block not read yet: the old version's bytes, or nothing
    assert reader.read(16) == clips["faststart.mp4"].read_bytes()[5 * 1024 * 1024 : 5 * 1024 * 1024 + 16]
    reader.close()


def test_an_unversioned_rewrite_fails_the_open_reader(s3: S3Server, clips: dict[str, Path]) -> None:
    policy = store_policy(s3, frozenset({CLOSED}))
    s3.put(CLOSED, "videos/changing.mp4", clips["faststart.mp4"].read_bytes())
    reader = resolve_source(f"s3://{CLOSED}/videos/changing.mp4", policy).open()
    s3.put(CLOSED, "videos/changing.mp4", clips["moov-at-end.mp4"].read_bytes())
    reader.seek(5 * 1024 * 1024)
    with pytest.raises(EngineError) as failure:
        reader.read(16)
    assert failure.value.code == "source_unreachable"
    reader.close()


def test_sources_under_a_base_and_in_worker_processes(s3: S3Server) -> None:
    policy = SourcePolicy(fetch=store_policy(s3).fetch, objects=store_policy(s3).objects, base=f"s3://{BUCKET}/videos/")
    source = resolve_source("faststart.mp4", policy)
    assert isinstance(source, S3Source) and source.display_name == f"s3://{BUCKET}/videos/faststart.mp4"
    for escape in ("../other/a.mp4", "/other/a.mp4", "a/../../b.mp4"):
        with pytest.raises(EngineError) as refused:
            resolve_source(escape, policy)
        assert refused.value.code == "source_forbidden", escape
    identity = source.identity
    copy = pickle.loads(pickle.dumps(source))  # as the pool sends it to a decoder process
    assert copy.identity == identity
    copy.open().close()
    source.close()


# -- results in the store -------------------------------------------------------------------------------


def test_job_results_are_written_served_redirected_and_expired_in_the_store(
    s3: S3Server, clips: dict[str, Path], tmp_path: Path
) -> None:
    s3.create_bucket("results")
    data = tmp_path / "data"
    env = server_env(
        clips["faststart.mp4"].parent,
        data,
        STILLFRAME_RESULTS_URL="s3://results/jobs",
        STILLFRAME_S3_ENDPOINT_URL=s3.endpoint,
        STILLFRAME_RESULT_TTL="3",
        **CREDENTIALS,
    )
    live = JobServer(env, tmp_path / "server.log").start()
    results = s3.store("results")
    try:
        body = {"url": "faststart.mp4", "times": ["0", "2.5"], "format": "png"}
        job_id = httpx.post(live.url("/v1/jobs"), json=body).json()["id"]
        job = wait_job(live.base_url, job_id)
        assert job["status"] == "completed", job
        keys = sorted(meta["path"] for batch in obstore.list(results, f"jobs/results/{job_id}/") for meta in batch)
        assert keys == [f"jobs/results/{job_id}/0.png", f"jobs/results/{job_id}/1.png"]
        assert not (data / "results").exists()  # nothing on the node's disk
        image = httpx.get(live.url(f"/v1/jobs/{job_id}/results/1"))
        direct = httpx.post(live.url("/v1/frame"), json={"url": "faststart.mp4", "t": "2.5", "format": "png"})
        assert image.status_code == 200 and image.content == direct.content
        assert image.headers["x-actual-time"] == direct.headers["x-actual-time"] == "2.48"
        assert image.headers["content-type"] == "image/png" and image.headers["etag"]
        assert bytes(obstore.get(results, keys[1]).bytes()) == image.content
        wait_for(lambda: httpx.get(live.url(f"/v1/jobs/{job_id}")).status_code == 404, 15, "expiry")
        wait_for(lambda: not list(obstore.list(results, f"jobs/results/{job_id}/")), 15, "objects removed")
    finally:
        live.stop()
    redirecting = JobServer({**env, "STILLFRAME_RESULTS_REDIRECT": "60"}, tmp_path / "redirect.log").start()
    try:
        job_id = httpx.post(redirecting.url("/v1/jobs"), json={"url": "faststart.mp4", "times": ["1"]}).json()["id"]
        assert wait_job(redirecting.base_url, job_id)["status"] == "completed"
        moved = httpx.get(redirecting.url(f"/v1/jobs/{job_id}/results/0"))
        assert moved.status_code == 307 and moved.headers["x-actual-time"] == "1"
        assert "X-Amz-Signature=" in moved.headers["location"]
        fetched = httpx.get(moved.headers["location"])
        assert fetched.status_code == 200 and fetched.content[:3] == b"\xff\xd8\xff"  # the JPEG itself
    finally:
        redirecting.stop()


def test_playlist_entries_resolve_beside_the_object_and_within_the_rules(s3: S3Server) -> None:
    """An HLS playlist in a bucket names its segments relative to itself: same bucket, not above it;
    other buckets only from the list; http(s) through the SSRF guard."""
    source = resolve_source(f"s3://{BUCKET}/videos/hls/index.m3u8", store_policy(s3))
    assert isinstance(source, S3Source)
    related = source.related_source("seg-1.ts")
    assert isinstance(related, S3Source) and related.display_name == f"s3://{BUCKET}/videos/hls/seg-1.ts"
    assert source.related_source("../other/seg.ts").display_name == f"s3://{BUCKET}/videos/other/seg.ts"
    for refused in ("../../../x.ts", f"s3://{CLOSED}/videos/faststart.mp4", "http://127.0.0.1/a.ts", "file:a.ts"):
        with pytest.raises(EngineError) as failure:
            source.related_source(refused)
        assert failure.value.code == "source_forbidden", refused


def test_an_empty_object_reads_as_empty(s3: S3Server) -> None:
    s3.put(BUCKET, "videos/empty.mp4", b"")
    reader = resolve_source(f"s3://{BUCKET}/videos/empty.mp4", store_policy(s3)).open()
    assert reader.read() == b"" and reader.seek(0, 2) == 0
    reader.close()
