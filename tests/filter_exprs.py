"""Hypothesis strategies of filter expressions (``domain.filters``), shared by the tests of the
parser and evaluator (``tests/core/test_filterlang.py``) and of the SQLite compiler
(``tests/store/test_filtersql.py``)."""

from __future__ import annotations

from hypothesis import strategies as st

from streamgauge.domain.filters import And, Cond, Or

SENSOR_NAMES = ["air_temp", "wind_speed", "wind_gust", "rh", "absent_sensor"]
VALUE_POOL = [-10.0, -1.5, 0.0, 1.0, 2.5, 10.0, 1e6]
OPS = [">", ">=", "<", "<=", "=", "!="]

conds = st.builds(
    Cond, st.sampled_from(SENSOR_NAMES), st.sampled_from(OPS), st.sampled_from(VALUE_POOL)
)
exprs = st.recursive(
    conds,
    lambda ch: st.builds(And, ch, ch) | st.builds(Or, ch, ch),
    max_leaves=12,
)
ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(
    lambda s: s.lower() not in ("and", "or")
)
any_conds = st.builds(
    Cond,
    ident,
    st.sampled_from(OPS),
    st.floats(allow_nan=False, allow_infinity=False),
)
any_exprs = st.recursive(
    any_conds, lambda ch: st.builds(And, ch, ch) | st.builds(Or, ch, ch), max_leaves=10
)
