"""Filter language: parser, Tapis conditions, columnar evaluation, domain arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamgauge.core.filterlang import (
    MAX_CONDITIONS,
    MAX_FILTER_CHARS,
    And,
    BBox,
    Cond,
    Expr,
    FilterError,
    Or,
    Radius,
    RadiusStation,
    evaluate,
    haversine_miles,
    in_bbox,
    map_values,
    parse_bbox,
    parse_filter_on,
    parse_list,
    parse_radius,
    parse_tapis_condition,
    sensors,
)
from streamgauge.domain.errors import BadRequest
from tests.filter_exprs import any_exprs

FUZZ = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])

# --- helpers ---------------------------------------------------------------------------------


def unparse(e: Expr) -> str:
    if isinstance(e, Cond):
        return f"({e.sensor} {e.op} {e.value!r})"
    word = "and" if isinstance(e, And) else "or"
    return f"{wrap(e.left)} {word} {wrap(e.right)}"


def wrap(e: Expr) -> str:
    return unparse(e) if isinstance(e, Cond) else f"({unparse(e)})"


def err(text: str) -> FilterError:
    with pytest.raises(FilterError) as info:
        parse_filter_on(text)
    return info.value


# --- filter_on parser ------------------------------------------------------------------------


def test_parse_simple_and_synoptic_example() -> None:
    assert parse_filter_on("(air_temp < 0) and (wind_speed > 10)") == And(
        Cond("air_temp", "<", 0.0), Cond("wind_speed", ">", 10.0)
    )


def test_parse_nesting_and_precedence() -> None:
    a, b, c = Cond("a", ">", 1.0), Cond("b", "<", 2.0), Cond("c", "=", 3.0)
    assert parse_filter_on("((a > 1) or (b < 2)) and (c = 3)") == And(Or(a, b), c)
    assert parse_filter_on("(a > 1) or (b < 2) and (c = 3)") == Or(a, And(b, c))
    assert parse_filter_on("(a > 1) and (b < 2) or (c = 3)") == Or(And(a, b), c)
    assert parse_filter_on("(((a > 1)))") == a
    assert parse_filter_on("(a>1)AND(b<2)Or(c==3)") == Or(And(a, b), c)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("7", 7.0),
        ("-7", -7.0),
        ("+7", 7.0),
        ("0.25", 0.25),
        (".5", 0.5),
        ("5.", 5.0),
        ("-1.5e3", -1500.0),
        ("2E-2", 0.02),
        ("1e+2", 100.0),
    ],
)
def test_parse_numbers(text: str, value: float) -> None:
    assert parse_filter_on(f"(x >= {text})") == Cond("x", ">=", value)


@pytest.mark.parametrize(
    ("text", "op"),
    [(">", ">"), (">=", ">="), ("<", "<"), ("<=", "<="), ("=", "="), ("==", "="), ("!=", "!=")],
)
def test_parse_operators(text: str, op: str) -> None:
    assert parse_filter_on(f"(x{text}1)") == Cond("x", op, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [
        ("", 0, "'('"),
        ("   ", 3, "'('"),
        ("air_temp < 0", 0, "'('"),
        ("(a > 1 and b < 2)", 7, "')'"),
        ("(a > 1", 6, "')'"),
        ("(a > 1) and", 11, "'('"),
        ("(a > 1) (b < 2)", 8, "'and', 'or' or end of input"),
        ("((a > 1) (b < 2))", 9, "'and', 'or' or ')'"),
        ("(a > 1))", 7, "'and', 'or' or end of input"),
        ("(> 1)", 1, "sensor name or '('"),
        ("(and > 1)", 1, "sensor name or '('"),
        ("(1a > 1)", 1, "sensor name or '('"),
        ("(a 1)", 3, "comparison operator (>, >=, <, <=, =, !=)"),
        ("(a => 1)", 4, "number"),
        ("(a ! 1)", 3, "comparison operator (>, >=, <, <=, =, !=)"),
        ("(a <> 1)", 4, "number"),
        ("(a > b)", 5, "number"),
        ("(a > nan)", 5, "number"),
        ("(a > inf)", 5, "number"),
        ("(a > 1e999)", 5, "finite number"),
        ("(a > '1')", 5, "number"),
        ("(a > 1) && (b < 2)", 8, "'and', 'or' or end of input"),
        ("(a.b > 1)", 2, "comparison operator (>, >=, <, <=, =, !=)"),
        ("(a > 1) xor (b > 2)", 8, "'and', 'or' or end of input"),
    ],
)
def test_parse_errors_position_and_expected(text: str, position: int, expected: str) -> None:
    e = err(text)
    assert (e.position, e.expected) == (position, expected)
    assert isinstance(e, BadRequest) and e.status == 400
    assert e.message == f"filter: expected {expected} at position {position}"
    assert e.details[0]["field"] == "filter" and e.details[0]["position"] == position
    assert e.details[0]["reason"].startswith(f"expected {expected}")


def test_field_name_in_error() -> None:
    with pytest.raises(FilterError) as info:
        parse_filter_on("(a > 1", field="filter_on")
    assert info.value.message == "filter_on: expected ')' at position 6"
    assert info.value.details == [
        {"field": "filter_on", "position": 6, "reason": "expected ')', found end of input"}
    ]


def test_limits() -> None:
    ok = " and ".join(f"(s{i} > {i})" for i in range(MAX_CONDITIONS))
    assert len(sensors(parse_filter_on(ok))) == MAX_CONDITIONS
    e = err(ok + " or (z > 1)")
    assert e.expected == f"at most {MAX_CONDITIONS} conditions"
    assert e.position == len(ok) + 4
    long = "(a > 1)" + " " * (MAX_FILTER_CHARS - 7)
    assert parse_filter_on(long) == Cond("a", ">", 1.0)
    e = err(long + " ")
    assert e.expected == f"at most {MAX_FILTER_CHARS} characters"
    # deep redundant nesting fails cleanly instead of blowing the stack
    deep = "(" * 2000 + "a > 1" + ")" * 2000
    assert err(deep).expected.startswith("at most")


@FUZZ
@given(any_exprs)
def test_unparse_roundtrip(e: Expr) -> None:
    assert parse_filter_on(unparse(e)) == e


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    try:
        parse_filter_on(text)
    except FilterError as e:
        assert 0 <= e.position <= len(text)
        assert e.expected


TOKENS = [
    "(",
    ")",
    "(",
    ")",
    "a",
    "air_temp",
    "and",
    "AND",
    "or",
    "Or",
    ">",
    ">=",
    "<",
    "<=",
    "=",
    "==",
    "!=",
    "!",
    "1",
    "-2.5e3",
    ".5",
    "1e999",
    "x.y",
    "'",
    ";",
    "--",
    " ",
    "\t",
]


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40), st.sampled_from(["", " "]))
def test_fuzz_token_soup(tokens: list[str], sep: str) -> None:
    text = sep.join(tokens)
    try:
        e = parse_filter_on(text)
    except FilterError as err_:
        assert 0 <= err_.position <= len(text)
    else:
        assert parse_filter_on(unparse(e)) == e


def test_sensors_and_map_values() -> None:
    e = parse_filter_on("((a > 1) or (b < 2)) and (a = 3)")
    assert sensors(e) == {"a", "b"}
    doubled = map_values(e, lambda s, v: v * 2 if s == "a" else v)
    assert doubled == And(Or(Cond("a", ">", 2.0), Cond("b", "<", 2.0)), Cond("a", "=", 6.0))


# --- Tapis conditions ------------------------------------------------------------------------


def test_tapis_condition() -> None:
    assert parse_tapis_condition({"key": "demo_instrument.temp", "operator": ">", "val": 90}) == (
        "demo_instrument",
        "temp",
        Cond("temp", ">", 90.0),
    )
    for word, op in [
        ("gt", ">"),
        ("gte", ">="),
        ("lt", "<"),
        ("lte", "<="),
        ("eq", "="),
        ("ne", "!="),
        ("==", "="),
        ("!=", "!="),
        ("<=", "<="),
    ]:
        _, _, c = parse_tapis_condition({"key": "i.v", "operator": word, "val": "1.5"})
        assert c == Cond("v", op, 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cond", "field"),
    [
        ({"operator": ">", "val": 1}, "condition.key"),
        ({"key": 5, "operator": ">", "val": 1}, "condition.key"),
        ({"key": "novar", "operator": ">", "val": 1}, "condition.key"),
        ({"key": ".v", "operator": ">", "val": 1}, "condition.key"),
        ({"key": "i.", "operator": ">", "val": 1}, "condition.key"),
        ({"key": "i:x.v", "operator": ">", "val": 1}, "condition.key"),
        ({"key": "i.v", "operator": "~", "val": 1}, "condition.operator"),
        ({"key": "i.v", "val": 1}, "condition.operator"),
        ({"key": "i.v", "operator": ">"}, "condition.val"),
        ({"key": "i.v", "operator": ">", "val": True}, "condition.val"),
        ({"key": "i.v", "operator": ">", "val": float("nan")}, "condition.val"),
        ({"key": "i.v", "operator": ">", "val": 10**400}, "condition.val"),
        ({"key": "i.v", "operator": ">", "val": "nan"}, "condition.val"),
        ({"key": "i.v", "operator": ">", "val": [1]}, "condition.val"),
    ],
)
def test_tapis_condition_errors(cond: dict[str, object], field: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_tapis_condition(cond)
    assert info.value.details[0]["field"] == field


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text(max_size=5), ch, max_size=3),
    max_leaves=5,
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["key", "operator", "val", "x"]),
        json_values | st.sampled_from(["i.v", "a.b.c", "gt", ">=", "1e3"]),
    )
)
def test_fuzz_tapis(cond: dict[str, object]) -> None:
    try:
        inst, var, c = parse_tapis_condition(cond)
    except FilterError:
        return
    assert f"{inst}.{var}" == cond["key"] and math.isfinite(c.value)


# --- evaluation (its SQL twin: tests/store/test_filtersql.py) ------------------------------


def test_evaluate_semantics() -> None:
    codes = {"t": 0, "w": 1, "ghost": 9}
    # report 0: t=-5, t=NaN, w=12; report 1: t=3, w=NaN; report 2: w=20 (no t); report 3: empty
    report = np.array([0, 0, 0, 1, 1, 2], dtype=np.int64)
    sens = np.array([0, 0, 1, 0, 1, 1], dtype=np.int64)
    vals = np.array([-5.0, np.nan, 12.0, 3.0, np.nan, 20.0])

    def ev(text: str) -> list[bool]:
        return [bool(x) for x in evaluate(parse_filter_on(text), report, sens, codes, vals, 4)]

    assert ev("(t < 0) and (w > 10)") == [True, True, True, False, False, False]
    assert ev("(t < 0) or (w > 15)") == [True, True, True, False, False, True]
    assert ev("(t != 100)") == [True, True, True, True, True, False]  # NaN rows don't count
    assert ev("(w != 100)") == [True, True, True, False, False, True]  # report 1: w only NaN
    assert ev("(ghost > 0)") == [False] * 6
    assert ev("(unknown > 0) or (t = 3)") == [False, False, False, True, True, False]
    empty = np.array([], dtype=np.int64)
    out = evaluate(parse_filter_on("(t > 0)"), empty, empty, codes, np.array([]), 3)
    assert out.shape == (0,) and out.dtype == np.bool_


def test_evaluate_rejects_bad_shapes() -> None:
    a = np.array([0, 1], dtype=np.int64)
    with pytest.raises(ValueError):
        evaluate(Cond("t", ">", 0), a, a[:1], {"t": 0}, np.zeros(2), 2)
    with pytest.raises(ValueError):
        evaluate(Cond("t", ">", 0), a, a, {"t": 0}, np.zeros(2), 1)


HOSTILE = [
    "(a > 1); DROP TABLE obs; --",
    "(a'; DROP TABLE obs; -- > 1)",
    '("a" > 1)',
    "(a > 1) /* x */",
    "(a > 1 -- )",
    "(a > 1) or (1 = 1)",
    "(a > 1) union select * from accounts",
    "(DROP > 1); TABLE",
    "(a > 0x10)",
    "(a > 1e5'))",
    "(a > '1')",
    "(a\x00 > 1)",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_input(text: str) -> None:
    with pytest.raises(FilterError):
        parse_filter_on(text)


# --- domain arguments ------------------------------------------------------------------------


def test_parse_list() -> None:
    assert parse_list(" KSLC, WBB ,KSFO", "stid") == ("KSLC", "WBB", "KSFO")
    assert parse_list("ut", "state") == ("ut",)
    for bad, pos in [("", 0), ("a,,b", 2), ("a, ", 2), (" ,a", 0)]:
        with pytest.raises(FilterError) as info:
            parse_list(bad, "stid")
        assert info.value.details[0]["field"] == "stid" and info.value.position == pos


def test_parse_radius() -> None:
    assert parse_radius("41.5,-111.2,50") == Radius(41.5, -111.2, 50.0)
    assert parse_radius(" KLAX , 100 ") == RadiusStation("KLAX", 100.0)
    assert parse_radius("0,0,12450") == Radius(0.0, 0.0, 12450.0)
    for bad in [
        "",
        "41.5",
        "91,0,5",
        "0,181,5",
        "0,0,0",
        "0,0,-1",
        "0,0,12451",
        "KLAX,0",
        "K LAX,5",
        "KLAX,x",
        "a,b,c",
        "1,2,3,4",
        "nan,0,5",
        "0,inf,5",
        "1_0,0,5",
    ]:
        with pytest.raises(FilterError) as info:
            parse_radius(bad)
        assert info.value.details[0]["field"] == "radius"


def test_parse_bbox() -> None:
    assert parse_bbox("-100,30,-90,40") == BBox(-100.0, 30.0, -90.0, 40.0)
    for bad in [
        "",
        "-100,30,-90",
        "-90,30,-100,40",
        "-100,40,-90,30",
        "-100,30,-100,40",
        "-181,30,-90,40",
        "-100,-91,-90,40",
        "a,b,c,d",
        "-100,30,-90,40,1",
    ]:
        with pytest.raises(FilterError) as info:
            parse_bbox(bad)
        assert info.value.details[0]["field"] == "bbox"


@FUZZ
@given(
    st.text(max_size=40)
    | st.lists(
        st.sampled_from(["41.5", "-111.2", "50", "KLAX", "0", "-0", "1e3", "", " ", "x", "nan"]),
        max_size=5,
    ).map(",".join)
)
def test_fuzz_domain_parsers(text: str) -> None:
    for fn in (lambda t: parse_list(t, "f"), parse_radius, parse_bbox):
        try:
            fn(text)
        except FilterError as e:
            assert 0 <= e.position <= len(text)


def test_haversine_and_bbox() -> None:
    lats = np.array([41.5, 34.05, np.nan, -41.5])
    lons = np.array([-111.2, -118.25, 0.0, 68.8])
    d = haversine_miles(41.5, -111.2, lats, lons)
    assert d[0] == 0.0
    one_degree = 3958.8 * math.pi / 180  # about 69.09 miles along a meridian
    assert haversine_miles(40.0, -111.0, [41.0], [-111.0])[0] == pytest.approx(one_degree)
    assert 600 < d[1] < 700  # northern Utah to Los Angeles
    assert math.isnan(d[2])
    assert d[3] == pytest.approx(math.pi * 3958.8, rel=1e-9)  # antipode
    box = parse_bbox("-120,30,-110,42")
    assert in_bbox(box, lats, lons).tolist() == [True, True, False, False]
    assert in_bbox(box, [30.0, 42.0], [-120.0, -110.0]).tolist() == [True, True]


@FUZZ
@given(
    st.floats(-90, 90),
    st.floats(-180, 180),
    st.lists(st.tuples(st.floats(-90, 90), st.floats(-180, 180)), max_size=10),
)
def test_haversine_bounds(lat: float, lon: float, pts: list[tuple[float, float]]) -> None:
    d = haversine_miles(lat, lon, [p[0] for p in pts], [p[1] for p in pts])
    assert d.shape == (len(pts),)
    assert np.all((d >= 0) & (d <= math.pi * 3958.8 + 1e-6))


def test_number_literals_are_bounded() -> None:
    """issue 11 item 12: number literals in filter expressions, domain arguments and Tapis
    conditions are bounded (no 5,000-digit literal reaches float())."""
    from streamgauge.core.filterlang import MAX_NUMBER_CHARS

    ok = "1" * MAX_NUMBER_CHARS
    assert parse_filter_on(f"(a > {ok})") == Cond("a", ">", float(ok))
    e = err(f"(a > {ok}1)")
    assert e.expected == f"a number of at most {MAX_NUMBER_CHARS} characters"
    assert e.position == 5
    with pytest.raises(FilterError):
        parse_radius("1" * 5000 + ",1,1")
    with pytest.raises(FilterError):
        parse_tapis_condition({"key": "i.v", "operator": ">", "val": "9" * 5000})
    with pytest.raises(FilterError):
        parse_tapis_condition({"key": "i.v", "operator": ">", "val": 10**400})
