"""What each request leaves behind for operators: an ``X-Request-ID`` (the caller's when it is a
sane one, else a new one) on the response, one JSON log line (request id, client, caller, route,
status, problem code, duration, Server-Timing stages) and the request metrics (app.metrics).

A pure ASGI middleware: nothing is buffered, and a problem's ``code`` is read from the body of
``application/problem+json`` responses only (one small JSON document, whoever raised it)."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import REQUEST_SECONDS, REQUESTS
from app.tracing import SPAN_STATE_KEY

access_log = logging.getLogger("stillframe.access")

# A request id we pass on (into logs, back to the client): bounded, and nothing a log line or a header
# could be split or spoofed with.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED = "(unmatched)"  # the route label of a request no route took: paths are unbounded, templates not


# Fresh ids: a random prefix per process and a counter (unique without a system call per request).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def request_id_from(value: bytes | None) -> str:
    """The caller's ``X-Request-ID`` when it is a safe token, else a fresh one (32 hex digits)."""
    if value:
        text = value.decode("latin-1")
        if _REQUEST_ID.fullmatch(text):
            return text
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def _stages(server_timing: str | None) -> dict[str, float] | None:
    """``Server-Timing`` (``open;dur=1.20, decode;dur=3.40``) as ``{"open": 1.2, ...}`` (ms)."""
    if not server_timing:
        return None
    stages: dict[str, float] = {}
    for part in server_timing.split(","):
        name, _, duration = part.strip().partition(";dur=")
        try:
            stages[name] = float(duration)
        except ValueError:
            continue
    return stages


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, *, server_timing: bool = True) -> None:
        self.app = app
        # Server-Timing is logged always, and sent on only when the operator asks (STILLFRAME_SERVER_TIMING):
        # its stages tell a caller what others fetched
        self.server_timing = server_timing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(_header(scope, b"x-request-id"))
        state: dict[str, Any] = scope.setdefault("state", {})  # (routes' request.state: the caller lands here)
        state["request_id"] = request_id
        seen: dict[str, Any] = {"status": 500, "code": None, "timing": None, "problem": False, "first_byte": None}

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["first_byte"] = time.perf_counter()
                headers = list(message.get("headers", []))
                for name, value in headers:
                    if name == b"content-type":
                        seen["problem"] = value.startswith(b"application/problem+json")
                    elif name == b"server-timing":
                        seen["timing"] = value.decode("latin-1")
                if not self.server_timing:
                    headers = [(name, value) for name, value in headers if name != b"server-timing"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
                if (span := state.get(SPAN_STATE_KEY)) is not None:  # tracing is on (app.tracing)
                    route = _route(scope)
                    span.update_name(f"{scope['method']} {route}")
                    span.set_attributes({"http.route": route, "stillframe.request_id": request_id})
            elif message["type"] == "http.response.body" and seen["problem"] and seen["code"] is None:
                seen["code"] = _problem_code(message.get("body", b""))
                if seen["code"] and (span := state.get(SPAN_STATE_KEY)) is not None:
                    span.set_attribute("stillframe.problem_code", seen["code"])
            await send(message)  # (the span ends with the last of the body: annotated before it)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self._record(scope, request_id, started, seen)

    @staticmethod
    def _record(scope: Scope, request_id: str, started: float, seen: dict[str, Any]) -> None:
        ended = time.perf_counter()
        template = _route(scope)
        status, code = seen["status"], seen["code"] or ""
        method = scope["method"] if scope["method"] in _METHODS else "other"  # (any token is a method)
        _requests(template, method, status, code).inc()
        state = scope.get("state", {})
        _request_seconds(template).observe((seen["first_byte"] or ended) - started)
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "client": client[0] if client else None,
                    "caller": state.get("owner"),
                    "method": scope["method"],
                    "route": template,
                    "path": scope.get("path"),
                    "status": status,
                    "code": code or None,
                    "duration_ms": round((ended - started) * 1000, 2),
                    "timings_ms": _stages(seen["timing"]),
                },
            )


@functools.lru_cache(maxsize=4096)  # (labels() validates and locks each call; the label sets are few)
def _requests(route: str, method: str, status: int, code: str) -> Any:
    return REQUESTS.labels(route, method, str(status), code)


@functools.lru_cache(maxsize=1024)
def _request_seconds(route: str) -> Any:
    return REQUEST_SECONDS.labels(route)


def _route(scope: Scope) -> str:
    """The route template that took the request (a label of bounded cardinality, unlike the path)."""
    template = getattr(scope.get("route"), "path", None)
    if template is None:  # a mount (the docs' static files) names its prefix, anything else is unmatched
        template = f"{scope['root_path']}/{{path}}" if scope.get("root_path") else _UNMATCHED
    return str(template)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def _problem_code(body: bytes) -> str | None:
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None
