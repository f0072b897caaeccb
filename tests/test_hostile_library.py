"""The library is as safe as the service: ``ImageGenerator`` on a local playlist reads nothing outside
the playlist's own folder (parent paths, absolute paths, symlinks out), and still reads what is in it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from app.engine import GrabOptions, ImageGenerator
from app.engine.errors import EngineError
from tests.oracle import ffmpeg_exe


def _segment(path: Path) -> None:
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=2",
         "-c:v", "libx264", "-preset", "ultrafast", "-f", "mpegts", str(path)],
        check=True,
    )  # fmt: skip


def _playlist(*uris: str) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0"]
    return "\n".join([*lines, *[f"#EXTINF:2.0,\n{u}" for u in uris], "#EXT-X-ENDLIST", ""])


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("library-playlists")
    _segment(root / "secret.ts")  # outside the playlists' folder: must never be read
    folder = root / "videos"
    (folder / "sub").mkdir(parents=True)
    _segment(folder / "sub" / "seg.ts")
    os.symlink(root / "secret.ts", folder / "link.ts")
    os.symlink(root, folder / "up")
    return folder


@pytest.mark.parametrize(
    "uri",
    ["../secret.ts", "sub/../../secret.ts", "{root}/secret.ts", "link.ts", "up/secret.ts", "./../secret.ts",
     "sub/%2e%2e/%2e%2e/secret.ts"],
)  # fmt: skip
def test_a_local_playlist_reads_nothing_outside_its_folder(tree: Path, uri: str) -> None:
    playlist = tree / f"bad-{abs(hash(uri))}.m3u8"
    playlist.write_text(_playlist(uri.format(root=tree.parent)))
    with pytest.raises(EngineError) as info, ImageGenerator(playlist, GrabOptions()) as generator:
        generator.image_at("0.5")
    assert info.value.code in {"source_forbidden", "source_not_found", "unsupported_media", "no_video_stream"}


def test_a_local_playlist_reads_its_own_folder(tree: Path) -> None:
    playlist = tree / "good.m3u8"
    playlist.write_text(_playlist("sub/seg.ts", "./sub/seg.ts"))
    with ImageGenerator(playlist, GrabOptions()) as generator:
        assert generator.image_at("0.5").width == 64
