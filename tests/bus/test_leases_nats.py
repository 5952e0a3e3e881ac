"""Leases in the cluster's JetStream key-value bucket: one holder, takeover after a lapse,
release hands over at once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from streamgauge.bus.api import BusMessage
from streamgauge.bus.jetstream import NatsBus, NatsLeases, delete_cluster_stream
from streamgauge.core.leases import LeasedWork

from .test_jetstream import NATS_URL


async def _nothing(m: BusMessage) -> None:
    pass


@pytest.fixture
async def buses() -> AsyncIterator[tuple[NatsBus, NatsBus]]:
    cluster = f"t{uuid.uuid4().hex[:10]}"
    a, b = NatsBus(NATS_URL, cluster, node_id="a"), NatsBus(NATS_URL, cluster, node_id="b")
    await a.start(_nothing, lambda: None)
    await b.start(_nothing, lambda: None)
    yield a, b
    await a.close()
    await b.close()
    await delete_cluster_stream(NATS_URL, cluster)


async def test_one_holder_then_release(buses: tuple[NatsBus, NatsBus]) -> None:
    a, b = buses
    la, lb = NatsLeases(a, ttl=2.0), NatsLeases(b, ttl=2.0)
    assert await la.acquire("work", "a", 2.0)
    assert not await lb.acquire("work", "b", 2.0)
    assert await la.acquire("work", "a", 2.0)  # renewal
    await la.release("work", "a")
    assert await lb.acquire("work", "b", 2.0)
    assert not await la.acquire("work", "a", 2.0)


async def test_takeover_when_the_holder_stops_renewing(buses: tuple[NatsBus, NatsBus]) -> None:
    a, b = buses
    ran: list[str] = []

    def work(who: str) -> LeasedWork:
        async def start() -> None:
            ran.append(f"+{who}")

        async def stop() -> None:
            ran.append(f"-{who}")

        bus = a if who == "a" else b
        return LeasedWork(
            NatsLeases(bus, ttl=1.5), "work", who, start, stop, ttl=1.5, renew_every=0.5
        )

    wa, wb = work("a"), work("b")
    wa.begin()
    await asyncio.sleep(0.3)
    wb.begin()
    await asyncio.sleep(1.5)
    assert ran == ["+a"]
    assert wa._task is not None
    wa._task.cancel()  # a node killed: it stops renewing, runs no stop
    t0 = time.monotonic()
    while "+b" not in ran:
        await asyncio.sleep(0.05)
        assert time.monotonic() - t0 < 10
    await wb.close()
    assert ran == ["+a", "+b", "-b"]
