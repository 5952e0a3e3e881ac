"""The live hub: committed batches in, per-subscriber bytes out.

Backpressure, decided and written down: each subscriber has a send queue bounded in bytes
(``queue_bytes``; one item is always accepted into an empty queue). A live subscriber whose
queue would exceed it is marked ``overflowed``; its
stream closes with a reason and the cursor to resume from, and the client can reconnect and catch
up from the store. A subscriber still catching up just drops its queue and catches up further.
Nothing is ever dropped silently, and one slow client never grows memory or stalls the others:
the fan-out does a mask and a join per subscriber and never waits. From ``STACK_MIN``
subscribers of a project on, a round computes all their masks at once (``SelectionStack``: a
few numpy operations over a subscribers x rows matrix, not a few per subscriber), and each
subscriber's rows are a slice of the matrix's true cells.

Natural batching, decided and written down: ``publish`` queues a committed batch and schedules
one fan-out with ``call_soon``. Batches committed while the event loop is busy (sending to a
thousand sockets, say) are fanned out together, as one merged batch per project: under load
each subscriber pays its per-batch cost (mask, join, wake-up, write) once per round rather than
once per commit, so the cost per observation falls as the rate rises and latency stays bounded.
When the loop is idle a batch goes out alone, at once. Station reports are still judged per
committed batch (the merged batch remembers which commit each row came from).

Slices, decided and written down: a round for a thousand subscribers takes tens of
milliseconds. As one callback, every other event of the loop waited for all of it: an ingest
request's few steps (its body, its decode, its commit's answer) each waited for a whole round,
and the next batch's round started that much later. A round now gives the loop back after
``SLICE_SECONDS`` of work (looking at the clock every ``SLICE_SUBSCRIBERS`` subscribers) and
goes on in the loop's next pass. Rounds still run one at a time, in order: a batch committed
meanwhile waits for the round in progress (merged with the others committed meanwhile), so
each subscriber gets the batches in cursor order, each once. ``flush`` runs them all at once.

Direct delivery, decided and written down: a stream that can write without waiting (a WebSocket
connection with a synchronous writer) may give its subscription a ``sink`` once it is live and
its queue is empty. The fan-out then hands each round's items to the sink at once, with the
position the round reached, instead of queueing them and waking the stream's task: a thousand
sessions cost a thousand calls in one loop pass, not a thousand task switches. A sink that
cannot take a round now (the connection's buffer is full) returns False having written
nothing; the subscription drops the sink and queues the items, and the stream drains its queue
the ordinary way (bounded as above) and may give the sink again. A sink that raises is
dropped and the error is handed to the stream, never to the other subscribers.

Round delivery, decided and written down: even a sink costs a few Python calls per subscriber
(its items, their join, their message, their frame). A face whose framing has a ``deliver``
may take a whole slice of a stacked round's subscribers in one call instead, before they are
offered it: it writes the share of those it can serve at once (live, sink given, connection
ready) and marks them ``done``; the hub then only records that their sink took the round
(``direct_last``) and offers the round to the others as usual. The push feed and native
NDJSON and SSE streams make every such connection's bytes in one C call
(``faces/synoptic/feed.py``, ``faces/native/observations.py``, ``wire/wsframes.py``).

Failures, decided and written down: a round that raises (a bug) must not stop the hub: the
scheduled fan-out would stay on the failed round and every later batch would wait behind it,
for every subscriber. A subscriber whose share of a round raises (its selection, units or
framing) is closed alone (``ROUND_FAILED``), with the cursor to resume from; a round that
raises as a whole (its masks, say) closes its project's subscribers the same way; either way
the next rounds run, and a closed subscriber re-reads what it missed from the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamgauge.core.filters import CompiledSelection, SelectionStack
from streamgauge.core.framing import Deliver, Framing
from streamgauge.core.registry import Registry
from streamgauge.core.units import METRIC, UnitSystem
from streamgauge.domain.batch import Batch, merge_commits

log = logging.getLogger(__name__)

SOLO_ROWS = 1000  # a committed batch this big is fanned out alone, not merged (``Hub._rounds``)
# A fan-out gives the event loop back after this much work, and goes on in its next pass
SLICE_SECONDS = 0.004
SLICE_SUBSCRIBERS = 32  # subscribers served between two looks at the clock
STACK_MIN = 16  # subscribers of a project from which a round computes their masks at once
# Why a subscriber is closed when its share of a round (or the whole round) raised: a bug, but
# one that must not stop the hub (every later round would wait behind the failed one)
ROUND_FAILED = "server error while sending: resume from the cursor"


@dataclass(slots=True)
class Item:
    first: int
    last: int
    count: int
    data: bytes
    received_ns: int
    series: npt.NDArray[np.int64] | None = None  # the rows' series pks, if the framing asks
    derived: object = None  # a face's per-item cache (shared by sessions whose masks agree)
    frame: bytes | None = None  # ``data`` as a WebSocket frame, made once for every connection


# A direct delivery: (items of a round, position the round reached) -> taken? (see the docstring)
Sink = Callable[[list[Item], int], bool]


class Flag:
    """``asyncio.Event``'s ``set``, ``clear``, ``is_set`` and ``wait``, with its waiters in a
    list made only while someone waits: an ``asyncio.Event`` keeps a deque of about 750 bytes
    for its life, and a thousand idle subscribers (feed sessions) keep one each."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


_NO_ITEMS: tuple[Item, ...] = ()


class Subscription:
    """One subscriber of the hub: its selection, framing and units, and its send queue (made
    on first use and dropped when drained: a deque costs about 750 bytes, and most live
    subscribers are idle or fed by their sink)."""

    __slots__ = (
        "units",
        "selection",
        "framing",
        "registry",
        "queue_bytes",
        "_queue",
        "queued",
        "overflowed",
        "closed",
        "wakeup",
        "last_sent",
        "keepalive_due",
        "keepalives",
        "sink",
        "direct_last",
        "error",
        "state",
    )

    def __init__(
        self,
        selection: CompiledSelection,
        framing: Framing,
        registry: Registry,
        queue_bytes: int,
        units: UnitSystem = METRIC,
    ) -> None:
        self.units = units
        self.selection = selection
        self.framing = framing
        self.registry = registry
        self.queue_bytes = queue_bytes
        self._queue: deque[Item] | None = None
        self.queued = 0
        self.overflowed = False
        self.closed: str | None = None  # a reason to close, set by the hub
        self.wakeup = Flag()
        self.last_sent = time.monotonic()  # when the stream last wrote (data or keepalive)
        self.keepalive_due = False  # set by the hub's clock when idle for the interval
        self.keepalives = True  # False: the stream keeps its connection alive another way
        self.sink: Sink | None = None  # direct delivery, given by a live stream (see above)
        self.direct_last = 0  # the position of the last round the sink took
        self.error: BaseException | None = None  # what the sink raised, for the stream
        self.state: object = None  # the face's, per subscriber (read by ``framing.prepare``)

    @property
    def queue(self) -> Sequence[Item]:
        """The items queued for the stream, oldest first."""
        return _NO_ITEMS if self._queue is None else self._queue

    @property
    def project_pk(self) -> int:
        return self.selection.selection.project_pk

    def render(self, batch: Batch, picked: npt.NDArray[np.intp] | None = None) -> list[Item]:
        """The frames of the rows of ``batch`` this subscriber wants (``picked``, the row
        numbers in order, if given; else those its selection's mask picks): one item, or
        several of at most ``framing.max_rows`` rows each."""
        if picked is None:
            picked = self.selection.mask(batch).nonzero()[0]
        if not len(picked):
            return []
        return self._render(batch, picked, picked.tolist(), picked.tobytes(), None, 0)

    def _render(
        self,
        batch: Batch,
        picked: npt.NDArray[np.intp],
        listed: list[int],
        content: bytes,
        cells: Cells | None,
        i: int,
    ) -> list[Item]:
        """``render``'s work, given the picked rows as an array, a list and their bytes; with
        the round's ``cells`` (this subscriber's are the ``i``-th), their first and last
        cursors and their series come from there."""
        # Subscribers who pick the same rows of this batch (same form and units) share the join.
        framing = self.framing
        key = ("join", framing.name, self.units, content)
        items: list[Item] | None = batch.derived.get(key)
        if items is not None:
            return items
        rows = framing.rows(batch, self.registry, self.units)
        step = framing.max_rows or len(listed)
        whole = step >= len(listed)  # one item: with the round's cells, they say it all
        items = []
        for lo in range(0, len(listed), step):
            part = listed[lo : lo + step]
            data = b"".join(rows) if len(part) == len(rows) else b"".join([rows[r] for r in part])
            series: npt.NDArray[np.int64] | None = None
            if whole and cells is not None:
                first, last = cells.firsts[i], cells.lasts[i]
                if framing.with_series:
                    series = cells.series[cells.bounds[i] : cells.bounds[i + 1]]
            else:
                first, last = int(batch.cursors[part[0]]), int(batch.cursors[part[-1]])
                if framing.with_series:
                    series = batch.series[picked[lo : lo + step]]
            if framing.wrap is not None:
                data = framing.wrap(data, first, last)
            items.append(Item(first, last, len(part), data, batch.received_ns, series))
        batch.derived[key] = items
        return items

    def offer(
        self,
        batch: Batch,
        picked: npt.NDArray[np.intp] | None = None,
        cells: Cells | None = None,
        i: int = 0,
    ) -> int:
        """Queue (or hand to the sink) the items of ``batch`` this subscriber wants: the rows
        ``picked`` if given (see ``render``), or the ``i``-th subscriber's of the round's
        ``cells``; returns how many the sink took."""
        if self.overflowed or self.closed:
            return 0
        items = self.render(batch, picked) if cells is None else cells.render(self, batch, i)
        sink = self.sink
        if sink is not None:
            last = int(batch.cursors[-1])
            try:
                taken = sink(items, last)
            except Exception as exc:  # noqa: BLE001 - the stream's failure, not the fan-out's
                self.sink = None
                self.error = exc
                self.wakeup.set()
                return 0
            if taken:
                self.direct_last = last
                return len(items)
            self.sink = None  # the stream queues and drains again
        if not items:
            return 0
        size = sum(len(item.data) for item in items)
        if self._queue and self.queued + size > self.queue_bytes:
            self.overflowed = True
            self._queue = None
            self.queued = 0
        else:
            if self._queue is None:
                self._queue = deque()
            for item in items:
                if item.series is not None and item.series.base is not None:
                    # a view of the round's cells (every subscriber's rows): a queued item keeps
                    # its own rows only, not the round's whole array while it waits
                    item.series = item.series.copy()
            self._queue.extend(items)
            self.queued += size
        self.wakeup.set()
        return 0

    def take(self) -> Item | None:
        if not self._queue:
            self._queue = None
            self.wakeup.clear()
            return None
        item = self._queue.popleft()
        self.queued -= len(item.data)
        return item

    def reset(self) -> None:
        """Drop the queue and the overflow mark (a catching-up subscriber re-reads the store)."""
        self._queue = None
        self.queued = 0
        self.overflowed = False

    def close(self, reason: str) -> None:
        self.closed = reason
        self.wakeup.set()


class Cells:
    """A round's picks for all its subscribers at once: the stacked masks' true cells in
    row-major order (subscriber ``i``'s are ``bounds[i]:bounds[i + 1]``), as an array, a list
    and bytes, with each subscriber's first and last cursor and the cells' series. Taken from
    these, a subscriber's rows cost a few slices instead of a few numpy calls (a thousand
    subscribers a round)."""

    __slots__ = ("rows", "_listed", "content", "bounds", "firsts", "lasts", "series", "subs")

    def __init__(
        self, batch: Batch, masks: npt.NDArray[np.bool_], subs: list[Subscription]
    ) -> None:
        # (a 2-D ``nonzero`` took four times as long as the flat one)
        rows = np.flatnonzero(masks) % masks.shape[1]
        bounds = np.zeros(len(masks) + 1, np.int64)
        np.cumsum(np.count_nonzero(masks, axis=1), out=bounds[1:])
        self.rows = rows
        self._listed: list[int] | None = None
        self.content = rows.tobytes()
        self.bounds: list[int] = bounds.tolist()
        nonempty = bounds[1:] > bounds[:-1]
        cursors = batch.cursors[rows]
        firsts = np.zeros(len(masks), np.int64)
        lasts = np.zeros(len(masks), np.int64)
        firsts[nonempty] = cursors[bounds[:-1][nonempty]]
        lasts[nonempty] = cursors[bounds[1:][nonempty] - 1]
        self.firsts: list[int] = firsts.tolist()
        self.lasts: list[int] = lasts.tolist()
        self.series = batch.series[rows]
        self.subs = subs

    @property
    def listed(self) -> list[int]:
        """``rows`` as a list (made when first asked: a face's ``deliver`` that serves every
        subscriber of a round needs none)."""
        found = self._listed
        if found is None:
            found = self._listed = self.rows.tolist()
        return found

    def render(self, sub: Subscription, batch: Batch, i: int) -> list[Item]:
        """``sub.render`` of the ``i``-th subscriber's rows."""
        lo, hi = self.bounds[i], self.bounds[i + 1]
        if lo == hi:
            return []
        size = self.rows.itemsize
        return sub._render(
            batch,
            self.rows[lo:hi],
            self.listed[lo:hi],
            self.content[lo * size : hi * size],
            self,
            i,
        )


class Hub:
    def __init__(self, on_direct: Callable[[float], None] | None = None) -> None:
        # Called once per fan-out round in which sinks took items, with the seconds since the
        # round's oldest commit (the delivery latency of that round).
        self._on_direct = on_direct
        self._subs: dict[int, set[Subscription]] = {}
        self._stacks: dict[int, SelectionStack] = {}  # by project (``_masks``)
        self._pending: list[Batch] = []
        self._scheduled = False  # ``_drive`` is due (or running)
        self._work: Iterator[None] | None = None  # the rounds in progress (``_rounds``)
        self.published_batches = 0
        self.published_rows = 0
        self.fanouts = 0  # fan-out rounds (fewer than batches under load: natural batching)
        self.overflows = 0
        self.direct_items = 0  # items taken by sinks (see the docstring)
        self.closing: str | None = None  # set by shut_down: later subscribers close at once

    def subscribe(self, sub: Subscription) -> None:
        self._subs.setdefault(sub.project_pk, set()).add(sub)
        if self.closing is not None:
            sub.close(self.closing)  # shutting down: the stream ends at once, with its cursor

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.project_pk)
        if subs is not None:
            subs.discard(sub)
            # the next round stacks its subscribers anew; the stack held this one's selection
            self._stacks.pop(sub.project_pk, None)
            if not subs:
                del self._subs[sub.project_pk]

    def publish(self, batch: Batch) -> None:
        """Queue a committed batch for the next fan-out round (at once outside an event loop)."""
        self.published_batches += 1
        self.published_rows += len(batch)
        if batch.project_pk not in self._subs:
            return
        self._pending.append(batch)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self._drive)

    def flush(self) -> None:
        """Fan out every queued batch now, in this call (a round in progress first)."""
        while self._work is not None or self._pending:
            work = self._work if self._work is not None else self._rounds()
            self._work = work
            for _ in work:
                pass
            self._work = None

    def _drive(self) -> None:
        """The scheduled fan-out: rounds of the queued batches, giving the event loop back
        after ``SLICE_SECONDS`` of work and going on in the next loop pass (see the
        docstring: a round is not one callback)."""
        deadline = time.perf_counter() + SLICE_SECONDS
        while True:
            work = self._work
            if work is None:
                if not self._pending:
                    self._scheduled = False
                    return
                work = self._work = self._rounds()
            for _ in work:
                if time.perf_counter() >= deadline:
                    asyncio.get_running_loop().call_soon(self._drive)
                    return
            self._work = None

    def _rounds(self) -> Iterator[None]:
        """Fan out the queued batches: consecutive batches of one project as one, but a big
        batch (``SOLO_ROWS``) alone (yields between slices of subscribers). A subscriber
        renders the rows of a whole fan-out batch when it wants any (shared by the
        subscribers that want rows of it), so a live row merged with a backfill's 10,000 rows
        made a subscriber of that one row encode all of them first (20-40 ms, in the live
        row's latency)."""
        pending, self._pending = self._pending, []
        start = 0
        for end in range(1, len(pending) + 1):
            if (
                end == len(pending)
                or pending[end].project_pk != pending[start].project_pk
                or len(pending[end]) >= SOLO_ROWS
                or len(pending[end - 1]) >= SOLO_ROWS
            ):
                try:
                    yield from self._fan_out(merge_commits(pending[start:end]))
                except Exception:  # a bug: the rounds after this one must still run
                    log.exception("a fan-out round failed; its subscribers resume from the log")
                    self.close_project(pending[start].project_pk, ROUND_FAILED)
                start = end

    def _fan_out(self, batch: Batch) -> Iterator[None]:
        """One round: ``batch`` to every subscriber of its project, a slice of
        ``SLICE_SUBSCRIBERS`` at a time (a yield between slices). The subscribers are those
        of the round's start: one that subscribes during the round reads this batch from the
        store (it was committed before: ``Engine.subscribe`` catches up to the head first)."""
        self.fanouts += 1
        direct = 0
        subs = list(self._subs.get(batch.project_pk, ()))  # a copy: sinks run foreign code
        masks = self._masks(batch, subs)
        if masks is None:
            for i, sub in enumerate(subs):
                was = sub.overflowed
                try:
                    direct += sub.offer(batch)
                except Exception:
                    self._failed(sub)
                if sub.overflowed and not was:
                    self.overflows += 1
                if i % SLICE_SUBSCRIBERS == SLICE_SUBSCRIBERS - 1:
                    yield
        else:
            # Each subscriber's rows: a slice of the matrix's true cells (``Cells``).
            cells = Cells(batch, masks, subs)
            for prepare in {sub.framing.prepare for sub in subs} - {None}:
                assert prepare is not None
                try:
                    prepare(batch, cells)
                except Exception:  # a face's failure: its subscribers work without it
                    log.exception("a fan-out round's prepare failed")
            delivers = [d for d in {sub.framing.deliver for sub in subs} if d is not None]
            done = bytearray(len(subs))  # 1: delivered by a face's ``deliver``
            last = int(batch.cursors[-1])
            for i, sub in enumerate(subs):
                if i % SLICE_SUBSCRIBERS == 0 and delivers:
                    self._deliver(delivers, batch, cells, i, done)
                if done[i]:
                    sub.direct_last = last
                    direct += cells.bounds[i] < cells.bounds[i + 1]
                else:
                    was = sub.overflowed
                    try:
                        direct += sub.offer(batch, None, cells, i)
                    except Exception:
                        self._failed(sub)
                    if sub.overflowed and not was:
                        self.overflows += 1
                if i % SLICE_SUBSCRIBERS == SLICE_SUBSCRIBERS - 1:
                    yield
        self.direct_items += direct
        if direct and self._on_direct is not None:
            self._on_direct((time.monotonic_ns() - batch.received_ns) / 1e9)

    @staticmethod
    def _deliver(
        delivers: list[Deliver], batch: Batch, cells: Cells, lo: int, done: bytearray
    ) -> None:
        """The faces' ``deliver`` of the round's next slice of subscribers."""
        hi = min(lo + SLICE_SUBSCRIBERS, len(cells.subs))
        for deliver in delivers:
            try:
                deliver(batch, cells, lo, hi, done)
            except Exception:  # a face's failure: the subscribers it did not mark are offered
                log.exception("a fan-out round's deliver failed")

    @staticmethod
    def _failed(sub: Subscription) -> None:
        """A subscriber whose share of a round raised (a bug, in its selection, units or
        framing): it alone is closed, with the cursor to resume from, and the round goes on
        (its sink's own failures are handed to its stream: ``Subscription.offer``)."""
        log.exception("a subscriber's share of a fan-out round failed; it resumes from the log")
        sub.close(ROUND_FAILED)

    def _masks(self, batch: Batch, subs: list[Subscription]) -> npt.NDArray[np.bool_] | None:
        """Every subscriber's mask of ``batch`` at once (``SelectionStack``), for a round to
        ``STACK_MIN`` subscribers or more of one registry; None: each computes its own."""
        if len(subs) < STACK_MIN:
            self._stacks.pop(batch.project_pk, None)
            return None
        reg = subs[0].registry
        if any(sub.registry is not reg for sub in subs):
            return None
        selections = [sub.selection for sub in subs]
        stack = self._stacks.get(batch.project_pk)
        if stack is None or not stack.current(selections, reg):
            stack = self._stacks[batch.project_pk] = SelectionStack(selections, reg)
        return stack.masks(batch)

    def tick(self, now: float, idle_seconds: float) -> None:
        """The keepalive clock (one for every stream, instead of a timer per wait): wake each
        subscriber that has written nothing for ``idle_seconds`` (and wants keepalives)."""
        for subs in self._subs.values():
            for sub in subs:
                if sub.keepalives and now - sub.last_sent >= idle_seconds:
                    sub.keepalive_due = True
                    sub.wakeup.set()

    def close_project(self, project_pk: int, reason: str) -> None:
        for sub in list(self._subs.get(project_pk, ())):
            sub.close(reason)

    def shut_down(self, reason: str) -> None:
        """Close every subscriber, and every later one as it subscribes."""
        self.closing = reason
        self.close_all(reason)

    def close_all(self, reason: str) -> None:
        """Close every subscriber. It iterates over a copy: a subscriber may leave meanwhile
        (its task ends), and the test harness calls this from another thread."""
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close(reason)

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def queued_bytes(self) -> int:
        return sum(sub.queued for subs in self._subs.values() for sub in subs)
