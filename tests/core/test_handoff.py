"""The cursor handoff, without I/O: catch-up then live, no gap, no duplicate."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgauge.core.handoff import Handoff, HandoffError


def test_live_only_when_resuming_at_head() -> None:
    h = Handoff(last=10)
    h.start(head=10)
    assert h.live and h.next_read() is None


def test_catch_up_reads_up_to_the_head_then_admits_newer_items() -> None:
    h = Handoff(last=3)
    h.start(head=10)
    assert h.next_read() == (3, 10)
    h.read(last_row=7, complete=False)
    assert h.next_read() == (7, 10)
    h.read(last_row=None, complete=True)  # rows 8..10 did not exist or did not match
    assert h.live and h.last == 10
    assert h.admit(11, 12)
    assert not h.admit(5, 9)  # already covered: skipped
    assert h.last == 12


def test_overlapping_live_item_is_an_error() -> None:
    h = Handoff(last=0)
    h.start(head=0)
    h.admit(1, 5)
    with pytest.raises(HandoffError):
        h.admit(4, 8)


def test_history_row_outside_the_range_is_an_error() -> None:
    h = Handoff(last=5)
    h.start(head=10)
    with pytest.raises(HandoffError):
        h.read(last_row=11, complete=False)
    with pytest.raises(HandoffError):
        Handoff(last=0).admit(1, 2)  # not started: not live


def test_restart_after_overflow_catches_up_to_the_new_head() -> None:
    h = Handoff(last=0)
    h.start(head=4)
    h.read(last_row=4, complete=True)
    h.restart(head=9)
    assert h.next_read() == (4, 9)


@settings(max_examples=300, deadline=None)
@given(
    since=st.integers(0, 30),
    head=st.integers(0, 30),
    batches=st.lists(st.integers(1, 5), max_size=12),
    page=st.integers(1, 7),
    wanted=st.sets(st.integers(1, 100)),
    overflow_at=st.none() | st.integers(0, 12),
)
def test_no_gap_no_duplicate(
    since: int,
    head: int,
    batches: list[int],
    page: int,
    wanted: set[int],
    overflow_at: int | None,
) -> None:
    """Simulate a log, a resuming subscriber with a filter (``wanted``), live batches published
    while it catches up, and possibly a queue overflow: it must deliver exactly the wanted cursors
    after ``since``, in order."""
    since = min(since, head)
    log_head = head
    queue: list[tuple[int, int, list[int]]] = []

    def publish(n: int) -> None:
        nonlocal log_head
        cursors = [c for c in range(log_head + 1, log_head + n + 1) if c in wanted]
        log_head += n
        if cursors:
            queue.append((cursors[0], cursors[-1], cursors))

    h = Handoff(last=since)
    h.start(log_head)
    delivered: list[int] = []
    pending = list(batches)
    step = 0
    while True:
        span = h.next_read()
        if span is not None:
            if pending:  # a batch lands while we read history
                publish(pending.pop(0))
            after, upto = span
            rows = list(range(after + 1, min(after + page, upto) + 1))
            delivered += [c for c in rows if c in wanted]
            h.read(rows[-1] if rows else None, complete=len(rows) < page)
            if overflow_at is not None and step == overflow_at:
                queue.clear()
                h.restart(log_head)
            step += 1
            continue
        if pending:
            publish(pending.pop(0))
            continue
        if not queue:
            break
        first, last, cursors = queue.pop(0)
        if h.admit(first, last):
            delivered += cursors
    expected = [c for c in range(since + 1, log_head + 1) if c in wanted]
    assert delivered == expected


def test_direct_delivery_moves_the_position_past_admit() -> None:
    h = Handoff(last=10)
    h.start(10)
    h.delivered(15)  # the hub's sink took live items up to 15
    assert h.last == 15
    assert not h.admit(14, 15)  # already delivered directly
    assert h.admit(16, 18) and h.last == 18
    with pytest.raises(HandoffError):
        h.delivered(17)  # behind what was delivered


def test_direct_delivery_only_when_live() -> None:
    h = Handoff(last=1)
    h.start(5)
    with pytest.raises(HandoffError):
        h.delivered(6)


@settings(max_examples=300, deadline=None)
@given(
    rounds=st.lists(st.tuples(st.integers(1, 5), st.booleans(), st.booleans()), max_size=30),
    wanted=st.sets(st.integers(1, 150)),
)
def test_no_gap_no_duplicate_with_direct_delivery(
    rounds: list[tuple[int, bool, bool]], wanted: set[int]
) -> None:
    """A live subscriber as ``Engine.events`` runs it with a sink: while the sink is given,
    each round goes to it (or, when it cannot take one, the sink is dropped and the round is
    queued); the stream then catches up the handoff with ``delivered``, drains its queue and
    gives the sink again. Every wanted cursor arrives once, in order."""
    h = Handoff(last=0)
    h.start(0)
    head = direct_last = 0
    sink = True
    queue: list[tuple[int, int, list[int]]] = []
    delivered: list[int] = []

    def stream_turn() -> None:
        nonlocal sink
        if direct_last > h.last:
            h.delivered(direct_last)
        while queue:
            first, last, cursors = queue.pop(0)
            if h.admit(first, last):
                delivered.extend(cursors)
        sink = True

    for n, takes, turn in rounds:
        cursors = [c for c in range(head + 1, head + n + 1) if c in wanted]
        head += n
        if sink and takes:
            delivered.extend(cursors)
            direct_last = head
        else:
            sink = False
            if cursors:
                queue.append((cursors[0], cursors[-1], cursors))
        if turn:
            stream_turn()
    stream_turn()
    assert delivered == [c for c in range(1, head + 1) if c in wanted]
