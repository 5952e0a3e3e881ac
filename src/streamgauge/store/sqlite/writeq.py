"""The writer's queue: small writes go ahead of big appends that are waiting.

The store has one writer thread and a write transaction cannot be interrupted, so a live row
that arrives behind a backfill waits for every big batch queued before it (tens of ms each).
Here each job is *small* (a live batch, a metadata change: anything but a big append) or *big*
(an append of at least ``BIG_ROWS`` rows), and the writer takes the oldest small job before
any big one, FIFO within each kind. A big job that has waited ``max_wait`` seconds goes ahead
of the small ones that came after it, so a steady stream of small writes cannot starve it.

Nothing about a job changes with its turn: cursors are assigned when the writer runs it (so
cursor order is still commit order), each job is still one transaction, and its caller is
answered after its commit. Only jobs that were waiting at the same time, so that no caller
had been answered about either, may commit in another order than they came.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

J = TypeVar("J")

BIG_ROWS = 1000  # an append of this many rows or more waits for the small writes queued
MAX_WAIT = 0.25  # seconds a big append waits at most for small writes queued after it
# A live write (a small append) came within this many seconds: the writer keeps its steps
# between two writes short (``live``); else (a bulk load, or no ingest) it takes longer,
# cheaper ones.
LIVE_SECONDS = 10.0


class Closed:
    """``get``'s answer once ``close`` was called and every job queued before it was taken."""


class Idle:
    """``get``'s answer when nothing came within the timeout."""


CLOSED = Closed()
IDLE = Idle()


class WriteQueue(Generic[J]):
    """Jobs for one consumer thread, small ones first (see the module's docstring).
    Thread-safe: any thread puts, one thread gets."""

    def __init__(self, *, max_wait: float = MAX_WAIT, live_seconds: float = LIVE_SECONDS) -> None:
        self.max_wait = max_wait
        self.live_seconds = live_seconds
        self._cond = threading.Condition(threading.Lock())
        self._small: deque[J] = deque()
        self._big: deque[tuple[float, J]] = deque()
        self._closed = False
        self._last_live = -math.inf  # when the last live job came (monotonic)

    def put(self, job: J, *, big: bool = False, live: bool = False) -> None:
        """Queue ``job``: ``big`` (waits for the small jobs) or small; ``live``: a small job
        that someone waits for with a deadline in mind (an ingest of live rows), see ``live``."""
        with self._cond:
            if big:
                self._big.append((time.monotonic(), job))
            else:
                self._small.append(job)
                if live:
                    self._last_live = time.monotonic()
            self._cond.notify()

    def live(self) -> bool:
        """A live job came within ``live_seconds``: the consumer keeps what it does between
        two jobs short. Other small jobs (metadata, a consumer's cursor, every few seconds)
        can wait for a longer step."""
        return time.monotonic() - self._last_live < self.live_seconds

    def close(self) -> None:
        """``get`` answers ``CLOSED`` once the jobs queued so far are taken."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def empty(self) -> bool:
        """No job waits (a hint: another thread may put one at any time)."""
        return not self._small and not self._big

    def small_waiting(self) -> int:
        """How many small jobs wait."""
        return len(self._small)

    def get_small(self) -> J | None:
        """The oldest small job, or None at once if there is none."""
        with self._cond:
            return self._small.popleft() if self._small else None

    def get_big_if(self, fits: Callable[[J], bool]) -> J | None:
        """The oldest big job if ``fits`` it, else None (at once; it stays first)."""
        with self._cond:
            if self._big and fits(self._big[0][1]):
                return self._big.popleft()[1]
            return None

    def __len__(self) -> int:
        return len(self._small) + len(self._big)

    def get(self, timeout: float) -> J | Closed | Idle:
        """The next job: the oldest small one, unless the oldest big one has waited
        ``max_wait`` or there is no small one. ``IDLE`` after ``timeout`` seconds without one;
        ``CLOSED`` once closed and empty."""
        with self._cond:
            if not self._small and not self._big and not self._closed:
                self._cond.wait(timeout)
            if self._big and (
                not self._small or time.monotonic() - self._big[0][0] >= self.max_wait
            ):
                return self._big.popleft()[1]
            if self._small:
                return self._small.popleft()
            return CLOSED if self._closed else IDLE
