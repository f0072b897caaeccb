"""Sources: local confinement under the media root, HTTP sources, and the ranged reader."""

from __future__ import annotations

import io
import ipaddress
import os
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.engine.errors import EngineError
from app.engine.sources import HttpSource, LocalSource, SourcePolicy, resolve_source
from app.net.policy import FetchPolicy
from app.net.ranged import HttpRangeReader
from tests.http_server import LoopbackServer, loopback_server, serve_directory

KIB = 1024
MIB = 1024 * 1024


def expect_error(code: str, fn: Any, *args: Any, **kwargs: Any) -> EngineError:
    with pytest.raises(EngineError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    yield from loopback_server()


def http_policy(server: LoopbackServer, **overrides: Any) -> FetchPolicy:
    values: dict[str, Any] = {
        "allowed_networks": ["127.0.0.0/8"],
        "allowed_ports": [server.port],
        "fetch_connect_timeout": 1.0,
        "fetch_read_timeout": 1.0,
        "fetch_total_timeout": 5.0,
    }
    values.update(overrides)
    return Settings(**values).fetch_policy()


# --------------------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """tmp/media is the root; tmp/outside holds things that must stay unreachable."""
    root = tmp_path / "media"
    (root / "clips" / "sub").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "clips" / "a.mp4").write_bytes(b"A" * 1000)
    (root / "clips" / "sub" / "b.mp4").write_bytes(b"B" * 10)
    (root / "clips" / "with space.mp4").write_bytes(b"S")
    (root / "clips" / "list.m3u8").write_text("#EXTM3U\nseg0.ts\n")
    (root / "clips" / "seg0.ts").write_bytes(b"T" * 188)
    (root / "other" / "c.ts").write_bytes(b"C")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (root / "clips" / "inner-link.mp4").symlink_to(root / "clips" / "a.mp4")
    (root / "clips" / "escape.mp4").symlink_to(outside / "secret.txt")
    (root / "escape-dir").symlink_to(outside, target_is_directory=True)
    return root


def local_policy(root: Path | None) -> SourcePolicy:
    return Settings(media_root=root, allowed_networks=[], allowed_ports=[80, 443]).source_policy()


def test_relative_path_resolves_and_reads(media: Path) -> None:
    src = resolve_source("clips/a.mp4", local_policy(media))
    assert isinstance(src, LocalSource)
    assert src.display_name == "clips/a.mp4"
    st = (media / "clips" / "a.mp4").stat()
    assert src.identity == f"file:clips/a.mp4:{st.st_size}:{st.st_mtime_ns}"
    with src.open() as f:
        assert f.seekable()
        f.seek(-10, os.SEEK_END)
        assert f.read() == b"A" * 10
    assert str(media) not in src.display_name


def test_identity_changes_when_the_file_changes(media: Path) -> None:
    policy = local_policy(media)
    before = resolve_source("clips/a.mp4", policy).identity
    path = media / "clips" / "a.mp4"
    path.write_bytes(b"A" * 1001)
    os.utime(path, ns=(1, 1))
    assert resolve_source("clips/a.mp4", policy).identity != before


@pytest.mark.parametrize(
    ("url", "relpath"),
    [
        ("clips/sub/../a.mp4", "clips/a.mp4"),
        ("./clips/a.mp4", "clips/a.mp4"),
        ("clips/inner-link.mp4", "clips/a.mp4"),  # symlink staying inside is fine
        ("file:clips/a.mp4", "clips/a.mp4"),
        ("file:clips/with%20space.mp4", "clips/with space.mp4"),
        ("clips/with space.mp4", "clips/with space.mp4"),
        ("file:clips%2Fsub%2Fb.mp4", "clips/sub/b.mp4"),
    ],
)
def test_paths_inside_the_root(media: Path, url: str, relpath: str) -> None:
    src = resolve_source(url, local_policy(media))
    assert isinstance(src, LocalSource)
    assert src.relpath == relpath


def test_absolute_forms_inside_the_root(media: Path) -> None:
    policy = local_policy(media)
    target = media / "clips" / "a.mp4"
    for url in (str(target), f"file://{target}", f"file://localhost{target}", f"file:{target}"):
        src = resolve_source(url, policy)
        assert isinstance(src, LocalSource) and src.relpath == "clips/a.mp4", url


@pytest.mark.parametrize(
    "url",
    [
        "../outside/secret.txt",
        "clips/../../outside/secret.txt",
        "clips/sub/../../../outside/secret.txt",
        "clips/escape.mp4",  # symlink pointing outside
        "escape-dir/secret.txt",  # through a symlinked directory
        "/etc/passwd",
        "/etc/does-not-exist",  # outside: forbidden, not "not found" (no probing outside the root)
        "file:///etc/passwd",
        "file:/etc/passwd",
        "file://localhost/etc/passwd",
        "file:../outside/secret.txt",
        "file:%2e%2e/outside/secret.txt",  # percent-encoded traversal
        "file:clips/%2E%2E/%2e%2e/outside/secret.txt",
        "file:..%2Foutside%2Fsecret.txt",
        "file://evil.example/share/a.mp4",  # file URL with a host
    ],
)
def test_paths_escaping_the_root_are_forbidden(media: Path, url: str) -> None:
    err = expect_error("source_forbidden", resolve_source, url, local_policy(media))
    assert str(media.parent) not in err.detail


def test_absolute_path_outside_root_is_forbidden(media: Path, tmp_path: Path) -> None:
    expect_error("source_forbidden", resolve_source, str(tmp_path / "outside" / "secret.txt"), local_policy(media))


def test_a_sibling_whose_name_starts_with_the_roots_is_outside(media: Path) -> None:
    """Inside means whole path components: ``media-old/x`` shares the root's name as a string prefix."""
    sibling = media.parent / (media.name + "-old")
    sibling.mkdir()
    (sibling / "x.mp4").write_bytes(b"x")
    for url in (str(sibling / "x.mp4"), f"../{sibling.name}/x.mp4", f"file://{sibling / 'x.mp4'}"):
        expect_error("source_forbidden", resolve_source, url, local_policy(media))
    (media / "clips" / "old").symlink_to(sibling)
    expect_error("source_forbidden", resolve_source, "clips/old/x.mp4", local_policy(media))


def test_a_root_given_through_a_symlink_is_resolved(media: Path, tmp_path: Path) -> None:
    link = tmp_path / "media-link"
    link.symlink_to(media)
    src = resolve_source("clips/sub/b.mp4", local_policy(link))
    assert isinstance(src, LocalSource) and src.relpath == "clips/sub/b.mp4" and src.size == 10


def test_literal_percent_in_bare_paths_is_not_decoded(media: Path) -> None:
    (media / "clips" / "%2e%2e").mkdir()
    (media / "clips" / "%2e%2e" / "x.mp4").write_bytes(b"x")
    src = resolve_source("clips/%2e%2e/x.mp4", local_policy(media))
    assert isinstance(src, LocalSource) and src.relpath == "clips/%2e%2e/x.mp4"


@pytest.mark.parametrize("url", ["clips/missing.mp4", "nope/a.mp4", "file:clips/missing.mp4", "clips/a.mp4/x"])
def test_missing_files(media: Path, url: str) -> None:
    expect_error("source_not_found", resolve_source, url, local_policy(media))


@pytest.mark.parametrize("url", ["clips", "clips/", ".", "file:clips/sub"])
def test_directories_are_not_sources(media: Path, url: str) -> None:
    expect_error("invalid_parameter", resolve_source, url, local_policy(media))


def test_fifo_is_not_a_source(media: Path) -> None:
    os.mkfifo(media / "clips" / "pipe.mp4")
    expect_error("invalid_parameter", resolve_source, "clips/pipe.mp4", local_policy(media))


@pytest.mark.parametrize("url", ["clips/a.mp4", "file:clips/a.mp4", "/etc/passwd", "file:///etc/passwd"])
def test_no_media_root_means_no_local_files(url: str) -> None:
    err = expect_error("source_forbidden", resolve_source, url, local_policy(None))
    assert "disabled" in err.detail


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.mp4",
        "data:video/mp4;base64,AAAA",
        "concat:clips/a.mp4|clips/a.mp4",
        "subfile:,,start,0,end,10,,:clips/a.mp4",
        "pipe:0",
        "tcp://127.0.0.1:80",
        "rtmp://example.com/live",
        "gopher://example.com/",
        "crypto:clips/a.mp4",
        "hls+http://example.com/a.m3u8",
    ],
)
def test_other_schemes_are_forbidden(media: Path, url: str) -> None:
    err = expect_error("source_forbidden", resolve_source, url, local_policy(media))
    assert "scheme" in err.detail


@pytest.mark.parametrize(
    "url", ["", "clips/a.mp4\x00.txt", "clips/\na.mp4", "file:clips/a.mp4%00", "file:", "file://[", "file://[::1/a"]
)
def test_malformed_local_sources(media: Path, url: str) -> None:
    expect_error("invalid_parameter", resolve_source, url, local_policy(media))


def test_local_related_resources(media: Path, tmp_path: Path) -> None:
    policy = local_policy(media)
    playlist = resolve_source("clips/list.m3u8", policy)
    for malformed in ("//[x/seg.ts", "file://[/seg.ts"):
        expect_error("invalid_parameter", playlist.related_source, malformed)
    with playlist.open_related("seg0.ts") as f:
        assert f.read() == b"T" * 188
    with playlist.open_related("../other/c.ts") as f:
        assert f.read() == b"C"
    with playlist.open_related("sub/b.mp4") as f:
        assert f.read() == b"B" * 10
    with playlist.open_related("with%20space.mp4") as f:
        assert f.read() == b"S"
    with playlist.open_related(f"file://{media}/other/c.ts") as f:
        assert f.read() == b"C"
    with playlist.open_related(f"{media}/other/c.ts") as f:  # absolute path, but inside the root
        assert f.read() == b"C"
    for bad in (
        "../../outside/secret.txt",
        "%2e%2e/%2e%2e/outside/secret.txt",
        "escape.mp4",
        "/etc/passwd",
        f"{tmp_path}/outside/secret.txt",
        "file:///etc/passwd",
        "//evil.example/x.ts",
        "http://127.0.0.1/x.ts",  # through the SSRF guard, which refuses loopback
        "http://169.254.169.254/latest/meta-data",
        "concat:seg0.ts|seg0.ts",
        "data:,hello",
    ):
        expect_error("source_forbidden", playlist.open_related, bad)
    expect_error("source_not_found", playlist.open_related, "missing.ts")


def test_local_open_refuses_a_file_swapped_for_a_symlink(media: Path, tmp_path: Path) -> None:
    src = resolve_source("clips/sub/b.mp4", local_policy(media))
    target = media / "clips" / "sub" / "b.mp4"
    target.unlink()
    target.symlink_to(tmp_path / "outside" / "secret.txt")
    expect_error("source_forbidden", src.open)


# --------------------------------------------------------------------------------------------------
# HttpRangeReader
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_data() -> bytes:
    return random.Random(1234).randbytes(8 * MIB + 12345)


def test_random_seeks_give_identical_bytes(server: LoopbackServer, big_data: bytes) -> None:
    server.add_file("/big.bin", big_data)
    rng = random.Random(99)
    with HttpRangeReader(server.url("/big.bin"), http_policy(server), block_size=64 * KIB) as reader:
        assert reader.size == len(big_data) and reader.supports_ranges
        assert reader.readable() and reader.seekable()
        for _ in range(300):
            whence = rng.choice([os.SEEK_SET, os.SEEK_CUR, os.SEEK_END])
            if whence == os.SEEK_SET:
                pos = reader.seek(rng.randrange(len(big_data) + 10))
            elif whence == os.SEEK_CUR:
                pos = reader.seek(rng.randrange(-reader.tell(), 300 * KIB), os.SEEK_CUR)
            else:
                pos = reader.seek(-rng.randrange(1, 200 * KIB), os.SEEK_END)
            assert reader.tell() == pos
            n = rng.choice([1, 7, 188, 4096, 65536, 65537, 300 * KIB])
            assert reader.read(n) == big_data[pos : pos + n]
            assert reader.tell() == min(pos + n, max(pos, len(big_data)))
        reader.seek(len(big_data) - 5)
        assert reader.read() == big_data[-5:]
        assert reader.read(10) == b""
        buf = bytearray(100)
        reader.seek(1000)
        assert reader.readinto(buf) == 100 and bytes(buf) == big_data[1000:1100]
        with pytest.raises(OSError):
            reader.seek(-1)
        assert reader.bytes_fetched < 3 * len(big_data)


def test_small_read_in_the_middle_fetches_one_block(server: LoopbackServer, big_data: bytes) -> None:
    server.add_file("/big.bin", big_data)
    with HttpRangeReader(server.url("/big.bin"), http_policy(server)) as reader:
        assert (reader.requests_made, reader.bytes_fetched) == (1, reader.block_size)  # the first block
        mid = len(big_data) // 2
        reader.seek(mid)
        assert reader.read(100) == big_data[mid : mid + 100]
        assert reader.requests_made == 2
        assert reader.bytes_fetched == 2 * reader.block_size
        reader.seek(mid + 1000)
        assert reader.read(100) == big_data[mid + 1000 : mid + 1100]  # same block: served from cache
        assert reader.requests_made == 2
    ranges = [r.range for r in server.requests_for("/big.bin")]
    block = 256 * KIB
    start = (mid // block) * block
    assert ranges == [f"bytes=0-{block - 1}", f"bytes={start}-{start + block - 1}"]


def test_sequential_reading_grows_readahead(server: LoopbackServer, big_data: bytes) -> None:
    server.add_file("/big.bin", big_data)
    out = io.BytesIO()
    with HttpRangeReader(server.url("/big.bin"), http_policy(server), block_size=64 * KIB) as reader:
        while chunk := reader.read(32 * KIB):
            out.write(chunk)
        assert out.getvalue() == big_data
        blocks = -(-len(big_data) // reader.block_size)
        assert reader.requests_made < blocks / 4
        assert reader.bytes_fetched == len(big_data)


def test_serve_directory_helper(tmp_path: Path, big_data: bytes) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(big_data[:300_000])
    (tmp_path / "secret").write_bytes(b"no")
    with serve_directory(tmp_path / "d") as base:
        port = int(base.rsplit(":", 1)[1])
        policy = Settings(allowed_networks=[ipaddress.ip_network("127.0.0.0/8")], allowed_ports=[port]).fetch_policy()
        with HttpRangeReader(f"{base}/x.bin", policy) as reader:
            reader.seek(290_000)
            assert reader.read() == big_data[290_000:300_000]
            assert reader.etag and reader.supports_ranges
        expect_error("source_not_found", HttpRangeReader, f"{base}/missing.bin", policy)
        expect_error("source_not_found", HttpRangeReader, f"{base}/%2e%2e/secret", policy)


def test_server_without_range_support(server: LoopbackServer, big_data: bytes) -> None:
    data = big_data[: 3 * MIB + 7]
    server.add_file("/plain.bin", data, ranges=False)
    rng = random.Random(7)
    with HttpRangeReader(server.url("/plain.bin"), http_policy(server)) as reader:
        assert not reader.supports_ranges
        assert reader.size == len(data)
        reader.seek(-100, os.SEEK_END)
        assert reader.read() == data[-100:]
        for _ in range(50):
            pos = reader.seek(rng.randrange(len(data)))
            n = rng.choice([1, 1000, 70000])
            assert reader.read(n) == data[pos : pos + n]
        assert reader.requests_made == 1
        assert reader.bytes_fetched == len(data)


def test_server_without_range_support_and_no_length(server: LoopbackServer) -> None:
    server.add_stream("/chunks", chunk=b"0123456789", total=100_005)
    with HttpRangeReader(server.url("/chunks"), http_policy(server)) as reader:
        assert reader.size is None
        assert reader.read(5) == b"01234"
        assert reader.seek(0, os.SEEK_END) == 100_005
        reader.seek(100_000)
        assert reader.read() == b"01234"


def test_range_reader_respects_the_byte_cap(server: LoopbackServer, big_data: bytes) -> None:
    server.add_file("/big.bin", big_data)
    policy = http_policy(server, max_source_bytes=1 * MIB)
    with HttpRangeReader(server.url("/big.bin"), policy) as reader:
        reader.seek(100)
        reader.read(1000)
        with pytest.raises(EngineError) as info:
            for i in range(16):
                reader.seek(i * MIB // 2)
                reader.read(10)
        assert info.value.code == "source_too_large"
        assert reader.bytes_fetched <= 1 * MIB


def test_empty_remote_file(server: LoopbackServer) -> None:
    server.add_file("/empty", b"")
    with HttpRangeReader(server.url("/empty"), http_policy(server)) as reader:
        assert reader.size == 0
        assert reader.read(10) == b""
        assert reader.seek(0, os.SEEK_END) == 0


def test_file_changing_mid_read_is_detected(server: LoopbackServer, big_data: bytes) -> None:
    server.add_file("/v.bin", big_data, etag='"v1"')
    with HttpRangeReader(server.url("/v.bin"), http_policy(server)) as reader:
        server.add_file("/v.bin", big_data, etag='"v2"')
        reader.seek(4 * MIB)
        err = expect_error("source_unreachable", reader.read, 10)
        assert "changed" in err.detail


def test_reader_follows_redirect_once_then_uses_final_url(server: LoopbackServer, big_data: bytes) -> None:
    server.add_file("/real.bin", big_data)
    server.add_redirect("/link.bin", "/real.bin")
    with HttpRangeReader(server.url("/link.bin"), http_policy(server)) as reader:
        reader.seek(5 * MIB)
        assert reader.read(10) == big_data[5 * MIB : 5 * MIB + 10]
        assert reader.final_url == server.url("/real.bin")
    assert server.request_count("/link.bin") == 1
    assert server.request_count("/real.bin") == 2


def test_pyav_decodes_through_the_reader(server: LoopbackServer) -> None:
    av = pytest.importorskip("av")
    np = pytest.importorskip("numpy")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        noise = np.random.default_rng(5)
        for _ in range(48):  # noise: a file of some size, many blocks
            frame = av.VideoFrame.from_ndarray(noise.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    server.add_file("/clip.mp4", buf.getvalue(), content_type="video/mp4")
    with HttpRangeReader(server.url("/clip.mp4"), http_policy(server), block_size=4 * KIB) as reader:
        with av.open(reader) as container:
            frames = sum(1 for _ in container.decode(video=0))
        assert frames == 48
        assert len(buf.getvalue()) > 8 * reader.block_size
        assert reader.requests_made >= 2


# --------------------------------------------------------------------------------------------------
# HttpSource
# --------------------------------------------------------------------------------------------------


def test_http_source_identity_and_open_share_one_request(server: LoopbackServer, big_data: bytes) -> None:
    server.add_file("/a.mp4", big_data[:1000], etag='"abc"')
    src = resolve_source(server.url("/a.mp4?token=s3cr3t"), SourcePolicy(fetch=http_policy(server)))
    assert isinstance(src, HttpSource)
    assert server.request_count() == 0  # resolving checks, but does not fetch
    assert src.display_name == server.url("/a.mp4")  # the query (tokens) stays out
    assert src.identity.startswith(f"http:{server.url('/a.mp4?token=s3cr3t')}:")
    assert '"abc"' in src.identity and src.identity.endswith(":1000")
    with src.open() as f:
        assert f.read() == big_data[:1000]
    assert server.request_count() == 1
    with src.open() as f:
        assert f.read(10) == big_data[:10]
    assert server.request_count() == 2


def test_http_source_pickles_for_worker_processes(server: LoopbackServer) -> None:
    server.add_file("/a.mp4", b"0123456789")
    src = resolve_source(server.url("/a.mp4"), SourcePolicy(fetch=http_policy(server)))
    identity = src.identity
    copy = pickle.loads(pickle.dumps(src))
    assert copy.identity == identity
    with copy.open() as f:
        assert f.read() == b"0123456789"
    assert isinstance(src, HttpSource)
    src.close()


def test_http_source_open_errors(server: LoopbackServer) -> None:
    server.add_status("/gone", 404)
    src = resolve_source(server.url("/gone"), SourcePolicy(fetch=http_policy(server)))
    expect_error("source_not_found", src.open)
    expect_error("source_not_found", lambda: src.identity)


def test_http_related_resources(server: LoopbackServer) -> None:
    server.add_file("/hls/list.m3u8", b"#EXTM3U\nseg0.ts\n")
    server.add_file("/hls/seg0.ts", b"T" * 188)
    server.add_file("/other/seg1.ts", b"U" * 188)
    server.add_redirect("/moved/list.m3u8", "/hls/list.m3u8")
    policy = SourcePolicy(fetch=http_policy(server))
    playlist = resolve_source(server.url("/moved/list.m3u8"), policy)
    assert playlist.identity  # learns the final URL: relative references resolve against it
    with playlist.open_related("seg0.ts") as f:
        assert f.read() == b"T" * 188
    with playlist.open_related("../other/seg1.ts") as f:
        assert f.read() == b"U" * 188
    with playlist.open_related(server.url("/other/seg1.ts")) as f:
        assert f.read() == b"U" * 188
    before = server.request_count()
    for bad in (
        "file:///etc/passwd",
        "concat:seg0.ts|seg0.ts",
        "data:,x",
        "http://169.254.169.254/latest/meta-data",
        f"http://10.0.0.1:{server.port}/x.ts",
        "http://127.0.0.1:1/x.ts",  # port not allowed
        f"http://user:pw@127.0.0.1:{server.port}/hls/seg0.ts",
    ):
        expect_error("source_forbidden", playlist.open_related, bad)
    assert server.request_count() == before
    expect_error("source_not_found", playlist.open_related, "missing.ts")
