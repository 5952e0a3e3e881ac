"""The feed stores' shared memory (``store/feedsessions.LiveFeeds``) without a database: a
position write that fails leaves its sessions to be written again, and a session whose
connection ended is taken over only once its position is written, or its write failed (the
position is then kept in memory, resumed from there and written by the next flush)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streamgauge.domain.feeds import FeedSession, FeedToken
from streamgauge.store.feedsessions import LiveFeeds


class Flaky(LiveFeeds[Any, Any]):
    """Positions written to a list; the next write fails while ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__(None, retention_seconds=60.0, sessions_per_token=10)  # type: ignore[arg-type]
        self.fail = False
        self.written: list[list[tuple[str, int]]] = []
        self.gate: asyncio.Event | None = None  # while set to an unset event, writes wait

    async def _write_positions(self, sessions: list[FeedSession], now: int) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise OSError("disk full")
        self.written.append([(s.id, s.position) for s in sessions])

    # (no tables: these tests create no token and no session through the store)
    def _insert_token(self, tx: Any, token: FeedToken, dig: bytes) -> int:
        raise AssertionError("not reached")

    def _revoked(self, tx: Any, token_pk: int) -> None:
        raise AssertionError("not reached")

    def _evict(self, tx: Any, token_pk: int, keep: list[str], limit: int) -> int:
        raise AssertionError("not reached")

    async def expire(self) -> int:
        raise AssertionError("not reached")


TOKEN = FeedToken(1, "ft1", 1, "t", "2026-01-01T00:00:00Z")


async def test_a_failed_position_write_leaves_the_sessions_to_write_again() -> None:
    feeds = Flaky()
    a, b = FeedSession("a", 1, "", 0), FeedSession("b", 1, "", 0)
    feeds.opened(a, lambda: None)
    feeds.opened(b, lambda: None)
    feeds.moved(a, 5)
    feeds.moved(b, 7)
    feeds.fail = True
    with pytest.raises(OSError):
        await feeds.flush()
    assert a.dirty and b.dirty
    feeds.fail = False
    await feeds.flush()
    assert feeds.written == [[("a", 5), ("b", 7)]]
    await feeds.flush()  # nothing moved since: nothing written
    assert len(feeds.written) == 1


async def test_a_take_over_waits_for_the_ended_connection_even_when_its_write_fails() -> None:
    feeds = Flaky()
    session = FeedSession("s", TOKEN.pk, "", 0)
    feeds.opened(session, lambda: None)
    feeds.moved(session, 21)
    feeds.gate = asyncio.Event()
    feeds.fail = True
    ending = asyncio.create_task(feeds.closed(session))
    await asyncio.sleep(0)
    taking = asyncio.create_task(feeds.take_over(TOKEN, "s"))
    await asyncio.sleep(0.01)
    assert not taking.done()  # the old connection is still writing its position
    feeds.gate.set()
    await ending  # the failure is logged, not raised
    await asyncio.wait_for(taking, 5)
    # ended, not written: the resume continues from the position kept in memory
    assert "s" not in feeds._live and feeds.written == []
    resumed = await feeds.session(TOKEN, "s")
    assert resumed is session and resumed.position == 21
    feeds.opened(resumed, lambda: None)  # live again: the flush writes it as it moves
    feeds.fail = False
    await feeds.flush()
    assert feeds.written == [[("s", 21)]] and feeds._unsaved == {}


async def test_an_unsaved_position_is_written_by_the_next_flush_and_held_until_then() -> None:
    feeds = Flaky()
    session = FeedSession("s", TOKEN.pk, "", 0)
    feeds.opened(session, lambda: None)
    feeds.moved(session, 8)
    feeds.fail = True
    await feeds.closed(session)
    assert feeds._attached(TOKEN.pk) == ["s"] and feeds._held() == ["s"]  # not evicted, kept
    other = FeedToken(2, "ft2", 1, "u", "2026-01-01T00:00:00Z")
    assert await feeds.session(other, "s") is None  # another token's resume: not found
    with pytest.raises(OSError):
        await feeds.flush()
    assert feeds._held() == ["s"]  # still failing: still kept
    feeds.fail = False
    await feeds.flush()
    assert feeds.written == [[("s", 8)]] and feeds._held() == []
    await feeds.flush()
    assert len(feeds.written) == 1  # written once


async def test_a_revoked_token_drops_its_unsaved_sessions() -> None:
    feeds = Flaky()
    session = FeedSession("s", TOKEN.pk, "", 0)
    feeds.opened(session, lambda: None)
    feeds.fail = True
    await feeds.closed(session)
    feeds._drop_token(TOKEN.pk)
    assert feeds._held() == [] and feeds._attached(TOKEN.pk) == []


async def test_the_flusher_retries_a_failed_pass_and_stops_only_with_the_store(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from streamgauge.domain.errors import Unavailable
    from streamgauge.store import feedsessions

    monkeypatch.setattr(feedsessions, "FLUSH_SECONDS", 0.001)
    outcomes: list[BaseException | None] = [
        OSError("disk full"),
        OSError("disk full"),
        Unavailable("out of reach", retry_after=1),
        None,
        Unavailable("the store is closed"),
        None,  # not reached: the flusher has stopped
    ]
    passes: list[bool] = []

    class Scripted(Flaky):
        async def _flush_pass(self, expire: bool) -> None:
            passes.append(expire)
            outcome = outcomes[len(passes) - 1]
            if outcome is not None:
                raise outcome

    await asyncio.wait_for(Scripted()._flusher(), 5)
    assert len(passes) == 5
    warnings = [r.getMessage() for r in caplog.records if r.name == "streamgauge.feed"]
    assert warnings == [
        "feed sessions: positions not written (disk full); retrying",  # once, not twice
        "feed sessions: positions written again",
    ]
