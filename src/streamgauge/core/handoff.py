"""Catch-up then live, without gap or duplicate: the cursor handoff as a pure state machine.

A subscriber that resumes from cursor ``c`` first registers with the live hub (so every batch
published from then on is queued for it), notes the hub's head ``H`` at that instant, reads history
``c < cursor <= H`` from the store, then passes queued live items, skipping any it already sent.
If its queue overflows while it catches up, the queued items are dropped and it catches up again
to the new head (``restart``): the store has everything, so nothing is lost.

No I/O here: the stream loop asks ``next_read()`` what to read, reports what it read, and asks
``admit()`` about each live item. States::

    CATCHING_UP --history exhausted--> LIVE --overflow during catch-up--> CATCHING_UP

A live subscriber may also be delivered to directly by the hub (``delivered``): the position
moves past those items without them passing ``admit``.
"""

from __future__ import annotations

from dataclasses import dataclass


class HandoffError(RuntimeError):
    """A live item overlaps what was already delivered: the hub broke its ordering promise."""


@dataclass
class Handoff:
    last: int  # the last cursor covered (delivered or skipped as not matching)
    target: int = 0  # the head snapshot the current catch-up pass reads up to
    live: bool = False

    def start(self, head: int) -> None:
        """Registered with the hub whose head is ``head``: catch up to it first."""
        self.target = head
        self.live = self.last >= head

    def next_read(self) -> tuple[int, int] | None:
        """The cursor range ``(after, upto]`` to read from the store next, or None when live."""
        if self.live:
            return None
        return (self.last, self.target)

    def read(self, last_row: int | None, complete: bool) -> None:
        """A history read returned rows up to ``last_row``; ``complete``: nothing more up to
        the target."""
        if last_row is not None:
            if last_row <= self.last or last_row > self.target:
                raise HandoffError(f"history row {last_row} outside ({self.last}, {self.target}]")
            self.last = last_row
        if complete:
            self.last = max(self.last, self.target)
            self.live = True

    def restart(self, head: int) -> None:
        """The live queue overflowed during catch-up and was dropped: catch up to ``head``."""
        self.start(head)

    def delivered(self, last: int) -> None:
        """Live items up to ``last`` went to the subscriber directly (the hub's sink), not
        through ``admit``: queued items after them are admitted from there on."""
        if not self.live:
            raise HandoffError("only a live subscriber is delivered to directly")
        if last < self.last:
            raise HandoffError(f"direct delivery up to {last} is behind cursor {self.last}")
        self.last = last

    def admit(self, first: int, last: int) -> bool:
        """May a live item spanning cursors ``first..last`` be delivered?"""
        if not self.live:
            raise HandoffError("live items are admitted only after catch-up")
        if last <= self.last:
            return False
        if first <= self.last:
            raise HandoffError(f"live item {first}..{last} overlaps delivered cursor {self.last}")
        self.last = last
        return True
