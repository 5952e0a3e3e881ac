"""The bus between the writer process and its workers (``bus/local.py``), over a socket pair."""

from __future__ import annotations

import asyncio
import socket

from streamgauge.bus.api import BusMessage
from streamgauge.bus.local import LocalBus, Relay


async def test_runs_arrive_in_order_and_a_closed_writer_is_reported() -> None:
    ours, theirs = socket.socketpair()
    heard: list[BusMessage] = []
    lost = asyncio.Event()
    bus = LocalBus(theirs, "worker-1", lost.set)
    got = asyncio.Event()

    async def handler(msg: BusMessage) -> None:
        heard.append(msg)
        if len(heard) == 3:
            got.set()

    await bus.start(handler, lambda: None)
    relay = Relay()
    await relay.add("1", ours)
    relay.send("meta", 1, 2, b"m")
    relay.send("batch", 1, 10, b"x" * 100_000)
    relay.send("batch", 11, 11, b"")
    await asyncio.wait_for(got.wait(), 10)
    assert [(m.kind, m.first, m.last, len(m.payload)) for m in heard] == [
        ("meta", 1, 2, 1),
        ("batch", 1, 10, 100_000),
        ("batch", 11, 11, 0),
    ]
    assert bus.connected
    relay.close()
    await asyncio.wait_for(lost.wait(), 10)
    assert not bus.connected
    await bus.close()


async def test_a_worker_that_does_not_read_misses_runs_instead_of_stalling_the_writer() -> None:
    ours, theirs = socket.socketpair()
    relay = Relay(max_buffer=1 << 16)
    await relay.add("1", ours)
    for n in range(200):  # nobody reads ``theirs``
        relay.send("batch", n + 1, n + 1, b"x" * 4096)
    assert relay.skipped > 0
    assert relay.sent + relay.skipped == 200
    relay.close()
    theirs.close()
