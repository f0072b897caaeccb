"""Every file of the real-media corpus through the frontend endpoints: no 500, and no decoder crash
(a render still reading through a container that a keyframe search reopened used to kill the worker:
storyboards and posters, many keyframe grabs in one pass, hit it on edit-listed MP4s)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.media import MEDIA, corpus_files, require_corpus

# Files that are broken or undecodable here: a 422 is their right answer.
REFUSED = {
    "corrupt_malformed_free_box.mp4",
    "corrupt_vp9_invalid_bitstream.webm",
    "dolbyvision_av1_dav1_no_decoder.mp4",
}
REQUESTS = [
    ("/v1/info", {"keyframes": "true"}),
    ("/v1/storyboard.json", {"count": "5"}),
    ("/v1/animated.gif", {"end": "0.5"}),
    ("/v1/frame", {"t": "auto"}),
]


def test_every_corpus_file_through_the_frontend_endpoints() -> None:
    require_corpus()
    answers: dict[str, list[str]] = {}
    with TestClient(create_app(Settings(media_root=MEDIA, workers=2)), raise_server_exceptions=False) as client:
        for path in corpus_files():
            name = str(path.relative_to(MEDIA))
            for route, params in REQUESTS:
                response = client.get(route, params={"url": name, **params})
                code = "" if response.status_code == 200 else response.json()["code"]
                answers.setdefault(name, []).append(f"{response.status_code} {code}".strip())
    unexpected = {
        name: got
        for name, got in answers.items()
        if any(a != "200" for a in got) and not (name in REFUSED and all(a.startswith("422") for a in got))
    }
    # A raw H.264 stream has no timestamps to place a storyboard's end: a 400 saying so.
    assert unexpected == {"h264_interlaced_raw_annexb.h264": ["200", "400 invalid_parameter", "200", "200"]}, unexpected
