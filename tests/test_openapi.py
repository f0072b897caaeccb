"""The checked-in OpenAPI document is the one the app serves."""

from __future__ import annotations

import json
import re
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
    from app.errors import PROBLEM_CODES

    text = DOCUMENT.read_text()
    for code in PROBLEM_CODES:
        assert code in text, code
    problem = json.loads(text)["components"]["schemas"]["Problem"]
    assert problem["properties"]["code"]["enum"] == list(PROBLEM_CODES)


def test_each_documented_problem_is_a_code_of_its_status() -> None:
    """Every problem response of every route names codes of the table, under the status the table gives."""
    from app.errors import PROBLEM_CODES

    seen = set()
    for path, operations in create_app().openapi()["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if "application/problem+json" not in response.get("content", {}):
                    continue
                codes = re.findall(r"`([a-z_]+)`", response["description"])
                assert codes, (path, method, status)
                for code in codes:
                    assert PROBLEM_CODES[code].status == int(status), (path, method, status, code)
                seen.update(codes)
    assert {"invalid_parameter", "unauthorized", "job_not_found", "decode_timeout"} <= seen


def test_get_frame_documents_every_query_parameter_it_reads() -> None:
    """``GET /v1/frame`` binds its query itself (app.api.frames.frame_query): its document must still
    name every field of FrameParams, each in the query, required exactly when the model requires it."""
    from app.schemas import FrameParams

    parameters = create_app().openapi()["paths"]["/v1/frame"]["get"]["parameters"]
    query = {p["name"]: p for p in parameters if p["in"] == "query"}
    assert set(query) == set(FrameParams.model_fields)
    for name, field in FrameParams.model_fields.items():
        assert query[name]["required"] is field.is_required(), name


def test_get_frame_documents_the_security_it_checks() -> None:
    """``GET /v1/frame`` checks its caller itself (app.api.auth.authenticate): its document must name the
    schemes the routes that depend on ``caller_identity`` name, and the same refusals."""
    frame = create_app().openapi()["paths"]["/v1/frame"]
    assert frame["get"]["security"] == frame["post"]["security"] != []
    assert {"401", "403", "429"} <= set(frame["get"]["responses"])
