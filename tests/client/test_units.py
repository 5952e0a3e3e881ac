"""Pure parts of the client: checkpoint files, backoff, ingest encoding, errors."""

from __future__ import annotations

import itertools
import math
import tracemalloc
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamgauge.client import Invalid, NotFound, Observation, ServerError, _encode
from streamgauge.client._backoff import MAX_DELAY_S, backoff
from streamgauge.client._checkpoint import Checkpoint
from streamgauge.client._encode import ARROW, JSON, NDJSON, Body, file_batches, row_batches
from streamgauge.client._errors import from_response


def test_checkpoint_is_written_atomically_throttled_and_on_save(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.json"
    cp = Checkpoint(path, interval=3600)
    assert cp.load() == {}
    cp.update(cursor=5)  # within the interval: not written yet
    assert not path.exists()
    cp.save()
    assert orjson.loads(path.read_bytes()) == {"cursor": 5}
    assert [p.name for p in path.parent.iterdir()] == ["c.json"]  # no temporary file left
    again = Checkpoint(path, interval=0)
    assert again.load() == {"cursor": 5}
    again.update(cursor=9)  # interval 0: written at once
    assert orjson.loads(path.read_bytes()) == {"cursor": 9}


def test_checkpoint_refuses_a_file_that_is_not_one(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("not json")
    with pytest.raises(ValueError, match="not a checkpoint"):
        Checkpoint(path).load()


def test_backoff_grows_and_is_capped() -> None:
    delays = list(itertools.islice(backoff(first=0.1, jitter=0.0), 12))
    assert delays[0] == pytest.approx(0.1)
    assert delays == sorted(delays)
    assert max(delays) == MAX_DELAY_S
    assert max(itertools.islice(backoff(), 50)) <= MAX_DELAY_S * 1.2


def test_row_batches_cut_and_encode_datetimes() -> None:
    from datetime import UTC, datetime

    rows = [
        {"device": "d", "variable": "v", "time": datetime(2026, 1, 1, tzinfo=UTC), "value": i}
        for i in range(5)
    ]
    bodies = list(row_batches(rows, 2))
    assert [b.rows for b in bodies] == [2, 2, 1]
    first = orjson.loads(bodies[0].data)
    assert first[0]["time"] == "2026-01-01T00:00:00+00:00"


def _arrow_rows(body: Body) -> list[dict[str, object]]:
    assert body.media_type == ARROW
    return pa.ipc.open_stream(body.data).read_all().to_pylist()


def test_csv_file_batches_are_arrow_columns_with_digit_times_as_integers(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text(
        "device,variable,time,value,set\nd0,t,1700000000000,1.5,2\n d0 ,t,1700000001000,,\n"
    )
    (body,) = list(file_batches(path, 10))
    table = pa.ipc.open_stream(body.data).read_all()
    assert pa.types.is_dictionary(table.schema.field("device").type)
    assert table.schema.field("time").type == pa.int64()
    assert table.schema.field("value").type == pa.float64()
    assert table.to_pylist() == [
        {"device": "d0", "variable": "t", "time": 1700000000000, "value": 1.5, "set": 2},
        {"device": "d0", "variable": "t", "time": 1700000001000, "value": None, "set": None},
    ]
    rows = orjson.loads(body.as_json().data)  # what a server without columnar ingest gets
    assert rows == [
        {"device": "d0", "variable": "t", "time": 1700000000000, "value": 1.5, "set": 2},
        {"device": "d0", "variable": "t", "time": 1700000001000, "value": None},
    ]


def test_csv_batches_are_cut_at_the_batch_size_across_read_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_encode, "CSV_BLOCK_BYTES", 1000)  # many small read blocks
    path = tmp_path / "x.csv"
    path.write_text(
        "device,variable,time,value\n" + "".join(f"d0,t,{i},{i}\n" for i in range(2500))
    )
    bodies = list(file_batches(path, 1000))
    assert [b.rows for b in bodies] == [1000, 1000, 500]
    values = [r["value"] for b in bodies for r in _arrow_rows(b)]
    assert values == [float(i) for i in range(2500)]


def test_csv_batches_arrow_cannot_carry_go_as_json_by_the_servers_csv_rules(
    tmp_path: Path,
) -> None:
    """Text among the values, or epoch ms among RFC 3339 times: that batch alone is JSON, each
    value a number or text on its own (the server's CSV rules)."""
    path = tmp_path / "x.csv"
    path.write_text(
        "device,variable,time,value\n"
        "d0,t,1700000000000,1.5\nd0,t,1700000001000,open\n"  # batch 1: text value
        "d0,t,2023-11-14T22:13:22Z,2\nd0,t,2023-11-14T22:13:23Z,3\n"  # batch 2: RFC 3339
        "d0,t,1700000004000,4\nd0,t,2023-11-14T22:13:25Z,5\n"  # batch 3: mixed times
    )
    first, second, third = list(file_batches(path, 2))
    assert first.media_type == JSON
    assert [r["value"] for r in orjson.loads(first.data)] == [1.5, "open"]
    assert [r["time"] for r in _arrow_rows(second)] == [
        "2023-11-14T22:13:22Z",
        "2023-11-14T22:13:23Z",
    ]
    assert third.media_type == JSON
    assert [r["time"] for r in orjson.loads(third.data)] == [
        1700000004000,
        "2023-11-14T22:13:25Z",
    ]


def test_csv_row_with_the_wrong_field_count_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("device,variable,time,value\nd0,t,1,2\n\nd0,t,2\n")
    with pytest.raises(ValueError, match="x.csv, line 4: 3 fields; the header has 4"):
        list(file_batches(path, 10))


def test_a_non_finite_value_json_cannot_carry_names_its_row() -> None:
    table = pa.table(
        {"device": ["d0"] * 3, "variable": ["t"] * 3, "time": [1, 2, 3], "value": [1, math.inf, 3]}
    )
    (body,) = list(_encode.table_batches(table, 10))
    assert body.media_type == ARROW  # the server refuses it naming the row; JSON cannot carry it
    with pytest.raises(ValueError, match="row 11: value must be finite"):
        body.as_json(10)


def test_without_pyarrow_csv_goes_as_ndjson_and_parquet_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_encode, "have_arrow", lambda: False)
    path = tmp_path / "x.csv"
    path.write_text("device,variable,time,value,set\nd0,t,1700000000000,1.5,2\nd0,t,5,open,\n")
    (body,) = list(file_batches(path, 10))
    assert body.media_type == NDJSON
    assert [orjson.loads(x) for x in body.data.splitlines()] == [
        {"device": "d0", "variable": "t", "time": 1700000000000, "value": 1.5, "set": 2},
        {"device": "d0", "variable": "t", "time": 5, "value": "open"},
    ]
    with pytest.raises(ValueError, match="needs pyarrow"):
        list(file_batches(tmp_path / "x.parquet", 10))


def test_without_pyarrow_csv_bodies_split_at_the_batch_size_in_one_buffer_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bodies of ``size`` rows and the rest, each row once and in order; a body is built in one
    buffer (orjson's output of a row sits in at least 4 KiB: a body of 5,000 rows held 20 MB)."""
    monkeypatch.setattr(_encode, "have_arrow", lambda: False)
    path = tmp_path / "x.csv"
    n = 12_000
    path.write_text(
        "device,variable,time,value\n"
        + "".join(f"d{k % 3},t,{1_700_000_000_000 + k},{k}.5\n" for k in range(n))
    )
    tracemalloc.start()
    try:
        bodies = list(file_batches(path, 5000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [b.rows for b in bodies] == [5000, 5000, 2000]
    got = [orjson.loads(x) for b in bodies for x in b.data.splitlines()]
    assert [r["time"] - 1_700_000_000_000 for r in got] == list(range(n))
    assert got[-1] == {
        "device": f"d{(n - 1) % 3}",
        "variable": "t",
        "time": 1_700_000_011_999,
        "value": n - 1 + 0.5,
    }
    assert peak < 8 * 1024 * 1024  # the three bodies (about 1 MB each) and the reader


def test_csv_without_the_required_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("device,time,value\nd0,1,2\n")
    with pytest.raises(ValueError, match="missing column"):
        list(file_batches(path, 10))


def test_parquet_export_columns_read_back_for_import(tmp_path: Path) -> None:
    """A Parquet export (value / value_text, timestamp times) imports as it was."""
    path = tmp_path / "x.parquet"
    table = pa.table(
        {
            "device": ["d0", "d0"],
            "variable": ["v", "v"],
            "time": pa.array([1700000000000, 1700000001000], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "value": pa.array([1.0, None], pa.float64()),
            "value_text": pa.array([None, "open"], pa.string()),
        }
    )
    pq.write_table(table, path)
    (body,) = list(file_batches(path, 10))
    rows = orjson.loads(body.data)
    assert [r["time"] for r in rows] == [1700000000000, 1700000001000]
    assert [r["value"] for r in rows] == [1.0, "open"]


def test_errors_are_typed_and_carry_the_envelope() -> None:
    body = orjson.dumps(
        {
            "error": {
                "status": 422,
                "code": "invalid",
                "message": "1 bad row",
                "details": [{"index": 3, "field": "device", "reason": "unknown device"}],
            }
        }
    )
    err = from_response(422, body)
    assert isinstance(err, Invalid)
    assert err.details[0]["index"] == 3 and "unknown device" in str(err)
    assert isinstance(from_response(404, b'{"error": {"message": "x"}}'), NotFound)
    assert isinstance(from_response(502, b"<html>bad gateway</html>"), ServerError)


def test_observation_from_a_row() -> None:
    o = Observation.from_row(
        {
            "cursor": 7,
            "device": "d",
            "variable": "v",
            "set": 1,
            "time": "2026-11-23T12:00:00.250Z",
            "value": 4.5,
            "qc": ["sl_rate_check"],
        }
    )
    assert o.time.tzinfo is not None and o.time.microsecond == 250_000
    assert o.qc == ("sl_rate_check",) and o.cursor == 7


def test_without_pyarrow_a_dataframe_goes_as_json_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    monkeypatch.setattr(_encode, "have_arrow", lambda: False)
    frame = pd.DataFrame(
        {
            "device": ["d0", "d1", "d2"],
            "variable": ["t", "t", "t"],
            "time": pd.to_datetime(["2026-01-01T00:00:00.250", None, "2026-01-01T00:00:01.000"]),
            "value": [1.5, float("nan"), 3.0],
        }
    )
    (body,) = list(_encode.frame_batches(frame, 10))
    assert body.media_type == JSON
    assert orjson.loads(body.data) == [
        {"device": "d0", "variable": "t", "time": 1767225600250, "value": 1.5},
        {"device": "d1", "variable": "t", "time": None, "value": None},
        {"device": "d2", "variable": "t", "time": 1767225601000, "value": 3.0},
    ]
    with_arrow = list(_encode.frame_batches(frame.iloc[[0, 2]], 10))
    monkeypatch.undo()
    (arrow,) = list(_encode.frame_batches(frame.iloc[[0, 2]], 10))
    assert with_arrow[0].media_type == JSON and arrow.media_type == ARROW
    assert orjson.loads(arrow.as_json().data) == orjson.loads(with_arrow[0].data)


def test_ingest_result_cursors_span_batches_stored_out_of_order() -> None:
    """With two requests in flight a later batch may be committed first: the result's first
    and last cursors are the lowest and highest over every batch."""
    from streamgauge.client import IngestResult

    r = IngestResult()
    r.add({"accepted": 5, "duplicates": 0, "first_cursor": 1, "last_cursor": 5}, 5)
    r.add({"accepted": 5, "duplicates": 0, "first_cursor": 11, "last_cursor": 15}, 5)
    r.add({"accepted": 5, "duplicates": 0, "first_cursor": 6, "last_cursor": 10}, 5)
    r.add({"accepted": 0, "duplicates": 5, "first_cursor": None, "last_cursor": None}, 5)
    assert (r.first_cursor, r.last_cursor, r.accepted, r.duplicates) == (1, 15, 15, 5)
    assert (r.rows, r.batches) == (20, 4)
