"""Columnar ingest on the native endpoint: Arrow IPC stream and Parquet bodies, read with the
real pyarrow writer, checked against the JSON path (same stored rows, same errors, all or
nothing)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import expect_error, make_station, rows

OBS = "/api/v1/projects/p1/observations"
ARROW = {"Content-Type": "application/vnd.apache.arrow.stream"}
PARQUET = {"Content-Type": "application/vnd.apache.parquet"}
T0 = 1_700_000_000_000


def arrow_body(table: pa.Table, *, chunk: int | None = None) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=chunk):
            w.write_batch(batch)
    return sink.getvalue()


def parquet_body(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def table_of(items: list[dict[str, Any]], **types: pa.DataType) -> pa.Table:
    cols = {k: [r.get(k) for r in items] for k in ("device", "variable", "time", "value")}
    if any("set" in r for r in items):
        cols["set"] = [r.get("set") for r in items]
    schema = {
        "device": pa.string(),
        "variable": pa.string(),
        "time": pa.timestamp("ms", "UTC"),
        "value": pa.float64(),
        "set": pa.int64(),
        **types,
    }
    return pa.table({k: pa.array(v, schema[k]) for k, v in cols.items()})


def history(client: httpx.Client) -> list[dict[str, Any]]:
    r = client.get(OBS, params={"limit": 10_000, "qc": "none"})
    assert r.status_code == 200, r.text
    obs: list[dict[str, Any]] = r.json()["observations"]
    return obs


def strip(obs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(o["device"], o["variable"], o["set"], o["time"], o["value"]) for o in obs]


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_columnar_batch_stores_what_json_stores(client: httpx.Client, fmt: str) -> None:
    """The same rows sent as JSON to one project and as columns to another are stored alike."""
    make_station(client)
    make_station(client, "p2")
    batch = rows(40)
    r = client.post("/api/v1/projects/p2/observations", json=batch)
    assert r.status_code == 200, r.text
    table = table_of(batch)
    body, headers = (
        (arrow_body(table, chunk=7), ARROW)
        if fmt == "arrow"
        else (
            parquet_body(table),
            PARQUET,
        )
    )
    r = client.post(OBS, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 40 and r.json()["duplicates"] == 0
    p2 = client.get("/api/v1/projects/p2/observations", params={"limit": 100, "qc": "none"})
    assert strip(history(client)) == strip(p2.json()["observations"])
    # re-sent: duplicates, nothing stored twice
    r = client.post(OBS, content=body, headers=headers)
    assert r.json() == {
        "accepted": 0,
        "duplicates": 40,
        "first_cursor": None,
        "last_cursor": None,
    }
    # ... and re-sent as JSON too: the columnar path stored exactly the JSON path's values
    r = client.post(OBS, json=batch)
    assert r.json()["duplicates"] == 40


def test_dictionary_columns_string_times_sets_and_string_values(client: httpx.Client) -> None:
    make_station(client)
    table = pa.table(
        {
            "device": pa.array(["d0", "d1", "d1", "d0"]).dictionary_encode(),
            "variable": pa.array(["air_temp"] * 3 + ["wind_speed"]).dictionary_encode(),
            "time": pa.array(
                [
                    "2024-01-01T00:00:00Z",
                    "2024-01-01T02:00:01.5+02:00",
                    "2024-01-01T00:00:02.1234567Z",  # beyond Arrow's parser: the JSON rule
                    "2024-01-01T00:00:03Z",
                ]
            ),
            "value": pa.array(["a", None, "c", "d"]),
            "set": pa.array([None, 2, None, 3], pa.int32()),
        }
    )
    r = client.post(OBS, content=arrow_body(table), headers=ARROW)
    assert r.status_code == 200, r.text
    got = sorted(strip(history(client)), key=lambda x: x[3])
    assert got == [
        ("d0", "air_temp", 1, "2024-01-01T00:00:00Z", "a"),
        ("d1", "air_temp", 2, "2024-01-01T00:00:01.500Z", None),
        ("d1", "air_temp", 1, "2024-01-01T00:00:02.123Z", "c"),
        ("d0", "wind_speed", 3, "2024-01-01T00:00:03Z", "d"),
    ]


def test_integer_times_and_values_and_second_timestamps(client: httpx.Client) -> None:
    make_station(client)
    table = pa.table(
        {
            "device": ["d0", "d0"],
            "variable": ["air_temp", "air_temp"],
            "time": pa.array([T0, T0 + 1000], pa.int64()),
            "value": pa.array([3, 4], pa.int16()),
        }
    )
    assert client.post(OBS, content=parquet_body(table), headers=PARQUET).status_code == 200
    table = pa.table(
        {
            "device": ["d1"],
            "variable": ["air_temp"],
            "time": pa.array([T0 // 1000], pa.timestamp("s", "Europe/Paris")),
            "value": pa.array([None], pa.float32()),
        }
    )
    r = client.post(OBS, content=arrow_body(table), headers=ARROW)
    assert r.status_code == 200, r.text
    got = sorted(strip(history(client)), key=lambda x: (x[3], x[0]))
    assert [g[4] for g in got] == [3.0, None, 4.0]
    assert got[1][0] == "d1" and got[0][3] == got[1][3]


def test_bad_rows_are_named_by_index_and_nothing_is_stored(client: httpx.Client) -> None:
    make_station(client)
    items = rows(10)
    items[2]["device"] = "nope"
    items[4]["variable"] = "pressure"
    items[5]["value"] = float("nan")
    items[7]["time"] = T0 + 10 * 365 * 86_400_000  # far in the future
    items[8]["set"] = 0
    table = table_of(items)
    for body, headers in ((arrow_body(table), ARROW), (parquet_body(table), PARQUET)):
        err = expect_error(client.post(OBS, content=body, headers=headers), 422)
        assert [(d["index"], d["field"]) for d in err["details"]] == [
            (2, "device"),
            (4, "variable"),
            (5, "value"),
            (7, "time"),
            (8, "set"),
        ]
        assert "unknown device 'nope'" in err["details"][0]["reason"]
        assert "has no variable 'pressure'" in err["details"][1]["reason"]
    assert history(client) == []


def test_same_errors_as_the_json_path(client: httpx.Client) -> None:
    make_station(client)
    items = rows(6)
    items[1]["device"] = "ghost"
    items[3]["value"] = None
    items[3]["time"] = 10**17  # out of range
    items[4]["variable"] = "dew_point"
    json_err = expect_error(client.post(OBS, content=orjson.dumps(items)), 422)
    col_err = expect_error(
        client.post(OBS, content=arrow_body(table_of(items)), headers=ARROW), 422
    )
    assert col_err["details"] == json_err["details"]
    assert col_err["message"] == json_err["message"]


def test_null_names_and_times_are_row_errors(client: httpx.Client) -> None:
    make_station(client)
    table = pa.table(
        {
            "device": pa.array(["d0", None, "d0"]),
            "variable": pa.array(["air_temp", "air_temp", None]),
            "time": pa.array([T0, T0, None], pa.timestamp("ms", "UTC")),
            "value": [1.0, 2.0, 3.0],
        }
    )
    err = expect_error(client.post(OBS, content=arrow_body(table), headers=ARROW), 422)
    assert [(d["index"], d["field"]) for d in err["details"]] == [
        (1, "device"),
        (2, "variable"),
        (2, "time"),
    ]


def test_bad_string_times_name_their_rows(client: httpx.Client) -> None:
    make_station(client)
    table = pa.table(
        {
            "device": ["d0"] * 3,
            "variable": ["air_temp"] * 3,
            "time": ["2024-01-01T00:00:00Z", "2024-01-01T00:00:01", "yesterday"],
            "value": [1.0, 2.0, 3.0],
        }
    )
    err = expect_error(client.post(OBS, content=parquet_body(table), headers=PARQUET), 422)
    assert [(d["index"], d["field"]) for d in err["details"]] == [(1, "time"), (2, "time")]
    assert "'yesterday'" in err["details"][1]["reason"]


@pytest.mark.parametrize(
    ("columns", "field"),
    [
        ({"device": pa.array([1])}, "device"),
        ({"value": pa.array([True])}, "value"),
        ({"time": pa.array([T0], pa.timestamp("ms"))}, "time"),  # no zone: ambiguous
        ({"time": pa.array([1.5])}, "time"),
        ({"set": pa.array(["1"])}, "set"),
        ({"extra": pa.array([1])}, "extra"),
    ],
)
def test_bad_columns_are_400_naming_the_column(
    client: httpx.Client, columns: dict[str, pa.Array], field: str
) -> None:
    make_station(client)
    base: dict[str, pa.Array] = {
        "device": pa.array(["d0"]),
        "variable": pa.array(["air_temp"]),
        "time": pa.array([T0], pa.timestamp("ms", "UTC")),
        "value": pa.array([1.0]),
    }
    table = pa.table({**base, **columns})
    err = expect_error(client.post(OBS, content=arrow_body(table), headers=ARROW), 400)
    assert err["details"][0]["field"] == field
    assert history(client) == []


def test_missing_column_and_empty_batch(client: httpx.Client) -> None:
    make_station(client)
    table = pa.table({"device": ["d0"], "variable": ["air_temp"], "value": [1.0]})
    err = expect_error(client.post(OBS, content=arrow_body(table), headers=ARROW), 400)
    assert err["details"] == [{"in": "body", "field": "time", "reason": "required column"}]
    empty = table_of(rows(1)).slice(0, 0)
    expect_error(client.post(OBS, content=arrow_body(empty), headers=ARROW), 400)


@pytest.mark.parametrize("headers", [ARROW, PARQUET, {"Content-Type": "application/x-parquet"}])
@pytest.mark.parametrize("body", [b"", b"garbage", b"PAR1" + b"\x00" * 40 + b"PAR1", b"\xff" * 9])
def test_malformed_bodies_are_400(
    client: httpx.Client, headers: dict[str, str], body: bytes
) -> None:
    make_station(client)
    err = expect_error(client.post(OBS, content=body, headers=headers), 400)
    assert err["details"][0]["in"] == "body"


def test_truncated_arrow_stream_is_400_and_nothing_stored(client: httpx.Client) -> None:
    make_station(client)
    body = arrow_body(table_of(rows(50)), chunk=10)
    expect_error(client.post(OBS, content=body[: len(body) // 2], headers=ARROW), 400)
    assert history(client) == []


def test_a_body_that_inflates_past_the_limit_is_413(tmp_path: Any) -> None:
    """A compressed Parquet file whose decoded size passes the body limit is refused from its
    footer, before its data is read."""
    from tests.conftest import start_server

    srv = start_server(tmp_path, max_body_bytes=64 * 1024)
    try:
        with srv.client() as c:
            make_station(c)
            n = 20_000
            table = pa.table(
                {
                    "device": pa.array(["d0"] * n).dictionary_encode(),
                    "variable": pa.array(["air_temp"] * n).dictionary_encode(),
                    "time": pa.array([T0] * n, pa.int64()),
                    "value": [1.0] * n,
                }
            )
            sink = io.BytesIO()
            pq.write_table(table, sink, compression="zstd", use_dictionary=False)
            body = sink.getvalue()
            assert len(body) < 64 * 1024
            expect_error(c.post(OBS, content=body, headers=PARQUET), 413)
            # the Arrow stream of the same rows, zstd-compressed buffers
            sink = io.BytesIO()
            options = pa.ipc.IpcWriteOptions(compression="zstd")
            with pa.ipc.new_stream(sink, table.schema, options=options) as w:
                w.write_table(table)
            assert len(sink.getvalue()) < 64 * 1024
            expect_error(c.post(OBS, content=sink.getvalue(), headers=ARROW), 413)
    finally:
        srv.stop()


def test_devices_and_variables_created_later_are_found(client: httpx.Client) -> None:
    """The name tables built for the first batch follow metadata changes: a device created,
    deleted or given a new variable afterwards is resolved as the registry has it."""
    make_station(client)
    assert client.post(OBS, content=arrow_body(table_of(rows(4))), headers=ARROW).status_code == 200
    r = client.post(
        "/api/v1/projects/p1/devices",
        json=[{"id": "late", "variables": [{"name": "air_temp"}]}],
    )
    assert r.status_code == 201, r.text
    late = [{"device": "late", "variable": "air_temp", "time": T0, "value": 1.0}]
    r = client.post(OBS, content=arrow_body(table_of(late)), headers=ARROW)
    assert r.status_code == 200, r.text
    assert client.delete("/api/v1/projects/p1/devices/late").status_code in (200, 204)
    later = [{"device": "late", "variable": "air_temp", "time": T0 + 1, "value": 1.0}]
    err = expect_error(client.post(OBS, content=arrow_body(table_of(later)), headers=ARROW), 422)
    assert err["details"][0]["reason"] == "unknown device 'late'"


def test_a_large_dictionary_with_few_names_in_use(client: httpx.Client) -> None:
    """A client's whole category list as the dictionary (pandas categoricals): only the names
    in use are looked up, and an unused unknown name is no error."""
    make_station(client)
    names = pa.array(["d0", "d1"] + [f"unused{i}" for i in range(500)])
    table = pa.table(
        {
            "device": pa.DictionaryArray.from_arrays(pa.array([1, 0, 1], pa.int32()), names),
            "variable": ["air_temp"] * 3,
            "time": pa.array([T0, T0, T0 + 1], pa.timestamp("ms", "UTC")),
            "value": [1.0, 2.0, 3.0],
        }
    )
    r = client.post(OBS, content=arrow_body(table), headers=ARROW)
    assert r.status_code == 200, r.text
    assert sorted(o["device"] for o in history(client)) == ["d0", "d1", "d1"]


def test_unique_pairs_match_numpys_unique() -> None:
    """``columnar._unique`` (a table of flags for small code ranges) gives what
    ``np.unique(codes, return_inverse=True)`` gives, on both of its paths."""
    from streamgauge.core.columnar import _unique

    rng = np.random.default_rng(7)
    for n, bound in [(0, 0), (3, 0), (1, 1), (10, 3), (50_000, 200), (1_000, 10_000_000)]:
        codes = rng.integers(-1, max(bound, 1), n).astype(np.int64) if bound else np.full(n, -1)
        uniq, inverse = _unique(codes, bound)
        want_uniq, want_inverse = np.unique(codes, return_inverse=True)
        assert uniq.tolist() == want_uniq.tolist()
        assert inverse.tolist() == want_inverse.reshape(-1).tolist()
