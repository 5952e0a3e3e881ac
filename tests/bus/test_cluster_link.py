"""Two and three nodes' links on the real NATS server over one shared log (an in-memory stand-in
for the store: gapless cursors assigned under a lock): every node hands on every cursor once, in
order, whoever committed it, also when a commit is never published."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from streamgauge.bus.api import Kind
from streamgauge.bus.codec import decode_batch, encode_batch
from streamgauge.bus.jetstream import NatsBus, delete_cluster_stream
from streamgauge.core.cluster import Channel, ClusterLink
from streamgauge.domain.batch import Batch

from .test_jetstream import NATS_URL


class SharedLog:
    def __init__(self) -> None:
        self.rows: list[int] = []  # cursor i+1 -> project
        self.lock = asyncio.Lock()

    async def commit(self, n: int, project: int) -> Batch:
        async with self.lock:
            first = len(self.rows) + 1
            self.rows.extend([project] * n)
        cur = np.arange(first, first + n, dtype=np.int64)
        return Batch(project, cur, cur, cur, [float(c) for c in cur], np.zeros(n, np.int64))

    async def head(self) -> int:
        return len(self.rows)

    async def read(self, after: int, upto: int | None) -> Sequence[tuple[int, int, Batch]]:
        end = len(self.rows) if upto is None else min(upto, len(self.rows))
        runs: list[tuple[int, int, Batch]] = []
        c = after + 1
        while c <= end:
            p = self.rows[c - 1]
            d = c
            while d + 1 <= end and self.rows[d] == p:
                d += 1
            cur = np.arange(c, d + 1, dtype=np.int64)
            runs.append((c, d, Batch(p, cur, cur, cur, [float(x) for x in cur], 0 * cur)))
            c = d + 1
        return runs


def trim(b: Batch, after: int) -> Batch:
    return b.take(b.cursors > after)


class Node:
    def __init__(self, log: SharedLog, cluster: str, name: str) -> None:
        self.log = log
        self.got: list[int] = []
        self.channel: Channel[Batch] = Channel(
            "batch",
            encode=encode_batch,
            decode=decode_batch,
            span=lambda b: (b.first, b.last),
            trim=trim,
            read=log.read,
            head=log.head,
            deliver=lambda b: self.got.extend(int(c) for c in b.cursors),
            grace=0.05,
        )
        self.link = ClusterLink(NatsBus(NATS_URL, cluster, node_id=name), [self.channel], 0.2)

    async def start(self) -> None:
        async def heads() -> dict[Kind, int]:
            return {"batch": await self.log.head()}

        await self.link.start(heads)

    async def ingest(self, n: int, project: int, publish: bool = True) -> None:
        b = await self.log.commit(n, project)
        if publish:
            self.link.committed("batch", b)
        else:  # killed between commit and publish: nothing goes out, nothing handed on here
            pass


@pytest.fixture
async def cluster() -> AsyncIterator[str]:
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    await delete_cluster_stream(NATS_URL, name)


async def wait_for(nodes: list[Node], n: int) -> None:
    for _ in range(200):
        if all(len(x.got) >= n for x in nodes):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)


async def test_concurrent_commits_on_three_nodes_reach_all_in_order(cluster: str) -> None:
    log = SharedLog()
    nodes = [Node(log, cluster, f"n{i}") for i in range(3)]
    for x in nodes:
        await x.start()
    try:
        rnd = random.Random(7)

        async def producer(x: Node) -> None:
            for _ in range(40):
                await x.ingest(rnd.randint(1, 20), rnd.randint(1, 3))
                await asyncio.sleep(rnd.random() * 0.005)

        await asyncio.gather(*(producer(x) for x in nodes))
        total = await log.head()
        await wait_for(nodes, total)
        for x in nodes:
            assert x.got == list(range(1, total + 1))
    finally:
        for x in nodes:
            await x.link.close()


async def test_a_commit_never_published_is_filled_from_the_store(cluster: str) -> None:
    log = SharedLog()
    a, b = Node(log, cluster, "a"), Node(log, cluster, "b")
    await a.start()
    await b.start()
    try:
        await a.ingest(5, 1)
        await a.ingest(3, 2, publish=False)  # a dies between its commit and its publish
        await wait_for([b], 8)
        assert b.got == list(range(1, 9))  # the head check found 6..8
        await b.ingest(2, 1)
        await wait_for([a, b], 10)
        assert b.got == list(range(1, 11))
        # a's own unpublished run reached it through the same gap fill
        assert a.got == list(range(1, 11))
    finally:
        await a.link.close()
        await b.link.close()


async def test_a_node_starting_late_begins_at_the_head(cluster: str) -> None:
    log = SharedLog()
    a = Node(log, cluster, "a")
    await a.start()
    try:
        await a.ingest(4, 1)
        late = Node(log, cluster, "late")
        await late.start()
        await a.ingest(2, 1)
        await wait_for([late], 2)
        assert late.got == [5, 6]
        assert late.channel.stats.fills == 0 or late.got == [5, 6]
        await late.link.close()
    finally:
        await a.link.close()
