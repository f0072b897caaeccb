"""RFC 9457 problem details: every error the API returns, with a stable ``code`` from
:data:`app.errors.PROBLEM_CODES`, documented from that same table."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import PROBLEM_CODES, ProblemError, problem_body

log = logging.getLogger("stillframe.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(description="A URI reference naming the problem type: `/problems/{code}`.")
    title: str
    status: int
    detail: str | None = None
    code: str = Field(
        description="Stable machine-readable error code (with its usual status): "
        + ", ".join(f"`{code}` ({kind.status})" for code, kind in PROBLEM_CODES.items())
        + ".",
        json_schema_extra={"enum": list(PROBLEM_CODES)},
    )
    instance: str | None = None
    parameter: str | None = Field(default=None, description="The offending parameter, for `invalid_parameter`.")


def problem_responses(*codes: str, notes: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problems a route may answer with: one per status, naming
    the codes (each looked up in the table, so an unknown one fails at import) and a note if any."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(PROBLEM_CODES[code].status, []).append(f"`{code}`")
    notes = notes or {}
    return {
        status: {
            "description": ", ".join(names) + (f" ({notes[status]})" if status in notes else ""),
            "model": Problem,
            "content": {PROBLEM_MEDIA_TYPE: {}},
        }
        for status, names in sorted(by_status.items())
    }


def problem_json(body: dict[str, Any], headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A problem document (see :func:`app.errors.problem_body`) as the response."""
    return JSONResponse(body, status_code=body["status"], media_type=PROBLEM_MEDIA_TYPE, headers=headers)


# Seconds a client should wait before trying again: the pool drains fast; a draining server is replaced soon.
_RETRY_AFTER = {"queue_full": "1", "overloaded": "1", "shutting_down": "5"}
# The problem code of an HTTP error raised by routing (any other status: ``http_error``).
_HTTP_ERROR_CODES = {
    PROBLEM_CODES[code].status: code
    for code in ("not_found", "method_not_allowed", "not_acceptable", "request_too_large")
}


async def problem_handler(request: Request, exc: Exception) -> JSONResponse:
    """The exception handler for :class:`app.errors.ProblemError` and its kinds."""
    assert isinstance(exc, ProblemError)
    headers = dict(exc.headers)
    if retry_after := _RETRY_AFTER.get(exc.code):
        headers["Retry-After"] = retry_after
    return problem_json(exc.problem(request.url.path), headers or None)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, problem_handler)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        location = [str(part) for part in first.get("loc", ()) if part not in {"query", "body", "path", "header"}]
        parameter = ".".join(location) or None
        message = first.get("msg", "invalid request")
        detail = f"{parameter}: {message}" if parameter else message
        return problem_json(problem_body("invalid_parameter", detail, instance=request.url.path, parameter=parameter))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_ERROR_CODES.get(exc.status_code, "http_error")
        title = str(exc.detail) if isinstance(exc.detail, str) else "HTTP error"
        body = problem_body(code, status=exc.status_code, title=title, instance=request.url.path)
        return problem_json(body, dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never leak internals: the log gets the traceback, the client a stable code.
        log.exception("unhandled error on %s", request.url.path)
        return problem_json(problem_body("internal_error", instance=request.url.path))
