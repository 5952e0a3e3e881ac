"""``AsyncClient``: the native API (``/api/v1``) over httpx, with paging, retries and resume.

The sync ``Client`` (``_sync.py``) runs this same code on an event loop of its own.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx
import orjson

from streamgauge.client import _encode
from streamgauge.client._backoff import backoff
from streamgauge.client._checkpoint import Checkpoint
from streamgauge.client._errors import APIError, TransportError, from_response
from streamgauge.client._models import IngestResult, Observation
from streamgauge.client._params import base_url, env_token, history_params, query, time_param
from streamgauge.wire.framing import LineDecoder

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
DEFAULT_BATCH = _encode.JSON_BATCH
DEFAULT_IN_FLIGHT = 2
HISTORY_PAGE = 10_000
TimeArg = datetime | str | int | None
Names = str | Iterable[str] | None


def _p(*parts: str) -> str:
    """A path under ``/api/v1/projects/`` with each part percent-encoded."""
    return "/api/v1/projects/" + "/".join(quote(p, safe="") for p in parts)


def _doc_body(doc: Any, fields: Mapping[str, Any]) -> Any:
    if doc is not None and fields:
        raise TypeError("give either a document (or a list of them) or keyword fields, not both")
    return doc if doc is not None else dict(fields)


class StreamReader:
    """One resumable stream: reads chunks of observations from ``/stream``, reconnecting after
    the last cursor handed out (``position``) whenever the connection drops, the server closes
    it (its closing frame) or restarts. ``yielded`` is called for each observation handed to
    the caller; the checkpoint (if any) follows it."""

    def __init__(
        self,
        client: AsyncClient,
        project: str,
        params: dict[str, Any],
        since: int | str | datetime | None,
        checkpoint: str | os.PathLike[str] | None,
        idle_timeout: float,
    ) -> None:
        self._client = client
        self.project = project
        self._path = _p(project, "stream")
        self._params = params
        self._idle = idle_timeout
        self.checkpoint = Checkpoint(checkpoint) if checkpoint is not None else None
        if since is None and self.checkpoint is not None:
            since = self.checkpoint.load().get("cursor")
        self.since_time: str | None = None
        if isinstance(since, datetime | str) and not (isinstance(since, str) and since.isdigit()):
            self.since_time = time_param(since)
            since = None
        elif isinstance(since, str):
            since = int(since)
        self.position: int | None = since
        self.reconnects = 0
        self.units: dict[str, str] = {}
        self.replaying = False

    def yielded(self, cursor: int) -> None:
        if self.replaying:
            return  # stored rows in time order: the position is the head the replay ends at
        self.position = cursor
        if self.checkpoint is not None:
            self.checkpoint.update(cursor=cursor)

    def close(self) -> None:
        if self.checkpoint is not None and self.position is not None:
            self.checkpoint.state["cursor"] = self.position
            self.checkpoint.save()

    async def chunks(self) -> AsyncGenerator[list[Observation], None]:
        """Observations a network read at a time, forever (until the caller stops)."""
        client = self._client
        if self.position is None:  # live from now, but resumable from the first connection
            head = int((await client.health())["head"])
            if self.since_time is not None:  # stored rows from that time up to the head first
                self.replaying = True
                replay = {**self._params, "start": self.since_time}
                chunks = client._history_chunks(self.project, replay, HISTORY_PAGE)
                async for chunk in chunks:
                    kept = [o for o in chunk if o.cursor <= head]
                    if kept:
                        yield kept
                self.replaying = False
            self.position = head
        delays = backoff()
        server_resume = 0
        timeout = httpx.Timeout(30.0, read=self._idle)
        while True:
            since = max(self.position, server_resume)
            params = query({**self._params, "since": since})
            try:
                async with client.http.stream(
                    "GET", self._path, params=params, timeout=timeout
                ) as r:
                    if r.status_code >= 400:
                        body = await r.aread()
                        if r.status_code not in RETRY_STATUSES:
                            raise from_response(r.status_code, body)
                    else:
                        delays = backoff()  # connected: the next failure starts over
                        decoder = LineDecoder()
                        from_row = Observation.from_row
                        loads = orjson.loads
                        async for data in r.aiter_raw():
                            out: list[Observation] = []
                            for line in decoder.feed(data):
                                obj = loads(line)
                                if "cursor" in obj:
                                    out.append(from_row(obj))
                                elif "closed" in obj:
                                    server_resume = int(obj["closed"].get("resume") or 0)
                                elif "units" in obj:
                                    self.units = obj["units"]
                            if out:
                                yield out
            except (httpx.TransportError, httpx.DecodingError):
                pass  # dropped, refused, timed out: reconnect
            self.reconnects += 1
            await asyncio.sleep(next(delays))


def _refuses_media_type(exc: APIError) -> bool:
    """The server does not take this body's content type: 415, or (servers before columnar
    ingest) a 400 naming the ``content-type`` header."""
    if exc.status == 415:
        return True
    return exc.status == 400 and any(
        d.get("in") == "header" and str(d.get("field", "")).lower() == "content-type"
        for d in exc.details
    )


class AsyncClient:
    """A client of one streamgauge server's native API.

    ``url`` and ``token`` default to ``STREAMGAUGE_URL`` and ``STREAMGAUGE_TOKEN``; a service
    account's key is ``key_id=..., secret=...`` (HTTP Basic). Requests that are safe to repeat
    (reads, and ingest, which is idempotent) are retried on connection errors and on 429, 502,
    503 and 504, ``retries`` times with a capped backoff. Errors are ``APIError`` subclasses
    carrying the server's message and details (``_errors.py``). Ingest: ``batch_size`` rows per
    request (default 50,000 for columnar sources sent as Arrow IPC, 10,000 for JSON),
    ``in_flight`` requests outstanding (2), ``columnar=False`` to send JSON only (see
    ``ingest``). Use it as an async context manager, or call ``aclose``."""

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
        in_flight: int = DEFAULT_IN_FLIGHT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = base_url(url)
        headers = {"User-Agent": "streamgauge-client"}
        auth: tuple[str, str] | None = None
        if key_id is not None or secret is not None:
            if not (key_id and secret):
                raise ValueError("give both key_id and secret")
            auth = (key_id, secret)
        else:
            tok = env_token(token)
            if tok:
                headers["Authorization"] = f"Bearer {tok}"
        self.retries = retries
        self.batch_size = batch_size
        self.columnar = columnar
        """Whether Arrow IPC ingest bodies are sent (None: yes, until a server refuses them)."""
        self.in_flight = in_flight
        self.http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            auth=auth,
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests ------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
    ) -> httpx.Response:
        """One request; ``APIError`` for an error answer. Retried (see the class) when
        ``retry`` (default: for GET)."""
        if retry is None:
            retry = method == "GET"
        if json is not None:
            content = orjson.dumps(json)
            headers = {"Content-Type": "application/json", **(headers or {})}
        delays = backoff()
        attempt = 0
        pairs = query(params or {})
        while True:
            attempt += 1
            try:
                r = await self.http.request(
                    method, path, params=pairs, content=content, headers=headers
                )
            except httpx.TransportError as exc:
                if not retry or attempt > self.retries:
                    raise TransportError(f"{method} {path}: {exc!r}") from exc
            else:
                if r.status_code < 400:
                    return r
                if not (retry and r.status_code in RETRY_STATUSES and attempt <= self.retries):
                    raise from_response(r.status_code, r.content)
                after = r.headers.get("Retry-After", "")
                if after.isdigit():
                    await asyncio.sleep(min(float(after), 30.0))
                    continue
            await asyncio.sleep(next(delays))

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        r = await self.request(method, path, **kw)
        return r.json() if r.content else None

    async def _pages(
        self, path: str, key: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every page of a listing, following ``next`` tokens."""
        page: str | None = None
        while True:
            body = await self._json("GET", path, params={**(params or {}), "page": page})
            yield body[key]
            page = body.get("next")
            if not page:
                return

    async def _items(
        self, path: str, key: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self._pages(path, key, params):
            for item in chunk:
                yield item

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok", "head": CURSOR, "version"}``."""
        body: dict[str, Any] = await self._json("GET", "/healthz")
        return body

    # -- ingest --------------------------------------------------------------------------------

    async def ingest(
        self,
        project: str,
        rows: Iterable[Mapping[str, Any]] | Any,
        *,
        batch_size: int | None = None,
    ) -> IngestResult:
        """Store observations: any iterable of ``{device, variable, time, value[, set]}`` dicts
        (times as aware datetimes, RFC 3339 strings or epoch ms), or a pandas DataFrame or an
        Arrow Table, RecordBatch or RecordBatchReader with those columns (sent as Arrow IPC
        when pyarrow is installed, see ``_encode.py``). Sent in batches of ``batch_size`` (each
        all or nothing on the server), each retried safely (ingest is idempotent: a re-sent row
        counts as a duplicate). A rejected batch raises its ``APIError``, whose ``details``
        index rows of the whole input and whose ``extra["stored_rows"]`` says how many rows
        before it were stored."""
        if _encode.is_frame(rows):
            size = self._batch(batch_size, columnar=True)
            bodies: Iterator[_encode.Body] = _encode.frame_batches(rows, size)
        elif _encode.is_arrow(rows):
            bodies = _encode.table_batches(rows, self._batch(batch_size, columnar=True))
        else:
            bodies = _encode.row_batches(rows, self._batch(batch_size, columnar=False))
        return await self.ingest_bodies(project, bodies)

    def _batch(self, given: int | None, *, columnar: bool) -> int:
        """Rows per request: ``given``, else the client's ``batch_size``, else 50,000 for a
        columnar source sent as Arrow and 10,000 for JSON (a JSON batch is decoded a row at a
        time on the server, an Arrow batch by column, in a thread)."""
        arrow = columnar and self.columnar is not False and _encode.have_arrow()
        return given or self.batch_size or (_encode.ARROW_BATCH if arrow else DEFAULT_BATCH)

    def file_batch_size(self, path: str | os.PathLike[str]) -> int:
        """Rows per request ``ingest_file`` uses for ``path`` (see ``_batch``)."""
        kind = _encode.file_kind(Path(path))
        return self._batch(None, columnar=kind != "ndjson")

    async def ingest_file(
        self, project: str, path: str | os.PathLike[str], *, batch_size: int | None = None
    ) -> IngestResult:
        """Store a ``.csv`` (header ``device,variable,time,value[,set]``), ``.ndjson`` or
        ``.parquet`` file, read a batch at a time."""
        bodies = _encode.file_batches(Path(path), batch_size or self.file_batch_size(path))
        return await self.ingest_bodies(project, bodies)

    async def ingest_bodies(
        self,
        project: str,
        bodies: Iterator[_encode.Body],
        progress: Any = None,
    ) -> IngestResult:
        """Send encoded batches in order, encoding the next one (in a thread) while the server
        stores the ones sent, with up to ``in_flight`` requests outstanding; ``progress(rows)``
        is called as each batch is stored.

        The first batch goes alone; after it, with more than one in flight, the server may
        store a batch before the one sent ahead of it. When a batch is refused, the batches
        still in flight are awaited, and the error says which rows are stored:
        ``extra["stored_rows"]`` (every row before the refused batch) and
        ``extra["stored_after"]`` (rows of later batches stored all the same)."""
        result = IngestResult()
        path = _p(project, "observations")
        end = object()
        window = max(1, self.in_flight)
        pending: deque[tuple[_encode.Body, asyncio.Future[dict[str, Any]]]] = deque()
        offset = 0

        def take() -> Any:
            return next(bodies, end)

        async def settle() -> None:
            body, send = pending.popleft()
            try:
                reply = await send
            except Exception as exc:
                await self._after_failure(exc, pending)
                raise
            result.add(reply, body.rows)
            if progress is not None:
                progress(body.rows)

        try:
            body = await asyncio.to_thread(take)
            while body is not end:
                assert isinstance(body, _encode.Body)
                # One at a time until a batch is stored: the first answer tells whether the
                # server takes Arrow (and a refused first batch leaves nothing after it).
                while len(pending) >= (window if result.batches else 1):
                    await settle()
                pending.append((body, asyncio.ensure_future(self._send_batch(path, body, offset))))
                offset += body.rows
                body = await asyncio.to_thread(take)  # while the server stores what was sent
            while pending:
                await settle()
        except asyncio.CancelledError:
            for _, task in pending:
                task.cancel()
            raise
        except Exception:  # the source failed (a bad file row): what was sent is settled first
            while pending:
                await settle()
            raise
        return result

    @staticmethod
    async def _after_failure(
        exc: BaseException, pending: deque[tuple[_encode.Body, asyncio.Future[dict[str, Any]]]]
    ) -> None:
        """A batch failed: await the later ones in flight (the server may store them) and note
        in the error how many of their rows were stored."""
        after = 0
        while pending:
            body, send = pending.popleft()
            try:
                await send
            except Exception:
                continue
            after += body.rows
        if isinstance(exc, APIError):
            exc.extra["stored_after"] = after
            if after:
                exc.message += f"; {after} rows of the batches after it were stored too"
                exc.args = (exc._text(),)

    async def _post_body(self, path: str, body: _encode.Body) -> httpx.Response:
        headers = {"Content-Type": body.media_type}
        return await self.request("POST", path, content=body.data, headers=headers, retry=True)

    async def _send_batch(self, path: str, body: _encode.Body, offset: int) -> dict[str, Any]:
        if body.columnar and self.columnar is False:
            body = await asyncio.to_thread(body.as_json, offset)
        try:
            try:
                r = await self._post_body(path, body)
            except APIError as exc:
                if not (body.columnar and _refuses_media_type(exc)):
                    raise
                self.columnar = False  # a server without columnar ingest: JSON from now on
                body = await asyncio.to_thread(body.as_json, offset)
                r = await self._post_body(path, body)
        except APIError as exc:
            if offset:
                for d in exc.details:
                    if isinstance(d.get("index"), int):
                        d["index"] += offset
                exc.message += f" (in the batch from row {offset}; the rows before it are stored)"
                exc.args = (exc._text(),)
            exc.extra["stored_rows"] = offset
            raise
        reply: dict[str, Any] = r.json()
        return reply

    # -- reads ---------------------------------------------------------------------------------

    async def _history_chunks(
        self, project: str, params: dict[str, Any], page_size: int
    ) -> AsyncIterator[list[Observation]]:
        path = _p(project, "observations")
        page: str | None = None
        from_row = Observation.from_row
        while True:
            r = await self.request("GET", path, params={**params, "limit": page_size, "page": page})
            body = orjson.loads(r.content)
            yield [from_row(o) for o in body["observations"]]
            page = body.get("next")
            if not page:
                return

    async def history(
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
    ) -> AsyncIterator[Observation]:
        """Stored observations in time order, every page of them (``page_size`` rows per
        request). ``filters`` are the native selection parameters: ``units``, ``state``,
        ``network``, ``stid``, ``radius``, ``bbox``, ``vars``, ``label``, ``device_type``,
        ``filter`` (a filter expression) ..."""
        params = history_params(
            device=device, variable=variable, start=start, end=end, qc=qc, filters=filters
        )
        async for chunk in self._history_chunks(project, params, page_size):
            for o in chunk:
                yield o

    async def history_frame(self, project: str, **kw: Any) -> Any:
        """``history`` as a pandas DataFrame (columns cursor, device, variable, set, time,
        value, qc; ``time`` as UTC datetimes). Needs pandas (the ``pandas`` extra)."""
        rows = [o async for o in self.history(project, **kw)]
        return to_frame(rows)

    async def stream(
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
    ) -> AsyncGenerator[Observation, None]:
        """Live observations, forever, never lost or repeated across disconnects: after a
        dropped connection, a closing frame or a server restart it reconnects (backoff capped
        at 3 s) after the last cursor it yielded. ``since``: start after this cursor (else after
        the checkpoint's, else live from now); a time (an aware datetime or RFC 3339) first
        gives the stored observations from that time on, in time order, then goes on live
        from the log's head as it was then (nothing in between is lost or repeated).
        ``checkpoint``: a file where the last yielded cursor is saved (atomically, at most
        once a second, and when the iteration ends), so a new ``stream`` with the same
        checkpoint continues right after it. ``idle_timeout``: seconds without a byte
        (keepalives included) after which the connection is presumed
        dead and replaced."""
        params = history_params(
            device=device, variable=variable, start=None, end=None, qc=qc, filters=filters
        )
        reader = StreamReader(self, project, params, since, checkpoint, idle_timeout)
        chunks = reader.chunks()
        try:
            async for chunk in chunks:
                for o in chunk:
                    reader.yielded(o.cursor)
                    yield o
        finally:
            reader.close()
            await chunks.aclose()

    async def export(
        self,
        project: str,
        out: IO[bytes],
        *,
        format: str = "csv",
        device: Names = None,
        variable: Names = None,
        start: TimeArg = None,
        end: TimeArg = None,
        qc: Names = None,
        **filters: Any,
    ) -> int:
        """Write every matching observation to the binary file ``out`` in ``format`` (csv,
        ndjson or parquet), as the server streams it (constant memory); the bytes written."""
        params = history_params(
            device=device, variable=variable, start=start, end=end, qc=qc, filters=filters
        )
        params.update({"all": True, "format": format})
        return await self.download(_p(project, "observations"), out, params)

    async def download(self, path: str, out: IO[bytes], params: Mapping[str, Any]) -> int:
        """Stream a GET's body into ``out``; the bytes written."""
        written = 0
        try:
            async with self.http.stream("GET", path, params=query(params)) as r:
                if r.status_code >= 400:
                    raise from_response(r.status_code, await r.aread())
                async for data in r.aiter_bytes():
                    out.write(data)
                    written += len(data)
        except httpx.TransportError as exc:
            raise TransportError(f"GET {path}: {exc!r}") from exc
        return written

    async def stations_geojson(self, project: str) -> dict[str, Any]:
        """The project's stations as a GeoJSON FeatureCollection."""
        body: dict[str, Any] = await self._json("GET", _p(project, "sites.geojson"))
        return body

    async def plot(
        self,
        project: str,
        device: str,
        variable: str,
        *,
        start: TimeArg = None,
        end: TimeArg = None,
        units: str | None = None,
        qc: Names = None,
    ) -> bytes:
        """The series as PNG bytes (``plot.png``)."""
        params = history_params(
            device=None, variable=None, start=start, end=end, qc=qc, filters={"units": units}
        )
        params.update({"device": device, "variable": variable})
        r = await self.request("GET", _p(project, "plot.png"), params=params)
        return r.content

    # -- projects ------------------------------------------------------------------------------

    async def create_project(
        self, doc: Any = None, /, *, if_exists: str | None = None, **fields: Any
    ) -> Any:
        """Create a project (a dict, keyword fields, or a list of dicts for several)."""
        return await self._json(
            "POST", "/api/v1/projects", json=_doc_body(doc, fields), params={"if_exists": if_exists}
        )

    def projects(self) -> AsyncIterator[dict[str, Any]]:
        return self._items("/api/v1/projects", "projects")

    async def get_project(self, project: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._json("GET", _p(project))
        return body

    async def update_project(self, project: str, /, **patch: Any) -> dict[str, Any]:
        body: dict[str, Any] = await self._json("PATCH", _p(project), json=patch)
        return body

    async def delete_project(self, project: str) -> None:
        await self.request("DELETE", _p(project))

    # -- sites -----------------------------------------------------------------------------------

    async def create_site(
        self, project: str, doc: Any = None, /, *, if_exists: str | None = None, **fields: Any
    ) -> Any:
        return await self._json(
            "POST",
            _p(project, "sites"),
            json=_doc_body(doc, fields),
            params={"if_exists": if_exists},
        )

    def sites(self, project: str) -> AsyncIterator[dict[str, Any]]:
        return self._items(_p(project, "sites"), "sites")

    async def get_site(self, project: str, site: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._json("GET", _p(project, "sites", site))
        return body

    async def update_site(self, project: str, site: str, /, **patch: Any) -> dict[str, Any]:
        body: dict[str, Any] = await self._json("PATCH", _p(project, "sites", site), json=patch)
        return body

    async def delete_site(self, project: str, site: str) -> None:
        await self.request("DELETE", _p(project, "sites", site))

    # -- devices ---------------------------------------------------------------------------------

    async def create_device(
        self, project: str, doc: Any = None, /, *, if_exists: str | None = None, **fields: Any
    ) -> Any:
        """Create a device (optionally with ``variables`` inline), or several from a list."""
        return await self._json(
            "POST",
            _p(project, "devices"),
            json=_doc_body(doc, fields),
            params={"if_exists": if_exists},
        )

    def devices(
        self, project: str, *, site: str | None = None, type: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        return self._items(_p(project, "devices"), "devices", {"site": site, "type": type})

    async def get_device(self, project: str, device: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._json("GET", _p(project, "devices", device))
        return body

    async def update_device(self, project: str, device: str, /, **patch: Any) -> dict[str, Any]:
        body: dict[str, Any] = await self._json("PATCH", _p(project, "devices", device), json=patch)
        return body

    async def delete_device(self, project: str, device: str) -> None:
        await self.request("DELETE", _p(project, "devices", device))

    # -- variables -------------------------------------------------------------------------------

    async def create_variable(
        self,
        project: str,
        device: str,
        doc: Any = None,
        /,
        *,
        if_exists: str | None = None,
        **fields: Any,
    ) -> Any:
        return await self._json(
            "POST",
            _p(project, "devices", device, "variables"),
            json=_doc_body(doc, fields),
            params={"if_exists": if_exists},
        )

    def variables(self, project: str, device: str) -> AsyncIterator[dict[str, Any]]:
        return self._items(_p(project, "devices", device, "variables"), "variables")

    async def get_variable(self, project: str, device: str, variable: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._json(
            "GET", _p(project, "devices", device, "variables", variable)
        )
        return body

    async def update_variable(
        self, project: str, device: str, variable: str, /, **patch: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = await self._json(
            "PATCH", _p(project, "devices", device, "variables", variable), json=patch
        )
        return body

    async def delete_variable(self, project: str, device: str, variable: str) -> None:
        await self.request("DELETE", _p(project, "devices", device, "variables", variable))

    # -- service accounts, keys, roles -------------------------------------------------------

    async def create_account(
        self, project: str, id: str | None = None, *, name: str | None = None, role: str = "user"
    ) -> dict[str, Any]:
        """A service account whose home is ``project``, with ``role`` on it."""
        doc = {k: v for k, v in {"id": id, "name": name, "role": role}.items() if v is not None}
        body: dict[str, Any] = await self._json("POST", _p(project, "serviceaccounts"), json=doc)
        return body

    def accounts(self, project: str) -> AsyncIterator[dict[str, Any]]:
        return self._items(_p(project, "serviceaccounts"), "serviceaccounts")

    async def get_account(self, project: str, account: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._json("GET", _p(project, "serviceaccounts", account))
        return body

    async def update_account(self, project: str, account: str, /, **patch: Any) -> dict[str, Any]:
        body: dict[str, Any] = await self._json(
            "PATCH", _p(project, "serviceaccounts", account), json=patch
        )
        return body

    async def delete_account(self, project: str, account: str) -> None:
        await self.request("DELETE", _p(project, "serviceaccounts", account))

    async def create_key(self, project: str, account: str) -> dict[str, Any]:
        """A new key ``{key_id, secret, created_at}``: the secret is shown this once."""
        body: dict[str, Any] = await self._json(
            "POST", _p(project, "serviceaccounts", account, "keys")
        )
        return body

    async def keys(self, project: str, account: str) -> list[dict[str, Any]]:
        body = await self._json("GET", _p(project, "serviceaccounts", account, "keys"))
        keys: list[dict[str, Any]] = body["keys"]
        return keys

    async def delete_key(self, project: str, account: str, key_id: str) -> None:
        await self.request("DELETE", _p(project, "serviceaccounts", account, "keys", key_id))

    async def roles(self, project: str) -> list[dict[str, Any]]:
        body = await self._json("GET", _p(project, "roles"))
        roles: list[dict[str, Any]] = body["roles"]
        return roles

    async def grant_role(self, project: str, account: str, role: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._json(
            "PUT", _p(project, "roles", account), json={"role": role}
        )
        return body

    async def revoke_role(self, project: str, account: str) -> None:
        await self.request("DELETE", _p(project, "roles", account))

    # -- alert channels ------------------------------------------------------------------------

    async def create_channel(
        self, project: str, doc: Any = None, /, **fields: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = await self._json(
            "POST", _p(project, "channels"), json=_doc_body(doc, fields)
        )
        return body

    async def channels(self, project: str) -> list[dict[str, Any]]:
        body = await self._json("GET", _p(project, "channels"))
        chans: list[dict[str, Any]] = body["channels"]
        return chans

    async def get_channel(self, project: str, channel: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._json("GET", _p(project, "channels", channel))
        return body

    async def update_channel(self, project: str, channel: str, /, **patch: Any) -> dict[str, Any]:
        body: dict[str, Any] = await self._json(
            "PATCH", _p(project, "channels", channel), json=patch
        )
        return body

    async def delete_channel(self, project: str, channel: str) -> None:
        await self.request("DELETE", _p(project, "channels", channel))

    async def alerts(
        self, project: str, channel: str, *, page_size: int = 100
    ) -> AsyncIterator[dict[str, Any]]:
        """A channel's alerts, newest first, every page."""
        skip = 0
        path = _p(project, "channels", channel, "alerts")
        while True:
            body = await self._json("GET", path, params={"limit": page_size, "skip": skip})
            for a in body["alerts"]:
                yield a
            skip += len(body["alerts"])
            if not body["alerts"] or skip >= int(body.get("total", 0)):
                return

    async def alert_plot(self, project: str, alert_id: int) -> bytes:
        """The ``plot`` actor's PNG of an alert."""
        r = await self.request("GET", _p(project, "plots", f"{alert_id}.png"))
        return r.content

    # -- push-feed tokens ------------------------------------------------------------------------

    async def create_feed_token(self, project: str, name: str) -> dict[str, Any]:
        """A feed token: the reply's ``token`` is shown this once (``FeedClient`` uses it)."""
        body: dict[str, Any] = await self._json(
            "POST", _p(project, "feedtokens"), json={"name": name}
        )
        return body

    def feed_tokens(self, project: str) -> AsyncIterator[dict[str, Any]]:
        return self._items(_p(project, "feedtokens"), "feedtokens")

    async def revoke_feed_token(self, project: str, token_id: str) -> None:
        await self.request("DELETE", _p(project, "feedtokens", token_id))


def to_frame(rows: Sequence[Observation]) -> Any:
    """Observations as a pandas DataFrame."""
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("history_frame needs pandas: pip install 'streamgauge[pandas]'") from exc
    frame = pd.DataFrame.from_records(rows, columns=list(Observation._fields))
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame
