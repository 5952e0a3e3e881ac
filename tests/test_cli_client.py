"""``streamgauge tail | import | export`` as a user runs them, against a real server."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from tests.conftest import Server, make_station, rows
from tests.test_cli import clean_env

EXE = [sys.executable, "-m", "streamgauge"]


def run(server: Server, *args: str, env_creds: bool = True) -> subprocess.CompletedProcess[bytes]:
    extra = {"STREAMGAUGE_URL": server.url, "STREAMGAUGE_TOKEN": server.token} if env_creds else {}
    return subprocess.run([*EXE, *args], capture_output=True, env=clean_env(**extra), timeout=300)


@pytest.fixture
def station(server: Server) -> Server:
    with server.client() as http:
        make_station(http)
    return server


def _csv(path: Path, n: int) -> Path:
    lines = ["device,variable,time,value"]
    lines += [f"{r['device']},{r['variable']},{r['time']},{r['value']}" for r in rows(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_twice_second_time_all_duplicates(station: Server, tmp_path: Path) -> None:
    path = _csv(tmp_path / "obs.csv", 2500)
    first = run(station, "import", "p1", str(path), "--batch-size", "1000")
    assert first.returncode == 0, first.stderr
    assert b"2500 accepted, 0 duplicates" in first.stdout
    second = run(station, "import", "p1", str(path))
    assert second.returncode == 0, second.stderr
    assert b"0 accepted, 2500 duplicates" in second.stdout


def test_import_error_names_the_row_of_the_file(station: Server, tmp_path: Path) -> None:
    """A bad row in the third batch: the error names its row of the file (0 for the first data
    row) and says which rows were stored."""
    path = _csv(tmp_path / "obs.csv", 3500)
    lines = path.read_text().splitlines()
    lines[1 + 2345] = lines[1 + 2345].replace("d1,", "nope,", 1)
    path.write_text("\n".join(lines) + "\n")
    done = run(station, "import", "p1", str(path), "--batch-size", "1000")
    assert done.returncode == 1
    err = b" ".join(done.stderr.split())  # rich wraps long lines
    assert b"index=2345 field=device: unknown device 'nope'" in err, done.stderr
    assert b"in the batch from row 2000; the rows before it are stored" in err
    assert b"500 rows of the batches after it were stored too" in err  # two in flight
    assert b"the row of obs.csv, 0 being its first data row" in err
    fixed = path.read_text().replace("nope,", "d1,")
    path.write_text(fixed)
    done = run(station, "import", "p1", str(path), "--batch-size", "1000")
    assert done.returncode == 0, done.stderr
    assert b"1000 accepted, 2500 duplicates" in done.stdout


def test_import_ndjson_and_parquet_with_url_and_token_options(
    station: Server, tmp_path: Path
) -> None:
    nd = tmp_path / "obs.ndjson"
    nd.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows(10)))
    creds = ["--url", station.url, "--token", station.token]
    done = run(station, "import", "p1", str(nd), *creds, env_creds=False)
    assert done.returncode == 0 and b"10 accepted" in done.stdout, done.stderr
    out = tmp_path / "back.parquet"
    done = run(station, "export", "p1", "--format", "parquet", "--out", str(out))
    assert done.returncode == 0, done.stderr
    with station.client() as http:
        http.delete("/api/v1/projects/p1")
        make_station(http)
    done = run(station, "import", "p1", str(out))
    assert done.returncode == 0 and b"10 accepted" in done.stdout, done.stderr


def test_import_refuses_a_file_it_cannot_read(station: Server, tmp_path: Path) -> None:
    bad = tmp_path / "obs.xlsx"
    bad.write_text("x")
    done = run(station, "import", "p1", str(bad))
    assert done.returncode == 1 and b".csv" in done.stderr
    wrong = tmp_path / "bad.csv"
    wrong.write_text("device,value\nd0,1\n")
    done = run(station, "import", "p1", str(wrong))
    assert done.returncode == 1 and b"missing column" in done.stderr


def test_tail_count_exits_after_n(station: Server) -> None:
    with station.client() as http:
        http.post("/api/v1/projects/p1/observations", json=rows(20))
    done = run(station, "tail", "p1", "--since", "0", "--count", "5", "--device", "d1")
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(x) for x in done.stdout.splitlines()]
    assert [x["cursor"] for x in lines] == [2, 4, 6, 8, 10]
    assert all(x["device"] == "d1" for x in lines)
    done = run(station, "tail", "p1", "--since", "0", "--count", "2", "--format", "csv")
    assert done.stdout.decode().splitlines()[0] == "cursor,device,variable,set,time,value,qc"
    assert len(done.stdout.splitlines()) == 3
    done = run(station, "tail", "p1", "--since", "0", "--count", "3", "--format", "table")
    assert done.returncode == 0 and b"d0" in done.stdout, done.stderr


def test_tail_of_a_missing_project_says_so(station: Server) -> None:
    done = run(station, "tail", "nope", "--count", "1")
    assert done.returncode == 1 and b"no project 'nope'" in done.stderr


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet"])
def test_export_each_format(station: Server, tmp_path: Path, fmt: str) -> None:
    with station.client() as http:
        http.post("/api/v1/projects/p1/observations", json=rows(30))
    out = tmp_path / f"obs.{fmt}"
    done = run(
        station, "export", "p1", "--format", fmt, "--out", str(out), "--variable", "air_temp"
    )
    assert done.returncode == 0, done.stderr
    if fmt == "parquet":
        table = pq.read_table(out)
        assert table.num_rows == 16 and set(table.column("variable").to_pylist()) == {"air_temp"}
        assert table.schema.field("time").type.tz == "UTC"
    elif fmt == "csv":
        lines = out.read_text().splitlines()
        assert lines[0] == "cursor,device,variable,set,time,value,qc" and len(lines) == 17
    else:
        got = [orjson.loads(x) for x in out.read_bytes().splitlines()]
        assert len(got) == 16 and got[0]["time"] == "2023-11-14T22:13:20Z"
    stdout = run(station, "export", "p1", "--format", fmt, "--variable", "air_temp")
    assert stdout.stdout == out.read_bytes() or fmt == "parquet"
    if fmt == "parquet":
        assert pq.read_table(io.BytesIO(stdout.stdout)).num_rows == 16


def test_export_stations_as_geojson(station: Server) -> None:
    done = run(station, "export", "p1", "--stations", "--format", "geojson")
    assert done.returncode == 0, done.stderr
    geo = orjson.loads(done.stdout)
    assert geo["type"] == "FeatureCollection"
    (feature,) = geo["features"]
    assert feature["geometry"] == {"type": "Point", "coordinates": [-111.9, 40.7]}
    assert feature["properties"]["state"] == "UT" and feature["properties"]["id"] == "s1"


def test_import_shows_a_progress_bar_on_a_terminal(
    station: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On a terminal the import draws a progress bar counting the stored rows (on stderr),
    then prints its summary line."""
    import asyncio

    from rich.console import Console

    from streamgauge import cli_client
    from streamgauge.client import AsyncClient

    screen = io.StringIO()
    term = Console(file=screen, force_terminal=True, width=100)
    monkeypatch.setattr(cli_client, "console", term)
    path = _csv(tmp_path / "obs.csv", 2500)
    client = AsyncClient(station.url, token=station.token)
    asyncio.run(cli_client._import(client, "p1", path, 1000))
    assert "importing obs.csv" in screen.getvalue()
    assert "2,500 rows" in screen.getvalue()
    assert "2500 accepted, 0 duplicates, in 3 batches" in capsys.readouterr().out
