"""Pure parts of the client: checkpoint files, backoff, ingest encoding, errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamgauge.client import Invalid, NotFound, Observation, ServerError
from streamgauge.client._backoff import MAX_DELAY_S, backoff
from streamgauge.client._checkpoint import Checkpoint
from streamgauge.client._encode import file_batches, row_batches
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


def test_csv_file_batches_send_digit_times_as_integers(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text(
        "device,variable,time,value,set\nd0,t,1700000000000,1.5,2\nd0,t,1700000001000,,\n"
    )
    (body,) = list(file_batches(path, 10))
    rows = orjson.loads(body.data)
    assert rows[0] == {
        "device": "d0",
        "variable": "t",
        "time": 1700000000000,
        "value": 1.5,
        "set": 2,
    }
    assert rows[1] == {"device": "d0", "variable": "t", "time": 1700000001000, "value": None}


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
