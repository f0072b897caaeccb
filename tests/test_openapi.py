"""The checked-in OpenAPI document is the one the app serves."""

from __future__ import annotations

import json
from pathlib import Path

from app.main import create_app

DOCUMENT = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def test_checked_in_openapi_is_current() -> None:
    current = create_app().openapi()
    checked_in = json.loads(DOCUMENT.read_text())
    assert checked_in == json.loads(json.dumps(current)), (
        "openapi/openapi.json is stale: run `make openapi` and commit the result"
    )


def test_every_problem_code_is_documented() -> None:
    from app.engine.errors import ERROR_CODES

    text = DOCUMENT.read_text()
    for code in ERROR_CODES:
        assert code in text, code
