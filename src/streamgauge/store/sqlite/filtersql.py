"""Filter expressions (``domain.filters``) as SQLite SQL: the embedded backend's compiler of the
AST the core parses (``core.filterlang``), used by filtered history reads.

The SQL judges a station report exactly as ``core.filterlang.evaluate`` does (a property test
checks that they agree on random expressions and rows): a condition holds when some row of the
report with the sensor has a numeric value satisfying the comparison; NULL and text never do.
User text reaches SQLite only as ``?`` parameters.
"""

from __future__ import annotations

import re

from streamgauge.domain.filters import And, Cond, Expr

__all__ = ["to_sql"]

_SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SQL_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")
_SQL_ALIAS = "flt_x"
_SQL_OPS = {">": ">", ">=": ">=", "<": "<", "<=": "<=", "=": "=", "!=": "<>"}


def to_sql(
    expr: Expr, *, report_sql: str = "o.report", table: str = "report_rows"
) -> tuple[str, list[object]]:
    """A parameterized boolean SQL expression for a WHERE clause, and its parameters.

    ``table`` names a relation (table or CTE the caller defines) with columns ``report``,
    ``sensor`` (the sensor name) and ``value``; ``report_sql`` names the current row's report key
    (a column reference such as ``o.report``). Both come from the caller's code, never from users,
    and must be plain (optionally qualified) identifiers. Each condition becomes::

        EXISTS (SELECT 1 FROM <table> flt_x WHERE flt_x.report = <report_sql>
                AND flt_x.sensor = ? AND typeof(flt_x.value) IN ('integer', 'real')
                AND flt_x.value > ?)

    so NULL and text values never satisfy a comparison, matching ``core.filterlang.evaluate``.
    """
    if not _SQL_NAME.fullmatch(table):
        raise ValueError(f"table must be an identifier: {table!r}")
    if not _SQL_REF.fullmatch(report_sql) or report_sql.split(".")[0] == _SQL_ALIAS:
        raise ValueError(f"report_sql must be a column reference: {report_sql!r}")
    params: list[object] = []
    a = _SQL_ALIAS

    def walk(e: Expr) -> str:
        if isinstance(e, Cond):
            params.append(e.sensor)
            params.append(float(e.value))
            return (
                f"EXISTS (SELECT 1 FROM {table} {a} WHERE {a}.report = {report_sql}"
                f" AND {a}.sensor = ? AND typeof({a}.value) IN ('integer', 'real')"
                f" AND {a}.value {_SQL_OPS[e.op]} ?)"
            )
        joiner = " AND " if isinstance(e, And) else " OR "
        return "(" + walk(e.left) + joiner + walk(e.right) + ")"

    return walk(expr), params
