"""The filter expression language: one AST for every face, parsed and judged here.

Synoptic ``filter_on`` text (``(air_temp < 0) and (wind_speed > 10)``) and Tapis channel conditions
(``{"key": "inst.var", "operator": ">", "val": 90}``) parse into the same AST of ``Cond`` / ``And``
/ ``Or`` (``domain.filters``, re-exported here). The AST compiles to

* a columnar predicate over a batch (``evaluate``, here): numpy only, no per-row Python loop;
* a storage backend's query for history reads, compiled inside the backend (the SQLite one's
  ``filtersql.to_sql`` makes a parameterized SQL boolean expression: user text only ever
  reaches SQLite as ``?`` parameters).

Semantics, shared by both: an expression is judged per station *report* (the observations of one
site at one time that arrive together). ``Cond(s, op, v)`` holds for a report when ANY row of the
report with sensor ``s`` has a numeric value satisfying ``value op v``; NaN / NULL / text never
satisfies, and a report without the sensor fails the condition. Every row of a passing report
passes.

Grammar of ``filter_on`` (keywords case-insensitive, whitespace is space, tab, CR, LF)::

    expr    := term ( "or" term )*
    term    := primary ( "and" primary )*          -- "and" binds tighter than "or"
    primary := "(" ( cond | expr ) ")"             -- every condition and group is parenthesized
    cond    := SENSOR OP NUMBER
    SENSOR  := [A-Za-z_][A-Za-z0-9_]*              -- except the keywords "and" / "or"
    OP      := ">" | ">=" | "<" | "<=" | "=" | "==" | "!="     -- "==" is "="
    NUMBER  := [+-]? ( D+ ( "." D* )? | "." D+ ) ( [eE] [+-]? D+ )?   -- finite only

Bounds (every parse is linear in the text and cheap): at most ``MAX_FILTER_CHARS`` characters,
``MAX_CONDITIONS`` conditions, ``MAX_DEPTH`` nested parentheses, and number literals of at
most ``MAX_NUMBER_CHARS`` characters.

Errors are ``FilterError`` with a 0-based character ``position`` into the text and what was
``expected`` there. The domain-argument parsers (lists, radius, bbox) live here too, all pure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn, TypeAlias

import numpy as np
import numpy.typing as npt

from streamgauge.domain.errors import BadRequest
from streamgauge.domain.filters import And, Cond, Expr, Op, Or

__all__ = [
    "MAX_CONDITIONS",
    "MAX_DEPTH",
    "MAX_FILTER_CHARS",
    "MAX_NUMBER_CHARS",
    "And",
    "BBox",
    "Cond",
    "Expr",
    "FilterError",
    "Op",
    "Or",
    "Radius",
    "RadiusStation",
    "evaluate",
    "haversine_miles",
    "in_bbox",
    "map_values",
    "parse_bbox",
    "parse_filter_on",
    "parse_list",
    "parse_radius",
    "parse_tapis_condition",
    "sensors",
]

MAX_FILTER_CHARS = 4096
MAX_CONDITIONS = 64
MAX_DEPTH = 32  # nested parentheses; keeps the recursive parser far from Python's stack limit
MAX_NUMBER_CHARS = 64  # a number literal; more digits than a float holds mean nothing
EARTH_RADIUS_MILES = 3958.8
MAX_RADIUS_MILES = 12450.0  # about half the earth's circumference


class FilterError(BadRequest):
    """A malformed filter or domain argument: where (``position``) and what was ``expected``."""

    def __init__(
        self, field: str, position: int, expected: str, *, found: str | None = None
    ) -> None:
        reason = f"expected {expected}" if found is None else f"expected {expected}, found {found}"
        super().__init__(
            f"{field}: expected {expected} at position {position}",
            [{"field": field, "position": position, "reason": reason}],
        )
        self.field = field
        self.position = position
        self.expected = expected
        self.found = found


# --- AST helpers (the AST itself is ``domain.filters``) -----------------------------------


def sensors(expr: Expr) -> set[str]:
    """Every sensor name the expression mentions."""
    if isinstance(expr, Cond):
        return {expr.sensor}
    return sensors(expr.left) | sensors(expr.right)


def map_values(expr: Expr, fn: Callable[[str, float], float]) -> Expr:
    """The expression with each ``Cond.value`` replaced by ``fn(sensor, value)``.

    Used to convert comparison values from the subscriber's units to canonical units per sensor.
    """
    if isinstance(expr, Cond):
        return Cond(expr.sensor, expr.op, float(fn(expr.sensor, expr.value)))
    if isinstance(expr, And):
        return And(map_values(expr.left, fn), map_values(expr.right, fn))
    return Or(map_values(expr.left, fn), map_values(expr.right, fn))


# --- filter_on parser -------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS: dict[str, Op] = {">=": ">=", "<=": "<=", "==": "=", "!=": "!=", ">": ">", "<": "<", "=": "="}
_KEYWORDS = frozenset({"and", "or"})
_SPACE = frozenset(" \t\r\n")

_LP, _RP, _WORDT, _NUM, _OP, _ERR, _END = "(", ")", "word", "number", "op", "error", "end"
_OP_EXPECTED = "comparison operator (>, >=, <, <=, =, !=)"


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    pos: int

    def describe(self) -> str:
        return "end of input" if self.kind == _END else repr(self.text)


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
            continue
        if c == "(" or c == ")":
            toks.append(_Tok(c, c, i))
            i += 1
            continue
        if c in "<>=!":
            two = text[i : i + 2]
            if two in _OPS:
                toks.append(_Tok(_OP, two, i))
                i += 2
                continue
            if c in _OPS:
                toks.append(_Tok(_OP, c, i))
                i += 1
                continue
            toks.append(_Tok(_ERR, c, i))
            break  # the parser stops at the first unknown character anyway
        m = _NUMBER.match(text, i)
        if m:
            toks.append(_Tok(_NUM, m.group(), i))
            i = m.end()
            continue
        m = _WORD.match(text, i)
        if m:
            toks.append(_Tok(_WORDT, m.group(), i))
            i = m.end()
            continue
        toks.append(_Tok(_ERR, c, i))
        break
    toks.append(_Tok(_END, "", n if not toks or toks[-1].kind != _ERR else toks[-1].pos))
    return toks


class _Parser:
    def __init__(self, text: str, field: str) -> None:
        self.field = field
        self.toks = _tokenize(text)
        self.i = 0
        self.conditions = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def fail(self, expected: str, tok: _Tok | None = None) -> FilterError:
        t = tok if tok is not None else self.peek()
        return FilterError(self.field, t.pos, expected, found=t.describe())

    def keyword(self, word: str) -> bool:
        t = self.peek()
        if t.kind == _WORDT and t.text.lower() == word:
            self.i += 1
            return True
        return False

    def expr(self, depth: int) -> Expr:
        left = self.term(depth)
        while self.keyword("or"):
            left = Or(left, self.term(depth))
        return left

    def term(self, depth: int) -> Expr:
        left = self.primary(depth)
        while self.keyword("and"):
            left = And(left, self.primary(depth))
        return left

    def primary(self, depth: int) -> Expr:
        t = self.peek()
        if t.kind != _LP:
            self._raise("'('")
        start = t.pos
        if depth >= MAX_DEPTH:
            self._raise(f"at most {MAX_DEPTH} levels of parentheses")
        self.i += 1
        t = self.peek()
        if t.kind == _LP:
            inner = self.expr(depth + 1)
            if self.peek().kind != _RP:
                self._raise("'and', 'or' or ')'")
            self.i += 1
            return inner
        if t.kind != _WORDT or t.text.lower() in _KEYWORDS:
            self._raise("sensor name or '('")
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(self.field, start, f"at most {MAX_CONDITIONS} conditions")
        sensor = t.text
        self.i += 1
        t = self.peek()
        if t.kind != _OP:
            self._raise(_OP_EXPECTED)
        op = _OPS[t.text]
        self.i += 1
        t = self.peek()
        if t.kind != _NUM:
            self._raise("number")
        if len(t.text) > MAX_NUMBER_CHARS:
            self._raise(f"a number of at most {MAX_NUMBER_CHARS} characters")
        value = float(t.text)
        if not math.isfinite(value):
            self._raise("finite number")
        self.i += 1
        if self.peek().kind != _RP:
            self._raise("')'")
        self.i += 1
        return Cond(sensor, op, value)

    def _raise(self, expected: str) -> NoReturn:
        raise self.fail(expected)


def parse_filter_on(text: str, *, field: str = "filter") -> Expr:
    """Parse Synoptic ``filter_on`` text; any malformed input raises ``FilterError``."""
    if not isinstance(text, str):
        raise FilterError(field, 0, "text")
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(field, MAX_FILTER_CHARS, f"at most {MAX_FILTER_CHARS} characters")
    p = _Parser(text, field)
    expr = p.expr(0)
    if p.peek().kind != _END:
        raise p.fail("'and', 'or' or end of input")
    return expr


# --- Tapis channel conditions -----------------------------------------------------------------

_TAPIS_OPS: dict[str, Op] = {
    ">": ">", ">=": ">=", "<": "<", "<=": "<=", "==": "=", "=": "=", "!=": "!=",
    "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "eq": "=", "ne": "!=",
}  # fmt: skip


def parse_tapis_condition(
    cond: Mapping[str, object], *, field: str = "condition"
) -> tuple[str, str, Cond]:
    """``{"key": "inst.var", "operator": ">", "val": 90}`` -> (inst id, var id, Cond)."""
    if not isinstance(cond, Mapping):
        raise FilterError(field, 0, "an object with key, operator and val")
    key = cond.get("key")
    if not isinstance(key, str):
        raise FilterError(f"{field}.key", 0, "a string '<inst_id>.<var_id>'")
    inst, dot, var = key.partition(".")
    if not dot or not inst:
        raise FilterError(f"{field}.key", 0 if not inst else len(inst), "'<inst_id>.<var_id>'")
    if ":" in inst:
        raise FilterError(f"{field}.key", inst.index(":"), "an instrument id without ':'")
    if not var:
        raise FilterError(f"{field}.key", len(key), "a variable id after '.'")
    op_text = cond.get("operator")
    if not isinstance(op_text, str) or op_text.strip().lower() not in _TAPIS_OPS:
        raise FilterError(f"{field}.operator", 0, "one of > >= < <= == != gt gte lt lte eq ne")
    op = _TAPIS_OPS[op_text.strip().lower()]
    val = cond.get("val")
    number: float | None = None
    if isinstance(val, int | float) and not isinstance(val, bool):
        try:
            number = float(val)
        except OverflowError:
            number = None
    elif (
        isinstance(val, str)
        and len(val.strip()) <= MAX_NUMBER_CHARS
        and _NUMBER.fullmatch(val.strip())
    ):
        number = float(val.strip())
    if number is None or not math.isfinite(number):
        raise FilterError(f"{field}.val", 0, "a finite number")
    return inst, var, Cond(var, op, number)


# --- columnar evaluation ----------------------------------------------------------------------

IntArray: TypeAlias = npt.NDArray[np.int64]
FloatArray: TypeAlias = npt.NDArray[np.float64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]

_COMPARE: dict[str, Callable[[FloatArray, float], BoolArray]] = {
    ">": lambda a, v: np.greater(a, v),
    ">=": lambda a, v: np.greater_equal(a, v),
    "<": lambda a, v: np.less(a, v),
    "<=": lambda a, v: np.less_equal(a, v),
    "=": lambda a, v: np.equal(a, v),
    "!=": lambda a, v: np.not_equal(a, v),
}


def evaluate(
    expr: Expr,
    report: IntArray,
    sensor_codes: IntArray,
    codes: Mapping[str, int],
    values: FloatArray,
    n_reports: int,
) -> BoolArray:
    """Per ROW: whether the row's report satisfies ``expr``.

    ``report`` holds a dense report id (0..n_reports-1) per row, ``sensor_codes`` a sensor code per
    row, ``codes`` maps sensor names to codes (names absent match no row), ``values`` the numeric
    value per row (NaN when not numeric; NaN never satisfies a comparison).
    """
    table = ReportTable(report, sensor_codes, values, n_reports)
    passing: BoolArray = table.satisfied(expr, codes)[table.report]
    return passing


class ReportTable:
    """One batch's rows grouped by sensor for judging station reports: built once per batch (and
    QC population) and shared by every subscriber's expression, so that a condition costs a
    comparison over its own sensor's rows only, and a condition several subscribers share is
    computed once."""

    __slots__ = ("report", "n_reports", "_by_code", "_memo")

    def __init__(
        self, report: IntArray, sensor_codes: IntArray, values: FloatArray, n_reports: int
    ) -> None:
        report = np.asarray(report, dtype=np.int64)
        sensor_codes = np.asarray(sensor_codes, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if not (report.shape == sensor_codes.shape == values.shape) or report.ndim != 1:
            raise ValueError("report, sensor_codes and values must be 1-d arrays of one length")
        if report.size and (int(report.min()) < 0 or int(report.max()) >= n_reports):
            raise ValueError("report ids must lie in 0..n_reports-1")
        self.report = report
        self.n_reports = n_reports
        numeric = np.flatnonzero(~np.isnan(values))
        order = numeric[np.argsort(sensor_codes[numeric], kind="stable")]
        sorted_codes = sensor_codes[order]
        bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
        starts = np.concatenate([[0], bounds]).tolist()
        stops = np.concatenate([bounds, [len(order)]]).tolist()
        self._by_code: dict[int, tuple[IntArray, FloatArray]] = {
            int(sorted_codes[a]): (report[order[a:b]], values[order[a:b]])
            for a, b in zip(starts, stops, strict=True)
            if b > a
        }
        self._memo: dict[tuple[int, str, float], BoolArray] = {}

    def cond(self, code: int | None, op: str, value: float) -> BoolArray:
        """Per REPORT: whether some numeric row of sensor ``code`` compares true."""
        if code is None:
            return np.zeros(self.n_reports, dtype=np.bool_)
        key = (code, op, value)
        hit = self._memo.get(key)
        if hit is None:
            hit = np.zeros(self.n_reports, dtype=np.bool_)
            found = self._by_code.get(code)
            if found is not None:
                reports, vals = found
                hit[reports[_COMPARE[op](vals, value)]] = True
            self._memo[key] = hit
        return hit

    def satisfied(self, expr: Expr, codes: Mapping[str, int]) -> BoolArray:
        """Per REPORT: whether the report satisfies ``expr``."""
        if isinstance(expr, Cond):
            return self.cond(codes.get(expr.sensor), expr.op, expr.value)
        left = self.satisfied(expr.left, codes)
        right = self.satisfied(expr.right, codes)
        return left & right if isinstance(expr, And) else left | right


# --- domain arguments -------------------------------------------------------------------------


def parse_list(text: str, field: str) -> tuple[str, ...]:
    """A comma-separated list, each part trimmed; an empty part is a ``FilterError``."""
    if not isinstance(text, str):
        raise FilterError(field, 0, "a comma-separated list")
    out: list[str] = []
    pos = 0
    for part in text.split(","):
        item = part.strip()
        if not item:
            raise FilterError(field, pos, "a non-empty list item")
        out.append(item)
        pos += len(part) + 1
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Radius:
    lat: float
    lon: float
    miles: float


@dataclass(frozen=True, slots=True)
class RadiusStation:
    stid: str
    miles: float


@dataclass(frozen=True, slots=True)
class BBox:
    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float


_STID = re.compile(r"[A-Za-z0-9_-]+")


def _parts(text: str, field: str) -> list[tuple[str, int]]:
    """(trimmed part, position) for each comma-separated part."""
    if not isinstance(text, str):
        raise FilterError(field, 0, "a comma-separated list")
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(field, MAX_FILTER_CHARS, f"at most {MAX_FILTER_CHARS} characters")
    out: list[tuple[str, int]] = []
    pos = 0
    for part in text.split(","):
        lead = len(part) - len(part.lstrip())
        out.append((part.strip(), pos + lead))
        pos += len(part) + 1
    return out


def _number(part: tuple[str, int], field: str, what: str, lo: float, hi: float) -> float:
    text, pos = part
    if len(text) > MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text):
        raise FilterError(field, pos, f"{what} as a number")
    value = float(text)
    if not (lo <= value <= hi):
        raise FilterError(field, pos, f"{what} in {lo:g}..{hi:g}")
    return value


def _miles(part: tuple[str, int], field: str) -> float:
    miles = _number(part, field, "radius in miles", 0.0, MAX_RADIUS_MILES)
    if miles <= 0:
        raise FilterError(field, part[1], f"radius in miles in (0, {MAX_RADIUS_MILES:g}]")
    return miles


def parse_radius(text: str, field: str = "radius") -> Radius | RadiusStation:
    """``lat,lon,miles`` (``41.5,-111.2,50``) or ``stid,miles`` (``KLAX,100``)."""
    parts = _parts(text, field)
    if len(parts) == 3:
        lat = _number(parts[0], field, "latitude", -90.0, 90.0)
        lon = _number(parts[1], field, "longitude", -180.0, 180.0)
        return Radius(lat, lon, _miles(parts[2], field))
    if len(parts) == 2:
        stid, pos = parts[0]
        if not _STID.fullmatch(stid):
            raise FilterError(field, pos, "a station id")
        return RadiusStation(stid, _miles(parts[1], field))
    _fail_count(field, parts, "'lat,lon,miles' or 'stid,miles'")


def parse_bbox(text: str, field: str = "bbox") -> BBox:
    """``min_lon,min_lat,max_lon,max_lat`` with min < max on both axes (no antimeridian wrap)."""
    parts = _parts(text, field)
    if len(parts) != 4:
        _fail_count(field, parts, "'min_lon,min_lat,max_lon,max_lat'")
    min_lon = _number(parts[0], field, "min longitude", -180.0, 180.0)
    min_lat = _number(parts[1], field, "min latitude", -90.0, 90.0)
    max_lon = _number(parts[2], field, "max longitude", -180.0, 180.0)
    max_lat = _number(parts[3], field, "max latitude", -90.0, 90.0)
    if not min_lon < max_lon:
        raise FilterError(field, parts[2][1], "max longitude greater than min longitude")
    if not min_lat < max_lat:
        raise FilterError(field, parts[3][1], "max latitude greater than min latitude")
    return BBox(min_lon, min_lat, max_lon, max_lat)


def _fail_count(field: str, parts: list[tuple[str, int]], expected: str) -> NoReturn:
    raise FilterError(field, 0, expected, found=f"{len(parts)} parts")


def haversine_miles(lat: float, lon: float, lats: npt.ArrayLike, lons: npt.ArrayLike) -> FloatArray:
    """Great-circle distance in miles from (lat, lon) to each point; NaN coordinates give NaN."""
    la1 = np.radians(np.float64(lat))
    lo1 = np.radians(np.float64(lon))
    la2 = np.radians(np.asarray(lats, dtype=np.float64))
    lo2 = np.radians(np.asarray(lons, dtype=np.float64))
    h = np.sin((la2 - la1) / 2.0) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2.0) ** 2
    h = np.clip(h, 0.0, 1.0)  # rounding can push h a hair past 1; clip keeps NaN
    out: FloatArray = 2.0 * EARTH_RADIUS_MILES * np.arcsin(np.sqrt(h))
    return out


def in_bbox(bbox: BBox, lats: npt.ArrayLike, lons: npt.ArrayLike) -> BoolArray:
    """Whether each point lies in the box (edges included); NaN coordinates are outside."""
    la = np.asarray(lats, dtype=np.float64)
    lo = np.asarray(lons, dtype=np.float64)
    inside: BoolArray = (
        (la >= bbox.min_lat) & (la <= bbox.max_lat) & (lo >= bbox.min_lon) & (lo <= bbox.max_lon)
    )
    return inside
