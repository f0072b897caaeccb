"""RFC 9457 problem details: every error the API returns, with a stable ``code``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.engine.errors import ERROR_CODES, EngineError

log = logging.getLogger("stillframe.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(description="A URI reference naming the problem type: `/problems/{code}`.")
    title: str
    status: int
    detail: str | None = None
    code: str = Field(
        description="Stable machine-readable error code: "
        + ", ".join(f"`{code}` ({status})" for code, (status, _) in ERROR_CODES.items())
        + "; also `unauthorized`, `signature_invalid`, `signature_expired`, `rate_limited`, `not_found`, "
        "`method_not_allowed`, `internal_error`."
    )
    instance: str | None = None
    parameter: str | None = Field(default=None, description="The offending parameter, for `invalid_parameter`.")


def problem_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for problem documents, one per status."""
    return {
        status: {"description": description, "model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}
        for status, description in descriptions.items()
    }


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = Problem(type=f"/problems/{code}", title=title, status=status, detail=detail, code=code, instance=instance)
    content = body.model_dump(exclude_none=True)
    content.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(content, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


_RETRY_AFTER = {"queue_full": "1"}  # seconds: the pool drains fast; clients back off and come back


def engine_problem(exc: EngineError, instance: str | None = None) -> JSONResponse:
    retry_after = _RETRY_AFTER.get(exc.code)
    return problem_response(
        exc.status,
        exc.code,
        exc.title,
        exc.detail,
        instance=instance,
        headers={"Retry-After": retry_after} if retry_after else None,
        parameter=exc.parameter,
    )


_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 406: "not_acceptable", 413: "request_too_large"}


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(EngineError)
    async def _engine(request: Request, exc: EngineError) -> JSONResponse:
        return engine_problem(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        location = [str(part) for part in first.get("loc", ()) if part not in {"query", "body"}]
        parameter = ".".join(location) or None
        message = first.get("msg", "invalid request")
        detail = f"{parameter}: {message}" if parameter else message
        return problem_response(
            400, "invalid_parameter", "Invalid parameter", detail, instance=request.url.path, parameter=parameter
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        title = str(exc.detail) if isinstance(exc.detail, str) else "HTTP error"
        headers = dict(exc.headers) if exc.headers else None
        return problem_response(exc.status_code, code, title, instance=request.url.path, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never leak internals: the log gets the traceback, the client a stable code.
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(500, "internal_error", "Internal error", instance=request.url.path)
