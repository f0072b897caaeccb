"""The page at /: served by the app, and driven in a real headless Chromium (Playwright over Debian's
``chromium``): the hover preview shows the hovered time's tile, a click shows the frame whose time
the page displays, the arrow keys step frames, a job reports over SSE, and nothing logs an error."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
import webvtt
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.live_server import LiveServer, live_server
from tests.media import make_clip

API_KEY = "page-test-key-0123456789"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("page")
    make_clip(root / "clip.mp4", fps=25, frames=100, gop=12, bframes=2)  # 4 s, 25 fps
    return root


def test_page_and_its_assets_are_served(media: Path) -> None:
    with TestClient(create_app(Settings(media_root=media, workers=1)), raise_server_exceptions=False) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/static/page.js">' in page.text
        script = client.get("/static/page.js")
        assert script.headers["content-type"].startswith("text/javascript") and "/v1/storyboard.vtt" in script.text
        assert client.get("/static/page.css").status_code == 200
        assert client.get("/static/secrets.py").status_code == 404
        assert client.get("/v1/media").json() == {"files": ["clip.mp4"], "truncated": False}


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run does): browser tests skipped")
    return found


@pytest.fixture(scope="module")
def server(media: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    _chromium()
    env = {
        "STILLFRAME_MEDIA_ROOT": str(media),
        "STILLFRAME_WORKERS": "1",
        "STILLFRAME_DATA_DIR": str(tmp_path_factory.mktemp("page-data")),
    }
    with live_server(env) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_server(media: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    _chromium()
    env = {
        "STILLFRAME_MEDIA_ROOT": str(media),
        "STILLFRAME_WORKERS": "1",
        "STILLFRAME_DATA_DIR": str(tmp_path_factory.mktemp("page-keyed-data")),
        "STILLFRAME_API_KEYS": API_KEY,
        "STILLFRAME_URL_SIGNING_KEYS": "page:" + "p" * 32,
    }
    with live_server(env) as server:
        yield server


@pytest.fixture
def browser_page() -> Iterator[tuple[Any, list[str]]]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: browser tests skipped")
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page, errors
        finally:
            browser.close()


def _seconds(vtt_time: str) -> float:
    hours, minutes, seconds = vtt_time.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _image_bytes(page: Any) -> bytes:
    script = "async () => Array.from(new Uint8Array(await (await fetch(frame.src)).arrayBuffer()))"
    numbers = page.evaluate(script.replace("frame.src", "document.getElementById('frame').src"))
    return bytes(numbers)


def test_hover_click_keys_and_a_job_in_chromium(server: LiveServer, browser_page: tuple[Any, list[str]]) -> None:
    page, errors = browser_page
    page.goto(f"{server.base_url}/?url=clip.mp4&t=1")
    page.wait_for_selector("#timeline[data-ready='true']", timeout=30_000)
    assert page.text_content("#actual") == "1"

    # Hover: the preview shows the tile of the VTT cue that holds the hovered time.
    vtt = httpx.get(f"{server.base_url}/v1/storyboard.vtt", params={"url": "clip.mp4"}).text
    cues = webvtt.from_string(vtt).captions
    box = page.locator("#timeline").bounding_box()
    for fraction in (0.05, 0.37, 0.93):
        page.mouse.move(box["x"] + fraction * box["width"], box["y"] + box["height"] / 2)
        preview = page.locator("#preview")
        assert preview.is_visible()
        hovered = float(preview.get_attribute("data-time"))
        assert abs(hovered - fraction * 4) < 0.02
        cue = next(c for c in cues if _seconds(c.start) <= hovered < _seconds(c.end))
        assert preview.get_attribute("data-xywh") == cue.text.split("#xywh=")[1]
        x, y = (int(v) for v in cue.text.split("#xywh=")[1].split(",")[:2])
        position = page.evaluate("getComputedStyle(document.getElementById('preview')).backgroundPosition")
        assert [int(float(v.removesuffix("px"))) for v in position.split()] == [-x, -y]

    # Click: the image shown is the frame whose time the page displays.
    page.mouse.click(box["x"] + 0.61 * box["width"], box["y"] + box["height"] / 2)
    page.wait_for_function("document.getElementById('actual').textContent !== '1'")
    shown = page.text_content("#actual")
    clicked = Fraction(page.text_content("#requested"))
    assert abs(clicked - Fraction(61, 25)) < Fraction(1, 50)
    direct = httpx.get(f"{server.base_url}/v1/frame", params={"url": "clip.mp4", "t": shown})
    assert direct.headers["x-actual-time"] == shown
    assert _image_bytes(page) == direct.content

    # Arrow keys: the next frame, then back (25 fps: 0.04 s apart).
    page.focus("#timeline")
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"document.getElementById('actual').textContent !== '{shown}'")
    assert Fraction(page.text_content("#actual")) == Fraction(shown) + Fraction(1, 25)
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"document.getElementById('actual').textContent === '{shown}'")

    # A batch of times as a job, with progress over SSE.
    page.fill("#times", "0.5, 1.5, 2.5")
    page.click("#run-job")
    page.wait_for_function("document.getElementById('job-status').textContent === 'completed'", timeout=30_000)
    page.wait_for_function("document.querySelectorAll('#job-results img').length === 3")
    assert page.eval_on_selector("#job-progress", "p => p.value") == 3

    assert errors == []


def test_with_api_keys_on(keyed_server: LiveServer, browser_page: tuple[Any, list[str]]) -> None:
    """Keys on: the page sends the key, the storyboard's signed sheet URL loads, the job's events come
    through a signed EventSource URL, and the file picker lists the media root once a key is typed."""
    page, errors = browser_page
    page.goto(f"{keyed_server.base_url}/")
    page.fill("#key", API_KEY)
    page.dispatch_event("#key", "change")
    page.wait_for_function("document.querySelectorAll('#files option').length === 2")
    page.select_option("#files", "clip.mp4")
    page.wait_for_selector("#timeline[data-ready='true']", timeout=30_000)
    assert page.text_content("#actual") == "0"
    page.click("#next")
    page.wait_for_function("document.getElementById('actual').textContent === '0.04'")
    page.fill("#times", "1, 2")
    page.click("#run-job")
    page.wait_for_function("document.getElementById('job-status').textContent === 'completed'", timeout=30_000)
    page.wait_for_function("document.querySelectorAll('#job-results img').length === 2")
    assert errors == []
