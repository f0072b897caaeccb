"""Shared fixtures: an app with test settings, and the real-media corpus."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import settings

from app.config import Settings
from app.main import create_app

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "media"


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """``make_client(media_root=..., **settings)``: a TestClient over an app with those settings."""
    clients: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        overrides.setdefault("workers", 1)  # one decoder process is plenty for a test, and starts fast
        client = TestClient(create_app(Settings(**overrides)), raise_server_exceptions=False)
        client.__enter__()  # runs the lifespan: the decoder pool starts
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"shared media corpus not found at {CORPUS}: real-media tests skipped")
    return CORPUS


# CI explores the same examples every run (a red build must mean a change broke something);
# locally, hypothesis keeps exploring new ones.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
