"""``Client``: the blocking face of ``AsyncClient``.

It runs one ``AsyncClient`` on an event loop in a daemon thread of its own (an anyio blocking
portal), so it works anywhere, a Jupyter notebook's running loop included. Iterators cross the
thread a chunk at a time (a page, a network read), not an observation at a time.
"""

from __future__ import annotations

import os
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from concurrent.futures import CancelledError
from contextlib import AbstractContextManager
from datetime import datetime
from functools import partial
from typing import IO, Any, Concatenate, ParamSpec, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from streamgauge.client._async import (
    HISTORY_PAGE,
    AsyncClient,
    Names,
    StreamReader,
    TimeArg,
    to_frame,
)
from streamgauge.client._models import IngestResult, Observation
from streamgauge.client._params import history_params

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
CHUNK = 1000


class LoopThread:
    """An event loop in a daemon thread; ``call`` runs a coroutine function there and waits."""

    def __init__(self) -> None:
        self._cm: AbstractContextManager[BlockingPortal] = start_blocking_portal("asyncio")
        self.portal = self._cm.__enter__()
        self.closed = False

    def call(self, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        future = self.portal.start_task_soon(fn, *args)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt while waiting: stop the task too
            raise

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cm.__exit__(None, None, None)


async def _next(it: AsyncIterator[T]) -> T | None:
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return None


async def _take(it: AsyncIterator[T], n: int) -> list[T]:
    out: list[T] = []
    async for item in it:
        out.append(item)
        if len(out) >= n:
            break
    return out


def iterate(loop: LoopThread, chunks: AsyncIterator[list[T]]) -> Iterator[T]:
    """The items of an async iterator of chunks, fetched a chunk at a time."""
    try:
        while (chunk := loop.call(_next, chunks)) is not None:
            yield from chunk
    finally:
        _close(loop, chunks)


def _close(loop: LoopThread, it: AsyncIterator[Any]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None and not loop.closed:
        try:
            loop.call(aclose)
        except (RuntimeError, CancelledError):  # still running (cancelled) or already closed
            pass


def _items(loop: LoopThread, it: AsyncIterator[T]) -> Iterator[T]:
    """The items of a plain async iterator, ``CHUNK`` per trip to the loop."""
    try:
        while chunk := loop.call(_take, it, CHUNK):
            yield from chunk
            if len(chunk) < CHUNK:
                return
    finally:
        _close(loop, it)


def _call(
    method: Callable[Concatenate[AsyncClient, P], Awaitable[R]],
) -> Callable[Concatenate[Client, P], R]:
    """A blocking method running ``method`` of the wrapped ``AsyncClient``."""

    def run(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._loop.call(partial(method, self._async, *args, **kwargs))

    run.__doc__ = method.__doc__
    run.__name__ = method.__name__
    return run


def _list(
    method: Callable[Concatenate[AsyncClient, P], AsyncIterator[R]],
) -> Callable[Concatenate[Client, P], Iterator[R]]:
    """A blocking iterator over what ``method`` of the wrapped ``AsyncClient`` yields."""

    def run(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        return _items(self._loop, method(self._async, *args, **kwargs))

    run.__doc__ = method.__doc__
    run.__name__ = method.__name__
    return run


class Client:
    """The blocking client: the same operations as ``AsyncClient`` (see there), returning
    values and plain iterators. Use it as a context manager, or call ``close``."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        key_id: str | None = None,
        secret: str | None = None,
        timeout: float = 60.0,
        retries: int = 8,
        batch_size: int | None = None,
        columnar: bool | None = None,
        in_flight: int = 2,
    ) -> None:
        self._loop = LoopThread()
        self._async = AsyncClient(
            url,
            token=token,
            key_id=key_id,
            secret=secret,
            timeout=timeout,
            retries=retries,
            batch_size=batch_size,
            columnar=columnar,
            in_flight=in_flight,
        )
        self.url = self._async.url

    def close(self) -> None:
        if not self._loop.closed:
            self._loop.call(self._async.aclose)
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def aio(self) -> AsyncClient:
        """The wrapped ``AsyncClient`` (it runs on this client's own loop thread)."""
        return self._async

    # -- observations --------------------------------------------------------------------------

    def ingest(
        self,
        project: str,
        rows: Iterable[Mapping[str, Any]] | Any,
        *,
        batch_size: int | None = None,
    ) -> IngestResult:
        return self._loop.call(partial(self._async.ingest, project, rows, batch_size=batch_size))

    ingest.__doc__ = AsyncClient.ingest.__doc__
    ingest_file = _call(AsyncClient.ingest_file)
    ingest_bodies = _call(AsyncClient.ingest_bodies)

    def history(
        self,
        project: str,
        *,
        device: Names = None,
        variable: Names = None,
        start: TimeArg = None,
        end: TimeArg = None,
        qc: Names = None,
        page_size: int = HISTORY_PAGE,
        **filters: Any,
    ) -> Iterator[Observation]:
        params = history_params(
            device=device, variable=variable, start=start, end=end, qc=qc, filters=filters
        )
        return iterate(self._loop, self._async._history_chunks(project, params, page_size))

    history.__doc__ = AsyncClient.history.__doc__

    def history_frame(self, project: str, **kw: Any) -> Any:
        return to_frame(list(self.history(project, **kw)))

    history_frame.__doc__ = AsyncClient.history_frame.__doc__

    def stream(
        self,
        project: str,
        since: int | str | datetime | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        device: Names = None,
        variable: Names = None,
        qc: Names = None,
        idle_timeout: float = 90.0,
        **filters: Any,
    ) -> Generator[Observation, None, None]:
        params = history_params(
            device=device, variable=variable, start=None, end=None, qc=qc, filters=filters
        )
        reader = StreamReader(self._async, project, params, since, checkpoint, idle_timeout)
        return self._stream(reader)

    stream.__doc__ = AsyncClient.stream.__doc__

    def _stream(self, reader: StreamReader) -> Generator[Observation, None, None]:
        chunks = reader.chunks()
        loop = self._loop
        try:
            while (chunk := loop.call(_next, chunks)) is not None:
                for o in chunk:
                    reader.yielded(o.cursor)
                    yield o
        finally:
            reader.close()
            _close(loop, chunks)

    def export(self, project: str, out: IO[bytes], *, format: str = "csv", **kw: Any) -> int:
        return self._loop.call(partial(self._async.export, project, out, format=format, **kw))

    export.__doc__ = AsyncClient.export.__doc__
    health = _call(AsyncClient.health)
    stations_geojson = _call(AsyncClient.stations_geojson)
    plot = _call(AsyncClient.plot)
    request = _call(AsyncClient.request)

    # -- metadata, accounts, channels, feed tokens --------------------------------------------

    create_project = _call(AsyncClient.create_project)
    projects = _list(AsyncClient.projects)
    get_project = _call(AsyncClient.get_project)
    update_project = _call(AsyncClient.update_project)
    delete_project = _call(AsyncClient.delete_project)

    create_site = _call(AsyncClient.create_site)
    sites = _list(AsyncClient.sites)
    get_site = _call(AsyncClient.get_site)
    update_site = _call(AsyncClient.update_site)
    delete_site = _call(AsyncClient.delete_site)

    create_device = _call(AsyncClient.create_device)
    devices = _list(AsyncClient.devices)
    get_device = _call(AsyncClient.get_device)
    update_device = _call(AsyncClient.update_device)
    delete_device = _call(AsyncClient.delete_device)

    create_variable = _call(AsyncClient.create_variable)
    variables = _list(AsyncClient.variables)
    get_variable = _call(AsyncClient.get_variable)
    update_variable = _call(AsyncClient.update_variable)
    delete_variable = _call(AsyncClient.delete_variable)

    create_account = _call(AsyncClient.create_account)
    accounts = _list(AsyncClient.accounts)
    get_account = _call(AsyncClient.get_account)
    update_account = _call(AsyncClient.update_account)
    delete_account = _call(AsyncClient.delete_account)
    create_key = _call(AsyncClient.create_key)
    keys = _call(AsyncClient.keys)
    delete_key = _call(AsyncClient.delete_key)
    roles = _call(AsyncClient.roles)
    grant_role = _call(AsyncClient.grant_role)
    revoke_role = _call(AsyncClient.revoke_role)

    create_channel = _call(AsyncClient.create_channel)
    channels = _call(AsyncClient.channels)
    get_channel = _call(AsyncClient.get_channel)
    update_channel = _call(AsyncClient.update_channel)
    delete_channel = _call(AsyncClient.delete_channel)
    alerts = _list(AsyncClient.alerts)
    alert_plot = _call(AsyncClient.alert_plot)

    create_feed_token = _call(AsyncClient.create_feed_token)
    feed_tokens = _list(AsyncClient.feed_tokens)
    revoke_feed_token = _call(AsyncClient.revoke_feed_token)
