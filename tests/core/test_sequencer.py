"""The cluster's sequencer: every cursor once, in order, whatever the bus does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamgauge.core.sequencer import Sequencer

Run = tuple[int, int]  # (first, last); the item is the list of its cursors


def trim(item: list[int], after: int) -> list[int]:
    return [c for c in item if c > after]


def run_item(first: int, last: int) -> list[int]:
    return list(range(first, last + 1))


def test_in_order_runs_pass_through() -> None:
    s: Sequencer[list[int]] = Sequencer(1, trim)
    assert s.offer(1, 3, [1, 2, 3], 0.0) == [[1, 2, 3]]
    assert s.offer(4, 4, [4], 0.0) == [[4]]
    assert s.delivered == 4 and s.gap() is None


def test_repeat_is_dropped_and_overlap_trimmed() -> None:
    s: Sequencer[list[int]] = Sequencer(1, trim)
    s.offer(1, 5, run_item(1, 5), 0.0)
    assert s.offer(1, 5, run_item(1, 5), 0.0) == []
    assert s.offer(4, 7, run_item(4, 7), 0.0) == [[6, 7]]


def test_gap_waits_then_releases_in_order() -> None:
    s: Sequencer[list[int]] = Sequencer(1, trim)
    assert s.offer(4, 6, run_item(4, 6), 1.0) == []
    assert s.offer(7, 7, [7], 1.5) == []
    g = s.gap()
    assert g is not None and (g.first, g.last, g.since) == (1, 3, 1.0)
    assert s.offer(1, 3, run_item(1, 3), 2.0) == [[1, 2, 3], [4, 5, 6], [7]]
    assert s.gap() is None


def test_fill_from_store_closes_the_gap() -> None:
    s: Sequencer[list[int]] = Sequencer(1, trim)
    s.offer(3, 3, [3], 0.0)
    out = s.filled([(1, 2, [1, 2])], 0.2)
    assert out == [[1, 2], [3]] and s.gap() is None


def test_head_check_finds_a_commit_nobody_published() -> None:
    s: Sequencer[list[int]] = Sequencer(1, trim)
    s.offer(1, 2, [1, 2], 0.0)
    s.head_seen(2, 0.5)
    assert s.gap() is None
    s.head_seen(5, 1.0)
    g = s.gap()
    assert g is not None and (g.first, g.last) == (3, 5)
    assert s.filled([(3, 5, [3, 4, 5])], 1.2) == [[3, 4, 5]]
    assert s.gap() is None


def test_a_store_read_that_finds_nothing_yet_keeps_the_gap() -> None:
    s: Sequencer[list[int]] = Sequencer(1, trim)
    s.offer(2, 2, [2], 0.0)
    assert s.filled([], 0.3) == []
    g = s.gap()
    assert g is not None and g.first == 1 and g.since == 0.3


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_cursor_once_in_order(data: st.DataObject) -> None:
    """Runs partitioning 1..N arrive shuffled, some twice, some never (then the store fills
    them): the output is 1..N exactly once, in order."""
    n = data.draw(st.integers(1, 60))
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=n - 1)) if n > 1 else set())
    bounds = [0, *cuts, n]
    runs = [(bounds[i] + 1, bounds[i + 1]) for i in range(len(bounds) - 1)]
    lost = data.draw(st.sets(st.sampled_from(range(len(runs))), max_size=len(runs)))
    arrivals = [r for i, r in enumerate(runs) if i not in lost]
    arrivals += data.draw(st.lists(st.sampled_from(runs), max_size=5))  # redeliveries
    arrivals = data.draw(st.permutations(arrivals))
    s: Sequencer[list[int]] = Sequencer(1, trim)
    out: list[int] = []
    t = 0.0
    for first, last in arrivals:
        t += 0.01
        for item in s.offer(first, last, run_item(first, last), t):
            out.extend(item)
        if data.draw(st.booleans()):
            s.head_seen(n, t)
        if data.draw(st.booleans()) and (g := s.gap()) is not None:
            # the store has everything committed: read the gap (maybe more, as a racing read)
            end = g.last if g.last is not None else n
            end = min(n, end + data.draw(st.integers(0, 3)))
            fill = [(c, c, [c]) for c in range(g.first, end + 1)]
            for item in s.filled(fill, t):
                out.extend(item)
    s.head_seen(n, t + 1)
    while (g := s.gap()) is not None:
        end = g.last if g.last is not None else n
        for item in s.filled([(g.first, end, run_item(g.first, end))], t + 1):
            out.extend(item)
    assert out == list(range(1, n + 1))
