"""The feed stores' shared memory (``store/feedsessions.LiveFeeds``) without a database: a
position write that fails leaves its sessions to be written again, and a session whose
connection ended is taken over only once its position is written, or its write failed."""

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
    with pytest.raises(OSError):
        await ending
    await asyncio.wait_for(taking, 5)
    # ended: the resume reads the position stored before, and sends again rather than skips
    assert "s" not in feeds._live and feeds.written == []
