"""Putting committed batches back in cursor order on one node of a cluster: a pure core.

In the cluster mode every node commits into one log whose cursors are gapless and commit-ordered
(assigned under a lock in the shared store), and hears of the other nodes' commits over the bus.
What reaches a node — its own commits, the bus' messages, rows read back from the store — can
arrive out of order, twice, or not at all (a bus hiccup, a node killed between its commit and its
publish). The hub must see every cursor exactly once, in order. ``Sequencer`` decides that:

* ``offer(first, last, item)`` takes a run of cursors ``first..last`` (a committed batch) and
  returns the items now deliverable, in order; a run that is wholly behind ``expected`` is a
  repeat and is dropped, one that overlaps it is trimmed by the caller's ``trim``;
* a run that starts after ``expected`` waits, and the node has a gap: ``gap()`` says which
  cursors are missing and since when, so the driver can read them from the store once a grace
  period has passed without the bus bringing them (usually it does, a millisecond later);
* ``filled(last, items)`` hands over what the store returned for a gap (possibly nothing yet,
  possibly more than asked), then releases the runs that waited behind it.

No I/O, no clock of its own: the driver passes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Gap:
    """Cursors ``first..last`` are missing (``last`` is ``None`` when only the head check knows
    that something is missing: read to the store's head); noticed at ``since``."""

    first: int
    last: int | None
    since: float


@dataclass(order=True, slots=True)
class _Waiting(Generic[T]):
    first: int
    last: int
    item: T = field(compare=False)


class Sequencer(Generic[T]):
    """Cursor order and exactly-once over runs of cursors that may come late, twice or never.

    ``trim(item, after)`` returns the part of an item with cursors greater than ``after`` (used
    when a run overlaps what was already delivered, e.g. a store read that raced the bus).
    """

    def __init__(self, expected: int, trim: Callable[[T, int], T]) -> None:
        self.expected = expected  # the next cursor the hub must see
        self._trim = trim
        self._waiting: list[_Waiting[T]] = []
        self._gap_since: float | None = None
        self._behind_head: int | None = None  # a head seen in the store beyond expected - 1

    @property
    def delivered(self) -> int:
        """The last cursor delivered."""
        return self.expected - 1

    def offer(self, first: int, last: int, item: T, now: float) -> list[T]:
        """A committed run ``first..last``: the items deliverable now, in cursor order."""
        if last < first:
            return []
        if last < self.expected:
            return []  # a repeat: the bus redelivered, or our own commit came back
        if first < self.expected:
            item = self._trim(item, self.expected - 1)
            first = self.expected
        if first > self.expected:
            heapq.heappush(self._waiting, _Waiting(first, last, item))
            if self._gap_since is None:
                self._gap_since = now
            return []
        out = [item]
        self.expected = last + 1
        out.extend(self._release(now))
        return out

    def head_seen(self, head: int, now: float) -> None:
        """The store's head is ``head`` (a periodic check): a node that died between its commit
        and its publish left cursors that no message will bring."""
        if head >= self.expected and self._gap_since is None:
            self._gap_since = now
        if head >= self.expected:
            self._behind_head = max(head, self._behind_head or 0)

    def gap(self) -> Gap | None:
        """What is missing, if anything: from ``expected`` to just before the first waiting
        run, or to the head the last check saw."""
        if self._gap_since is None:
            return None
        if self._waiting:
            return Gap(self.expected, self._waiting[0].first - 1, self._gap_since)
        return Gap(self.expected, self._behind_head, self._gap_since)

    def filled(self, runs: list[tuple[int, int, T]], now: float) -> list[T]:
        """Runs read from the store for a gap, in cursor order: the items deliverable now."""
        out: list[T] = []
        for first, last, item in runs:
            out.extend(self.offer(first, last, item, now))
        if self._behind_head is not None and self._behind_head < self.expected:
            self._behind_head = None
        if not self._waiting and self._behind_head is None:
            self._gap_since = None
        elif self._gap_since is not None:
            self._gap_since = now  # still missing: wait another grace period
        return out

    def _release(self, now: float) -> list[T]:
        out: list[T] = []
        while self._waiting and self._waiting[0].first <= self.expected:
            w = heapq.heappop(self._waiting)
            if w.last < self.expected:
                continue
            item = w.item if w.first == self.expected else self._trim(w.item, self.expected - 1)
            out.append(item)
            self.expected = w.last + 1
        if self._behind_head is not None and self._behind_head < self.expected:
            self._behind_head = None
        if not self._waiting and self._behind_head is None:
            self._gap_since = None
        elif self._waiting:
            self._gap_since = self._gap_since if self._gap_since is not None else now
        return out

    @property
    def waiting(self) -> int:
        return len(self._waiting)
