"""The page at ``/`` (plain HTML and one ES module, no build step) and the media listing it offers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from app.api.problems import problem_json
from app.config import Settings
from app.errors import problem_body

STATIC = Path(__file__).parent / "static"
_ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}
_VIDEO_SUFFIXES = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".ts",
        ".m2ts",
        ".mts",
        ".avi",
        ".flv",
        ".ivf",
        ".mxf",
        ".mpg",
        ".mpeg",
        ".3gp",
        ".m3u8",
        ".h264",
        ".264",
        ".hevc",
        ".265",
    ]
)
_MAX_LISTED = 1000
_MAX_DEPTH = 4

page_router = APIRouter(include_in_schema=False)  # open: a static page, it holds no data
router = APIRouter(tags=["assets"])  # behind the API's access control


@page_router.get("/")
async def page() -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@page_router.get("/static/{name}")
async def asset(name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        return problem_json(problem_body("not_found", instance=f"/static/{name}"))
    return FileResponse(STATIC / name, media_type=media_type, headers={"Cache-Control": "no-cache"})


def list_media(root: Path) -> tuple[list[str], bool]:
    """Video files under ``root`` (by suffix; symlinks not followed), sorted, at most ``_MAX_LISTED``."""
    found: list[str] = []
    for directory, subdirs, files in os.walk(root):
        depth = len(Path(directory).relative_to(root).parts)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if depth < _MAX_DEPTH else []
        for name in sorted(files):
            path = Path(directory) / name
            if path.suffix.lower() in _VIDEO_SUFFIXES and not path.is_symlink():
                found.append(path.relative_to(root).as_posix())
                if len(found) > _MAX_LISTED:
                    return found[:_MAX_LISTED], True
    return found, False


@router.get("/v1/media", summary="Video files under the media root, for a picker")
async def get_media(request: Request) -> dict[str, Any]:
    """Paths to pass as `url`, by file suffix, at most 1000 (`truncated` says when there are more);
    empty where no media root is configured."""
    settings: Settings = request.app.state.settings
    if settings.media_root is None:
        return {"files": [], "truncated": False}
    files, truncated = await run_in_threadpool(list_media, Path(settings.media_root).resolve())
    return {"files": files, "truncated": truncated}
