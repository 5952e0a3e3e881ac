"""Feed sessions do not accumulate (issue 11 item 20, the feed part), against a real server with
the real ``websockets`` client: a token keeps at most ``feed_sessions_per_token`` sessions (the
least recently used detached ones make room; a new connection is refused when all are attached),
and detached sessions are deleted once their retention (their time to live) has passed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import Server, start_server
from tests.test_feed import TIMEOUT, Feed, feed_token, make_network

STORES = ["sqlite"]  # these tests read the feed sessions from the SQLite file

RETENTION_S = 3.0  # a short retention for the expiry tests


async def wait_out(seconds: float) -> None:
    """Let ``seconds`` pass on the clock (retention is a wall-clock duration)."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        await asyncio.sleep(0.1)


def stored(srv: Server, token: str | None = None) -> set[str]:
    """The ids of the sessions in the database (of one token's sessions, if given)."""
    with closing(sqlite3.connect(srv.data / "streamgauge.db")) as db:
        if token is None:
            rows = db.execute("SELECT id FROM feed_sessions").fetchall()
        else:
            tok = srv.engine.feeds.token_for(token)
            assert tok is not None
            rows = db.execute(
                "SELECT id FROM feed_sessions WHERE token_pk = ?", (tok.pk,)
            ).fetchall()
    return {r[0] for r in rows}


async def open_and_drop(srv: Server, token: str, abrupt: bool = False) -> str:
    """Connect, read the auth message, leave: cleanly, or by dropping the TCP connection."""
    feed = await Feed.open(srv, token, "state=ut")
    assert feed.auth["code"] == "success", feed.auth
    if abrupt:
        feed.ws.transport.abort()
    else:
        await feed.close()
    return feed.session


async def stopped(feed: Feed) -> None:
    """Stop a session and read up to the server's close: by then it is detached."""
    await feed.ws.send('{"feed_action": "stop"}')
    assert await feed.to_close() == 1000


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll ``check()`` until true; TIMEOUT bounds the wait, it is not an expectation of speed."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {TIMEOUT:g} s: {what}") from None


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path / "data", feed_sessions_per_token=5)
    try:
        with s.client() as c:
            make_network(c)
        yield s
    finally:
        s.stop()


async def test_open_and_drop_connections_leave_at_most_the_cap_of_sessions(
    capped: Server,
) -> None:
    """issue 11 item 20: many open-and-drop connections leave at most the token's cap of session
    rows: each new session evicts the least recently used detached one, so the latest sessions
    stay resumable and the earliest are gone; another token's sessions are untouched."""
    srv = capped
    with srv.client() as c:
        token = feed_token(c, name="busy")
        other = feed_token(c, name="quiet")
    kept = [await open_and_drop(srv, other) for _ in range(2)]
    sessions = []
    for n in range(60):
        sessions.append(await open_and_drop(srv, token, abrupt=n % 3 == 0))
        assert len(stored(srv, token)) <= 5
    assert len(stored(srv, token)) == 5
    # least recently used go first: the newest stays, none of the early ones does (a session's
    # use ends when the server notices its drop, so the order of the last few may vary)
    assert sessions[-1] in stored(srv, token)
    assert not set(sessions[:50]) & stored(srv, token)
    assert set(kept) <= stored(srv, other)
    assert srv.engine.feeds.sessions_of(srv.engine.feeds.token_for(token)) == 5
    # the evicted are gone for good, the kept resume
    gone = await Feed.open(srv, token, session=sessions[0])
    assert gone.auth["code"] == "failed" and "invalid session id" in gone.auth["messages"]
    assert await gone.to_close() == 1008
    for sid in [sessions[-1], *kept]:
        back = await Feed.open(srv, other if sid in kept else token, session=sid)
        assert back.auth["code"] == "success", back.auth
        assert back.auth["messages"] == ["Restarting from provided session id."]
        await stopped(back)


async def test_concurrent_open_and_drop_never_passes_the_cap(capped: Server) -> None:
    """issue 11 item 20: connections that open and drop all at once still never leave more than
    the cap: each either gets a session or, when every session was attached at that moment,
    the limit's failed ``auth`` and 1008."""
    srv = capped
    with srv.client() as c:
        token = feed_token(c)

    async def one() -> str:
        feed = await Feed.open(srv, token, "state=ut")
        if feed.auth["code"] == "success":
            await feed.close()
            return "ok"
        assert feed.auth["messages"][0] == "too many sessions for this feed token", feed.auth
        assert await feed.to_close() == 1008
        return "refused"

    for _ in range(4):
        outcomes = await asyncio.gather(*(one() for _ in range(15)))
        assert "ok" in outcomes
        assert len(stored(srv, token)) <= 5
        # the server ends a session shortly after the client's close; wait, so that each round
        # starts with every session detached (else the whole round may rightly be refused)
        await eventually(lambda: not srv.engine.feeds._live, "every connection has ended")
    assert len(stored(srv, token)) == 5
    room = await Feed.open(srv, token)  # all detached: room again
    assert room.auth["code"] == "success", room.auth
    await stopped(room)


async def test_when_every_session_of_a_token_is_attached_a_new_one_is_refused(
    capped: Server,
) -> None:
    """issue 11 item 20: at the cap with every session connected, a new connection gets a
    failed ``auth`` saying why and a policy close (1008), and nothing is written; resuming an
    attached session still works (it takes the session over), and once one session is
    detached a new connection evicts it and succeeds."""
    srv = capped
    with srv.client() as c:
        token = feed_token(c)
    feeds = [await Feed.open(srv, token, "state=ut") for _ in range(5)]
    assert all(f.auth["code"] == "success" for f in feeds)
    before = stored(srv, token)
    for _ in range(3):
        refused = await Feed.open(srv, token, "state=ca")
        assert refused.auth["code"] == "failed", refused.auth
        assert refused.auth["session"] == ""
        assert refused.auth["messages"][0] == "too many sessions for this feed token"
        assert any("at most 5 sessions" in m for m in refused.auth["messages"])
        assert await refused.to_close() == 1008
        assert "session limit" in refused.close_reason
    assert stored(srv, token) == before
    # a resume creates nothing: it takes the attached session over
    taken = await Feed.open(srv, token, session=feeds[0].session)
    assert taken.auth["code"] == "success", taken.auth
    assert await feeds[0].to_close() == 1000
    # one detached session makes room for one new one, and is the one evicted
    await stopped(feeds[1])
    fresh = await Feed.open(srv, token, "state=ca")
    assert fresh.auth["code"] == "success", fresh.auth
    assert stored(srv, token) == before - {feeds[1].session} | {fresh.session}
    refused = await Feed.open(srv, token)
    assert refused.auth["code"] == "failed" and await refused.to_close() == 1008
    for f in [taken, *feeds[2:], fresh]:
        await stopped(f)


async def test_detached_sessions_expire_after_their_retention(tmp_path: Path) -> None:
    """issue 11 item 20: a detached session is deleted once its retention (its time to live
    since it was last connected) has passed, while the server runs, not only at the next
    start; a session that stays connected is never expired, and its retention counts from
    when it ends."""
    srv = start_server(tmp_path / "data", feed_session_retention_hours=RETENTION_S / 3600)
    try:
        with srv.client() as c:
            make_network(c)
            token = feed_token(c)
        attached = await Feed.open(srv, token, "state=ut")
        dropped = {await open_and_drop(srv, token, abrupt=n % 2 == 0) for n in range(6)}
        assert dropped <= stored(srv)
        await eventually(lambda: stored(srv) == {attached.session}, "detached sessions expire")
        assert srv.engine.feeds.sessions_of(srv.engine.feeds.token_for(token)) == 1
        await wait_out(RETENTION_S + 0.5)  # the attached one outlives its retention
        assert stored(srv) == {attached.session}
        await stopped(attached)
        back = await Feed.open(srv, token, session=attached.session)  # fresh since it ended
        assert back.auth["code"] == "success", back.auth
        await stopped(back)
        await eventually(lambda: not stored(srv), "the ended session expires in turn")
    finally:
        srv.stop()


async def test_expired_sessions_are_deleted_when_the_server_starts(tmp_path: Path) -> None:
    """issue 11 item 20: sessions that expired while the server was down are deleted as it
    starts."""
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            make_network(c)
            token = feed_token(c)
        for _ in range(3):
            await open_and_drop(srv, token)
    finally:
        srv.stop()
    assert len(stored(srv)) == 3
    await wait_out(RETENTION_S + 0.5)  # older than the retention of the next start
    again = start_server(tmp_path / "data", feed_session_retention_hours=RETENTION_S / 3600)
    try:
        assert not stored(again)
    finally:
        again.stop()
