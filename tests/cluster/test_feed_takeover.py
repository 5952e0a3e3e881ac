"""Push-feed sessions across two real nodes: a session served on A and resumed on B while A's
connection is still open ends A's connection (closing code 1000) and continues on B from
where A stopped, under continuous ingest, with nothing lost or pushed twice; a token made on A
works on B, and revoking it on A ends its sessions on B."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from tests.cluster.test_two_nodes import WAIT, Node, nodes  # noqa: F401 - the fixture
from tests.test_feed import API, Feed, Obs, feed_token, make_network, minute_batch, minute_ms, post
from tests.test_feed_resume import CASE, assert_exact, keys

BASE = minute_ms(int(time.time() * 1000)) - 10 * 3_600_000


def at(node: Node) -> Any:
    """What ``Feed.open`` needs of a server: its URL."""
    return SimpleNamespace(url=node.base)


class Ingest:
    """Every station's report, one minute a batch, posted to ``nodes`` in turn, in the
    background until stopped."""

    def __init__(self, *targets: Node) -> None:
        self.nodes = targets
        self.posted: list[Obs] = []
        self.tick = 0
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        clients = [n.client() for n in self.nodes]
        try:
            while not self._stop.is_set():
                obs = minute_batch(self.tick, BASE + self.tick * 60_000, self.tick)
                c = clients[self.tick % len(clients)]
                await asyncio.to_thread(post, c, obs)
                self.posted.extend(obs)
                self.tick += 1
                await asyncio.sleep(0.02)
        finally:
            for c in clients:
                c.close()

    async def until_posted(self, ticks: int) -> None:
        goal = self.tick + ticks
        while self.tick < goal:
            await asyncio.sleep(0.01)

    async def finish(self) -> list[Obs]:
        self._stop.set()
        await self._task
        return self.posted


async def test_a_session_taken_over_on_another_node_continues_exactly(
    nodes: tuple[Node, Node],  # noqa: F811
) -> None:
    a, b = nodes
    with a.client() as ca:
        make_network(ca)
        token = feed_token(ca)  # made on A, used on both
    first = await Feed.open(at(a), token, CASE.query)
    assert first.auth["code"] == "success", first.auth
    ingest = Ingest(a, b)  # to both nodes in turn
    await first.until_count(40)
    # Resumed on B while A still serves it (a half-open connection, say): A's connection
    # ends, having saved where it stopped, and B goes on from there.
    second = await Feed.open(at(b), token, session=first.session)
    assert second.auth["code"] == "success", second.auth
    assert await first.to_close() == 1000, first.close_reason
    assert "another connection" in first.close_reason
    await ingest.until_posted(3)
    posted = await ingest.finish()
    await second.until({o.key for o in CASE.expect(posted)} - keys(first))
    await second.close()
    assert_exact([first, second], posted)
    assert second.cursors[0] > first.cursors[-1]


async def test_a_token_revoked_on_one_node_ends_its_sessions_on_the_other(
    nodes: tuple[Node, Node],  # noqa: F811
) -> None:
    a, b = nodes
    with a.client() as ca:
        make_network(ca)
        made = ca.post(f"{API}/p1/feedtokens", json={"name": "x"}).json()
    started = time.monotonic()
    while True:  # made on A: B hears of it when A's transaction commits
        on_b = await Feed.open(at(b), made["token"])
        if on_b.auth["code"] == "success":
            break
        await on_b.to_close()
        assert time.monotonic() - started < WAIT, on_b.auth
        await asyncio.sleep(0.01)
    print(f"a token made on A accepted by B after {(time.monotonic() - started) * 1000:.0f} ms")
    with a.client() as ca:
        assert ca.delete(f"{API}/p1/feedtokens/{made['id']}").status_code == 204
    assert await on_b.to_close() == 1008
    assert "revoked" in on_b.close_reason
    again = await Feed.open(at(b), made["token"], session=on_b.session)
    assert again.auth["code"] == "failed" and again.auth["messages"] == ["invalid token"]
    await again.close()  # its transport would otherwise be collected in a later test
