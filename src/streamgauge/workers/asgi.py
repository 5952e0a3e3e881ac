"""An ASGI wrapper naming the process in every response and WebSocket handshake
(``X-Streamgauge-Worker``).

``0`` is the writer process, ``1..N-1`` the fan-out workers. A worker also answers each
connection's first request only (``Connection: close``): it chose to serve the connection by
that request, and a next request on it (a write, say) belongs to the writer."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-streamgauge-worker"


class Tagged:
    def __init__(self, app: ASGIApp, worker: int, *, close: bool) -> None:
        self.app = app
        self.state: Any = getattr(app, "state", None)  # the server finds the engine here
        self._value = str(worker).encode()
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the push feed: named in the handshake's reply

            async def accept(message: Message) -> None:
                if message["type"] == "websocket.accept":
                    headers = [*message.get("headers", ()), (HEADER, self._value)]
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, accept)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (HEADER, self._value)]
                if self._close:
                    headers = [(k, v) for k, v in headers if k.lower() != b"connection"]
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagged)
