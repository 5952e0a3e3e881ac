"""FairGate: bounded reader slots handed out round robin by key (issue 11 item 19)."""

from __future__ import annotations

import asyncio

import pytest

from streamgauge.store.sqlite.fair import FairGate


async def test_a_small_read_waits_for_one_turn_not_for_every_queued_scan() -> None:
    """issue 11 item 19: one tenant's many queued scans cannot starve another tenant's read:
    with every slot busy, the next free slot goes to the other key before that tenant's
    second queued scan."""
    gate = FairGate(1)
    order: list[str] = []
    release = asyncio.Event()

    async def read(key: str, name: str, hold: asyncio.Event | None = None) -> None:
        async with gate.turn(key):
            order.append(name)
            if hold is not None:
                await hold.wait()

    first = asyncio.create_task(read("A", "A0", release))
    await asyncio.sleep(0)
    scans = [asyncio.create_task(read("A", f"A{i}")) for i in range(1, 5)]
    await asyncio.sleep(0)
    small = asyncio.create_task(read("B", "B0"))
    await asyncio.sleep(0)
    assert gate.waiting == 5
    release.set()
    await asyncio.gather(first, small, *scans)
    assert order.index("B0") <= 2  # A0 (running), at most one more A, then B0
    assert sorted(order) == ["A0", "A1", "A2", "A3", "A4", "B0"]
    assert gate.free == 1 and gate.waiting == 0


async def test_round_robin_between_keys() -> None:
    """issue 11 item 19: waiters of several keys are admitted in turns."""
    gate = FairGate(1)
    order: list[str] = []
    hold = asyncio.Event()

    async def read(key: str, name: str, wait: bool = False) -> None:
        async with gate.turn(key):
            order.append(name)
            if wait:
                await hold.wait()

    tasks = [asyncio.create_task(read("X", "hold", True))]
    await asyncio.sleep(0)
    for name in ["a1", "a2", "a3"]:
        tasks.append(asyncio.create_task(read("a", name)))
    for name in ["b1", "b2"]:
        tasks.append(asyncio.create_task(read("b", name)))
    tasks.append(asyncio.create_task(read("c", "c1")))
    await asyncio.sleep(0)
    hold.set()
    await asyncio.gather(*tasks)
    assert order == ["hold", "a1", "b1", "c1", "a2", "b2", "a3"]


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    """issue 11 item 19: a request that goes away while waiting neither holds nor leaks a
    slot."""
    gate = FairGate(1)
    hold = asyncio.Event()

    async def holder() -> None:
        async with gate.turn("a"):
            await hold.wait()

    async def waiter() -> None:
        async with gate.turn("b"):
            pass

    h = asyncio.create_task(holder())
    await asyncio.sleep(0)
    w = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    w.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w
    assert gate.waiting == 0
    hold.set()
    await h
    assert gate.free == 1
