"""Feed sessions that resume without losing or repeating an observation, under continuous
ingest: after an abrupt client drop (with ``cursor``), after ``{"feed_action": "stop"}``, after
a server restart, after a slow-consumer close; a resume while the old connection is still open;
session expiry; ``rewind``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import MS, TOKEN, Server, start_server
from tests.test_feed import (
    API,
    STATIONS,
    Case,
    Feed,
    Obs,
    assert_rows,
    feed_token,
    make_network,
    minute_batch,
    minute_ms,
    post,
    report,
    where,
)

BASE = minute_ms(int(time.time() * 1000)) - 40 * 3_600_000  # tick k reports at BASE + k minutes


class Ingest:
    """Posts every station's report, one tick (minute) per batch, in the background until
    stopped; remembers what it posted, with cursors."""

    def __init__(self, server: Server, first_tick: int = 0) -> None:
        self.server = server
        self.tick = first_tick
        self.posted: list[Obs] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Ingest:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=self.server.url, headers=headers, timeout=30) as c:
            while not self._stop.is_set():
                t = BASE + self.tick * 60_000
                batch = [
                    o
                    for i, st in enumerate(STATIONS)
                    for o in report(i, st, self.tick, t, self.tick)
                ]
                r = await c.post(f"{API}/p1/observations", json=[o.row() for o in batch])
                assert r.status_code == 200, r.text
                first = r.json()["first_cursor"]
                for n, o in enumerate(batch):
                    o.cursor = first + n
                self.posted += batch
                self.tick += 1
                await asyncio.sleep(5 * MS)  # pacing, so that the feed runs alongside

    async def until_posted(self, ticks: int) -> None:
        """Wait until at least ``ticks`` more batches have been posted."""
        target = self.tick + ticks
        while self.tick < target:
            assert self._task is not None and not self._task.done()
            await asyncio.sleep(5 * MS)

    async def finish(self) -> list[Obs]:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.posted


CASE = Case({"state": "ut,co", "qc": "none"}, where(state={"UT", "CO"}), remove=frozenset())


@pytest.fixture
def srv(tmp_path: Path) -> Server:
    s = start_server(tmp_path / "data")
    with s.client() as c:
        make_network(c)
    return s


def assert_exact(parts: list[Feed], posted: list[Obs], case: Case = CASE) -> None:
    """The connections of one session, together, received each expected observation once."""
    expected = case.expect(posted)
    whole = Feed(parts[0].ws)
    whole.rows = [r for p in parts for r in p.rows]
    whole.stations = parts[-1].stations
    whole.units = parts[-1].units
    got = [(r["stid"], r["sensor"], r["set"], r["date"]) for r in whole.rows]
    assert len(got) == len(set(got)), "duplicated observations"
    assert set(got) == {o.key for o in expected}, "missing or extra observations"
    assert_rows(case, whole, expected)
    for p in parts:  # each connection described its own stations before their data
        assert {r["stid"] for r in p.rows} <= set(p.stations)


async def test_resume_after_an_abrupt_drop_with_cursor_is_exact(srv: Server) -> None:
    with srv.client() as c:
        token = feed_token(c)
    try:
        ingest = Ingest(srv).start()
        first = await Feed.open(srv, token, CASE.query)
        await first.until_count(100)
        processed = first.cursors[-1]  # the last data message the client processed
        first.ws.transport.abort()  # the network drops: no close frame, unread data lost
        await ingest.until_posted(5)  # the feed runs on while the client is away
        second = await Feed.open(srv, token, f"cursor={processed}", session=first.session)
        assert second.auth["messages"] == ["Restarting from provided session id."]
        assert second.auth["session"] == first.session
        await second.until_count(100)
        posted = await ingest.finish()
        await second.until({o.key for o in CASE.expect(posted)} - {k for k in keys(first)})
        await second.close()
        assert_exact([first, second], posted)
    finally:
        srv.stop()


async def test_resume_after_stop_is_exact(srv: Server) -> None:
    with srv.client() as c:
        token = feed_token(c)
    try:
        ingest = Ingest(srv).start()
        parts: list[Feed] = []
        session: str | None = None
        for _ in range(3):
            feed = await Feed.open(srv, token, "" if session else CASE.query, session=session)
            session = feed.session
            parts.append(feed)
            await feed.until_count(60)
            await feed.ws.send(orjson.dumps({"feed_action": "stop"}).decode())
            assert await feed.to_close() == 1000  # everything sent before the close is read
            await ingest.until_posted(3)
        last = await Feed.open(srv, token, session=session)
        parts.append(last)
        posted = await ingest.finish()
        await last.until(
            {o.key for o in CASE.expect(posted)} - {k for p in parts[:-1] for k in keys(p)}
        )
        await last.close()
        assert_exact(parts, posted)
        assert srv.engine.hub.direct_items > 0  # live rounds went straight to the connection
    finally:
        srv.stop()


async def test_plain_resume_after_a_clean_close_never_repeats(srv: Server) -> None:
    """A client that closes normally (its library's close) and resumes with the session id
    only receives nothing twice: the resume starts after the last row the server handed over
    (rows still in flight when the client closed are dropped by its library, as with
    Synoptic; ``cursor`` is the way to get those too)."""
    with srv.client() as c:
        token = feed_token(c)
    try:
        ingest = Ingest(srv).start()
        first = await Feed.open(srv, token, CASE.query)
        await first.until_count(80)
        await first.close()
        await ingest.until_posted(3)
        second = await Feed.open(srv, token, session=first.session)
        posted = await ingest.finish()
        expected = CASE.expect(posted)
        last_tick = expected[-1].batch
        await second.until({o.key for o in expected if o.batch == last_tick})
        await second.close()
        got = sorted_keys(first) + sorted_keys(second)
        assert len(got) == len(set(got)), "duplicated observations"
        order = {o.key: n for n, o in enumerate(expected)}
        assert [order[k] for k in got] == sorted(order[k] for k in got), "out of log order"
        assert set(got) <= set(order)
        # whatever is missing was in flight at the close: just after the first's last row
        missing = sorted(order[k] for k in set(order) - set(got))
        if missing:
            seen_first = [order[k] for k in sorted_keys(first)]
            assert missing == list(range(max(seen_first) + 1, max(seen_first) + 1 + len(missing)))
    finally:
        srv.stop()


def keys(feed: Feed) -> set[tuple[str, str, int, int]]:
    return {(r["stid"], r["sensor"], r["set"], r["date"]) for r in feed.rows}


def sorted_keys(feed: Feed) -> list[tuple[str, str, int, int]]:
    return [(r["stid"], r["sensor"], r["set"], r["date"]) for r in feed.rows]


async def test_resume_after_a_server_restart_is_exact(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    with srv.client() as c:
        make_network(c)
        token = feed_token(c)
    first = await Feed.open(srv, token, CASE.query)
    ingest = Ingest(srv).start()
    await first.until_count(60)
    await ingest.until_posted(10)
    posted = await ingest.finish()  # the client has a backlog unread when the server stops
    srv.stop()
    code = await first.to_close()
    assert code == 1012, (code, first.close_reason)
    srv = start_server(tmp_path / "data")
    try:
        ingest = Ingest(srv, first_tick=len({o.batch for o in posted})).start()
        second = await Feed.open(srv, token, session=first.session)
        assert second.auth["code"] == "success", second.auth
        await ingest.until_posted(10)
        posted += await ingest.finish()
        await second.until({o.key for o in CASE.expect(posted)} - keys(first))
        await second.close()
        assert_exact([first, second], posted)
    finally:
        srv.stop()


def small_socket(server: Server) -> socket.socket:
    """A client socket with a tiny receive buffer, so that an unread feed backs up at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = server.url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock


async def test_slow_consumer_is_closed_with_4000_and_resume_delivers_what_it_missed(
    tmp_path: Path,
) -> None:
    srv = start_server(tmp_path / "data", subscriber_queue_bytes=1024)
    everything = Case({"qc": "none"}, remove=frozenset())
    try:
        with srv.client() as c:
            make_network(c)
            token = feed_token(c)
            first = await Feed.open(
                srv, token, everything.query, sock=small_socket(srv), compression=None
            )
            # The client reads nothing now (this loop is blocked in the posts): the kernel's
            # buffers fill (a few MB on loopback), then the server's, then its 1 KB queue.
            posted: list[Obs] = []
            start = minute_ms(int(time.time() * 1000)) - 47 * 3_600_000
            tick = 0
            while srv.engine.hub.overflows == 0:
                assert tick < 2500, "the slow consumer was never cut off"
                batch = [
                    o
                    for k in range(tick, tick + 20)
                    for o in minute_batch(k, start + k * 60_000, k)
                ]
                post(c, batch)
                posted += batch
                tick += 20
            more = minute_batch(tick, start + tick * 60_000, tick)
            post(c, more)
            posted += more
        code = await first.to_close()
        assert code == 4000, (code, first.close_reason)
        assert "slow" in first.close_reason
        second = await Feed.open(srv, token, session=first.session)
        await second.until({o.key for o in everything.expect(posted)} - keys(first))
        await second.close()
        assert_exact([first, second], posted, everything)
    finally:
        srv.stop()


async def test_resuming_a_session_still_connected_takes_it_over(srv: Server) -> None:
    with srv.client() as c:
        token = feed_token(c)
    try:
        ingest = Ingest(srv).start()
        first = await Feed.open(srv, token, CASE.query)
        await first.until_count(40)
        # a half-open connection: the client is gone but the server has not noticed yet
        second = await Feed.open(srv, token, session=first.session)
        assert second.auth["code"] == "success"
        code = await first.to_close()  # the old connection is closed, all it was sent read
        assert code == 1000, (code, first.close_reason)
        await ingest.until_posted(3)
        posted = await ingest.finish()
        await second.until({o.key for o in CASE.expect(posted)} - keys(first))
        await second.close()
        assert_exact([first, second], posted)
    finally:
        srv.stop()


async def test_an_expired_session_cannot_be_resumed(tmp_path: Path) -> None:
    retention_hours = 2.0 / 3600  # two seconds
    srv = start_server(tmp_path / "data", feed_session_retention_hours=retention_hours)
    try:
        with srv.client() as c:
            make_network(c)
            token = feed_token(c)
        feed = await Feed.open(srv, token, "state=ut")
        await feed.close()
        closed_at = time.monotonic()
        while time.monotonic() - closed_at < 2.5:  # wait out the retention on the clock
            await asyncio.sleep(0.1)
        again = await Feed.open(srv, token, session=feed.session)
        assert again.auth["code"] == "failed", again.auth
        assert again.auth["session"] == ""
        assert any("session" in m for m in again.auth["messages"])
        assert await again.to_close() == 1008
        unknown = await Feed.open(srv, token, session="not-a-session")
        assert unknown.auth["code"] == "failed"
        assert await unknown.to_close() == 1008
    finally:
        srv.stop()
    # expired sessions are deleted, at start and while the server runs: tests/test_feed_limits.py


@pytest.mark.parametrize("store_mode", ["sqlite"], indirect=True)  # reads the SQLite file
async def test_rewind_replays_what_arrived_in_the_last_minutes_then_goes_live(
    tmp_path: Path,
) -> None:
    srv = start_server(tmp_path / "data")
    now = minute_ms(int(time.time() * 1000))
    with srv.client() as c:
        make_network(c)
        token = feed_token(c)
        old = minute_batch(0, now - 30 * 60_000, 0)
        post(c, old)
    srv.stop()
    # make the first batch have arrived ten minutes ago (the log keeps arrival times)
    with closing(sqlite3.connect(tmp_path / "data" / "streamgauge.db")) as db:
        db.execute("UPDATE obs SET received = received - 600000")
        db.commit()
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            recent = minute_batch(1, now - 20 * 60_000, 1)
            post(c, recent)
            five = await Feed.open(srv, token, "rewind=5")
            fifteen = await Feed.open(srv, token, "rewind=15&stid=KDEN")
            live = minute_batch(2, now - 10 * 60_000, 2)
            post(c, live)
        everything = Case({}).expect(old + recent + live)
        await five.until({o.key for o in Case({}).expect(recent + live)})
        assert_rows(Case({}), five, Case({}).expect(recent + live))
        kden = Case({"stid": "KDEN"}, {"KDEN"})
        await fifteen.until({o.key for o in kden.expect(old + recent + live)})
        assert_rows(kden, fifteen, kden.expect(old + recent + live))
        assert everything
        await five.close()
        await fifteen.close()
    finally:
        srv.stop()


async def test_resume_ignores_new_arguments_and_checks_cursor(srv: Server) -> None:
    try:
        with srv.client() as c:
            token = feed_token(c)
            feed = await Feed.open(srv, token, "stid=KLAX")
            await feed.close()
            for bad in ("abc", "-1", "99999999"):
                again = await Feed.open(srv, token, f"cursor={bad}", session=feed.session)
                assert again.auth["code"] == "failed", again.auth
                assert any("cursor" in m for m in again.auth["messages"]), again.auth
                assert await again.to_close() == 1008
            # new arguments on a resume are ignored: the session's own apply
            resumed = await Feed.open(srv, token, "stid=KSFO&colour=red", session=feed.session)
            assert resumed.auth["code"] == "success", resumed.auth
            now = minute_ms(int(time.time() * 1000))
            batch = minute_batch(0, now - 60_000, 0)
            post(c, batch)
        klax = Case({"stid": "KLAX"}, {"KLAX"})
        await resumed.until({o.key for o in klax.expect(batch)})
        assert_rows(klax, resumed, klax.expect(batch))
        await resumed.close()
    finally:
        srv.stop()


async def test_under_a_server_without_the_message_writer_the_feed_sends_through_asgi(
    tmp_path: Path,
) -> None:
    """The feed's live sessions write through the server's MessageWriter when it offers one
    (``faces/websocket.py``); under any other ASGI WebSocket implementation they send message
    by message through ASGI, with the same messages and the same exact resume."""
    srv = start_server(tmp_path / "data", uvicorn_options={"ws": "websockets-sansio"})
    assert srv.server.config.ws == "websockets-sansio"  # uvicorn's own class: no writer
    with srv.client() as c:
        make_network(c)
        token = feed_token(c)
    try:
        ingest = Ingest(srv).start()
        first = await Feed.open(srv, token, CASE.query)
        await first.until_count(60)
        await first.ws.send(orjson.dumps({"feed_action": "stop"}).decode())
        assert await first.to_close() == 1000
        await ingest.until_posted(3)
        second = await Feed.open(srv, token, session=first.session)
        posted = await ingest.finish()
        await second.until({o.key for o in CASE.expect(posted)} - keys(first))
        await second.close()
        assert_exact([first, second], posted)
        assert srv.engine.hub.direct_items == 0
    finally:
        srv.stop()


async def test_resumes_racing_for_one_session_leave_one_connection_serving_it(srv: Server) -> None:
    """Three connections resume the same session at once, while it is being ingested into:
    each takes it over from the one before (closed with 1000), including one still opening
    (reading the session, sending ``auth``) when the next one comes; in the end one serves it,
    and together they received every observation once."""
    with srv.client() as c:
        token = feed_token(c)
    try:
        ingest = Ingest(srv).start()
        first = await Feed.open(srv, token, CASE.query)
        await first.until_count(20)
        await first.close()
        racing = list(
            await asyncio.gather(*(Feed.open(srv, token, session=first.session) for _ in range(3)))
        )
        assert all(f.auth["code"] == "success" for f in racing), [f.auth for f in racing]

        async def drain(feed: Feed) -> int | None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await feed.read()
            return feed.close_code

        tasks = [asyncio.create_task(drain(f)) for f in racing]
        await ingest.until_posted(3)
        posted = await ingest.finish()
        expected = {o.key for o in CASE.expect(posted)}
        async with asyncio.timeout(30):
            while expected - keys(first) - set().union(*(keys(f) for f in racing)):
                await asyncio.sleep(0.02)
        closed = [t for t in tasks if t.done()]
        assert len(closed) == 2, "exactly one of the racing connections still serves"
        assert all(t.result() == 1000 for t in closed), [t.result() for t in closed]
        for f in racing:
            await f.close()
        await asyncio.gather(*tasks)
        assert_exact([first, *racing], posted)
    finally:
        srv.stop()
