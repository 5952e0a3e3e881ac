"""Work that must run on one node at a time: a lease in the shared store, renewed while held.

Alert rules, deadman clocks, deliveries and retention run on the node holding their lease. The
holder renews it every ``renew_every`` seconds; a lease not renewed for ``ttl`` seconds lapses and
another node takes it (within ``ttl + renew_every``). A holder that cannot renew (its store is
away) stops the work once ``ttl`` has passed since its last renewal, before anyone else can take
the lease over: two nodes never run the same work at once in normal operation, and the work's
positions, kept in the store with its effects, make the takeover lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("streamgauge.leases")


class Leases(Protocol):
    """Named leases in the store (``store.api``'s backends provide one)."""

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``holder`` for ``ttl`` seconds, or renew it: ``True`` if
        ``holder`` has it now (free, lapsed, or already its own)."""
        ...

    async def release(self, name: str, holder: str) -> None:
        """Give the lease up at once if ``holder`` has it (a clean shutdown)."""
        ...


class LocalLeases:
    """One process: every lease is its holder's (the embedded mode)."""

    def __init__(self) -> None:
        self.holders: dict[str, str] = {}

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        current = self.holders.setdefault(name, holder)
        return current == holder

    async def release(self, name: str, holder: str) -> None:
        if self.holders.get(name) == holder:
            del self.holders[name]


class LeasedWork:
    """Runs ``start``/``stop`` as the lease ``name`` is won and lost."""

    def __init__(
        self,
        leases: Leases,
        name: str,
        holder: str,
        start: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
        *,
        ttl: float = 6.0,
        renew_every: float = 2.0,
    ) -> None:
        if renew_every * 2 > ttl:
            raise ValueError("renew at least twice per lease period")
        self.leases, self.name, self.holder = leases, name, holder
        self._start, self._stop = start, stop
        self.ttl, self.renew_every = ttl, renew_every
        self.held = False
        self._renewed = 0.0
        self._task: asyncio.Task[None] | None = None
        self.changes = 0  # times the work started here (for tests and metrics)

    def begin(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                ok = await asyncio.wait_for(
                    self.leases.acquire(self.name, self.holder, self.ttl), self.renew_every
                )
            except Exception as e:  # the store is away: keep the work until the lease lapses
                if self.held and time.monotonic() - self._renewed >= self.ttl - self.renew_every:
                    log.warning("lease %s: cannot renew (%s); stopping its work", self.name, e)
                    await self._lose()
                await asyncio.sleep(self.renew_every / 2)
                continue
            if ok:
                self._renewed = time.monotonic()
                if not self.held:
                    self.held = True
                    self.changes += 1
                    log.info("lease %s: taken by %s", self.name, self.holder)
                    try:
                        await self._start()
                    except Exception:
                        log.exception("lease %s: starting its work failed", self.name)
            elif self.held:
                log.warning("lease %s: lost to another node", self.name)
                await self._lose()
            await asyncio.sleep(self.renew_every)

    async def _lose(self) -> None:
        self.held = False
        try:
            await self._stop()
        except Exception:
            log.exception("lease %s: stopping its work failed", self.name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.held:
            await self._lose()
            with contextlib.suppress(Exception):
                await self.leases.release(self.name, self.holder)
