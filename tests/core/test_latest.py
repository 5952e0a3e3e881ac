"""core/latest.py: each series' newest row, floats in a column and other values beside it."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamgauge.core.latest import LatestRows
from streamgauge.domain.batch import Batch


def batch(rows: list[tuple[int, int, int, Any]]) -> Batch:
    """(cursor, series, time, value) rows of project 1, QC flags = cursor."""
    c, s, t, v = zip(*rows, strict=True)
    a = np.array
    return Batch(1, a(c, np.int64), a(s, np.int64), a(t, np.int64), list(v), a(c, np.int64))


def held(latest: LatestRows, *series: int) -> list[tuple[int, int, int, Any, int]]:
    b = latest.rows(1, np.array(series, np.int64))
    return list(
        zip(
            b.cursors.tolist(),
            b.series.tolist(),
            b.times.tolist(),
            b.values,
            b.qc.tolist(),
            strict=True,
        )
    )


def test_every_kind_of_value_comes_back_as_it_was_sent() -> None:
    latest = LatestRows()
    latest.update(batch([(1, 0, 10, 1.5), (2, 1, 10, 7), (3, 2, 10, "open"), (4, 3, 10, None)]))
    got = held(latest, 0, 1, 2, 3, 4)
    assert got == [(1, 0, 10, 1.5, 1), (2, 1, 10, 7, 2), (3, 2, 10, "open", 3), (4, 3, 10, None, 4)]
    assert type(got[1][3]) is int  # an int stays an int (7, not 7.0)


def test_the_newest_row_wins_and_a_float_replaces_another_kind() -> None:
    latest = LatestRows()
    latest.update(batch([(1, 5, 10, "a"), (2, 5, 30, "b"), (3, 5, 20, "c")]))
    assert held(latest, 5) == [(2, 5, 30, "b", 2)]
    latest.update(batch([(4, 5, 25, 9.0)]))  # older: left as it is
    assert held(latest, 5) == [(2, 5, 30, "b", 2)]
    latest.update(batch([(5, 5, 40, 2.25)]))
    assert held(latest, 5) == [(5, 5, 40, 2.25, 5)]
    latest.update(batch([(6, 5, 50, None)]))
    assert held(latest, 5) == [(6, 5, 50, None, 6)]


def test_growth_past_the_first_columns_and_retention_forgets() -> None:
    latest = LatestRows()
    latest.update(batch([(1, 5000, 10, 1.0), (2, 3, 10, "x")]))
    assert held(latest, 3, 5000, 4) == [(2, 3, 10, "x", 2), (1, 5000, 10, 1.0, 1)]
    latest.forget_before([(3, 11), (5000, 5)])
    assert held(latest, 3, 5000) == [(1, 5000, 10, 1.0, 1)]


def test_rows_loaded_after_newer_commits_do_not_replace_them() -> None:
    """The start's load (in the background) may bring rows older than, or as new as but
    committed before, those batches committed meanwhile gave: those stay."""
    latest = LatestRows()
    latest.update(batch([(10, 1, 50, 5.0), (11, 2, 60, 6.0)]))  # committed during the load
    latest.update(batch([(4, 1, 50, 4.0), (5, 2, 40, 3.0), (6, 3, 30, 2.0), (7, 4, 70, 1.0)]))
    assert held(latest, 1, 2, 3) == [(10, 1, 50, 5.0, 10), (11, 2, 60, 6.0, 11), (6, 3, 30, 2.0, 6)]
    latest.update(batch([(12, 4, 70, 8.0)]))  # as new, committed later: replaces
    assert held(latest, 4) == [(12, 4, 70, 8.0, 12)]


def test_room_reserved_for_a_load_is_made_once_and_keeps_what_is_held() -> None:
    """``reserve`` before a load: the columns sized at once (not grown by doubling), rows
    held before it kept, and a smaller reserve changes nothing."""
    latest = LatestRows()
    latest.update(batch([(1, 5, 10, 2.5), (2, 7, 10, "x")]))
    latest.reserve(180_001)
    assert {len(c) for c in (latest.time, latest.cursor, latest.qc, latest.value)} == {180_001}
    latest.reserve(10)
    assert len(latest.time) == 180_001
    latest.update(batch([(3, 180_000, 10, 1.0)]))  # the top pk fits without growing
    assert len(latest.time) == 180_001
    assert held(latest, 5, 7, 180_000) == [
        (1, 5, 10, 2.5, 1),
        (2, 7, 10, "x", 2),
        (3, 180_000, 10, 1.0, 3),
    ]
