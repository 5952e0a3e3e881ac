"""A durable consumer: a named reader of the log with a stored position.

``Consumer(name, log, positions, handler, select=..., page_rows=...)`` hands the rows its
selection wants to ``handler`` in cursor order, in batches of at most ``page_rows`` rows. The
position (the last cursor covered: every row up to it was handled or not wanted) is stored in
``positions`` under ``name`` only after the handler returned, so a row is handled at least once:
a handler that raises is called again with the same rows (after ``retry_seconds``), and a
restart resumes after the stored position. A consumer with no stored position starts after
``start`` (its ``head()``, the log's head, when None: only rows committed from then on). A step
that handled nothing stores its position only every ``checkpoint_rows`` rows (and on
``stop``/``drain``): a consumer whose rows are rare does not write on every commit, and after a
crash it only reads that stretch again.

Two ways in, one position:

* **live** (``offer``, the engine's commit listener): a committed batch that starts right after
  the position is taken without a store read. A ``synchronous`` consumer (the alert rules, DT
  reported state) handles it inside the listener (``live``); any other queues it in memory (at
  most ``live_rows`` rows) for its task.
* **catch-up** (``step``): when the queue does not continue the position (after a start, a
  restart, an error, a queue overflow), the task reads the log after the position through a
  ``LogScanner`` up to the head, then goes live again.

What differs between readers is a hook, never a copy of the loop: ``positions`` (where the
position lives: a key/value row, the transaction of the alerts the rules produced, a delivery's
cursor and dead letters, a feed session's row), ``read`` (how the log is read when behind),
``handle`` (the async handler), ``live`` (a synchronous handler for the hot path), ``head``
(where a new consumer starts) and ``checkpoint_due`` (when a step stores its position).

``start()`` runs it as a task: it catches up from the store to the head, then waits for
``offer``/``notify`` and reads on. ``drain()`` does the same in the caller's task until the head
it saw is covered (tests, shutdown, replay).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from streamgauge.core.consumers.scan import LogReader, LogScanner, Select
from streamgauge.core.hub import Flag
from streamgauge.domain.batch import Batch
from streamgauge.store.api import ConsumerPositions

log = logging.getLogger("streamgauge.consumers")

Handler = Callable[[Batch], Awaitable[None]]


async def _no_handler(batch: Batch) -> None:
    """The handler of a consumer built without one: a subclass that reads the log overrides
    ``handle``; reaching this is a programming error, said as such."""
    raise TypeError("a Consumer built without a handler must override handle()")


class Consumer:
    """A named reader of the log with a stored position (see the module docstring). Subclasses
    change hooks (``read``, ``handle``, ``live``, ``head``, ``checkpoint_due``), not the loop."""

    # A synchronous consumer handles live batches inside the listener (``live``); while a
    # catch-up step runs, or when ``live`` fails, the task reads the log instead. Any other
    # consumer queues live batches for its task.
    synchronous = False

    def __init__(
        self,
        name: str,
        log: LogReader | None,
        positions: ConsumerPositions,
        handler: Handler | None = None,
        *,
        select: Select | None = None,
        page_rows: int = 5000,
        start: int | None = None,
        retry_seconds: float = 1.0,
        checkpoint_rows: int = 100_000,
        live_rows: int | None = None,
    ) -> None:
        self.name = name
        self._log = log
        self._positions = positions
        self._handler = handler or _no_handler
        self._scanner = LogScanner(log, select, page_rows)  # log None: ``read``/``head`` overridden
        self._every_row = select is None
        self._start = start
        self.retry_seconds = retry_seconds
        self.checkpoint_rows = checkpoint_rows
        self.live_rows = 4 * page_rows if live_rows is None else live_rows
        self.position: int | None = None  # None until loaded
        self.saved: int | None = None  # the position last stored
        # A Flag and a queue made on first use, not an asyncio.Event and a deque (about 750
        # bytes each): a feed session is a consumer too, a thousand idle ones a thousand of these.
        self._wake = Flag()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one step at a time (the task and ``drain``)
        self._queue: deque[Batch] | None = None  # live batches not yet handled, contiguous
        self._queued = 0  # rows in ``_queue``

    # -- hooks --------------------------------------------------------------------------------

    @property
    def log_head(self) -> int:
        """The head of what it reads (a reader of something else than the log overrides it)."""
        assert self._log is not None
        return self._log.log_head

    async def head(self) -> int:
        """Where a consumer without a stored position and without ``start`` begins."""
        return self.log_head

    async def read(self, after: int) -> tuple[Batch, int]:
        """Catch-up: the wanted rows after ``after`` (at most ``page_rows``) and the position
        they cover, read from the log."""
        return await self._scanner.read(after, self._scanner.page_rows)

    async def handle(self, batch: Batch) -> None:
        """The rows wanted, in cursor order (at least once)."""
        await self._handler(batch)

    def live(self, batch: Batch) -> bool:
        """The hot path of a ``synchronous`` consumer: handle ``batch`` (the wanted rows of a
        committed batch that continues the position) now, inside the commit listener; False
        (or an exception) to have the task read it from the log."""
        return False

    def checkpoint_due(self, handled: bool, covered: int) -> bool:
        """Whether a step that reached ``covered`` stores its position now."""
        return handled or covered - (self.saved or 0) >= self.checkpoint_rows

    def wanted(self, batch: Batch) -> Batch:
        """The rows of ``batch`` the selection wants."""
        return batch if self._every_row else batch.take(self._scanner.mask(batch))

    # -- the position -------------------------------------------------------------------------

    async def load(self) -> int:
        """The stored position; a new consumer stores its start first."""
        if self.position is None:
            stored = await self._positions.load(self.name)
            if stored is None:
                stored = await self.head() if self._start is None else self._start
                await self._positions.save(self.name, stored)
            self.position = self.saved = stored
        return self.position

    async def save(self) -> None:
        """Store the position if it moved since the last save."""
        position = self.position
        if position is not None and position != self.saved:
            await self._positions.save(self.name, position)
            self.saved = position

    async def forget_position(self) -> None:
        """Drop the stored position (the consumer is gone for good)."""
        await self._positions.forget(self.name)
        self.position = self.saved = None

    # -- live -----------------------------------------------------------------------------------

    def offer(self, batch: Batch | None = None) -> None:
        """New rows were committed (an ``Engine.listeners`` hook). A batch that continues the
        position goes to ``live`` or the live queue, without a store read; anything else wakes
        the task to read the log."""
        if batch is not None and len(batch):
            if self._take_live(batch):
                return
        self._wake.set()

    notify = offer

    def _take_live(self, batch: Batch) -> bool:
        position = self.position
        if position is None:
            return False
        end = self._queue[-1].last if self._queue else position
        if batch.last <= end:
            return True  # covered already (read by a catch-up meanwhile)
        if batch.first - 1 > end:
            self._drop_queue()  # a gap: the task reads the log
            return False
        if batch.first <= end:
            batch = batch.take(batch.cursors > end)
        if self.synchronous:  # judged here and now, or left to the task reading the log
            if self._lock.locked():
                return False
            try:
                done = self.live(self.wanted(batch))
            except Exception:
                log.exception("consumer %s: the live handler failed; reading the log", self.name)
                return False
            if done:
                self.position = batch.last
            return done
        if self._queued + len(batch) > self.live_rows:
            self._drop_queue()  # too far behind: the task reads the log
            return False
        if self._queue is None:
            self._queue = deque()
        self._queue.append(batch)
        self._queued += len(batch)
        self._wake.set()
        return True

    def _drop_queue(self) -> None:
        self._queue = None
        self._queued = 0

    def _next_live(self, position: int) -> tuple[Batch, int] | None:
        """The wanted rows of the queued live batches after ``position`` (at most
        ``page_rows``) and the position they cover; None when the queue does not continue it."""
        queue = self._queue
        while queue and queue[0].last <= position:
            self._queued -= len(queue.popleft())
        if not queue or queue[0].first - 1 > position:
            self._drop_queue()
            return None
        batch = queue[0]
        if batch.first <= position:
            batch = batch.take(batch.cursors > position)
        picked = self.wanted(batch)
        if len(picked) > self._scanner.page_rows:
            picked = picked.head(self._scanner.page_rows)
            return picked, picked.last
        return picked, batch.last

    # -- catch-up -------------------------------------------------------------------------------

    async def step(self) -> bool:
        """Hand the next wanted rows to the handler and store the new position. False when the
        position already covers the head (nothing was read)."""
        async with self._lock:
            position = await self.load()
            taken = self._next_live(position)
            if taken is None:
                if position >= self.log_head:
                    return False
                taken = await self.read(position)
            batch, covered = taken
            if covered <= position:
                return False
            if len(batch):
                await self.handle(batch)  # raises: the position stays, the rows come again
            self.position = max(self.position or 0, covered)
            if self.checkpoint_due(bool(len(batch)), covered):
                await self.save()
            return True

    async def drain(self) -> int:
        """Handle everything committed up to now and store the position reached."""
        while await self.step():
            pass
        async with self._lock:
            await self.save()
        return await self.load()

    # -- the task -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.load()
        if self._task is None:
            self._wake.set()  # catch up first
            self._task = asyncio.create_task(self._run(), name=f"consumer {self.name}")

    async def stop(self, *, save: bool = True) -> None:
        """Stop the task and (``save``) store the position reached."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if save:
            async with self._lock:
                await self.save()  # a stretch without match need not be read again

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


class MemoryPositions:
    """Positions kept in memory only: a consumer that starts at the log's head on every start
    (its state is rebuilt from history reads, e.g. DT reported state)."""

    def __init__(self) -> None:
        self.stored: dict[str, int] = {}

    async def load(self, name: str) -> int | None:
        return self.stored.get(name)

    async def save(self, name: str, position: int) -> None:
        self.stored[name] = position

    async def forget(self, name: str) -> None:
        self.stored.pop(name, None)
