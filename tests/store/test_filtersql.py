"""The SQLite compiler of filter expressions (``store/sqlite/filtersql.py``): it agrees with the
core's columnar evaluator on random expressions and rows, its text depends only on the
expression's shape (user text only in parameters), and it emits the SQL it always has."""

from __future__ import annotations

import math
import re
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamgauge.core.filterlang import evaluate, map_values, parse_filter_on
from streamgauge.domain.filters import And, Cond, Expr, Or
from streamgauge.store.sqlite.filtersql import to_sql
from tests.filter_exprs import SENSOR_NAMES, VALUE_POOL, any_exprs, exprs

FUZZ = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])

ROW_VALUES = (
    st.sampled_from(VALUE_POOL) | st.just(math.nan) | st.floats(-20, 20) | st.integers(-20, 20)
)
rows_strategy = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(SENSOR_NAMES[:4]), ROW_VALUES),
    max_size=40,
)


@FUZZ
@given(rows_strategy, exprs, st.booleans(), st.booleans())
def test_evaluate_matches_sql(
    rows: list[tuple[int, str, float]], expr: Expr, text_values: bool, integers: bool
) -> None:
    """On random rows in an in-memory SQLite, the SQL picks exactly the rows ``evaluate``
    passes: non-numeric values (NaN in numpy; NULL or TEXT in SQLite) never satisfy, and a
    whole number stored as an SQLite INTEGER compares as the same number."""
    n_reports = 6
    codes = {name: i for i, name in enumerate(SENSOR_NAMES[:4])}
    report = np.array([r for r, _, _ in rows], dtype=np.int64)
    sens = np.array([codes[s] for _, s, _ in rows], dtype=np.int64)
    vals = np.array([v for _, _, v in rows], dtype=np.float64)
    got = evaluate(expr, report, sens, codes, vals, n_reports)
    numpy_rows = {i for i, ok in enumerate(got.tolist()) if ok}

    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE TABLE report_rows (i INTEGER PRIMARY KEY, report, sensor, value)")
        stored: list[tuple[int, int, str, object]] = []
        for i, (r, s, v) in enumerate(rows):
            # a non-numeric value arrives as NaN in numpy and as NULL or TEXT in SQLite
            sv: object = ("n/a" if text_values else None) if math.isnan(v) else v
            if integers and isinstance(sv, float) and sv.is_integer():
                sv = int(sv)
            elif not integers and isinstance(sv, int):
                sv = float(sv)
            stored.append((i, r, s, sv))
        db.executemany("INSERT INTO report_rows VALUES (?, ?, ?, ?)", stored)
        sql, params = to_sql(expr, report_sql="o.report", table="report_rows")
        sql_rows = {i for (i,) in db.execute(f"SELECT o.i FROM report_rows o WHERE {sql}", params)}
    finally:
        db.close()
    assert numpy_rows == sql_rows


def shape_of(e: Expr) -> Expr:
    return map_values(rename(e), lambda _s, _v: 0.0)


def rename(e: Expr) -> Expr:
    if isinstance(e, Cond):
        return Cond("s", e.op, e.value)
    return type(e)(rename(e.left), rename(e.right))


def _conds(e: Expr) -> list[Cond]:
    return [e] if isinstance(e, Cond) else _conds(e.left) + _conds(e.right)


@FUZZ
@given(any_exprs)
def test_sql_text_depends_only_on_shape(e: Expr) -> None:
    sql, params = to_sql(e)
    assert sql == to_sql(shape_of(e))[0]
    n = len(list(_conds(e)))
    assert sql.count("?") == len(params) == 2 * n
    assert params == [x for c in _conds(e) for x in (c.sensor, c.value)]


def test_hostile_valid_names_stay_out_of_sql() -> None:
    # a valid expression whose sensor names look like SQL still only reaches SQL via parameters
    e = parse_filter_on("(DROP > 1) and (select < 2) or (report = 3)")
    sql, params = to_sql(e)
    assert sql == to_sql(shape_of(e))[0]
    assert params == ["DROP", 1.0, "select", 2.0, "report", 3.0]
    assert "DROP" not in sql and "select" not in sql


def test_to_sql_rejects_bad_identifiers() -> None:
    with pytest.raises(ValueError):
        to_sql(Cond("a", ">", 1), table="x; DROP TABLE obs")
    with pytest.raises(ValueError):
        to_sql(Cond("a", ">", 1), report_sql="o.report)")
    sql, _ = to_sql(Cond("a", ">", 1), report_sql="r", table="rr")
    assert re.search(r"FROM rr \w+ WHERE \w+\.report = r ", sql)


def test_the_sql_text_is_the_one_history_reads_always_ran() -> None:
    """Moving ``to_sql`` from the core into the SQLite backend changed no byte of its output
    (the text as the core's ``filterlang.to_sql`` emitted it)."""

    def cond(op: str) -> str:
        return (
            "EXISTS (SELECT 1 FROM report_rows flt_x WHERE flt_x.report = o.report"
            " AND flt_x.sensor = ? AND typeof(flt_x.value) IN ('integer', 'real')"
            f" AND flt_x.value {op} ?)"
        )

    e = Or(And(Cond("t", "<", 0), Cond("w", "!=", 10)), Cond("t", ">=", 2.5))
    sql, params = to_sql(e, report_sql="o.report", table="report_rows")
    assert sql == f"(({cond('<')} AND {cond('<>')}) OR {cond('>=')})"
    assert params == ["t", 0.0, "w", 10.0, "t", 2.5]
    assert all(type(p) is float for p in params[1::2])
