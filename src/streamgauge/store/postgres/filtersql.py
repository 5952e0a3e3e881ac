"""A filter expression (``domain.filters``) as a parameterized PostgreSQL condition: the
twin of ``filterlang.to_sql`` for the embedded store.

Each condition becomes::

    EXISTS (SELECT 1 FROM <table> flt_x WHERE flt_x.report = <report_sql>
            AND flt_x.sensor = %s AND flt_x.num IS NOT NULL AND flt_x.num > %s)

over a relation with columns ``report``, ``sensor`` and ``num`` (a number, null for a string
or null value), so NULL and text values never satisfy a comparison, as in ``evaluate``.
"""

from __future__ import annotations

import re

from streamgauge.domain.filters import And, Cond, Expr

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")
_ALIAS = "flt_x"
_OPS = {">": ">", ">=": ">=", "<": "<", "<=": "<=", "=": "=", "!=": "<>"}


def to_sql(
    expr: Expr, *, report_sql: str = "o.report", table: str = "report_rows"
) -> tuple[str, list[object]]:
    """A boolean SQL expression and its parameters; ``table`` and ``report_sql`` come from
    the caller's code (plain identifiers), every user value is a parameter."""
    if not _NAME.fullmatch(table):
        raise ValueError(f"table must be an identifier: {table!r}")
    if not _REF.fullmatch(report_sql) or report_sql.split(".")[0] == _ALIAS:
        raise ValueError(f"report_sql must be a column reference: {report_sql!r}")
    params: list[object] = []
    a = _ALIAS

    def walk(e: Expr) -> str:
        if isinstance(e, Cond):
            params.append(e.sensor)
            params.append(float(e.value))
            return (
                f"EXISTS (SELECT 1 FROM {table} {a} WHERE {a}.report = {report_sql}"
                f" AND {a}.sensor = %s AND {a}.num IS NOT NULL"
                f" AND {a}.num {_OPS[e.op]} %s::float8)"
            )
        joiner = " AND " if isinstance(e, And) else " OR "
        return "(" + walk(e.left) + joiner + walk(e.right) + ")"

    return walk(expr), params
