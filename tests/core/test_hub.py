"""The live hub without I/O: rendering masked rows, the bounded send queue, routing by project."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
import pytest

from streamgauge.core import hub as hub_module
from streamgauge.core.filterlang import parse_filter_on
from streamgauge.core.filters import CompiledSelection, Selection
from streamgauge.core.framing import NDJSON, SSE, Framing
from streamgauge.core.hub import SOLO_ROWS, STACK_MIN, Cells, Hub, Item, Subscription
from streamgauge.core.registry import Registry
from streamgauge.core.units import METRIC
from streamgauge.domain.batch import Batch, merge_commits
from streamgauge.domain.events import SeriesAdded

# series pk -> (project pk, device pk, device id, variable id)
SERIES = {
    1: (1, 1, "d0", "air_temp"),
    2: (1, 1, "d0", "wind_speed"),
    3: (1, 2, "d1", "air_temp"),
    4: (2, 3, "e0", "air_temp"),
}


def registry() -> Registry:
    reg = Registry()
    for pk, (project_pk, device_pk, dev, var) in SERIES.items():
        reg.apply(SeriesAdded(pk, project_pk, device_pk, pk, 1, dev, var))
    return reg


def batch(series: list[int], first: int = 1, project_pk: int = 1) -> Batch:
    n = len(series)
    return Batch(
        project_pk,
        np.arange(first, first + n, dtype=np.int64),
        np.array(series, np.int64),
        np.full(n, 1_700_000_000_000, np.int64),
        [float(i) for i in range(n)],
        np.zeros(n, np.int64),
        received_ns=123,
    )


def sub(
    reg: Registry,
    selection: Selection,
    framing: Framing = NDJSON,
    queue_bytes: int = 1 << 20,
) -> Subscription:
    return Subscription(CompiledSelection(selection, reg), framing, reg, queue_bytes)


def test_render_picks_exactly_the_masked_rows() -> None:
    reg = registry()
    b = batch([1, 2, 3, 1, 2])
    s = sub(reg, Selection(1, variables=frozenset({"wind_speed"})))
    (item,) = s.render(b)
    rows = b.framed("ndjson", reg, NDJSON.row)
    assert item.data == rows[1] + rows[4]
    assert (item.first, item.last, item.count, item.received_ns) == (2, 5, 2, 123)


def test_render_with_sse_framing() -> None:
    reg = registry()
    b = batch([1, 3, 2], first=40)
    s = sub(reg, Selection(1, variables=frozenset({"wind_speed"})), SSE)
    (item,) = s.render(b)
    assert item.data.startswith(b"id: 42\ndata: {") and item.data.endswith(b"}\n\n")
    assert item.data.count(b"id: ") == 1
    assert (item.first, item.last, item.count) == (42, 42, 1)


def test_render_all_rows_fast_path_and_no_rows() -> None:
    reg = registry()
    b = batch([1, 2, 3], first=10)
    (item,) = sub(reg, Selection(1)).render(b)
    assert item.data == b"".join(b.framed("ndjson", reg, NDJSON.row))
    assert (item.first, item.last, item.count) == (10, 12, 3)
    assert sub(reg, Selection(1, variables=frozenset({"nope"}))).render(b) == []
    assert sub(reg, Selection(2)).render(b) == []


def test_subscribers_with_the_same_framing_share_the_encoding() -> None:
    reg = registry()
    b = batch([1, 2, 3])
    first = b.framed("ndjson", reg, NDJSON.row)
    assert b.framed("ndjson", reg, NDJSON.row) is first
    a = sub(reg, Selection(1)).render(b)
    c = sub(reg, Selection(1, variables=frozenset({"air_temp"}))).render(b)
    assert a and c
    assert b.framed("ndjson", reg, NDJSON.row) is first  # rendering reused the cached list
    assert b._framed.keys() == {("ndjson", METRIC)}
    sse = sub(reg, Selection(1), SSE).render(b)
    assert sse and b._framed.keys() == {("ndjson", METRIC), ("sse", METRIC)}
    assert b.framed("sse", reg, SSE.row) is b.framed("sse", reg, SSE.row)


def test_offer_and_take_in_order() -> None:
    reg = registry()
    s = sub(reg, Selection(1))
    assert not s.wakeup.is_set()
    s.offer(batch([1], first=1))
    s.offer(batch([4], first=2, project_pk=1))  # series of another project: nothing to queue
    s.offer(batch([2, 3], first=3))
    assert s.wakeup.is_set()
    assert [i.first for i in s.queue] == [1, 3]
    assert s.queued == sum(len(i.data) for i in s.queue)
    one = s.take()
    two = s.take()
    assert one is not None and two is not None
    assert (one.first, one.last, two.first, two.last) == (1, 1, 3, 4)
    assert s.queued == 0
    assert s.wakeup.is_set()  # cleared only when take() finds the queue empty
    assert s.take() is None
    assert not s.wakeup.is_set()


def test_one_item_always_fits_an_empty_queue() -> None:
    reg = registry()
    s = sub(reg, Selection(1), queue_bytes=10)
    big = batch([1, 2, 3])
    s.offer(big)
    assert not s.overflowed
    assert len(s.queue) == 1 and s.queued > 10


def test_overflow_marks_clears_and_wakes() -> None:
    reg = registry()
    one_row = len(b"".join(batch([1]).framed("ndjson", reg, NDJSON.row)))
    s = sub(reg, Selection(1), queue_bytes=one_row * 2)
    s.offer(batch([1], first=1))
    s.offer(batch([1], first=2))
    assert not s.overflowed and len(s.queue) == 2
    s.wakeup.clear()
    s.offer(batch([1], first=3))
    assert s.overflowed
    assert len(s.queue) == 0 and s.queued == 0
    assert s.wakeup.is_set()
    # an overflowed subscriber takes nothing more until reset
    s.offer(batch([1], first=4))
    assert len(s.queue) == 0 and s.take() is None


def test_reset_drops_queue_and_overflow_mark() -> None:
    reg = registry()
    s = sub(reg, Selection(1), queue_bytes=1)
    s.offer(batch([1], first=1))
    s.offer(batch([1], first=2))
    assert s.overflowed
    s.reset()
    assert not s.overflowed and s.queued == 0 and not s.queue
    s.offer(batch([2], first=3))
    item = s.take()
    assert item is not None and item.first == 3
    s.offer(batch([2], first=4))
    s.reset()
    assert s.queued == 0 and not s.queue


def test_closed_subscriber_takes_no_more() -> None:
    reg = registry()
    s = sub(reg, Selection(1))
    s.close("bye")
    assert s.closed == "bye" and s.wakeup.is_set()
    s.offer(batch([1]))
    assert not s.queue


def test_publish_routes_by_project_and_counts_overflows() -> None:
    reg = registry()
    hub = Hub()
    p1 = sub(reg, Selection(1))
    p1_small = sub(reg, Selection(1), queue_bytes=1)
    p2 = sub(reg, Selection(2))
    for s in (p1, p1_small, p2):
        hub.subscribe(s)
    assert hub.subscribers == 3
    hub.publish(batch([1, 2], first=1))
    hub.publish(batch([3], first=3))
    assert [i.first for i in p1.queue] == [1, 3]
    assert p1_small.overflowed and not p1.overflowed
    assert not p2.queue and not p2.wakeup.is_set()
    hub.publish(batch([4], first=4, project_pk=2))
    assert [i.first for i in p2.queue] == [4] and [i.first for i in p1.queue] == [1, 3]
    hub.publish(batch([1], first=5))  # p1_small stays overflowed: counted once
    assert hub.overflows == 1
    assert (hub.published_batches, hub.published_rows) == (4, 5)
    assert hub.queued_bytes() == p1.queued + p2.queued
    hub.publish(batch([9], first=6, project_pk=3))  # no subscribers: still counted
    assert hub.published_batches == 5

    hub.unsubscribe(p1_small)
    hub.unsubscribe(p1_small)  # twice is harmless
    hub.unsubscribe(p2)
    assert hub.subscribers == 1
    hub.publish(batch([4], first=7, project_pk=2))
    assert [i.first for i in p2.queue] == [4]


def test_close_project_and_close_all() -> None:
    reg = registry()
    hub = Hub()
    a, b, c = sub(reg, Selection(1)), sub(reg, Selection(1)), sub(reg, Selection(2))
    for s in (a, b, c):
        hub.subscribe(s)
    hub.close_project(1, "project deleted")
    assert a.closed == b.closed == "project deleted"
    assert c.closed is None and not c.wakeup.is_set()
    hub.close_all("server shutting down")
    assert c.closed == "server shutting down" and c.wakeup.is_set()
    hub.close_project(99, "nothing to close")  # unknown project: no error


async def test_commits_published_while_the_loop_is_busy_fan_out_as_one_round() -> None:
    reg = registry()
    hub = Hub()
    s = sub(reg, Selection(1))
    other = sub(reg, Selection(2))
    hub.subscribe(s)
    hub.subscribe(other)
    hub.publish(batch([1, 2], first=1))
    hub.publish(batch([3], first=3))
    hub.publish(batch([4], first=4, project_pk=2))
    hub.publish(batch([1], first=5))
    assert not s.queue  # nothing until the loop runs the scheduled round
    await asyncio.sleep(0)
    # consecutive commits of project 1 went out together; project 2's commit split the run
    assert [(i.first, i.last, i.count) for i in s.queue] == [(1, 3, 3), (5, 5, 1)]
    assert [(i.first, i.count) for i in other.queue] == [(4, 1)]
    assert hub.fanouts == 3 and hub.published_batches == 4
    lines = b"".join(i.data for i in s.queue).splitlines()
    assert [json.loads(line)["cursor"] for line in lines] == [1, 2, 3, 5]
    await asyncio.sleep(0)
    hub.publish(batch([2], first=6))
    await asyncio.sleep(0)
    assert [i.first for i in s.queue][-1] == 6  # an idle loop sends a commit alone, at once


def test_merged_commits_keep_station_reports_per_commit() -> None:
    reg = registry()
    # series 1 (air_temp) and 2 (wind_speed) are one device, so one station, at one time
    a = batch([1], first=1)
    a.values[0] = 30.0
    b = batch([2], first=2)
    b.values[0] = 5.0
    expr = parse_filter_on("(air_temp > 20) and (wind_speed > 1)")
    s = sub(reg, Selection(1, expr=expr))
    assert s.selection.mask(merge_commits([a, b])).tolist() == [False, False]
    joined = batch([1, 2], first=1)
    joined.values[:] = [30.0, 5.0]
    assert s.selection.mask(joined).tolist() == [True, True]
    merged = merge_commits([a, b])
    assert merged.received_ns == 123 and merged.first == 1 and merged.last == 2
    assert merge_commits([a]) is a


def test_max_rows_splits_items_and_with_series_keeps_the_rows_series() -> None:
    reg = registry()
    b = batch([1, 2, 3, 1, 2], first=10)
    framing = dataclasses.replace(NDJSON, name="small", max_rows=2, with_series=True)
    items = sub(reg, Selection(1), framing).render(b)
    assert [(i.first, i.last, i.count) for i in items] == [(10, 11, 2), (12, 13, 2), (14, 14, 1)]
    assert [i.series.tolist() for i in items if i.series is not None] == [[1, 2], [3, 1], [2]]
    rows = b.framed("ndjson", reg, NDJSON.row)
    assert b"".join(i.data for i in items) == b"".join(rows)
    s = sub(reg, Selection(1), framing, queue_bytes=1 << 20)
    s.offer(b)
    assert len(s.queue) == 3 and s.queued == sum(len(i.data) for i in items)


def test_the_keepalive_clock_wakes_only_idle_subscribers() -> None:
    reg = registry()
    hub = Hub()
    idle, busy = sub(reg, Selection(1)), sub(reg, Selection(1))
    hub.subscribe(idle)
    hub.subscribe(busy)
    idle.last_sent, busy.last_sent = 100.0, 109.0
    hub.tick(110.0, 5.0)
    assert idle.keepalive_due and idle.wakeup.is_set()
    assert not busy.keepalive_due and not busy.wakeup.is_set()


def test_wrap_builds_each_items_message_once() -> None:
    reg = registry()
    b = batch([1, 2, 3], first=20)
    calls: list[tuple[int, int]] = []

    def wrap(data: bytes, first: int, last: int) -> bytes:
        calls.append((first, last))
        return b"[%d-%d]" % (first, last) + data

    framing = dataclasses.replace(NDJSON, name="wrapped", max_rows=2, wrap=wrap)
    a = sub(reg, Selection(1), framing).render(b)
    again = sub(reg, Selection(1), framing).render(b)  # same mask: shared, not wrapped again
    assert calls == [(20, 21), (22, 22)] and again is a
    assert a[0].data.startswith(b"[20-21]{") and a[1].data.startswith(b"[22-22]{")


def test_a_sink_takes_each_round_at_once_with_its_position() -> None:
    reg = registry()
    s = sub(reg, Selection(1, variables=frozenset({"air_temp"})))
    got: list[tuple[list[bytes], int]] = []

    def sink(items: list[Item], position: int) -> bool:
        got.append(([i.data for i in items], position))
        return True

    s.sink = sink
    hub = Hub()
    hub.subscribe(s)
    hub.publish(batch([1, 2], first=10))
    hub.publish(batch([2], first=12))  # nothing for it: the sink still learns the position
    assert [len(rows) for rows, _ in got] == [1, 0] and [p for _, p in got] == [11, 12]
    assert s.direct_last == 12 and not s.queue and not s.wakeup.is_set()


def test_a_sink_that_cannot_take_a_round_leaves_it_queued() -> None:
    reg = registry()
    s = sub(reg, Selection(1))
    s.sink = lambda items, position: False
    s.offer(batch([1, 2], first=10))
    assert s.sink is None and s.direct_last == 0
    assert [(i.first, i.last) for i in s.queue] == [(10, 11)] and s.wakeup.is_set()


def test_a_sink_that_raises_hands_the_error_to_its_stream_only() -> None:
    reg = registry()
    failing, other = sub(reg, Selection(1)), sub(reg, Selection(1))

    def sink(items: list[Item], position: int) -> bool:
        raise ValueError("broken connection object")

    failing.sink = sink
    hub = Hub()
    hub.subscribe(failing)
    hub.subscribe(other)
    hub.publish(batch([1], first=5))
    assert isinstance(failing.error, ValueError) and failing.sink is None
    assert failing.wakeup.is_set() and not failing.queue
    assert [i.first for i in other.queue] == [5]


def test_rounds_taken_by_sinks_report_their_latency() -> None:
    reg = registry()
    seen: list[float] = []
    hub = Hub(on_direct=seen.append)
    s = sub(reg, Selection(1))
    s.sink = lambda items, position: True
    hub.subscribe(s)
    hub.publish(batch([1], first=1))
    hub.publish(batch([4], first=2))  # another project: nobody takes anything
    assert len(seen) == 1 and seen[0] > 0


def test_the_keepalive_clock_leaves_streams_that_want_no_keepalives_asleep() -> None:
    """Regression: live feed sessions (written to by the fan-out, so their last write time never
    moved) were all woken at once by the keepalive clock, every interval: a 1,000-task burst
    that was the feed bench's p99. WebSocket faces keep alive with protocol pings."""
    reg = registry()
    feed = sub(reg, Selection(1))
    feed.keepalives = False
    feed.last_sent = 0.0
    hub = Hub()
    hub.subscribe(feed)
    hub.tick(now=100.0, idle_seconds=10.0)
    assert not feed.keepalive_due and not feed.wakeup.is_set()


async def test_a_big_batch_is_fanned_out_alone_so_a_live_row_beside_it_stays_cheap() -> None:
    """A backfill batch and live rows committed in one round: the small batches around it are
    merged with each other but not with it, so a subscriber of the live rows never encodes
    the big batch's rows (it renders nothing of it), and every row arrives once, in order."""
    reg = registry()
    hub = Hub()
    live = sub(reg, Selection(1, variables=frozenset({"wind_speed"})))
    every = sub(reg, Selection(1))
    hub.subscribe(live)
    hub.subscribe(every)
    big = batch([1] * SOLO_ROWS, first=2)
    hub.publish(batch([2], first=1))
    hub.publish(big)
    hub.publish(batch([2], first=SOLO_ROWS + 2))
    hub.publish(batch([3, 2], first=SOLO_ROWS + 3))
    await asyncio.sleep(0)  # the fan-out round
    assert hub.fanouts == 3  # [1], the big batch, then the two small ones merged
    assert [(i.first, i.last, i.count) for i in live.queue] == [
        (1, 1, 1),
        (SOLO_ROWS + 2, SOLO_ROWS + 4, 2),
    ]
    assert [(i.first, i.last) for i in every.queue] == [
        (1, 1),
        (2, SOLO_ROWS + 1),
        (SOLO_ROWS + 2, SOLO_ROWS + 4),
    ]
    rows = b"".join(i.data for i in live.queue).splitlines()
    assert [json.loads(r)["cursor"] for r in rows] == [1, SOLO_ROWS + 2, SOLO_ROWS + 4]


async def test_flag_wakes_every_waiter_and_forgets_cancelled_ones() -> None:
    """``Flag`` (the subscribers' wakeup) behaves as ``asyncio.Event``: ``wait`` returns at once
    when set, every waiter wakes on ``set``, a cancelled waiter leaves nothing behind."""
    import asyncio

    from streamgauge.core.hub import Flag

    flag = Flag()
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert cancelled.cancelled()
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert flag.is_set() and await flag.wait()
    flag.clear()
    assert not flag.is_set()
    late = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not late.done()
    flag.set()
    assert await late


def test_a_round_to_many_subscribers_gives_each_exactly_its_own_rows() -> None:
    """From ``STACK_MIN`` subscribers on, a round computes their masks at once: each still
    gets what its own selection picks, and a subscriber that joins, leaves or sees a new
    registry version is counted in the next round."""
    reg = registry()
    hub = Hub()
    kinds = [
        Selection(1),
        Selection(1, variables=frozenset({"air_temp"})),
        Selection(1, variables=frozenset({"wind_speed"}), qc_remove=2),
        Selection(1, expr=parse_filter_on("(air_temp > 4)")),
        Selection(1, qc_remove=3),
    ]
    subs = [sub(reg, kinds[i % len(kinds)]) for i in range(STACK_MIN + 4)]
    for s in subs:
        hub.subscribe(s)

    b = batch([1, 2, 3, 1, 2, 3], first=1)
    b.values[:] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    b.qc[:] = [0, 1, 2, 0, 1, 2]
    expected = {
        id(s): [int(b.cursors[i]) for i in np.flatnonzero(s.selection.mask(b))] for s in subs
    }
    hub.publish(b)
    assert len({tuple(v) for v in expected.values()}) == len(kinds)  # five different answers
    for s in subs:
        assert [c for item in s.queue for c in json_cursors(item)] == expected[id(s)]
    assert hub._stacks  # the round used the stack
    late = sub(reg, Selection(1, variables=frozenset({"air_temp"})))
    hub.subscribe(late)
    hub.unsubscribe(subs[0])
    assert not hub._stacks  # a subscriber that left is not held by the stack
    hub.publish(batch([3, 2], first=7))
    assert [c for item in late.queue for c in json_cursors(item)] == [7]
    assert [c for item in subs[0].queue for c in json_cursors(item)] == expected[id(subs[0])]


def json_cursors(item: Item) -> list[int]:
    return [json.loads(line)["cursor"] for line in item.data.splitlines()]


async def test_a_round_gives_the_loop_back_between_slices_and_keeps_the_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round over many subscribers runs in slices (the loop runs other callbacks between
    them); a batch committed meanwhile waits for the round in progress; each subscriber gets
    every batch once, in cursor order, and a subscriber that joins mid-round is not in it."""
    monkeypatch.setattr(hub_module, "SLICE_SECONDS", 0.0)  # give the loop back at every look
    reg = registry()
    hub = Hub()
    subs = [sub(reg, Selection(1)) for _ in range(5 * hub_module.SLICE_SUBSCRIBERS)]
    for s in subs:
        hub.subscribe(s)
    seen: list[tuple[str, int]] = []  # (event, subscribers served so far), in loop order

    def served() -> int:
        return sum(1 for s in subs if s.queue)

    hub.publish(batch([1, 2], first=1))
    asyncio.get_running_loop().call_soon(lambda: seen.append(("other", served())))
    await asyncio.sleep(0)  # the first slice, then the other callback
    assert seen == [("other", hub_module.SLICE_SUBSCRIBERS)]
    late = sub(reg, Selection(1))
    hub.subscribe(late)  # joins mid-round: reads the batch from the store (Engine.subscribe)
    hub.publish(batch([3], first=3))  # committed mid-round: goes out after it
    # The round is still at its first slice (which subscribers those are is the hub's set
    # order: asserting on one of them by place failed once).
    assert served() == hub_module.SLICE_SUBSCRIBERS
    while hub._work is not None or hub._pending:
        await asyncio.sleep(0)
    for s in subs:
        assert [(i.first, i.last) for i in s.queue] == [(1, 2), (3, 3)]
    assert [(i.first, i.last) for i in late.queue] == [(3, 3)]
    assert hub.fanouts == 2


async def test_flush_finishes_a_round_in_progress_and_the_queued_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "SLICE_SECONDS", 0.0)
    reg = registry()
    hub = Hub()
    subs = [sub(reg, Selection(1)) for _ in range(3 * hub_module.SLICE_SUBSCRIBERS)]
    for s in subs:
        hub.subscribe(s)
    hub.publish(batch([1], first=1))
    await asyncio.sleep(0)  # one slice of the round
    hub.publish(batch([2], first=2))
    hub.flush()
    assert all([(i.first, i.last) for i in s.queue] == [(1, 1), (2, 2)] for s in subs)
    await asyncio.sleep(0)  # the scheduled pass finds nothing left
    assert all(len(s.queue) == 2 for s in subs) and hub.fanouts == 2


def test_a_stacked_round_renders_each_subscriber_as_alone_and_prepares_once() -> None:
    """A round of ``STACK_MIN`` subscribers or more takes each one's rows from the round's
    ``Cells``: the same items (cursors, counts, series, messages, split by ``max_rows``) as the
    subscriber's own ``render``, cursors with gaps included. A framing's ``prepare`` is called
    once per round, before any subscriber is offered it, and one that fails stops nothing."""
    reg = registry()
    hub = Hub()
    calls: list[tuple[int, int]] = []

    def prepare(batch: Batch, cells: Cells) -> None:
        assert all(not s.queue for s in cells.subs)  # before any subscriber is offered it
        calls.append((batch.first, len(cells.subs)))
        raise RuntimeError("a face's bug")

    framing = dataclasses.replace(
        NDJSON,
        name="wrapped",
        max_rows=2,
        with_series=True,
        wrap=lambda data, first, last: b"%d-%d:" % (first, last) + data,
        prepare=prepare,
    )
    kinds = [
        Selection(1),
        Selection(1, variables=frozenset({"air_temp"})),
        Selection(1, variables=frozenset({"wind_speed"})),
        Selection(1, expr=parse_filter_on("(air_temp > 4)")),
    ]
    subs = [sub(reg, kinds[i % len(kinds)], framing) for i in range(STACK_MIN + 2)]
    for s in subs:
        hub.subscribe(s)
    b = batch([1, 2, 3, 1, 2, 3, 1], first=1)
    b.cursors[:] = [3, 4, 9, 10, 11, 20, 31]  # gaps: other projects' rows between
    b.values[:] = [0.0, 1.0, 2.0, 5.0, 4.0, 6.0, 1.0]
    alone = dataclasses.replace(b, derived={})
    expected = [
        [
            (i.first, i.last, i.count, i.data, i.series.tolist())
            for i in s.render(alone)
            if i.series is not None
        ]
        for s in subs
    ]
    hub.publish(b)
    assert calls == [(3, len(subs))]
    assert hub._stacks  # the round used the stack
    for s, want in zip(subs, expected, strict=True):
        got = [
            (i.first, i.last, i.count, i.data, i.series.tolist())
            for i in s.queue
            if i.series is not None
        ]
        assert got == want and got


def test_a_queued_item_of_a_stacked_round_keeps_only_its_own_series() -> None:
    """An item taken from a stacked round's cells has its rows' series as a view of the whole
    round's (every subscriber's rows); queued, it keeps a copy of its own, so a slow
    subscriber's queue does not hold each round's whole array (which its byte bound does not
    count)."""
    reg = registry()
    hub = Hub()
    framing = dataclasses.replace(NDJSON, name="with-series", with_series=True)
    subs = [sub(reg, Selection(1), framing) for _ in range(STACK_MIN + 2)]
    for s in subs:
        hub.subscribe(s)
    hub.publish(batch([1, 2, 3, 1], first=1))
    assert hub._stacks  # the round used the stack
    for s in subs:
        (item,) = s.queue
        assert item.series is not None and item.series.tolist() == [1, 2, 3, 1]
        assert item.series.base is None


@pytest.mark.parametrize("count", [3, STACK_MIN + 2])
def test_a_subscriber_whose_share_of_a_round_raises_is_closed_alone(count: int) -> None:
    """A bug in one subscriber's framing (here its encoder) closes that subscriber, with the
    reason that says to resume, and every other subscriber gets the round and the next ones:
    the hub never stops behind a failed round (with few subscribers and with a stacked
    round)."""
    reg = registry()
    hub = Hub()

    def broken(batch: Batch, reg: Registry, units: object) -> list[bytes]:
        raise ValueError("an encoder's bug")

    bad = sub(reg, Selection(1), dataclasses.replace(NDJSON, name="broken", encode=broken))
    good = [sub(reg, Selection(1)) for _ in range(count - 1)]
    for s in [*good[:1], bad, *good[1:]]:
        hub.subscribe(s)
    hub.publish(batch([1, 2], first=1))
    hub.publish(batch([3], first=3))
    assert bad.closed == hub_module.ROUND_FAILED and not bad.queue
    for s in good:
        assert s.closed is None
        assert [c for item in s.queue for c in json_cursors(item)] == [1, 2, 3]


def test_a_round_that_raises_closes_its_project_and_the_hub_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round that fails as a whole (here its stacked masks) closes the subscribers of its
    project, who resume from the log; the next round runs."""
    reg = registry()
    hub = Hub()
    subs = [sub(reg, Selection(1)) for _ in range(STACK_MIN)]
    other = sub(reg, Selection(2))
    for s in [*subs, other]:
        hub.subscribe(s)
    real = hub_module.SelectionStack.masks

    def fails_once(self: hub_module.SelectionStack, b: Batch) -> np.ndarray:
        monkeypatch.setattr(hub_module.SelectionStack, "masks", real)
        raise RuntimeError("a mask's bug")

    monkeypatch.setattr(hub_module.SelectionStack, "masks", fails_once)
    hub.publish(batch([1, 2], first=1))
    assert all(s.closed == hub_module.ROUND_FAILED for s in subs)
    assert other.closed is None
    late = sub(reg, Selection(1))
    hub.subscribe(late)
    hub.publish(batch([4], first=3, project_pk=2))
    hub.publish(batch([3], first=4))
    assert [c for item in other.queue for c in json_cursors(item)] == [3]
    assert [c for item in late.queue for c in json_cursors(item)] == [4]
