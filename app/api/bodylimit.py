"""A cap on request bodies, enforced before anything reads them: a declared ``Content-Length`` over the
cap is refused unread, and a streamed body is cut off at the cap; both are ``413 request_too_large``, a
problem like every other error (Starlette's own limiter answers some of these in plain text)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem_json
from app.errors import PROBLEM_CODES, problem_body


class BodyTooLarge(HTTPException):
    """Raised from ``receive``: an HTTP error, so that FastAPI's body reading passes it on (it turns any
    other error there into a 400) to the problem handlers, which answer ``413 request_too_large``."""

    def __init__(self) -> None:
        super().__init__(413, PROBLEM_CODES["request_too_large"].title)


class BodyLimit:
    """ASGI middleware: at most ``limit`` bytes of body per HTTP request."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the body is left unread: the connection is closed rather than drained
        detail = f"the request body is over {self.limit} bytes"
        body = problem_body("request_too_large", detail, instance=scope.get("path"))
        response = problem_json(body, {"Connection": "close"})
        await response(scope, receive, send)
