"""Columnar sources (CSV and Parquet files, Arrow tables, DataFrames) sent as Arrow IPC batches
against a real server: row-precise errors, repeats counted as duplicates, and the fallback to
JSON for a server that does not take Arrow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamgauge.client import AsyncClient, Client, Invalid
from streamgauge.client._encode import ARROW
from tests.conftest import Server, make_station, rows


@pytest.fixture
def station(server: Server) -> Server:
    with server.client() as http:
        make_station(http)
    return server


@pytest.fixture
def c(station: Server) -> Iterator[Client]:
    with Client(station.url, token=station.token) as client:
        yield client


def _csv(path: Path, data: list[dict[str, object]]) -> Path:
    lines = ["device,variable,time,value"]
    lines += [f"{r['device']},{r['variable']},{r['time']},{r['value']}" for r in data]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("in_flight", [1, 2])
def test_a_bad_row_in_batch_three_names_its_row_of_the_file(
    station: Server, tmp_path: Path, in_flight: int
) -> None:
    data = rows(3500)
    data[2345]["device"] = "nope"
    path = _csv(tmp_path / "obs.csv", data)
    with Client(station.url, token=station.token, in_flight=in_flight) as c:
        with pytest.raises(Invalid) as err:
            c.ingest_file("p1", path, batch_size=1000)
        assert c.aio.columnar is None  # Arrow all along (no fallback)
        (detail,) = err.value.details
        assert (detail["index"], detail["field"]) == (2345, "device")
        assert "unknown device 'nope'" in detail["reason"]
        assert "in the batch from row 2000" in err.value.message
        assert err.value.extra["stored_rows"] == 2000
        after = err.value.extra["stored_after"]
        # one in flight: nothing after the refused batch was sent; two: the next batch was
        # (and stored, being valid)
        assert after == (0 if in_flight == 1 else 500)
        assert len(list(c.history("p1"))) == 2000 + after


def test_a_refused_first_batch_leaves_nothing_stored(c: Client, tmp_path: Path) -> None:
    """The first batch goes alone (two in flight only after it is stored)."""
    data = rows(2500)
    data[10]["time"] = "yesterday"
    with pytest.raises(Invalid) as err:
        c.ingest_file("p1", _csv(tmp_path / "obs.csv", data), batch_size=1000)
    assert err.value.details[0]["index"] == 10
    assert (err.value.extra["stored_rows"], err.value.extra["stored_after"]) == (0, 0)
    assert list(c.history("p1")) == []


def test_the_same_file_twice_is_all_duplicates(c: Client, tmp_path: Path) -> None:
    csv_path = _csv(tmp_path / "obs.csv", rows(2500))
    first = c.ingest_file("p1", csv_path, batch_size=1000)
    assert (first.rows, first.accepted, first.duplicates, first.batches) == (2500, 2500, 0, 3)
    assert (first.first_cursor, first.last_cursor) == (1, 2500)
    again = c.ingest_file("p1", csv_path, batch_size=1000)
    assert (again.accepted, again.duplicates) == (0, 2500)
    parquet = tmp_path / "obs.parquet"
    pq.write_table(pa.Table.from_pylist(rows(2500)), parquet)
    assert c.ingest_file("p1", parquet, batch_size=700).duplicates == 2500
    stored = list(c.history("p1"))
    assert [o.value for o in stored] == [r["value"] for r in rows(2500)]


def test_arrow_tables_batches_and_readers(c: Client) -> None:
    table = pa.Table.from_pylist(rows(30))
    times = pa.array([r["time"] for r in rows(30)], pa.int64()).cast(pa.timestamp("ms"))
    naive = table.set_column(2, "time", times)  # a naive timestamp is read as UTC
    assert c.ingest("p1", table, batch_size=7).accepted == 30
    assert c.ingest("p1", naive, batch_size=7).duplicates == 30
    assert c.ingest("p1", table.to_batches()[0]).duplicates == 30
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=4))
    result = c.ingest("p1", reader, batch_size=9)
    assert (result.duplicates, result.batches) == (30, 4)


class OldServer(httpx.AsyncBaseTransport):
    """A server from before columnar ingest: Arrow bodies refused (415, or 400 naming the
    content-type header as such servers did); the rest passes to the real server."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.inner = httpx.AsyncHTTPTransport()
        self.refused = 0
        self.types: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        media = request.headers.get("content-type", "")
        if request.method == "POST":
            self.types.append(media)
        if media == ARROW:
            self.refused += 1
            detail = {"in": "header", "field": "content-type", "reason": "use JSON"}
            body = {
                "error": {
                    "status": self.status,
                    "code": "bad_request",
                    "message": f"unsupported content type {media!r}",
                    "details": [detail],
                }
            }
            return httpx.Response(self.status, content=orjson.dumps(body))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("status", [415, 400])
async def test_a_server_without_arrow_gets_json(
    station: Server, tmp_path: Path, status: int
) -> None:
    data = rows(2500)
    data[2222]["variable"] = "nope"
    path = _csv(tmp_path / "obs.csv", data)
    old = OldServer(status)
    async with AsyncClient(station.url, token=station.token, transport=old) as c:
        with pytest.raises(Invalid) as err:  # row-precise after the fallback too
            await c.ingest_file("p1", path, batch_size=1000)
        assert err.value.details[0]["index"] == 2222
        assert c.columnar is False and old.refused == 1
        data[2222]["variable"] = "air_temp"
        result = await c.ingest_file("p1", _csv(path, data), batch_size=1000)
        assert (result.accepted, result.duplicates) == (500, 2000)
    assert old.refused == 1  # once refused, JSON from then on
    assert set(old.types) == {ARROW, "application/json"}
