"""A durable consumer: a named reader of the log with a stored position.

``Consumer(name, log, positions, handler, select=..., page_rows=...)`` hands the rows its
selection wants to ``handler`` in cursor order, in batches of at most ``page_rows`` rows. The
position (the last cursor covered: every row up to it was handled or not wanted) is stored in
``positions`` under ``name`` only after the handler returned, so a row is handled at least once:
a handler that raises is called again with the same rows (after ``retry_seconds``), and a
restart resumes after the stored position. A consumer with no stored position starts after
``start`` (the log's head when None: only rows committed from then on). A step that handled
nothing stores its position only every ``checkpoint_rows`` rows (and on ``stop``/``drain``): a
consumer whose rows are rare does not write on every commit, and after a crash it only reads
that stretch again.

``start()`` runs it as a task: it catches up from the store to the head, then waits for
``notify()`` (the engine calls it with every committed batch) and reads on. ``drain()`` does
the same in the caller's task until the head it saw is covered (tests, shutdown, replay).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from streamgauge.core.consumers.scan import LogReader, LogScanner, Select
from streamgauge.domain.batch import Batch
from streamgauge.store.api import ConsumerPositions

log = logging.getLogger("streamgauge.consumers")

Handler = Callable[[Batch], Awaitable[None]]


class Consumer:
    def __init__(
        self,
        name: str,
        log: LogReader,
        positions: ConsumerPositions,
        handler: Handler,
        *,
        select: Select | None = None,
        page_rows: int = 5000,
        start: int | None = None,
        retry_seconds: float = 1.0,
        checkpoint_rows: int = 100_000,
    ) -> None:
        self.name = name
        self._log = log
        self._positions = positions
        self._handler = handler
        self._scanner = LogScanner(log, select, page_rows)
        self._start = start
        self.retry_seconds = retry_seconds
        self.checkpoint_rows = checkpoint_rows
        self.position: int | None = None  # None until loaded
        self.saved: int | None = None  # the position last stored
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one step at a time (the task and ``drain``)

    async def load(self) -> int:
        """The stored position; a new consumer stores its start first."""
        if self.position is None:
            stored = await self._positions.load(self.name)
            if stored is None:
                stored = self._log.log_head if self._start is None else self._start
                await self._positions.save(self.name, stored)
            self.position = self.saved = stored
        return self.position

    async def step(self) -> bool:
        """Hand the next wanted rows to the handler and store the new position. False when the
        position already covers the head (nothing was read)."""
        async with self._lock:
            position = await self.load()
            if position >= self._log.log_head:
                return False
            batch, covered = await self._scanner.read(position, self._scanner.page_rows)
            if covered <= position:
                return False
            if len(batch):
                await self._handler(batch)  # raises: the position stays, the rows come again
            self.position = covered
            if len(batch) or covered - (self.saved or 0) >= self.checkpoint_rows:
                await self._save()
            return True

    async def _save(self) -> None:
        position = self.position
        if position is not None and position != self.saved:
            await self._positions.save(self.name, position)
            self.saved = position

    async def drain(self) -> int:
        """Handle everything committed up to now and store the position reached."""
        while await self.step():
            pass
        async with self._lock:
            await self._save()
        return await self.load()

    def notify(self, batch: Batch | None = None) -> None:
        """New rows were committed (an ``Engine.listeners`` hook): read on."""
        self._wake.set()

    async def start(self) -> None:
        await self.load()
        if self._task is None:
            self._wake.set()  # catch up first
            self._task = asyncio.create_task(self._run(), name=f"consumer {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        async with self._lock:
            await self._save()  # a stretch without match need not be read again

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()  # a commit from now on wakes the next round
            try:
                while await self.step():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer %s: the handler failed; retrying", self.name)
                await asyncio.sleep(self.retry_seconds)
                self._wake.set()
