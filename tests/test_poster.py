"""t=auto: a poster that is not black, not a fade, not blurred, on clips made so by the ffmpeg CLI."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from tests import oracle

SIZE = "s=192x108:r=25"


def _make(path: Path, graph: str) -> None:
    encode = ["-c:v", "libx264", "-preset", "veryfast", "-g", "12", "-keyint_min", "12", "-sc_threshold", "0"]
    subprocess.run(
        [oracle.ffmpeg_exe(), "-v", "error", "-y", "-filter_complex", graph, "-pix_fmt", "yuv420p", *encode, str(path)],
        check=True,
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("poster")
    # 4 s of black, then 2 s of picture: only the last third is a poster.
    _make(root / "black.mp4", f"color=c=black:{SIZE}:d=4[a];testsrc2={SIZE}:d=2[b];[a][b]concat=n=2:v=1")
    # A slow fade in over 3 s and a fade out over the last 2: the middle is the picture at full strength.
    _make(root / "fade.mp4", f"testsrc2={SIZE}:d=8,fade=t=in:st=0:d=3,fade=t=out:st=6:d=2")
    # Blurred for 4 s, sharp for 2.
    _make(root / "blur.mp4", f"testsrc2={SIZE}:d=4,boxblur=12:4[a];testsrc2={SIZE}:d=2[b];[a][b]concat=n=2:v=1")
    return root


@pytest.fixture(scope="module")
def client(media: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(media_root=media, workers=1)), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("name", "good_from", "good_to"),
    [
        ("black.mp4", Fraction(4), Fraction(6)),
        ("fade.mp4", Fraction(2), Fraction(6)),
        ("blur.mp4", Fraction(4), Fraction(6)),
    ],
)
def test_poster_avoids_black_fades_and_blur(
    client: TestClient, name: str, good_from: Fraction, good_to: Fraction
) -> None:
    response = client.get("/v1/frame", params={"url": name, "t": "auto", "format": "png"})
    assert response.status_code == 200, response.text
    actual = Fraction(response.headers["x-actual-time-rational"])
    assert good_from <= actual < good_to, actual
    luma = np.asarray(Image.open(io.BytesIO(response.content)).convert("L"), dtype=np.float32)
    assert luma.mean() > 40 and luma.std() > 20
    # The frame at that time, exactly as /v1/frame gives it; and the same choice every time.
    at = client.get("/v1/frame", params={"url": name, "t": response.headers["x-actual-time"], "format": "png"})
    assert at.content == response.content
    again = client.get("/v1/frame", params={"url": name, "t": "auto", "format": "png"})
    assert again.headers["x-actual-time"] == response.headers["x-actual-time"]


def test_poster_with_options_and_post(client: TestClient) -> None:
    response = client.post("/v1/frame", json={"url": "black.mp4", "t": "auto", "width": 64})
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).width == 64
    assert Fraction(response.headers["x-actual-time-rational"]) >= 4
    assert client.get("/v1/frame", params={"url": "black.mp4", "t": "autox"}).status_code == 400


def test_poster_in_a_job(client: TestClient) -> None:
    created = client.post("/v1/jobs", json={"url": "black.mp4", "times": ["1", "auto"]})
    assert created.status_code == 202, created.text
    job_url = created.headers["location"]
    for _ in range(400):
        job = client.get(job_url).json()
        if job["status"] not in {"queued", "running"}:
            break
        time.sleep(0.02)
    assert job["status"] == "completed"
    poster = job["results"][1]
    assert Fraction(poster["actual_time"]) >= 4
    single = client.get("/v1/frame", params={"url": "black.mp4", "t": "auto"})
    assert Fraction(single.headers["x-actual-time"]) == Fraction(poster["actual_time"])
