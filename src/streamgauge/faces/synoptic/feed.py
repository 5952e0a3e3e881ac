"""The Synoptic-compatible WebSocket push feed: ``/feed/{token}/?{arguments}`` starts a session,
``/feed/{token}/{session}`` resumes one (reference: synoptic-push.md).

A session is a durable consumer of the log (``SessionConsumer``, a ``core/consumers.Consumer``
named by the session id) whose position store is its session row (``engine.feeds.positions``):
its arguments and its position.
The face only translates: arguments become the core's selection and units, the subscription is
the engine's (catch-up from the store, then live, without gap or duplicate), and rows become
``data`` messages preceded by whatever ``metadata`` they need. A live session is written to
from the hub's fan-out itself when the server offers a message writer (``_Sender``).

Closing codes: 1000 after ``{"feed_action": "stop"}``, a finished period, or when another
connection resumed the session (one connection serves a session at a time; the old one ends and
saves its position before the new one starts), 1012 when the server shuts down, 4000 when the
client fell too far behind (its send queue overflowed), 1008 after a failed ``auth`` message (a
bad token, argument or session id, or the token's session limit: a policy close, so clients that
reconnect after a normal close do not retry in a loop) and when the token was revoked, 1011
after an unexpected error (logged).
Each close after a successful ``auth`` leaves the session resumable from the last observation
pushed (unless the token was revoked).

Resuming ignores every argument (the session's own apply) except ``cursor``: a client that tracks
the ``cursor`` field of the data messages it processed may resume after exactly that one, which
makes a resume after an abrupt drop exact (without it, the session resumes after the last message
the server handed to the network, and what was in flight when the connection broke is lost with
it, as with Synoptic).

A resumed session whose position is older than what retention kept (observations after it were
removed) gets, right after its ``auth`` message, a closing message ``{"type": "closed", "error":
{"status": 410, "code": "gone", ..., "earliest": CURSOR}}`` and close code 4410, and stays
resumable; resumed with ``on_gap=earliest`` it continues from the earliest kept observation
after a ``{"type": "gap", "since", "earliest"}`` message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from streamgauge.core.consumers import Consumer
from streamgauge.core.engine import Chunk, Closed, Engine
from streamgauge.core.framing import Framing
from streamgauge.core.hub import Cells, Item, Sink
from streamgauge.core.registry import Registry
from streamgauge.core.units import UnitSystem
from streamgauge.core.units import warm as warm_units
from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import BadRequest, Gone, StreamgaugeError
from streamgauge.domain.feeds import FeedSession, FeedToken, SessionLimit
from streamgauge.domain.log import HistoryQuery
from streamgauge.faces.synoptic.args import FeedArgs, parse_feed_args
from streamgauge.faces.synoptic.messages import (
    DATA_INFIX,
    DATA_PREFIX,
    DATA_TAIL,
    Metadata,
    Plan,
    auth_failed,
    auth_success,
    data_message,
    encode_rows,
    feed_framing,
    merge_items,
    round_frames,
)
from streamgauge.faces.websocket import WRITER, MessageWriter
from streamgauge.wire.wsframes import joined_frames

router = APIRouter(tags=["push feed"])
log = logging.getLogger("streamgauge.feed")

CLOSE_DONE = 1000
CLOSE_AUTH_FAILED = 1008  # policy violation: a failed auth (token, arguments, session, limit)
CLOSE_REVOKED = 1008
CLOSE_RESTART = 1012
CLOSE_GONE = 4410  # a resume older than what retention kept (the closing message says earliest)
CLOSE_SLOW = 4000
CLOSE_ERROR = 1011

# The latest connection to open each session, per feed store: a connection resuming a session
# takes a ticket before its take-over; one whose ticket is no longer the latest when it would go
# live (another resumed the same session while it was still opening: reading the session,
# checking the gap, sending ``auth``) closes without serving, so one session is never served
# by two connections at once, even in that window.
_TICKETS: weakref.WeakKeyDictionary[object, dict[str, int]] = weakref.WeakKeyDictionary()


def _ticket(feeds: object, session_id: str) -> int:
    tickets = _TICKETS.setdefault(feeds, {})
    n = tickets.get(session_id, 0) + 1
    tickets[session_id] = n
    return n


def _latest(feeds: object, session_id: str, ticket: int) -> bool:
    return _TICKETS.get(feeds, {}).get(session_id) == ticket


def _done(feeds: object, session_id: str, ticket: int) -> None:
    tickets = _TICKETS.get(feeds)
    if tickets is not None and tickets.get(session_id) == ticket:
        del tickets[session_id]


# Plain Starlette routes, not FastAPI's: a FastAPI WebSocket route keeps three exit stacks and
# its dependency machinery for as long as the connection lives (about 6 KB of each idle
# session's memory), for two path parameters.


async def new_session(websocket: WebSocket) -> None:
    """Start a session with the query string's arguments."""
    await _feed(websocket, websocket.path_params["token"], None)


async def resume_session(websocket: WebSocket) -> None:
    """Resume a session: its own arguments apply; what it has not pushed flows first."""
    params = websocket.path_params
    await _feed(websocket, params["token"], params["session"])


router.add_websocket_route("/feed/{token}/", new_session)
router.add_websocket_route("/feed/{token}", new_session, name="new_session_no_slash")
router.add_websocket_route("/feed/{token}/{session}", resume_session)


def _messages(exc: StreamgaugeError) -> list[str]:
    out = [exc.message]
    for d in exc.details:
        where = d.get("field") or d.get("in")
        reason = d.get("reason") or d.get("expected")
        if where and reason:
            out.append(f"{where}: {reason}")
    return out


async def _send(ws: WebSocket, data: bytes) -> None:
    await ws.send({"type": "websocket.send", "text": data.decode()})


class _Sender:
    """One connection's messages: each data message preceded by the metadata it needs.

    With the server's ``MessageWriter`` (see ``faces/websocket.py``) the sender is also the
    hub's sink for the live session: ``direct`` writes a whole fan-out round in one go, without
    waking the session's task. Otherwise (no writer, catching up, or the connection's buffer
    full) the session's task sends queued items with ``chunk``, awaiting the connection."""

    __slots__ = ("_ws", "_writer", "meta", "_feeds", "_session", "_rows", "_alive")

    def __init__(
        self,
        ws: WebSocket,
        engine: Engine,
        session: FeedSession,
        meta: Metadata,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self._ws = ws
        self._alive = alive
        writer = ws.scope.get("extensions", {}).get(WRITER)
        self._writer: MessageWriter | None = writer if isinstance(writer, MessageWriter) else None
        self.meta = meta  # (read by the round's ``prepare``: ``messages.metadata_of``)
        self._feeds = engine.feeds
        self._session = session
        self._rows = engine.settings.feed_message_rows

    @property
    def sink(self) -> Sink | None:
        return None if self._writer is None else self.direct

    def direct(self, items: list[Item], position: int) -> bool:
        """The hub's sink: write the round's messages at once and move the session to
        ``position``; False, having written nothing, if the connection cannot take them now."""
        if items:
            writer = self._writer
            assert writer is not None  # the sink is given only with a writer
            if writer.ready:
                if not self._alive():
                    return False
                writer.write_ready(round_frames(items, self.meta, self._rows))
                self._feeds.moved(self._session, position)
                return True
            if writer.paused or not writer.open or not self._alive() or writer.raw:
                # (raw, open and not paused, yet not ready: the closing handshake has begun,
                # nothing would be written; the session must not move past these rows)
                return False
            messages: list[bytes] = []
            for item in merge_items(items, self._rows):
                described = self.meta.message(item)
                if described is not None:
                    messages.append(described)
                messages.append(item.data)
            if not writer.send(messages):
                return False  # closing: nothing written (this connection describes no more)
        self._feeds.moved(self._session, position)
        return True

    def writable_now(self, rows: int) -> bool:
        """A round's ``rows`` rows may be written at once by ``deliver_round``: one message,
        the connection ready and still served."""
        writer = self._writer
        return rows <= self._rows and writer is not None and writer.ready and self._alive()

    def write_round(self, frames: bytes, position: int) -> None:
        """``deliver_round``'s write, just after ``writable_now``: the round's frames, and the
        session moved to ``position``."""
        assert self._writer is not None
        self._writer.write_ready(frames)
        self._feeds.moved(self._session, position)

    def passed(self, position: int) -> None:
        """A round with nothing for this session: it moves to ``position``."""
        self._feeds.moved(self._session, position)

    async def deliver(self, item: Item) -> None:
        """One data message (and the metadata it needs), awaiting the connection."""
        described = self.meta.message(item)
        messages = [item.data] if described is None else [described, item.data]
        writer = self._writer
        if writer is None:
            for message in messages:
                await _send(self._ws, message)
            return
        if writer.paused:
            await writer.writable()
        if not writer.send(messages):
            raise WebSocketDisconnect(1006)

    async def chunk(self, items: list[Item], position: int) -> None:
        """Queued items (catch-up, or a live backlog): message by message, moving the session
        past each one handed to the network."""
        for item in merge_items(items, self._rows):
            await self.deliver(item)
            self._feeds.moved(self._session, item.last)
        self._feeds.moved(self._session, position)


class _Group:
    """The sessions of a round's slice whose rows are encoded alike (``deliver_round``)."""

    __slots__ = ("framing", "registry", "members", "senders")

    def __init__(self, framing: Framing, registry: Registry) -> None:
        self.framing = framing
        self.registry = registry
        self.members: list[int] = []
        self.senders: list[_Sender] = []


def deliver_round(batch: Batch, cells: Cells, lo: int, hi: int, done: bytearray) -> None:
    """The feed framing's ``deliver`` (see ``core/framing.py``): of the round's subscribers
    ``lo`` to ``hi``, the live sessions fed by their ``_Sender`` whose rows make one message
    and whose connection is ready get the round's frames, made for all of them in one call
    (``joined_frames``: no ``Item``, join or format per session), each preceded by the
    metadata its round's plan says (``prepare``); sessions with no rows in the round move past
    it. The others (catching up, behind, several messages, no plan) are left to the hub's
    ``offer`` and their sink."""
    subs, bounds = cells.subs, cells.bounds
    position = int(batch.cursors[-1])
    groups: dict[tuple[str, UnitSystem], _Group] = {}
    for i in range(lo, hi):
        sub = subs[i]
        sender = sub.state
        if (
            sub.sink is None
            or not isinstance(sender, _Sender)
            or sub.overflowed
            or sub.closed is not None
        ):
            continue
        if bounds[i] == bounds[i + 1]:
            sender.passed(position)
            done[i] = 1
        elif sender.writable_now(bounds[i + 1] - bounds[i]):
            framing = sub.framing
            group = groups.get((framing.name, sub.units))
            if group is None:
                group = groups[framing.name, sub.units] = _Group(framing, sub.registry)
            group.members.append(i)
            group.senders.append(sender)
    for (_, units), group in groups.items():
        _write_group(batch, cells, units, group, position, done)


def _write_group(
    batch: Batch, cells: Cells, units: UnitSystem, group: _Group, position: int, done: bytearray
) -> None:
    """``deliver_round`` for one group: each session's frames, then their writes."""
    bounds, firsts, lasts = cells.bounds, cells.firsts, cells.lasts
    members: list[int] = []
    senders: list[_Sender] = []
    leads: list[bytes | None] = []
    plans: list[Plan | None] = []  # each member's, taken from its ``Metadata``
    for i, sender in zip(group.members, group.senders, strict=True):
        meta = sender.meta
        plan = None
        if meta.enabled:
            plan = meta.take_plan(firsts[i], lasts[i])
            if plan is None:
                continue  # no plan for these rows: the sink describes them itself
        leads.append(None if plan is None else plan[3])
        plans.append(plan)
        members.append(i)
        senders.append(sender)
    if not members:
        return
    rows = group.framing.rows(batch, group.registry, units)
    try:
        frames = joined_frames(
            rows,
            cells.content,
            [bounds[i] for i in members],
            [bounds[i + 1] for i in members],
            [lasts[i] for i in members],
            leads,
            DATA_PREFIX,
            DATA_INFIX,
            DATA_TAIL,
            1,
        )
    except BaseException:
        _put_back(senders, plans, 0)  # nothing written: their sinks describe the rows
        raise
    for k, (i, sender, frame) in enumerate(zip(members, senders, frames, strict=True)):
        try:
            sender.write_round(frame, position)
        except BaseException:
            _put_back(senders, plans, k)  # this one and the next are offered to their sinks
            raise
        done[i] = 1


def _put_back(senders: list[_Sender], plans: list[Plan | None], start: int) -> None:
    """The metadata plans taken for the sessions from ``start`` on, given back unsent."""
    for sender, plan in zip(senders[start:], plans[start:], strict=True):
        if plan is not None:
            sender.meta.put_back(plan)


async def _fail(ws: WebSocket, messages: list[str], reason: str) -> None:
    """A failed ``auth``, then a policy close: a client that reconnects after a normal close
    (1000) would otherwise retry a bad token or argument in a tight loop."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await _send(ws, auth_failed(messages))
        await ws.close(CLOSE_AUTH_FAILED, reason)


async def _feed(ws: WebSocket, token: str, session_id: str | None) -> None:
    engine: Engine = ws.app.state.engine
    await ws.accept()
    ws.scope["headers"] = []  # read by nothing after the handshake (1 KB of an idle session)
    tok = await engine.feeds.find_token(token)
    if tok is None:
        await _fail(ws, ["invalid token"], "authentication failed: invalid token")
        return
    claimed = session_id
    ticket = 0
    if session_id is not None:
        engine.feeds.claim(tok, session_id)
        ticket = _ticket(engine.feeds, session_id)
    try:
        session, args, gap = await _open(ws, engine, tok, session_id)
        if session is None or args is None:
            if session_id is not None:
                _done(engine.feeds, session_id, ticket)
            return
        claimed = session.id
        if session_id is None:
            ticket = _ticket(engine.feeds, session.id)
        warm_units(args.select.units)  # before the session is live (``units.warm``)
        await _send(ws, auth_success(session.id, session_id is not None))
        if isinstance(gap, Gone):
            await _send(ws, orjson.dumps({"type": "closed", "error": gap.to_dict()}))
            await ws.close(CLOSE_GONE, "resume cursor older than what is kept")
            _done(engine.feeds, session.id, ticket)
            return
        if gap:
            await _send(ws, gap)
        claimed = None  # from here the session is live: _run's ``opened`` takes the claim over
        writer = ws.scope.get("extensions", {}).get(WRITER)
        if isinstance(writer, MessageWriter):
            writer.detach(_run(ws, engine, tok, session, args, ticket))  # the ASGI call returns
        else:
            await _run(ws, engine, tok, session, args, ticket)
    finally:
        if claimed is not None:
            engine.feeds.release(claimed)


async def _open(
    ws: WebSocket, engine: Engine, tok: FeedToken, session_id: str | None
) -> tuple[FeedSession | None, FeedArgs | None, bytes | Gone]:
    """The new or resumed session, its arguments and what a resume past removed rows says
    first (a ``gap`` message, or the ``Gone`` to close with); (None, None, b"") after a failed
    ``auth``."""
    gap: bytes | Gone = b""
    s = engine.settings
    now = int(time.time() * 1000)
    try:
        if session_id is None:
            query = ws.scope.get("query_string", b"").decode("utf-8", "strict")
            args = parse_feed_args(query, now_ms=now, max_period_hours=s.feed_period_max_hours)
            position = engine.log_head
            if args.rewind_minutes is not None:
                since = now - int(args.rewind_minutes * 60_000)
                position = await engine.cursor_before(since)
            session = await engine.feeds.create_session(tok, query, position)
        else:
            await engine.feeds.take_over(tok, session_id)
            found = await engine.feeds.session(tok, session_id)
            if found is None:
                await _fail(ws, ["invalid session id", "start a new session"], "invalid session id")
                return None, None, b""
            session = found
            args = parse_feed_args(
                session.args,
                now_ms=now,
                max_period_hours=s.feed_period_max_hours,
                check_age=False,
            )
            _resume_at(ws, session, engine.log_head)
            gap = await _gap(ws, engine, tok, session)
    except UnicodeDecodeError:
        await _fail(ws, ["the query string is not valid UTF-8"], "bad arguments")
        return None, None, b""
    except SessionLimit as exc:
        await _fail(ws, _messages(exc), "session limit of this feed token reached")
        return None, None, b""
    except StreamgaugeError as exc:
        await _fail(ws, _messages(exc), "bad arguments")
        return None, None, b""
    return session, args, gap


async def _gap(ws: WebSocket, engine: Engine, tok: FeedToken, session: FeedSession) -> bytes | Gone:
    """A resumed session's position checked against retention (``on_gap=earliest`` moves it)."""
    if session.after_time is not None:
        return b""  # a period replay reads by time, not by cursor
    query = ws.scope.get("query_string", b"").decode("utf-8", "replace")
    on_gap = dict(parse_qsl(query)).get("on_gap")
    if on_gap not in (None, "error", "earliest"):
        raise BadRequest(
            f"bad argument on_gap {on_gap[:20]!r}",
            [{"field": "on_gap", "reason": "error or earliest"}],
        )
    asked = session.position
    try:
        position, earliest = await engine.timeseries.resume_point(tok.project_pk, asked, on_gap)
    except Gone as exc:
        return exc
    if earliest is None:
        return b""
    session.position = position
    return orjson.dumps({"type": "gap", "since": asked, "earliest": earliest})


def _resume_at(ws: WebSocket, session: FeedSession, head: int) -> None:
    """A resume's ``cursor`` argument (the last observation the client processed)."""
    query = ws.scope.get("query_string", b"").decode("utf-8", "replace")
    given = dict(parse_qsl(query)).get("cursor")
    if given is None:
        return
    if not (given.isascii() and given.isdigit() and len(given) <= 19) or int(given) > head:
        raise BadRequest(
            f"bad argument cursor {given!r}",
            [{"field": "cursor", "reason": "the cursor of a data message this feed sent"}],
        )
    if session.after_time is None:
        session.position = int(given)


async def _run(
    ws: WebSocket,
    engine: Engine,
    tok: FeedToken,
    session: FeedSession,
    args: FeedArgs,
    ticket: int,
) -> None:
    """The live session: a task pushes (``SessionConsumer.stream``) while this one listens to
    the client (no third task: when the pusher ends first, its done callback interrupts the
    listening, which costs an idle session less than a listener task and ``asyncio.wait``)."""
    feeds = engine.feeds
    if not _latest(feeds, session.id, ticket):  # resumed meanwhile on another connection
        feeds.release(session.id)
        if ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close(CLOSE_DONE, "session resumed on another connection")
        return
    live = _Live(asyncio.current_task())
    consumer = SessionConsumer(engine, session)
    pusher = live.pusher = asyncio.create_task(consumer.stream(ws, args, live.alive))
    pusher.add_done_callback(live.pusher_done)
    feeds.opened(session, live.taken_over)
    detach = feeds.attach(tok, live.revoked)
    code, reason = CLOSE_DONE, "feed stopped; resume with the session id"
    try:
        heard: str | None = None
        try:
            heard = await _listen(ws)
        except asyncio.CancelledError:
            # the pusher's end interrupted the listening; any other cancellation goes on
            me = live.me
            if me is None or not live.interrupted or me.uncancel() > 0:
                raise
        finally:
            live.listening = False
        if heard is None:  # the pusher ended
            if not pusher.cancelled() and pusher.exception() is None:
                code, reason = pusher.result()
            elif not pusher.cancelled():
                failure = pusher.exception()
                log.error("feed session %s failed", session.id, exc_info=failure)
                code, reason = CLOSE_ERROR, "server error: resume with the session id"
            elif live.ended is not None:
                code, reason = live.ended
        elif heard == "disconnect":
            code = 0
    finally:
        detach()
        pusher.cancel()
        with contextlib.suppress(BaseException):
            await pusher
        await feeds.closed(session)
        _done(feeds, session.id, ticket)
    if code and ws.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await ws.close(code, reason[:120])


class _Live:
    """The server's side of a live session's two tasks (``_run``): what the pusher's end, a
    take-over and a revoked token do. Bound methods of one small object rather than closures
    over lists (a thousand idle sessions keep a thousand of these)."""

    __slots__ = ("me", "pusher", "ended", "listening", "interrupted")

    def __init__(self, me: asyncio.Task[object] | None) -> None:
        self.me = me  # the session's task, listening to the client
        self.pusher: asyncio.Task[tuple[int, str]] | None = None
        self.ended: tuple[int, str] | None = None  # why the server ends it (revoked, taken over)
        self.listening = True
        self.interrupted = False

    def alive(self) -> bool:
        return self.ended is None

    def pusher_done(self, _: object) -> None:
        """The pusher ended: interrupt the listening."""
        if self.listening and self.me is not None:
            self.interrupted = True
            self.me.cancel()

    def close(self, code: int, reason: str) -> None:
        if self.ended is None:
            self.ended = (code, reason)
        if self.pusher is not None:
            self.pusher.cancel()

    def taken_over(self) -> None:
        self.close(CLOSE_DONE, "session resumed on another connection")

    def revoked(self, reason: str) -> None:
        self.close(CLOSE_REVOKED, reason)


async def _listen(ws: WebSocket) -> str:
    """Client messages: ``{"feed_action": "stop"}`` ends the feed; others are ignored."""
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return "disconnect"
        raw = msg.get("text") or msg.get("bytes") or b""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj.get("feed_action") == "stop":
            return "stop"


class SessionConsumer(Consumer):
    """A feed session as a durable consumer of the log: named by the session id, its position is
    the session's (``FeedSession.position``, stored in the session row through
    ``FeedStore.positions``). Live, it is fed by the hub's fan-out (the ``_Sender`` is the
    subscription's sink: no store read at the head, messages written inside the fan-out round);
    behind (a new session with a rewind, a resume, a slow-consumer close), the subscription
    catches up from the log first (``Engine.events``: catch-up then live without gap or
    duplicate). A past period is read from history in time order (``period``)."""

    def __init__(self, engine: Engine, session: FeedSession) -> None:
        super().__init__(session.id, engine, engine.feeds.positions(session))
        self.session = session
        self._engine = engine

    @property
    def position(self) -> int | None:
        return self.session.position

    @position.setter
    def position(self, value: int | None) -> None:
        if value is not None:
            self.session.position = value

    async def stream(
        self, ws: WebSocket, args: FeedArgs, alive: Callable[[], bool]
    ) -> tuple[int, str]:
        """Send the session's messages; return the close code and reason when the server ends
        it. ``alive()`` turns False when the server ends the connection (a revoked token, a
        take-over): from then on the hub's fan-out writes nothing more to it."""
        engine, session = self._engine, self.session
        select = args.select
        meta = Metadata(engine.registry, select.units, args.metadata)
        project_pk = engine.feeds.project_of(session)
        selection = select.selection(project_pk)
        sender = _Sender(ws, engine, session, meta, alive)
        try:
            if args.start_ms is not None and args.end_ms is not None:
                await self.period(sender, args)
                return CLOSE_DONE, "the requested period has been sent"
            framing = feed_framing(
                engine.settings.feed_message_rows, args.timeformat, deliver_round
            )
            events = engine.events(
                selection,
                framing,
                session.position,
                select.units,
                sender.sink,
                keepalives=False,
                state=sender,
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, Chunk):
                        await sender.chunk(event.items, event.position)
                    elif isinstance(event, Closed):
                        engine.feeds.moved(session, event.resume)
                        if event.slow:
                            return CLOSE_SLOW, "slow consumer: resume with the session id"
                        return CLOSE_RESTART, "server shutting down: resume with the session id"
        except (WebSocketDisconnect, RuntimeError, OSError):
            return 0, ""
        return CLOSE_DONE, ""

    async def period(self, sender: _Sender, args: FeedArgs) -> None:
        """A past period: stored observations in time order, then done."""
        assert args.start_ms is not None and args.end_ms is not None
        engine, session = self._engine, self.session
        select = args.select
        project_pk = engine.feeds.project_of(session)
        selection = select.selection(project_pk)
        series = None if select.empty else engine.series_of(selection)
        rows = engine.settings.feed_message_rows
        after = None if session.after_time is None else (session.after_time, session.position)
        while True:
            query = HistoryQuery(
                project_pk,
                series=series,
                qc_remove=selection.qc_remove,
                start=args.start_ms,
                end=args.end_ms + 1,
                after=after,
                limit=rows,
            )
            batch = await engine.history(query, selection)
            if len(batch):
                encoded = encode_rows(batch, engine.registry, select.units, args.timeformat)
                first, last = batch.first, int(batch.cursors[-1])
                message = data_message(b"".join(encoded), first, last)
                item = Item(first, last, len(batch), message, 0, batch.series)
                await sender.deliver(item)
                after = (int(batch.times[-1]), int(batch.cursors[-1]))
                engine.feeds.moved(session, after[1], after[0])
            if len(batch) < rows:
                return
