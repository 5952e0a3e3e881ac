"""uvicorn with a prompt shutdown, and able to serve a connection accepted elsewhere."""

from __future__ import annotations

import asyncio
import socket
from types import FrameType

import uvicorn


class GracefulServer(uvicorn.Server):
    """uvicorn, but a shutdown signal at once stops accepting connections and ends every live
    stream (each gets its closing frame and resume cursor; one opened on a kept-alive connection
    from then on ends at once the same way), so the server never waits for endless responses
    and never cuts one mid-chunk: with nothing else in flight it is down in a fraction of a
    second. uvicorn itself notices the signal only at its next tick, then closes idle
    connections and waits for the rest.

    ``adopt`` serves a socket accepted by this process's own loop or handed over by another
    process (``workers/``) exactly as a connection uvicorn accepted: same protocol, same
    limits, counted for the graceful shutdown."""

    _loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: hand the work to the event loop (thread-safe, and wakes it up).
        if self._loop is not None and not self.should_exit:
            self._loop.call_soon_threadsafe(self._begin_shutdown)
        super().handle_exit(sig, frame)

    def _begin_shutdown(self) -> None:
        for server in getattr(self, "servers", ()):
            server.close()  # refuse new connections now: clients reconnect to the next server
        for app in (self.config.loaded_app, self.config.app):
            engine = getattr(getattr(app, "state", None), "engine", None)
            if engine is not None:
                engine.begin_shutdown()
                return

    def _protocol(self) -> asyncio.Protocol:
        config = self.config
        protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        return protocol

    async def adopt(self, conn: socket.socket) -> None:
        """Serve ``conn`` (connected, nothing read from it yet) as an accepted connection."""
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self._protocol, conn)
        except OSError:
            conn.close()
