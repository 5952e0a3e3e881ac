"""One node's link to the others: what it committed goes out on the bus, what the others committed
comes in, and the hub sees every cursor of the one log exactly once, in order.

A ``Channel`` carries one numbered sequence (the observation log's cursors, or the metadata
events' sequence numbers) between the bus and a local consumer (the hub and the commit listeners,
or the registry):

* the node's own commits (``local``) and the bus' messages go through one ``Sequencer``, so a
  commit of this node that got a later cursor than another node's waits for that one;
* what the sequencer reports missing is read from the store after ``grace`` seconds (the bus
  usually brings it sooner), and a periodic look at the store's head (every ``head_every``
  seconds, and at once after the bus reconnects) finds runs that no message will bring: a node
  killed between its commit and its publish, a bus that was down;
* publishing is fire-and-forget after the commit: a failed publish costs the other nodes one
  store read, never a lost row.

No storage or bus code here: the channel gets its reads and its bus as callables and protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import numpy as np

from streamgauge.bus.api import Bus, BusMessage, Kind
from streamgauge.core.sequencer import Sequencer
from streamgauge.domain import events as ev
from streamgauge.domain.batch import Batch

log = logging.getLogger("streamgauge.cluster")

T = TypeVar("T")

Run = tuple[int, int, T]  # (first, last, item)


@dataclass
class ChannelStats:
    local: int = 0
    from_bus: int = 0
    repeats: int = 0
    filled_runs: int = 0
    fills: int = 0
    published: int = 0
    publish_failures: int = 0


class Channel(Generic[T]):
    """One numbered sequence between this node, the bus and the store.

    ``encode``/``decode`` turn an item into the bus' payload and back; ``span(item)`` gives its
    (first, last); ``trim(item, after)`` keeps its part after ``after``; ``read(after, upto)``
    reads committed runs from the store (``upto`` None: to the head); ``head()`` is the store's
    last committed number; ``deliver(item)`` hands an item on, in order, exactly once.
    """

    def __init__(
        self,
        kind: Kind,
        *,
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        span: Callable[[T], tuple[int, int]],
        trim: Callable[[T, int], T],
        read: Callable[[int, int | None], Awaitable[Sequence[Run[T]]]],
        head: Callable[[], Awaitable[int]],
        deliver: Callable[[T], None],
        grace: float = 0.05,
        prepare: Callable[[T], Awaitable[None]] | None = None,
    ) -> None:
        self.kind = kind
        self._encode, self._decode, self.span = encode, decode, span
        self._read, self._head, self._deliver = read, head, deliver
        self._trim = trim
        self._prepare = prepare  # awaited before an item from elsewhere is sequenced
        self.grace = grace
        self.seq: Sequencer[T] | None = None
        self.stats = ChannelStats()
        self._wake = asyncio.Event()

    def begin(self, delivered: int) -> None:
        """Start after ``delivered`` (what this node already handed on: the store's head when it
        started, read after subscribing to the bus so nothing falls between)."""
        self.seq = Sequencer(delivered + 1, self._trim)

    def _hand_on(self, items: list[T]) -> None:
        for item in items:
            try:
                self._deliver(item)
            except Exception:
                log.exception("cluster: delivering a %s run failed", self.kind)
        if self.seq is not None and self.seq.gap() is not None:
            self._wake.set()

    def local(self, item: T) -> bytes:
        """A run this node committed: sequenced with the others'; returns its payload to
        publish."""
        assert self.seq is not None
        first, last = self.span(item)
        self.stats.local += 1
        self._hand_on(self.seq.offer(first, last, item, time.monotonic()))
        return self._encode(item)

    async def heard(self, msg: BusMessage, own: bool) -> None:
        """A message from the bus (``own``: this node published it: already sequenced)."""
        if self.seq is None or own:
            return
        if msg.last < self.seq.expected:
            self.stats.repeats += 1
            return
        try:
            item = self._decode(msg.payload)
        except ValueError as e:
            log.warning(
                "cluster: an undecodable %s message %d..%d (%s); the store will fill it",
                self.kind,
                msg.first,
                msg.last,
                e,
            )
            self.seq.head_seen(msg.last, time.monotonic())
            self._wake.set()
            return
        self.stats.from_bus += 1
        if self._prepare is not None:
            await self._prepare(item)
        self._hand_on(self.seq.offer(msg.first, msg.last, item, time.monotonic()))

    async def sync(self) -> None:
        """Read and hand on everything the store has after what was handed on (another
        channel's item needs it now: a batch whose series were made on another node)."""
        if self.seq is None:
            return
        while True:
            runs = await self._read(self.seq.delivered, None)
            if not runs:
                return
            self.stats.fills += 1
            self.stats.filled_runs += len(runs)
            before = self.seq.delivered
            self._hand_on(self.seq.filled(list(runs), time.monotonic()))
            if self.seq.delivered == before:
                return

    async def check_head(self) -> None:
        if self.seq is None:
            return
        self.seq.head_seen(await self._head(), time.monotonic())
        if self.seq.gap() is not None:
            self._wake.set()

    async def fill_loop(self, head_every: float) -> None:
        """Reads from the store what the bus did not bring, and looks at the head now and then."""
        assert self.seq is not None
        next_head = time.monotonic() + head_every
        while True:
            gap = self.seq.gap()
            now = time.monotonic()
            if gap is not None and now - gap.since >= self.grace:
                try:
                    runs = await self._read(gap.first - 1, gap.last)
                except Exception as e:  # the store is away: try again after a while
                    log.warning(
                        "cluster: reading %s %d.. from the store failed: %s",
                        self.kind,
                        gap.first,
                        e,
                    )
                    await asyncio.sleep(min(1.0, head_every))
                    continue
                self.stats.fills += 1
                self.stats.filled_runs += len(runs)
                if self._prepare is not None:
                    for _, _, item in runs:
                        await self._prepare(item)
                self._hand_on(self.seq.filled(list(runs), time.monotonic()))
                continue
            if now >= next_head:
                with contextlib.suppress(Exception):
                    await self.check_head()
                next_head = time.monotonic() + head_every
                continue
            timeout = next_head - now
            if gap is not None:
                timeout = min(timeout, max(0.0, gap.since + self.grace - now))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)


def split_by_project(batch: Batch, project_of: Callable[[int], int]) -> list[Run[Batch]]:
    """A stretch of the log (all projects, ``project_pk`` 0) as runs of one project each, in
    cursor order: what the hub takes. A commit is one project's, so runs are whole commits or
    parts of them."""
    n = len(batch)
    if n == 0:
        return []
    projects = np.fromiter((project_of(int(s)) for s in batch.series), np.int64, n)
    cuts = np.flatnonzero(np.diff(projects)) + 1
    idx = np.arange(n)
    runs: list[Run[Batch]] = []
    for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), n], strict=True):
        part = batch.take((idx >= lo) & (idx < hi))
        part.project_pk = int(projects[lo])
        runs.append((part.first, part.last, part))
    return runs


@dataclass(frozen=True, slots=True)
class MetaRun:
    """Metadata events with the sequence numbers ``first..last``, committed together (or read
    back together); ``local``: this node committed them (its registry has them already)."""

    first: int
    last: int
    events: list[ev.MetaEvent]
    local: bool = False
    # The store's metadata as of ``last`` in place of events it no longer keeps
    # (``core/metafeed.py``): applied whole, however much of it was delivered already.
    reload: bool = False

    def after(self, seq: int) -> MetaRun:
        if self.reload:
            return MetaRun(max(self.first, seq + 1), self.last, self.events, reload=True)
        return MetaRun(max(self.first, seq + 1), self.last, self.events[seq + 1 - self.first :])


def encode_meta(run: MetaRun) -> bytes:
    return b"%d %d\n" % (run.first, run.last) + ev.encode_many(run.events)


def decode_meta(data: bytes) -> MetaRun:
    head, _, body = data.partition(b"\n")
    try:
        first, last = (int(x) for x in head.split())
        events = ev.decode_many(body)
    except (ValueError, msgspec.ValidationError, msgspec.DecodeError) as e:
        raise ValueError(f"not a metadata run: {e}") from None
    if len(events) != last - first + 1:
        raise ValueError("a metadata run whose events do not match its numbers")
    return MetaRun(first, last, events)


def meta_runs(rows: Sequence[tuple[int, ev.MetaEvent]]) -> list[Run[MetaRun]]:
    """Stored events (sequence number, event), in order, as runs of consecutive numbers."""
    runs: list[Run[MetaRun]] = []
    for seq, event in rows:
        if runs and runs[-1][1] == seq - 1:
            first, _, run = runs[-1]
            runs[-1] = (first, seq, MetaRun(first, seq, [*run.events, event]))
        else:
            runs.append((seq, seq, MetaRun(seq, seq, [event])))
    return runs


class ClusterLink:
    """The node's channels on one bus: starts them, routes the bus' messages, publishes."""

    def __init__(self, bus: Bus, channels: Sequence[Channel[Any]], head_every: float = 1.0):
        self.bus = bus
        self.channels = {c.kind: c for c in channels}
        self.head_every = head_every
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[Any]] = set()

    async def start(self, heads: Callable[[], Awaitable[dict[Kind, int]]]) -> None:
        """Subscribe first, then read where each channel starts (so nothing falls between),
        then run the fill loops. ``heads`` reads each channel's starting point."""
        await self.bus.start(self._on_message, self._on_reconnect)
        for kind, delivered in (await heads()).items():
            self.channels[kind].begin(delivered)
        for c in self.channels.values():
            self._tasks.append(asyncio.create_task(c.fill_loop(self.head_every)))

    async def _on_message(self, msg: BusMessage) -> None:
        c = self.channels.get(msg.kind)
        if c is not None:
            await c.heard(msg, own=msg.origin == self.bus.node_id)

    def _on_reconnect(self) -> None:
        for c in self.channels.values():
            t = asyncio.get_running_loop().create_task(c.check_head())
            self._pending.add(t)
            t.add_done_callback(self._pending.discard)

    def committed(self, kind: Kind, item: Any) -> None:
        """This node committed ``item``: hand it on in order, and publish it."""
        c = self.channels[kind]
        payload = c.local(item)
        first, last = c.span(item)
        t = asyncio.get_running_loop().create_task(self._publish(c, first, last, payload))
        self._pending.add(t)
        t.add_done_callback(self._pending.discard)

    async def _publish(self, c: Channel[Any], first: int, last: int, payload: bytes) -> bool:
        ok = await self.bus.publish(c.kind, first, last, payload)
        if ok:
            c.stats.published += 1
        else:
            c.stats.publish_failures += 1
        return ok

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=2.0)
        await self.bus.close()
