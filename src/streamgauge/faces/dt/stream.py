"""``devices:stream``: the engine's resumable stream in DT's framing, with DT's pings.

NDJSON by default (``Content-Type: application/json``; one ``{"result":{"event":...}}`` object
per line, ASCII only, never a blank line), SSE with ``Accept: text/event-stream`` (each event's
``data:`` is the same object; ``id:`` is the cursor, so ``Last-Event-ID`` resumes with no loss).
A ping event goes out every ``ping_interval`` (``1s`` up to ``10s``; DT's SDK gives up after 12 s
without a line), whatever the filters. Errors are one ``{"error":{"code","message","details"}}``
line with the same HTTP status. A stream the server ends (shutdown, slow consumer) ends with an
error line (code 503) naming the cursor to resume from (``since=``), then closes: the SDK
reconnects by itself.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from streamgauge.auth import Action
from streamgauge.core.filters import LabelMatch, Selection
from streamgauge.core.framing import Framing
from streamgauge.domain.batch import RowForm
from streamgauge.domain.errors import BadRequest, Gone
from streamgauge.faces.dt.devices import _event_types, _label_filters
from streamgauge.faces.dt.events import (
    EVENT_TYPES,
    dumps_ascii,
    encode_rows,
    event_variables,
    ping_event,
)
from streamgauge.faces.dt.face import get_face
from streamgauge.faces.dt.http import (
    HELP,
    DTRoute,
    Query,
    error_headers,
    stream_error_line,
    to_dt_error,
)
from streamgauge.faces.http import parse_cursor

router = APIRouter(tags=["dt: stream"], route_class=DTRoute)

MAX_PING = 10.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds of a Go duration such as ``10s``, ``1.5s``, ``1m30s``."""
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise BadRequest(
            f"bad ping_interval {text!r}: expected a duration such as 10s",
            [{"in": "query", "field": "ping_interval", "reason": "a Go duration, 1s or more"}],
        )
    return total


def ping_interval(text: str | None) -> float:
    if text is None:
        return MAX_PING
    seconds = parse_duration(text)
    if seconds < 1.0:
        raise BadRequest(
            f"ping_interval {text!r} is below 1s",
            [{"in": "query", "field": "ping_interval", "reason": "at least 1s"}],
        )
    return min(seconds, MAX_PING)


def _result(obj: bytes) -> bytes:
    return b'{"result":{"event":' + obj + b"}}"


def _ndjson_row(cursor: int, obj: bytes) -> bytes:
    return _result(obj) + b"\n" if obj else b""


def _sse_row(cursor: int, obj: bytes) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (cursor, _result(obj)) if obj else b""


def _none(*_: object) -> bytes:
    return b""


def _ndjson_closed(reason: str, resume: int) -> bytes:
    return stream_error_line(503, f"{reason}; reconnect with since={resume}")


def _sse_closed(reason: str, resume: int) -> bytes:
    body = dumps_ascii({"error": {"code": 503, "message": reason, "resume": resume}})
    return b"event: closed\nid: %d\ndata: %s\n\n" % (resume, body)


NDJSON_FORM = RowForm(encode_rows, _ndjson_row)
SSE_FORM = RowForm(encode_rows, _sse_row)
DT_NDJSON = Framing(
    "dt-ndjson", "application/json", NDJSON_FORM, _none, _ndjson_closed, _none, _none
)
DT_SSE = Framing(
    "dt-sse",
    "text/event-stream",
    SSE_FORM,
    _none,
    _sse_closed,
    lambda retry_ms: b"retry: %d\n\n" % retry_ms,
    _none,
)


def ping_frame(project: str, sse: bool) -> Callable[[], bytes]:
    def make() -> bytes:
        line = _result(dumps_ascii(ping_event(project, int(time.time() * 1000))))
        return b"data: %s\n\n" % line if sse else line + b"\n"

    return make


async def with_pings(
    frames: AsyncIterator[bytes], interval: float, ping: Callable[[], bytes]
) -> AsyncIterator[bytes]:
    """``frames`` (empty chunks left out), with a ping every ``interval`` seconds between them.
    Pings and frames never interleave: one task waits for the next frame at a time."""

    async def step() -> bytes:
        return await anext(frames)

    loop = asyncio.get_running_loop()
    due = loop.time() + interval
    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.create_task(step())
            done, _ = await asyncio.wait({pending}, timeout=max(due - loop.time(), 0.0))
            if done:
                task, pending = pending, None
                try:
                    chunk = task.result()
                except StopAsyncIteration:
                    return
                if chunk:
                    yield chunk
            if loop.time() >= due:
                yield ping()
                due = loop.time() + interval
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending})
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()


NAMES = (
    "device_ids",
    "device_types",
    "label_filters",
    "event_types",
    "ping_interval",
    "since",
    "on_gap",
)


def _gap_line(since: int, earliest: int, sse: bool) -> bytes:
    """Said first when ``on_gap=earliest`` moved a resume past rows retention removed."""
    body = dumps_ascii({"gap": {"since": since, "earliest": earliest, "resume": earliest - 1}})
    return b"event: gap\ndata: " + body + b"\n\n" if sse else body + b"\n"


async def _after(first: bytes, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for frame in frames:
        yield frame


@router.get("/projects/{project}/devices:stream")
async def stream(request: Request, project: str) -> Response:
    """Live events of a project's devices, filtered by ``device_ids``, ``device_types``,
    ``label_filters`` (``key`` or ``key=value``; any may match) and ``event_types``."""
    face = get_face(request)
    sse = "text/event-stream" in request.headers.get("accept", "")
    try:
        who = await face.authenticate(request)
        q = Query(request, NAMES)
        proj = face.project(who, project, Action.READ)
        interval = ping_interval(q.one("ping_interval"))
        types = _event_types(q)
        labels = tuple(LabelMatch(k, v) for k, v in _label_filters(q.all("label_filters")))
        resume = q.one("since")
        if resume is None:
            resume = request.headers.get("last-event-id") or None
        on_gap = q.one("on_gap")
        if on_gap not in (None, "error", "earliest"):
            raise BadRequest("on_gap must be error or earliest")
        cursor: int | None = None
        gap = b""
        if resume is not None:
            cursor = parse_cursor(resume)
            await face.engine.check_cursor(cursor)
            asked = cursor
            cursor, earliest = await face.engine.timeseries.resume_point(proj.pk, cursor, on_gap)
            if earliest is not None:
                gap = _gap_line(asked, earliest, sse)
        selection = Selection(
            proj.pk,
            devices=frozenset(q.all("device_ids")),
            device_types=frozenset(q.all("device_types")),
            variables=event_variables(types or EVENT_TYPES),
            labels=labels,
        )
    except Exception as exc:  # noqa: BLE001 - every error as a stream error line
        status, message = to_dt_error(exc)
        line = stream_error_line(status, message)
        if isinstance(exc, Gone):  # the resume position a client needs, beside DT's fields
            err = {"code": 410, "message": message, "details": [{"help": HELP}]}
            line = dumps_ascii({"error": {**err, "earliest": exc.earliest}}) + b"\n"
        headers = error_headers(exc)
        if sse:
            return Response(
                b"event: error\ndata: " + line.rstrip(b"\n") + b"\n\n",
                status,
                headers=headers,
                media_type="text/event-stream",
            )
        return Response(line, status, headers=headers, media_type="application/json")
    framing = DT_SSE if sse else DT_NDJSON
    frames = face.engine.stream(selection, framing, cursor)
    if gap:
        frames = _after(gap, frames)
    return StreamingResponse(
        with_pings(frames, interval, ping_frame(proj.doc.id, sse)),
        media_type=framing.media_type,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
