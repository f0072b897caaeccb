"""``HEAD`` wherever ``GET`` works: the request runs as a ``GET`` and its body is dropped, so the
headers (``ETag``, ``Content-Length``, the time headers, a problem's status) are exactly a GET's.
The route that took it is handed back to the HEAD's scope (app.api.observe labels metrics by it)."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = asyncio.Event()
        as_get: Scope = {**scope, "method": "GET"}

        async def head_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if "route" in as_get:
                    scope["route"] = as_get["route"]
                await send(message)
            elif message["type"] == "http.response.body" and not finished.is_set():
                finished.set()  # one empty body ends the response; what the app streams after is dropped
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def head_receive() -> Message:
            # A stream (Server-Sent Events) learns at once that nobody reads on, and stops.
            if finished.is_set():
                return {"type": "http.disconnect"}
            waiting = asyncio.ensure_future(receive())
            done = asyncio.ensure_future(finished.wait())
            await asyncio.wait({waiting, done}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                done.cancel()
                return waiting.result()
            waiting.cancel()
            return {"type": "http.disconnect"}

        try:
            await self.app(as_get, head_receive, head_send)
        finally:
            if "route" in as_get:
                scope["route"] = as_get["route"]
