"""Feed tokens and durable feed sessions: tokens found by their secret and kept across a
reopen, revoked with their sessions; a session's position stored when it moves and resumed
after a reopen; detached sessions expire; a token's sessions are capped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from streamgauge.domain.errors import Conflict, NotFound
from streamgauge.domain.feeds import SessionLimit
from streamgauge.store.api import FeedSessions
from tests.store.conformance.harness import Harness, seed


@asynccontextmanager
async def feeds(
    h: Harness, retention_seconds: float = 3600.0, per_token: int = 100
) -> AsyncIterator[FeedSessions]:
    f = h.feeds(retention_seconds, per_token)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


async def test_tokens_are_kept_and_revoked(backend: Harness) -> None:
    s = await seed(backend)
    async with feeds(backend) as f:
        tok, secret = await f.create_token(s.project_pk, "first")
        other, other_secret = await f.create_token(s.other_pk, "other")
        assert secret != other_secret and tok.id != other.id
        assert f.token_for(secret) == tok and f.token_for(secret + "x") is None
        assert [t.id for t in f.tokens_of(s.project_pk)] == [tok.id]
    await backend.reopen()
    async with feeds(backend) as f:
        again = f.token_for(secret)
        assert again is not None
        assert (again.id, again.project_pk, again.name) == (tok.id, s.project_pk, "first")
        with pytest.raises(NotFound):  # a token is revoked through its own project only
            await f.revoke(s.project_pk, other.id)
        await f.revoke(s.project_pk, tok.id)
        assert f.token_for(secret) is None and f.tokens_of(s.project_pk) == []
        with pytest.raises(NotFound):
            await f.revoke(s.project_pk, tok.id)
    await backend.reopen()
    async with feeds(backend) as f:
        assert f.token_for(secret) is None and f.token_for(other_secret) == other


async def test_a_token_another_instance_created_a_moment_ago_is_found(backend: Harness) -> None:
    """A process that has not heard of a new token yet (a fan-out worker serving the feed,
    another node) finds it in the table when a client connects with it at once."""
    s = await seed(backend)
    async with feeds(backend) as late, feeds(backend) as first:
        tok, secret = await first.create_token(s.project_pk, "new")
        assert await late.find_token(secret) == tok
        assert late.token_for(secret) == tok  # known from now on
        assert await late.find_token(secret + "x") is None
        assert [t.id for t in late.tokens_of(s.project_pk)] == [tok.id]


async def test_a_session_resumes_where_it_was_after_a_reopen(backend: Harness) -> None:
    s = await seed(backend)
    async with feeds(backend) as f:
        tok, secret = await f.create_token(s.project_pk, "t")
        ended = await f.create_session(tok, "vars=air_temp", 5)
        f.opened(ended, lambda: None)
        f.moved(ended, 9, 1234)
        await f.closed(ended)  # stored at once
        live = await f.create_session(tok, "vars=wind", 3)
        f.opened(live, lambda: None)
        f.moved(live, 11)  # stored by the flush of ``stop``
        assert f.sessions_of(tok) == 2
    await backend.reopen()
    async with feeds(backend) as f:
        tok2 = f.token_for(secret)
        assert tok2 is not None and f.sessions_of(tok2) == 2
        got = await f.session(tok2, ended.id)
        assert got is not None
        assert (got.args, got.position, got.after_time) == ("vars=air_temp", 9, 1234)
        got = await f.session(tok2, live.id)
        assert got is not None and (got.args, got.position, got.after_time) == (
            "vars=wind",
            11,
            None,
        )
        # a session belongs to its token
        other, _ = await f.create_token(s.project_pk, "other")
        assert await f.session(other, ended.id) is None
        assert await f.session(tok2, "no-such-session") is None
        # revoking the token deletes its sessions
        await f.revoke(s.project_pk, tok2.id)
        assert await f.session(tok2, ended.id) is None


async def test_detached_sessions_expire(backend: Harness) -> None:
    s = await seed(backend)
    retention = 0.2
    async with feeds(backend, retention_seconds=retention) as f:
        tok, _ = await f.create_token(s.project_pk, "t")
        detached = await f.create_session(tok, "a", 1)
        f.opened(detached, lambda: None)
        await f.closed(detached)
        live = await f.create_session(tok, "b", 1)
        f.opened(live, lambda: None)
        await asyncio.sleep(retention * 2)
        assert await f.session(tok, detached.id) is None
        await f.expire()  # (the service may have expired it already on its own)
        assert f.sessions_of(tok) == 1
        assert await f.session(tok, live.id) is live  # attached: never expires
        await f.closed(live)
    await backend.reopen()
    async with feeds(backend, retention_seconds=3600) as f:
        assert [t.id for t in f.tokens_of(s.project_pk)] == [tok.id]
        [t] = f.tokens_of(s.project_pk)
        assert f.sessions_of(t) == 1
        assert await f.session(t, detached.id) is None
        assert await f.session(t, live.id) is not None


async def test_a_tokens_sessions_are_capped(backend: Harness) -> None:
    s = await seed(backend)
    async with feeds(backend, per_token=2) as f:
        tok, _ = await f.create_token(s.project_pk, "t")
        first = await f.create_session(tok, "a", 1)  # claimed for its connection
        second = await f.create_session(tok, "b", 1)
        with pytest.raises(Conflict):  # every session attached: refused
            await f.create_session(tok, "c", 1)
        f.release(first.id)  # its connection ended before it opened: detached now
        third = await f.create_session(tok, "c", 1)  # evicts the detached one
        assert f.sessions_of(tok) == 2
        assert await f.session(tok, first.id) is None
        assert await f.session(tok, second.id) is not None
        assert await f.session(tok, third.id) is not None


async def test_connections_claim_take_over_and_close_on_revoke(backend: Harness) -> None:
    """What the feed face asks of the service beside tokens and positions: a session's
    project, a claim that keeps a session from eviction while its connection opens, a take-over
    that waits for the old connection to store its position, and revocation closing every
    connection of the token."""
    s = await seed(backend)
    async with feeds(backend, per_token=2) as f:
        tok, secret = await f.create_token(s.project_pk, "t")
        first = await f.create_session(tok, "a", 1)
        assert f.project_of(first) == s.project_pk
        f.release(first.id)  # detached: may be evicted ...
        f.claim(tok, first.id)  # ... unless a connection is opening it
        second = await f.create_session(tok, "b", 1)
        with pytest.raises(Conflict):
            await f.create_session(tok, "c", 1)
        f.release(first.id)
        f.release(second.id)

        # a take-over closes the serving connection and returns once it stored its position
        pending: list[asyncio.Task[None]] = []
        f.opened(second, lambda: pending.append(asyncio.create_task(f.closed(second))))
        f.moved(second, 7, 99)
        await f.take_over(tok, second.id)
        assert len(pending) == 1 and pending[0].done()
        got = await f.session(tok, second.id)
        assert got is not None and (got.position, got.after_time) == (7, 99)
        await f.take_over(tok, second.id)  # nobody serves it now: nothing to wait for

        reasons: list[str] = []
        detach = f.attach(tok, reasons.append)
        kept: list[str] = []
        f.attach(tok, kept.append)()  # detached at once: not called
        await f.revoke(s.project_pk, tok.id)
        assert len(reasons) == 1 and kept == []
        detach()
        with pytest.raises(NotFound):  # the session's token is gone
            f.project_of(first)
        assert f.token_for(secret) is None


async def test_a_take_over_while_the_ended_connection_saves_resumes_after_it(
    backend: Harness,
) -> None:
    """A connection that ended by itself (its client went away) is still writing its position
    when a resume of the same session arrives: the take-over waits for that write, and the
    session it then reads is at the position the old connection reached, not the one stored
    before (which would send what the old connection sent once more)."""
    s = await seed(backend)
    async with feeds(backend) as f:
        tok, _ = await f.create_token(s.project_pk, "t")
        session = await f.create_session(tok, "a", 1)
        f.opened(session, lambda: None)
        f.moved(session, 21)
        saving = asyncio.create_task(f.closed(session))
        await asyncio.sleep(0)  # the save has begun and not finished
        assert not saving.done()
        await f.take_over(tok, session.id)
        assert saving.done()
        got = await f.session(tok, session.id)
        assert got is not None and got.position == 21


async def test_a_position_whose_write_failed_at_the_end_is_resumed_from_memory(
    backend: Harness,
) -> None:
    """The write of an ended connection's position fails (a full disk, say): the session keeps
    that position in memory, so a resume meanwhile continues where the connection stopped
    rather than from the position stored before (a repeat); it is held from eviction, and
    the next flush writes it."""
    s = await seed(backend)
    async with feeds(backend, per_token=1) as f:
        tok, _ = await f.create_token(s.project_pk, "t")
        session = await f.create_session(tok, "a", 1)
        f.opened(session, lambda: None)
        f.moved(session, 21)
        write = f._write_positions  # type: ignore[attr-defined]

        async def full(*args: object) -> None:
            raise OSError("database or disk is full")

        f._write_positions = full  # type: ignore[attr-defined]
        await f.closed(session)  # logged, not raised: the connection still closes cleanly
        got = await f.session(tok, session.id)
        assert got is not None and got.position == 21
        with pytest.raises(SessionLimit):  # not evicted for a new session: not written yet
            await f.create_session(tok, "b", 1)
        f._write_positions = write  # type: ignore[attr-defined]
        await f.flush()
    await backend.reopen()
    async with feeds(backend) as f:
        tok2 = f.tokens_of(s.project_pk)[0]
        got = await f.session(tok2, session.id)
        assert got is not None and got.position == 21


async def test_the_flusher_goes_on_after_a_failed_write(
    backend: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A position write that fails once (a full disk, a lock held past the timeout) does not
    stop the once-a-second flush: the next one writes the positions."""
    from streamgauge.store import feedsessions

    monkeypatch.setattr(feedsessions, "FLUSH_SECONDS", 0.02)
    s = await seed(backend)
    async with feeds(backend) as f:
        tok, _ = await f.create_token(s.project_pk, "t")
        session = await f.create_session(tok, "a", 1)
        f.opened(session, lambda: None)
        write = f._write_positions  # type: ignore[attr-defined]
        calls: list[bool] = []

        async def once_full(*args: object) -> None:
            if not calls:
                calls.append(False)
                raise OSError("database or disk is full")
            await write(*args)
            calls.append(True)

        f._write_positions = once_full  # type: ignore[attr-defined]
        f.moved(session, 34)
        for _ in range(500):
            if True in calls:
                break
            await asyncio.sleep(0.01)
        assert calls[:1] == [False] and True in calls
    await backend.reopen()
    async with feeds(backend) as f:
        got = await f.session(f.tokens_of(s.project_pk)[0], session.id)
        assert got is not None and got.position == 34


async def test_a_revoked_tokens_pk_is_never_given_again(backend: Harness) -> None:
    """What a process keeps by token pk (open connections, session counts, a token read in
    flight) must not mix a revoked token with a new one."""
    s = await seed(backend)
    async with feeds(backend) as f:
        first, _ = await f.create_token(s.project_pk, "first")
        last, _ = await f.create_token(s.project_pk, "last")
        await f.revoke(s.project_pk, last.id)  # the highest pk
        again, _ = await f.create_token(s.project_pk, "again")
        assert again.pk not in (first.pk, last.pk)
    await backend.reopen()
    async with feeds(backend) as f:
        after, _ = await f.create_token(s.project_pk, "after a reopen")
        assert after.pk not in (first.pk, last.pk, again.pk)


async def test_a_token_read_keeps_what_changed_while_it_ran(
    backend: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading every token again (at start, after missed notices) takes a moment: a token
    created meanwhile is not dropped as "no longer stored", and one revoked meanwhile does
    not come back, although the read began before either."""
    s = await seed(backend)
    async with feeds(backend) as f:
        kept, kept_secret = await f.create_token(s.project_pk, "kept")
        revoked, revoked_secret = await f.create_token(s.project_pk, "revoked")
        # (PostgreSQL reads the tokens again when its listener connects: let that finish)
        await asyncio.gather(*list(getattr(f, "_pending", ())))
        store = f._store  # type: ignore[attr-defined]
        read = store.read
        created: list[str] = []

        async def meanwhile(fn: object, **kw: object) -> object:
            if created:  # once: any other read goes through
                return await read(fn, **kw)
            created.append("")
            rows = await read(fn, **kw)
            _, secret = await f.create_token(s.project_pk, "created meanwhile")
            created[0] = secret
            await f.revoke(s.project_pk, revoked.id)
            return rows

        monkeypatch.setattr(store, "read", meanwhile)
        await f.reload_tokens()  # type: ignore[attr-defined]
        await asyncio.gather(*list(getattr(f, "_pending", ())))
        assert created and f.token_for(created[0]) is not None
        assert f.token_for(revoked_secret) is None
        assert f.token_for(kept_secret) == kept
        assert {t.name for t in f.tokens_of(s.project_pk)} == {"kept", "created meanwhile"}
