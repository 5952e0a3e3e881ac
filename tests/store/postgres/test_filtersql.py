"""``store/postgres/filtersql.py``: the PostgreSQL twin of ``filterlang.to_sql`` agrees with the
columnar evaluator on random data (as ``tests/store/test_filtersql.py`` checks the SQLite one),
and keeps every user value a parameter."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings

from streamgauge.core.filterlang import evaluate
from streamgauge.domain.filters import Cond, Expr
from streamgauge.store.postgres.filtersql import to_sql
from tests.filter_exprs import SENSOR_NAMES, exprs
from tests.pg import fresh_database
from tests.store.test_filtersql import rows_strategy

FUZZ = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pg() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with fresh_database() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE report_rows (i bigint PRIMARY KEY, report bigint, sensor text,"
            " num double precision)"
        )
        yield conn


@FUZZ
@given(rows=rows_strategy, expr=exprs)
def test_evaluate_matches_postgresql(
    pg: psycopg.Connection[tuple[object, ...]], rows: list[tuple[int, str, float]], expr: Expr
) -> None:
    codes = {name: i for i, name in enumerate(SENSOR_NAMES[:4])}
    report = np.array([r for r, _, _ in rows], dtype=np.int64)
    sens = np.array([codes[s] for _, s, _ in rows], dtype=np.int64)
    vals = np.array([v for _, _, v in rows], dtype=np.float64)
    got = evaluate(expr, report, sens, codes, vals, 6)
    numpy_rows = {i for i, ok in enumerate(got.tolist()) if ok}
    with pg.transaction(force_rollback=True):
        pg.execute("DELETE FROM report_rows")
        with pg.cursor() as cur:  # a non-numeric value (NaN in numpy) is a null num
            cur.executemany(
                "INSERT INTO report_rows VALUES (%s, %s, %s, %s)",
                [(i, r, s, None if math.isnan(v) else v) for i, (r, s, v) in enumerate(rows)],
            )
        sql, params = to_sql(expr, report_sql="o.report", table="report_rows")
        sql_rows = {
            int(i)  # type: ignore[call-overload]
            for (i,) in pg.execute(f"SELECT o.i FROM report_rows o WHERE {sql}".encode(), params)
        }
    assert numpy_rows == sql_rows


def test_user_values_are_parameters_and_names_are_checked() -> None:
    sql, params = to_sql(Cond("a'; DROP TABLE obs; --", ">", 1.0))
    assert "DROP" not in sql and params == ["a'; DROP TABLE obs; --", 1.0]
    with pytest.raises(ValueError):
        to_sql(Cond("a", ">", 1.0), table="x; DROP TABLE obs")
    with pytest.raises(ValueError):
        to_sql(Cond("a", ">", 1.0), report_sql="flt_x.report")
