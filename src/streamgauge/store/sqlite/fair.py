"""Fair turns at a bounded pool: who waits is served round robin by key, not first come.

The store has a few reader threads. With a plain queue, a tenant that sends many long reads
fills it, and another tenant's 10-row read waits behind all of them. ``FairGate`` hands a free
slot to the next *key* in turn (a history read's key is its project), so a waiting read waits
for at most one read of each other key that is waiting, however many each has queued.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class FairGate:
    """At most ``slots`` holders at once; waiters are admitted round robin by key. Used on the
    event loop only (no locking)."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a gate needs at least one slot")
        self.free = slots
        self._waiting: OrderedDict[Hashable, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    @asynccontextmanager
    async def turn(self, key: Hashable) -> AsyncIterator[None]:
        await self.acquire(key)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, key: Hashable) -> None:
        """Wait for a slot, in ``key``'s turn. Every acquire is followed by one ``release``."""
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # admitted just as it was cancelled: pass the slot on
            else:
                queue = self._waiting.get(key)
                if queue is not None and fut in queue:
                    queue.remove(fut)
                    if not queue:
                        del self._waiting[key]
            raise

    def release(self) -> None:
        """Give the slot to the next key in turn (or back to the pool)."""
        while self._waiting:
            key, queue = next(iter(self._waiting.items()))
            fut = queue.popleft()
            if queue:
                self._waiting.move_to_end(key)  # this key's next waiter goes behind the others
            else:
                del self._waiting[key]
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1
