"""Ingest decoding (JSON array and NDJSON, every bad row named) and resolution against the
registry (ids, times, sets), without storage."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgauge.core import ingest
from streamgauge.core.ingest import MAX_TIME, MIN_TIME, Row, decode, resolve, to_ms
from streamgauge.core.registry import Registry
from streamgauge.domain.errors import BadRequest, Invalid, StreamgaugeError
from streamgauge.domain.events import DevicePut, VariablePut
from streamgauge.domain.model import Device, Variable

NOW = 1_700_000_000_000
ROW = {"device": "d0", "variable": "air_temp", "time": NOW, "value": 1.5}


def row(**kw: Any) -> dict[str, Any]:
    return {**ROW, **kw}


def array(*rows: Any) -> bytes:
    return orjson.dumps(list(rows))


def ndjson(*lines: Any) -> bytes:
    return b"\n".join(x if isinstance(x, bytes) else orjson.dumps(x) for x in lines)


def invalid(body: bytes, *, nd: bool, **kw: Any) -> list[dict[str, Any]]:
    with pytest.raises(Invalid) as err:
        decode(body, ndjson=nd, **kw)
    assert err.value.status == 422
    return err.value.details


# -- decode ------------------------------------------------------------------------------------


def test_decode_array_fast_path() -> None:
    rows = decode(
        array(
            row(),
            row(device="d1", value="text", set=2),
            row(value=None, time="2024-01-01T00:00:00Z"),
        ),
        ndjson=False,
    )
    assert [r.device for r in rows] == ["d0", "d1", "d0"]
    assert [r.value for r in rows] == [1.5, "text", None]
    assert [r.set for r in rows] == [None, 2, None]
    assert rows[0].time == NOW
    assert rows[2].time == datetime(2024, 1, 1, tzinfo=UTC)
    assert decode(b"[]", ndjson=False) == []


def test_decode_ndjson_fast_path_ignores_blank_lines() -> None:
    body = b"\n" + ndjson(row(), b"", b"   ", row(value=2)) + b"\r\n\n"
    rows = decode(body, ndjson=True)
    assert [r.value for r in rows] == [1.5, 2.0]
    assert decode(b"", ndjson=True) == []
    assert decode(b"\n \n", ndjson=True) == []
    assert [
        r.value
        for r in decode(b'{"device":"d","variable":"v","time":1,"value":3}\r\n', ndjson=True)
    ] == [3.0]


def _by_lines(body: bytes) -> list[Row] | str:
    """What the line-by-line way decodes (rows, or "bad")."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    try:
        rows = [ingest._row_decoder.decode(line) for line in lines]
    except (ValueError, RecursionError):
        return "bad"
    return rows


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b'{"device":"d","variable":"v","time":1,"value":3}',
                b'{"device":"d","variable":"v","time":2,"value":"x"}',
                b'{"device":"d","variable":"v","time":1,"value":1},{"device":"d","variable":"v",'
                b'"time":1,"value":2}',
                b'{"device":"d","variable":"v","time":1,"value":1} []',
                b"",
                b"  ",
                b"\r",
                b"\x0b",
                b"\x0c",
                b"[]",
                b"{",
                b"}",
            ]
        ),
        max_size=6,
    ),
    st.sampled_from([b"\n", b"\r\n"]),
)
def test_ndjson_is_decoded_as_its_lines_are(parts: list[bytes], end: bytes) -> None:
    """The NDJSON fast path (the body as one array) gives what decoding line by line gives:
    the same rows, or an error (blank lines skipped, a line of several values refused)."""
    body = end.join(parts)
    want = _by_lines(body)
    try:
        got: list[Row] | str = decode(body, ndjson=True)
    except Invalid:
        got = "bad"
    assert got == want


def test_array_errors_name_each_bad_row() -> None:
    details = invalid(
        array(
            row(),
            row(value=True),  # wrong type
            row(extra=1),  # unknown field
            {"device": "d0", "variable": "v", "value": 1},  # missing time
            row(time="2024-01-01T00:00:00"),  # naive datetime
            row(device=7),  # wrong type
            row(set=0),  # set out of range
            row(time=1.5),  # a float time
            "not an object",
            row(),
        ),
        nd=False,
    )
    assert [d["index"] for d in details] == [1, 2, 3, 4, 5, 6, 7, 8]
    reasons = [d["reason"] for d in details]
    assert "value" in reasons[0]
    assert "unknown field `extra`" in reasons[1]
    assert "missing required field `time`" in reasons[2]
    assert "timezone" in reasons[3]
    assert "device" in reasons[4]
    assert "set" in reasons[5]
    assert "time" in reasons[6]
    assert "object" in reasons[7]
    assert all("line" not in d for d in details)


def test_ndjson_errors_name_index_and_line() -> None:
    body = ndjson(
        row(),
        b"",
        row(value=[1]),
        b"{not json",
        b"",
        b"",
        row(time="2024-01-01T00:00:00"),
        b"[1, 2]",
        row(),
    )
    details = invalid(body, nd=True)
    assert [(d["index"], d["line"]) for d in details] == [(1, 3), (2, 4), (3, 7), (4, 8)]
    assert "value" in details[0]["reason"]
    assert "malformed" in details[1]["reason"].lower()
    assert "timezone" in details[2]["reason"]
    assert "object" in details[3]["reason"]


def test_malformed_json_array_is_400() -> None:
    for body in (b"[{", b"", b"not json", b"[", b'[{"device":"d0",'):
        with pytest.raises(BadRequest) as err:
            decode(body, ndjson=False)
        assert type(err.value) is BadRequest and err.value.status == 400
        assert "malformed JSON" in err.value.message


def test_malformed_json_after_a_badly_typed_row_is_still_400() -> None:
    # The typed decode stops at the first bad type before it sees the syntax error; the body is
    # still malformed JSON (400, "malformed body"), not well-formed but unacceptable (422).
    for body in (b"[1,]", b'[{"device":1}', b'[{"device":1},{"device":"d0"'):
        with pytest.raises(BadRequest) as err:
            decode(body, ndjson=False)
        assert type(err.value) is BadRequest and err.value.status == 400, err.value
        assert "malformed JSON" in err.value.message


def test_invalid_utf8_is_a_client_error() -> None:
    good = orjson.dumps(row())
    bad_str = b'{"device":"d\xff0","variable":"v","time":1,"value":1}'  # not UTF-8
    for body, nd in (
        (b"[" + bad_str + b"]", False),
        (b"[" + good + b"," + bad_str + b"]", False),
        (b'["\xc2"]', False),
        (b'"\xff"', False),
        (good + b"\n" + bad_str, True),
        (bad_str, True),
    ):
        with pytest.raises(BadRequest):
            decode(body, ndjson=nd)


def test_malformed_ndjson_line_is_invalid_with_line() -> None:
    details = invalid(ndjson(row(), b'{"device": "d0",'), nd=True)
    assert details == [{"index": 1, "line": 2, "reason": details[0]["reason"]}]
    assert "truncated" in details[0]["reason"]


def test_ndjson_line_must_hold_one_object() -> None:
    # "a,b" on one line is not a JSON text; it must not slip in as two rows through the join
    body = ndjson(row(), orjson.dumps(row(value=2)) + b"," + orjson.dumps(row(value=3)))
    details = invalid(body, nd=True)
    assert [(d["index"], d["line"]) for d in details] == [(1, 2)]


def test_non_array_body_is_400() -> None:
    for body, kind in ((orjson.dumps(row()), "dict"), (b'"x"', "str"), (b"12", "int")):
        with pytest.raises(BadRequest) as err:
            decode(body, ndjson=False)
        assert type(err.value) is BadRequest
        assert err.value.details == [{"reason": f"the body is a JSON {kind}"}]


def test_number_out_of_range() -> None:
    body = b'[{"device":"d0","variable":"v","time":1,"value":1e999}]'
    with pytest.raises(Invalid) as err:
        decode(body, ndjson=False)
    assert [d["index"] for d in err.value.details] == [0]
    assert "range" in err.value.details[0]["reason"]


def test_number_out_of_range_ndjson() -> None:
    body = ndjson(row(), b'{"device":"d0","variable":"v","time":1,"value":-1e999}')
    details = invalid(body, nd=True)
    assert [(d["index"], d["line"]) for d in details] == [(1, 2)]
    assert "range" in details[0]["reason"]


def test_deeply_nested_json_is_a_client_error() -> None:
    for body, nd in (
        (b"[" * 5000, False),
        (b"[" * 5000 + b"]" * 5000, False),
        (b'[{"device":' + b"[" * 5000 + b"]" * 5000 + b"}]", False),
        (b"[" * 5000 + b"]" * 5000, True),
    ):
        with pytest.raises(BadRequest):
            decode(body, ndjson=nd)


def test_max_errors_caps_the_list() -> None:
    bad = [row(value=True)] * 50
    assert len(invalid(array(*bad), nd=False, max_errors=7)) == 7
    assert len(invalid(ndjson(*bad), nd=True, max_errors=3)) == 3
    assert len(invalid(array(*bad), nd=False)) == 50


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
row_like = st.fixed_dictionaries(
    {},
    optional={
        "device": json_values,
        "variable": json_values,
        "time": json_values | st.datetimes().map(lambda d: d.isoformat()),
        "value": json_values,
        "set": json_values,
        "extra": json_values,
    },
)


def _mangle(data: bytes, cut: int, junk: bytes) -> bytes:
    return data[:cut] + junk + data[cut:]


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(row_like | json_values, max_size=5),
    cut=st.integers(0, 200),
    junk=st.sampled_from([b"", b",", b"]", b"[", b"{", b"\n", b"\xff", b'"', b"1e999", b"NaN"]),
    nd=st.booleans(),
)
def test_decode_raises_only_streamgauge_errors(
    rows: list[Any], cut: int, junk: bytes, nd: bool
) -> None:
    try:
        encoded = [orjson.dumps(r) for r in rows]
    except (TypeError, orjson.JSONEncodeError):  # ints beyond 64 bits
        encoded = [orjson.dumps(repr(r)) for r in rows]
    body = b"\n".join(encoded) if nd else b"[" + b",".join(encoded) + b"]"
    try:
        decoded = decode(_mangle(body, cut, junk), ndjson=nd)
    except StreamgaugeError as exc:
        assert exc.status in (400, 422)
    else:
        assert all(isinstance(r, Row) for r in decoded)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), nd=st.booleans())
def test_decode_of_any_bytes_raises_only_streamgauge_errors(body: bytes, nd: bool) -> None:
    try:
        decode(body, ndjson=nd)
    except StreamgaugeError as exc:
        assert exc.status in (400, 422)


# -- resolve -----------------------------------------------------------------------------------


def registry() -> Registry:
    reg = Registry()
    for dev_pk, project_pk, dev_id, variables in [
        (1, 1, "d0", [(1, "air_temp", 1), (2, "wind_speed", 4)]),
        (2, 1, "d1", [(3, "air_temp", 1)]),
        (3, 2, "other", [(4, "air_temp", 1)]),
    ]:
        doc = Device(
            id=dev_id,
            project=f"p{project_pk}",
            site=None,
            type=None,
            name=dev_id,
            labels={},
            metadata={},
        )
        reg.apply(DevicePut(dev_pk, project_pk, doc))
        for var_pk, name, set_ in variables:
            var = Variable(id=name, name=name, project=f"p{project_pk}", device=dev_id, set=set_)
            reg.apply(VariablePut(var_pk, dev_pk, var))
    return reg


def run(rows: list[Row], **kw: Any) -> Any:
    kw.setdefault("now_ms", NOW)
    kw.setdefault("max_future_ms", 300_000)
    return resolve(rows, registry(), 1, **kw)


def bad(rows: list[Row], **kw: Any) -> list[dict[str, Any]]:
    with pytest.raises(Invalid) as err:
        run(rows, **kw)
    return err.value.details


def r(**kw: Any) -> Row:
    fields: dict[str, Any] = {"device": "d0", "variable": "air_temp", "time": NOW, "value": 1.0}
    fields.update(kw)
    return Row(**fields)


def test_resolve_columns_and_sets() -> None:
    cols = run(
        [
            r(),
            r(variable="wind_speed", value="x"),  # the variable's own set (4)
            r(variable="wind_speed", set=9, value=None),  # the row's set wins
            r(device="d1", time=NOW - 5),
        ]
    )
    assert cols.project_pk == 1
    assert cols.variable_pks.tolist() == [1, 2, 2, 3]
    assert cols.sets.tolist() == [1, 4, 9, 1]
    assert cols.times.tolist() == [NOW, NOW, NOW, NOW - 5]
    assert cols.values == [1.0, "x", None, 1.0]
    assert cols.qc.tolist() == [0, 0, 0, 0]


def test_resolve_unknown_device_and_variable() -> None:
    details = bad([r(), r(device="nope"), r(variable="nope"), r(device="other")])
    assert [(d["index"], d["field"]) for d in details] == [
        (1, "device"),
        (2, "variable"),
        (3, "device"),  # a device of another project is unknown here
    ]
    assert "'nope'" in details[0]["reason"] and "'nope'" in details[1]["reason"]


def test_resolve_future_times() -> None:
    assert run([r(time=NOW + 300_000)]).times.tolist() == [NOW + 300_000]
    details = bad([r(time=NOW + 300_001), r(), r(time=NOW + 10**9)])
    assert [(d["index"], d["field"]) for d in details] == [(0, "time"), (2, "time")]
    assert "ahead" in details[0]["reason"]
    assert bad([r(time=NOW + 1)], max_future_ms=0)[0]["field"] == "time"


def test_resolve_times_out_of_range() -> None:
    details = bad(
        [
            r(time=10**20),
            r(time=-(10**20)),
            r(time=MAX_TIME + 1),
            r(time=MIN_TIME - 1),
            r(time=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=2)))),
        ],
        now_ms=MAX_TIME,
    )
    assert [(d["index"], d["field"]) for d in details] == [(i, "time") for i in range(5)]
    assert all("out of range" in d["reason"] for d in details)
    cols = run([r(time=MIN_TIME)], now_ms=MAX_TIME)
    assert cols.times.tolist() == [MIN_TIME]


def test_resolve_non_finite_values() -> None:
    details = bad([r(value=math.inf), r(value=-math.inf), r(value=math.nan), r(value=1e308)])
    assert [(d["index"], d["field"]) for d in details] == [(0, "value"), (1, "value"), (2, "value")]


def test_resolve_max_errors() -> None:
    assert len(bad([r(device="x")] * 20, max_errors=5)) == 5


def test_epoch_ms_and_rfc3339_give_the_same_ms() -> None:
    texts = [
        "2023-11-14T22:13:20.123Z",
        "2023-11-14T22:13:20.123+00:00",
        "2023-11-15T00:13:20.123+02:00",
        "2023-11-14T17:43:20.123-04:30",
    ]
    body = array(row(time=NOW + 123), *(row(time=t) for t in texts))
    rows = decode(body, ndjson=False)
    cols = run(rows)
    assert cols.times.tolist() == [NOW + 123] * 5
    assert to_ms(datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)) == -1
    assert to_ms(datetime(1970, 1, 1, 0, 0, 0, 999, tzinfo=UTC)) == 0  # sub-ms floors
    pre = decode(array(row(time="1969-12-31T23:59:58.5Z")), ndjson=False)
    assert run(pre).times.tolist() == [-1500]


def test_finite_is_checked_after_conversion_to_the_canonical_unit() -> None:
    """issue 11 item 21: finiteness was checked before unit scaling, so 1e303 MPa was stored as
    +Inf Pa. Each row whose converted value overflows is named; nothing is resolved."""
    reg = registry()
    doc = Variable(id="pres", name="pressure", unit="MPa", project="p1", device="d0")
    reg.apply(VariablePut(9, 1, doc))
    assert reg.variables[(1, "pres")].scale == 1e6
    rows = [r(variable="pres", value=v) for v in (0.5, 1e303, -1e303, 1e302)]
    with pytest.raises(Invalid) as err:
        resolve(rows, reg, 1, now_ms=NOW, max_future_ms=300_000)
    details = err.value.details
    assert [(d["index"], d["field"]) for d in details] == [(1, "value"), (2, "value")]
    assert "MPa" in details[0]["reason"] and "Pa" in details[0]["reason"]
    cols = resolve([rows[0], rows[3]], reg, 1, now_ms=NOW, max_future_ms=300_000)
    assert cols.values == [500_000.0, 1e308]


_plain_rows = st.lists(
    st.builds(
        Row,
        device=st.sampled_from(["d0", "d1", "nope"]),
        variable=st.sampled_from(["air_temp", "wind_speed", "nope"]),
        time=st.one_of(
            st.integers(NOW - 10**6, NOW + 400_000),
            st.sampled_from([MIN_TIME - 1, MIN_TIME, MAX_TIME, 10**19]),
            st.just(datetime(2024, 1, 1, tzinfo=UTC)),
        ),
        value=st.one_of(
            st.floats(), st.floats(allow_nan=False, allow_infinity=False), st.text(), st.none()
        ),
        set=st.one_of(st.none(), st.integers(1, 1000)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(_plain_rows)
def test_resolve_by_columns_gives_what_row_by_row_gives(rows: list[Row]) -> None:
    """``resolve`` takes a plain batch by columns (``_resolve_plain``); whatever it takes, the
    columns are those of the row-by-row way, and what it does not take (errors to name among
    them) goes that way."""
    reg = registry()
    kw: dict[str, Any] = {"now_ms": NOW, "max_future_ms": 300_000}
    fast = ingest._resolve_plain(rows, reg, 1, NOW + 300_000)
    try:
        cols = ingest.resolve(rows, reg, 1, **kw)
    except Invalid:
        assert fast is None
        return
    plain = all(
        type(x.time) is int and type(x.value) is float and math.isfinite(x.value) for x in rows
    ) and all(x.device != "nope" and x.variable != "nope" for x in rows)
    assert (fast is not None) == plain
    if fast is not None:
        assert fast.variable_pks.tolist() == cols.variable_pks.tolist()
        assert fast.sets.tolist() == cols.sets.tolist()
        assert fast.times.tolist() == cols.times.tolist()
        assert fast.values == cols.values
        assert [type(v) for v in fast.values] == [type(v) for v in cols.values]
        assert fast.qc.tolist() == cols.qc.tolist() and fast.project_pk == cols.project_pk


# -- the NDJSON body by pyarrow's JSON reader (``_resolve_ndjson``) ------------------------------


def _both(body: bytes, reg: Registry | None = None) -> tuple[Any, Any]:
    """What ``_resolve_ndjson`` gives for ``body`` and what the msgspec way (``decode`` then
    ``resolve``) gives: its columns, or the error it raises."""
    reg = reg or registry()
    fast = ingest._resolve_ndjson(body, reg, 1, NOW + 300_000)
    try:
        slow: Any = resolve(decode(body, ndjson=True), reg, 1, now_ms=NOW, max_future_ms=300_000)
    except StreamgaugeError as exc:
        slow = exc
    return fast, slow


def _same_columns(fast: Any, slow: Any) -> None:
    assert not isinstance(slow, StreamgaugeError), slow
    assert fast.project_pk == slow.project_pk
    assert fast.variable_pks.tolist() == slow.variable_pks.tolist()
    assert fast.sets.tolist() == slow.sets.tolist()
    assert fast.times.tolist() == slow.times.tolist()
    assert fast.qc.tolist() == slow.qc.tolist()
    # the same doubles, bit for bit (a -0.0 is not a 0.0), and floats both
    assert [type(v) for v in fast.values] == [type(v) for v in slow.values]
    assert [math.copysign(1.0, v) for v in fast.values] == [
        math.copysign(1.0, v) for v in slow.values
    ]
    assert fast.values == slow.values


_json_rows = st.lists(
    st.fixed_dictionaries(
        {
            "device": st.sampled_from(["d0", "d1", "nope", "d\u00e9"]),
            "variable": st.sampled_from(["air_temp", "wind_speed", "nope"]),
            "time": st.one_of(
                st.integers(NOW - 10**6, NOW + 400_000),
                st.sampled_from([MIN_TIME - 1, MIN_TIME, MAX_TIME, 10**19, -(2**63)]),
                st.just("2024-01-01T00:00:00Z"),
                st.just(float(NOW)),
            ),
            "value": st.one_of(
                st.floats(allow_nan=False, allow_infinity=False),
                st.integers(-(2**70), 2**70),
                st.sampled_from([0, -0.0, 0.0, 1e308, 5e-324]),
                st.text(max_size=3),
                st.none(),
                st.booleans(),
            ),
        },
        optional={"set": st.one_of(st.none(), st.integers(-1, 1001), st.just(2.0))},
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(_json_rows, st.sampled_from([b"\n", b"\r\n", b" \n\t"]))
def test_ndjson_by_arrow_gives_what_msgspec_gives(
    rows: list[dict[str, Any]], newline: bytes
) -> None:
    """Whatever body the Arrow reader takes, its columns are the msgspec way's, bit for bit;
    and it takes every plain body (so the fast way is not silently never taken)."""
    # (stdlib json: integers past 64 bits, and "\u00e9" escaped)
    body = newline.join(json.dumps(x, separators=(",", ":")).encode() for x in rows)
    fast, slow = _both(body)
    if fast is not None:
        _same_columns(fast, slow)
    plain = all(
        type(x["time"]) is int
        and MIN_TIME <= x["time"] <= NOW + 300_000
        and type(x["value"]) in (int, float)
        and math.isfinite(x["value"])
        and (type(x["value"]) is float or -(2**63) <= x["value"] < 2**64)
        and x["device"] in ("d0", "d1")
        and x["variable"] in ("air_temp", "wind_speed")
        and (x["device"], x["variable"]) != ("d1", "wind_speed")
        and (x.get("set") is None or (type(x["set"]) is int and 1 <= x["set"] <= 1000))
        for x in rows
    )
    if plain:
        assert fast is not None, body


@pytest.mark.parametrize(
    ("body", "taken"),
    [
        (ndjson(row(), row(device="d1", set=3), row(value=7)), True),
        (ndjson(row(), row()) + b"\n", True),
        (b"\n  " + ndjson(row(), row(time=NOW - 5)) + b"\r\n\r\n", True),
        (ndjson(row(value=-0.0), row(value=0)), True),  # a float -0.0 is -0.0 both ways
        (
            ndjson(row()) + b"\n" + b'{"device":"d0","variable":"air_temp","time":1,"value":-0}',
            False,
        ),
        (ndjson(row()) + orjson.dumps(row()), False),  # two objects on one line: refused
        (ndjson(row()) + b" " + orjson.dumps(row()), False),
        (ndjson(row()) + b"\n\n" + ndjson(row()), False),  # a blank line: msgspec's way
        (b"\xef\xbb\xbf" + ndjson(row()), False),  # a byte-order mark
        (array(row(), row()), False),  # an array, not NDJSON
        (ndjson(row(), row(value=None)), False),
        (ndjson(row(), row(value="7")), False),
        (ndjson(row(), row(value=True)), False),
        (ndjson(row(), {"device": "d0", "variable": "air_temp", "time": NOW}), False),
        (ndjson(row(), row(extra=1)), False),
        (ndjson(row(), row(set=0)), False),
        (ndjson(row(), row(set=1001)), False),
        (ndjson(row(), row(set=2.0)), False),
        (ndjson(row(), row(time="2024-01-01T00:00:00Z")), False),
        (ndjson(row(), row(time=NOW + 0.5)), False),
        (ndjson(row(), row(time=NOW + 10**9)), False),  # past the allowed skew
        (ndjson(row(), b'{"device":"d0","variable":"air_temp","time":1,"value":NaN}'), False),
        (ndjson(row(), b'{"device":"d0","variable":"air_temp","time":1,"value":1e400}'), False),
        (
            ndjson(row(), b'{"device":"d0","variable":"air_temp","time":1,"value":1,"value":2}'),
            False,
        ),
        (ndjson(row(), b'{"device":"d0\xff","variable":"air_temp","time":1,"value":1}'), False),
        (ndjson(row(), b'{"device":"d0","variable":"air_temp","time":1,"value":[1]}'), False),
        (ndjson(row(), row(device="nope")), False),
        (ndjson(row(), row(variable="nope")), False),
        (ndjson(row(), row(device="other")), False),  # a device of another project
        (ndjson(row(), b"5"), False),
        (b"", False),
    ],
)
def test_ndjson_by_arrow_takes_only_what_it_must(body: bytes, taken: bool) -> None:
    """The bodies the Arrow reader must leave to msgspec's way (which then accepts them with
    the same columns, or names the bad rows), and plain ones it takes."""
    fast, slow = _both(body)
    assert (fast is not None) == taken, (fast, slow)
    if fast is not None:
        _same_columns(fast, slow)


def test_decode_resolve_takes_the_arrow_way_and_errors_stay_msgspecs() -> None:
    reg = registry()
    kw: dict[str, Any] = {"ndjson": True, "now_ms": NOW, "max_future_ms": 300_000}
    body = ndjson(*(row(time=NOW - k) for k in range(50)))
    cols = ingest.decode_resolve(body, reg, 1, **kw)
    _same_columns(
        cols, resolve(decode(body, ndjson=True), reg, 1, now_ms=NOW, max_future_ms=300_000)
    )
    for bad_body in (
        ndjson(row(), row(device="nope"), row(time=NOW + 10**9)),  # read by Arrow, refused
        ndjson(row(), row(device="nope"), row(value=True)),  # not read by Arrow
    ):
        with pytest.raises(Invalid) as err:
            ingest.decode_resolve(bad_body, reg, 1, **kw)
        _, slow = _both(bad_body, reg)
        assert isinstance(slow, Invalid) and err.value.details
        assert (err.value.message, err.value.details) == (slow.message, slow.details)


_NO_PANDAS = """
import sys
from tests.core.test_ingest import NOW, registry
from streamgauge.core import columnar
body = sys.stdin.buffer.read()
table = columnar.read_table(body, "arrow", max_bytes=1 << 20)
cols = columnar.resolve_table(table, registry(), 1, now_ms=NOW, max_future_ms=300_000)
print(cols.variable_pks.tolist(), cols.sets.tolist(), cols.times.tolist(), cols.values)
print("pandas" in sys.modules)
"""


def test_an_arrow_body_is_read_without_importing_pandas() -> None:
    """pyarrow imports pandas, when it is installed, for ``Array.to_numpy`` and ``pa.array`` of
    Python objects: about 32 MB resident for good in the server. A columnar body (nulls, a
    dictionary column, a timestamp column) is read without either."""
    import io
    import subprocess
    import sys
    from pathlib import Path

    pa = pytest.importorskip("pyarrow")
    import pyarrow.ipc

    pytest.importorskip("pandas")  # without pandas nothing can import it
    table = pa.table(
        {
            "device": pa.array(["d0", "d1", "d0", None]).dictionary_encode(),
            "variable": ["air_temp", "air_temp", "wind_speed", "air_temp"],
            "time": pa.array([NOW - 3, NOW - 2, NOW - 1, NOW], pa.timestamp("ms", "UTC")),
            "value": [1.5, None, 3, 4],
            "set": pa.array([None, 1, 4, 1], pa.int64()),
        }
    )
    table = table.slice(0, 3)  # an offset-free slice of the first three (the 4th: no device)
    buf = io.BytesIO()
    with pyarrow.ipc.new_stream(buf, table.schema) as w:
        w.write_table(table)
    out = subprocess.run(
        [sys.executable, "-c", _NO_PANDAS],
        input=buf.getvalue(),
        capture_output=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    lines = out.stdout.decode().splitlines()
    assert lines == [
        f"[1, 3, 2] [1, 1, 4] [{NOW - 3}, {NOW - 2}, {NOW - 1}] [1.5, None, 3.0]",
        "False",
    ], out.stderr.decode()[-2000:]
