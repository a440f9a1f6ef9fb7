"""A deadline on request bodies: a client that stops sending its body holds no connection for ever.

uvicorn has a deadline on request headers (`relay.serve`) but none on bodies, so a client that sends
`Content-Length: 1000000` and then a byte a minute (or nothing) would keep its connection, and the request
handler waiting on it, as long as it likes. `BodyTimeout` (ASGI middleware) gives each receive of the body
`timeout_s`: a body that sends nothing for that long raises `BodyTimedOut` in the handler reading it,
which the app answers `408 body_timeout` (and uvicorn then closes the connection, the body being
incomplete). The deadline is between chunks, not on the whole body: a large upload that keeps arriving is
never cut. Once the body is complete, receive is passed through untouched (a streaming response waits on it
for the client's disconnect, for as long as the response lasts).
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTimedOut(Exception):
    """No byte of the request body arrived within the deadline."""


class BodyTimeout:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise BodyTimedOut(f"no byte of the request body arrived for {self.timeout_s:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)
