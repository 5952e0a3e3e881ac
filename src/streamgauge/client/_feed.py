"""The push-feed client (``/feed/{token}/``, the Synoptic-compatible WebSocket feed).

``AsyncFeedClient.messages(**arguments)`` yields the feed's data messages and resumes like
``stream()``: after a dropped connection, a server restart (1012), a slow-consumer close (4000)
or an error close (1011) it reconnects (backoff capped at 3 s) to the same session with the
``cursor`` of the last message it yielded, so nothing is lost or repeated. A checkpoint file
keeps the session and that cursor, so a stopped program continues where it left off.
A failed ``auth`` (bad token, bad argument, unknown session) or a revoked token (1008) raises
``FeedError``; a normal close (1000: a period was sent, a ``stop``, or another connection took
the session) ends the iteration.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from streamgauge.client._backoff import backoff
from streamgauge.client._checkpoint import Checkpoint
from streamgauge.client._errors import FeedError
from streamgauge.client._models import FeedMessage
from streamgauge.client._params import base_url
from streamgauge.client._sync import LoopThread, _close, _next

PERIOD_ARGS = frozenset({"start", "end", "rewind", "recent"})
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008


def ws_url(url: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    return url


def _arg(value: Any) -> str:
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(v) for v in value)
    return str(value)


class FeedReader:
    """One resumable feed session (see the module docstring)."""

    def __init__(
        self,
        url: str,
        token: str,
        arguments: dict[str, Any],
        session: str | None,
        cursor: int | None,
        checkpoint: str | os.PathLike[str] | None,
        ping_interval: float | None,
    ) -> None:
        self._http = base_url(url)
        self._ws = ws_url(self._http)
        self._token = token
        self._args = {k: _arg(v) for k, v in arguments.items() if v is not None}
        self.checkpoint = Checkpoint(checkpoint) if checkpoint is not None else None
        if session is None and self.checkpoint is not None:
            state = self.checkpoint.load()
            session = state.get("session")
            cursor = state.get("cursor") if cursor is None else cursor
        self.session: str | None = session
        self.cursor: int | None = cursor
        self.stations: dict[str, dict[str, Any]] = {}
        self.units: dict[str, str] = {}
        self.reconnects = 0
        self._ping = ping_interval

    def yielded(self, cursor: int) -> None:
        self.cursor = cursor
        if self.checkpoint is not None and self.session is not None:
            self.checkpoint.update(cursor=cursor, session=self.session)

    def close(self) -> None:
        if self.checkpoint is not None and self.session is not None and self.cursor is not None:
            self.checkpoint.state.update(cursor=self.cursor, session=self.session)
            self.checkpoint.save()

    def _url(self) -> str:
        tok = quote(self._token, safe="")
        if self.session is None:
            return f"{self._ws}/feed/{tok}/?{urlencode(self._args)}"
        resume = f"?cursor={self.cursor}" if self.cursor is not None else ""
        return f"{self._ws}/feed/{tok}/{quote(self.session, safe='')}{resume}"

    async def _head(self) -> int | None:
        """The log head, the start of a live session (a period session has its own start)."""
        if PERIOD_ARGS & self._args.keys():
            return None
        async with httpx.AsyncClient(base_url=self._http, trust_env=False) as http:
            r = await http.get("/healthz")
            r.raise_for_status()
            head: int = r.json()["head"]
            return head

    async def chunks(self) -> AsyncGenerator[list[FeedMessage], None]:
        delays = backoff()
        while True:
            try:
                if self.session is None and self.cursor is None:
                    self.cursor = await self._head()
                async with connect(self._url(), ping_interval=self._ping, max_size=None) as ws:
                    await self._auth(ws)
                    delays = backoff()
                    async for raw in ws:
                        msg = orjson.loads(raw)
                        kind = msg.get("type")
                        if kind == "data":
                            yield [
                                FeedMessage(
                                    int(msg["cursor"]),
                                    msg["data"],
                                    self.session or "",
                                    self.stations,
                                    self.units,
                                )
                            ]
                        elif kind == "metadata":
                            for st in msg.get("stations") or ():
                                self.stations[str(st.get("stid"))] = st
                            for u in msg.get("units") or ():
                                self.units[str(u.get("sensor"))] = str(u.get("unit"))
                    return  # a normal close (1000): the session is done here
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                if code == CLOSE_NORMAL:
                    return
                if code == CLOSE_POLICY:
                    reason = exc.rcvd.reason if exc.rcvd is not None else ""
                    raise FeedError([reason or "the feed closed the session"], code) from exc
            except InvalidStatus as exc:
                if exc.response.status_code < 500:
                    raise FeedError([f"HTTP {exc.response.status_code}"]) from exc
            except (OSError, InvalidHandshake, httpx.TransportError, TimeoutError):
                pass
            self.reconnects += 1
            await asyncio.sleep(next(delays))

    async def _auth(self, ws: ClientConnection) -> None:
        first = orjson.loads(await ws.recv())
        if first.get("type") != "auth" or first.get("code") != "success":
            raise FeedError([str(m) for m in first.get("messages") or ["auth failed"]])
        self.session = str(first.get("session"))
        if self.checkpoint is not None and self.cursor is not None:
            self.checkpoint.update(cursor=self.cursor, session=self.session)


class AsyncFeedClient:
    """A client of the push feed with a feed token (``create_feed_token``)."""

    def __init__(self, url: str | None, token: str, *, ping_interval: float | None = 20.0) -> None:
        self.url = base_url(url)
        self.token = token
        self.ping_interval = ping_interval

    async def messages(
        self,
        *,
        session: str | None = None,
        cursor: int | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        **arguments: Any,
    ) -> AsyncIterator[FeedMessage]:
        """The data messages of a feed session with these arguments (``state``, ``vars``,
        ``units``, ``filter_on``, ``rewind``... as the feed takes them; lists are joined with
        commas); ``session`` (and ``cursor``) resume one, as does a ``checkpoint`` file."""
        reader = FeedReader(
            self.url, self.token, arguments, session, cursor, checkpoint, self.ping_interval
        )
        chunks = reader.chunks()
        try:
            async for chunk in chunks:
                for m in chunk:
                    reader.yielded(m.cursor)
                    yield m
        finally:
            reader.close()
            await chunks.aclose()


class FeedClient:
    """The blocking push-feed client (an ``AsyncFeedClient`` on a loop thread of its own)."""

    def __init__(self, url: str | None, token: str, *, ping_interval: float | None = 20.0) -> None:
        self._async = AsyncFeedClient(url, token, ping_interval=ping_interval)
        self._loop = LoopThread()

    def close(self) -> None:
        self._loop.close()

    def __enter__(self) -> FeedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def messages(
        self,
        *,
        session: str | None = None,
        cursor: int | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        **arguments: Any,
    ) -> Iterator[FeedMessage]:
        a = self._async
        reader = FeedReader(a.url, a.token, arguments, session, cursor, checkpoint, a.ping_interval)
        chunks = reader.chunks()
        loop = self._loop
        try:
            while (chunk := loop.call(_next, chunks)) is not None:
                for m in chunk:
                    reader.yielded(m.cursor)
                    yield m
        finally:
            reader.close()
            _close(loop, chunks)

    messages.__doc__ = AsyncFeedClient.messages.__doc__
