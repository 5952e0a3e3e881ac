"""Leased work: one holder at a time, takeover after a lapse, stop when renewal fails."""

from __future__ import annotations

import asyncio
import time

from streamgauge.core.leases import LeasedWork, LocalLeases


class ClockLeases:
    """A shared lease table with expiry (what a PostgreSQL row gives), and an off switch; it
    notes when each holder first took each lease (``taken``)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, float]] = {}
        self.down = False
        self.taken: dict[tuple[str, str], float] = {}

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        if self.down:
            raise ConnectionError("store away")
        now = time.monotonic()
        cur = self.rows.get(name)
        if cur is None or cur[0] == holder or cur[1] < now:
            self.rows[name] = (holder, now + ttl)
            self.taken.setdefault((name, holder), now)
            return True
        return False

    async def release(self, name: str, holder: str) -> None:
        if self.rows.get(name, ("", 0))[0] == holder:
            del self.rows[name]


class Work:
    def __init__(self, log: list[str], who: str) -> None:
        self.log, self.who = log, who
        self.stopped_at: float | None = None

    async def start(self) -> None:
        self.log.append(f"+{self.who}")

    async def stop(self) -> None:
        self.stopped_at = time.monotonic()
        self.log.append(f"-{self.who}")


def running(log: list[str]) -> set[str]:
    on: set[str] = set()
    for e in log:
        (on.add if e[0] == "+" else on.discard)(e[1:])
    return on


async def test_one_holder_and_takeover_after_the_holder_dies() -> None:
    table, events = ClockLeases(), []
    a_work, b_work = Work(events, "a"), Work(events, "b")
    a = LeasedWork(table, "alerts", "a", a_work.start, a_work.stop, ttl=0.6, renew_every=0.2)
    b = LeasedWork(table, "alerts", "b", b_work.start, b_work.stop, ttl=0.6, renew_every=0.2)
    a.begin()
    await asyncio.sleep(0.1)
    b.begin()
    await asyncio.sleep(0.5)
    assert running(events) == {"a"}
    assert a._task is not None
    a._task.cancel()  # killed: no release, no stop
    lapse = table.rows["alerts"][1]  # a's last renewal's expiry
    t0 = time.monotonic()
    while "b" not in running(events):
        await asyncio.sleep(0.02)
        assert time.monotonic() - t0 < 10
    # Never two holders: b took it after a's lease lapsed, at one of its next tries (every
    # 0.2 s; the bound is generous for a loaded machine, timed by the table, not by polling).
    taken = table.taken[("alerts", "b")]
    assert lapse <= taken <= lapse + 0.2 + 2.0
    await b.close()
    assert running(events) == {"a"}  # a's own stop never ran: it was killed


async def test_clean_close_hands_over_at_once() -> None:
    table, events = ClockLeases(), []
    a_work, b_work = Work(events, "a"), Work(events, "b")
    a = LeasedWork(table, "d", "a", a_work.start, a_work.stop, ttl=3.0, renew_every=0.1)
    b = LeasedWork(table, "d", "b", b_work.start, b_work.stop, ttl=3.0, renew_every=0.1)
    a.begin()
    await asyncio.sleep(0.05)
    b.begin()
    await asyncio.sleep(0.2)
    await a.close()
    await asyncio.sleep(0.3)
    assert running(events) == {"b"}
    await b.close()
    assert running(events) == set()


async def test_a_holder_that_cannot_renew_stops_before_the_lease_lapses() -> None:
    """It stops when a renewal period is all that is left of the lease (checking every half
    period): 1 to 2 s before the lapse here, room for a loaded machine's late wake-ups."""
    table, events = ClockLeases(), []
    w = Work(events, "a")
    a = LeasedWork(table, "r", "a", w.start, w.stop, ttl=4.0, renew_every=2.0)
    a.begin()
    await asyncio.sleep(0.1)
    assert running(events) == {"a"}
    table.down = True
    lapse = table.rows["r"][1]
    while "a" in running(events):
        await asyncio.sleep(0.02)
        assert time.monotonic() < lapse + 10, "the work never stopped"
    assert w.stopped_at is not None
    assert w.stopped_at <= lapse  # stopped before another node could take it
    table.down = False
    while "a" not in running(events):
        await asyncio.sleep(0.02)
    await a.close()


async def test_local_leases_belong_to_the_one_process() -> None:
    leases = LocalLeases()
    assert await leases.acquire("x", "me", 1)
    assert not await leases.acquire("x", "other", 1)
    await leases.release("x", "me")
    assert await leases.acquire("x", "other", 1)
