"""Live streams against a real server on loopback: NDJSON and SSE, filters, keepalives, resume
exactly once across reconnects under continuous ingest, slow consumers, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from streamgauge.core.hub import STACK_MIN
from streamgauge.faces.limits import ChunkWriter
from tests.conftest import MS, Server, make_station, rows, start_server

STORES = ["sqlite", "postgresql"]  # every test here runs on both storage backends

STREAM = "/api/v1/projects/p1/stream"


def lines(resp: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in resp.iter_lines():
        if line.strip():
            yield orjson.loads(line)


def post(client: httpx.Client, batch: list[dict[str, Any]]) -> dict[str, Any]:
    r = client.post("/api/v1/projects/p1/observations", json=batch)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def collect(
    server: Server, params: dict[str, Any], count: int, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Open a stream, then run ``count`` observations through it (keepalives are not counted)."""
    got: list[dict[str, Any]] = []
    with (
        server.client(timeout=httpx.Timeout(10, read=5)) as c,
        c.stream("GET", STREAM, params=params, headers=headers or {}) as resp,
    ):
        assert resp.status_code == 200
        seen = 0
        for obj in lines(resp):
            got.append(obj)
            seen += "cursor" in obj
            if seen >= count:
                break
    return got


def test_ndjson_live_then_history_shape_matches(server: Server, client: httpx.Client) -> None:
    make_station(client)
    out: list[dict[str, Any]] = []
    ready = threading.Event()

    def consume() -> None:
        with server.client() as c, c.stream("GET", STREAM) as resp:
            assert resp.headers["content-type"].startswith("application/x-ndjson")
            assert resp.headers["cache-control"] == "no-store"
            ready.set()
            for obj in lines(resp):
                out.append(obj)
                if sum("cursor" in o for o in out) == 4:
                    return

    t = threading.Thread(target=consume)
    t.start()
    ready.wait(5)
    # the subscription registers right after the headers; wait until the hub has it
    while server.engine.hub.subscribers == 0:
        ready.wait(MS)
    ack = post(client, rows(4))
    t.join(10)
    data = [o for o in out if "cursor" in o]
    assert [o["cursor"] for o in data] == list(range(ack["first_cursor"], ack["last_cursor"] + 1))
    hist = client.get("/api/v1/projects/p1/observations").json()["observations"]
    assert sorted(hist, key=lambda o: o["cursor"]) == data
    assert set(data[0]) == {"cursor", "device", "variable", "set", "time", "value", "qc"}


def test_keepalives_carry_no_cursor(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "d", keepalive_seconds=50 * MS)
    try:
        with srv.client() as c:
            make_station(c)
            with c.stream("GET", STREAM) as resp:
                it = lines(resp)
                opening, first = next(it), next(it)
        assert opening["units"]["temp"] == "Celsius"  # the opening line states the units
        assert "cursor" not in first and "keepalive" in first
    finally:
        srv.stop()


def test_sse_ids_are_cursors_and_last_event_id_resumes(
    server: Server, client: httpx.Client
) -> None:
    make_station(client)
    ack = post(client, rows(6))
    with client.stream(
        "GET", STREAM, params={"since": "0"}, headers={"Accept": "text/event-stream"}
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events: list[tuple[int, dict[str, Any]]] = []
        current_id = None
        for line in resp.iter_lines():
            if line.startswith("id: "):
                current_id = int(line[4:])
            elif line.startswith("data: ") and current_id is not None:
                events.append((current_id, orjson.loads(line[6:])))
                if len(events) == 3:
                    break
    assert [i for i, _ in events] == [o["cursor"] for _, o in events] == [1, 2, 3]
    with client.stream(
        "GET", STREAM, headers={"Accept": "text/event-stream", "Last-Event-ID": "3"}
    ) as resp:
        ids = []
        for line in resp.iter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
                if len(ids) == 3:
                    break
    assert ids == [4, 5, 6] and ack["last_cursor"] == 6


@pytest.mark.parametrize(
    ("params", "expect"),
    [
        ({"device": "d1"}, lambda o: o["device"] == "d1"),
        ({"device": ["d0", "d2"]}, lambda o: o["device"] in ("d0", "d2")),
        ({"variable": "wind_speed"}, lambda o: o["variable"] == "wind_speed"),
        ({"device_type": "buoy"}, lambda o: o["device"] in ("d0", "d2")),
        ({"label": "parity=odd"}, lambda o: o["device"] in ("d1", "d3")),
        ({"label": "n"}, lambda o: True),
        (
            {"label": ["n=1", "n=2"], "variable": "air_temp"},
            lambda o: o["device"] in ("d1", "d2") and o["variable"] == "air_temp",
        ),
    ],
)
def test_filters(server: Server, client: httpx.Client, params: dict[str, Any], expect: Any) -> None:
    make_station(client, devices=4)
    batch = rows(40, devices=4)
    post(client, batch)
    hist = client.get("/api/v1/projects/p1/observations", params={"limit": 1000}).json()
    wanted = sorted(o["cursor"] for o in hist["observations"] if expect(o))
    got = collect(server, {**params, "since": 0}, len(wanted))
    assert [o["cursor"] for o in got if "cursor" in o] == wanted
    assert all(expect(o) for o in got if "cursor" in o)


def test_resume_exactly_once_under_continuous_ingest(server: Server, client: httpx.Client) -> None:
    """Disconnect after every few observations and resume from the last cursor seen, while a
    producer keeps ingesting: every matching cursor arrives exactly once."""
    make_station(client, devices=4)
    stop = threading.Event()
    start = 1_700_000_000_000

    def produce() -> None:
        k = 0
        with server.client() as c:
            while not stop.is_set() and k < 300:
                post(c, rows(20, start_ms=start + k * 20_000, devices=4))
                k += 1

    producer = threading.Thread(target=produce)
    producer.start()
    seen: list[int] = []
    cursor = 0
    params: dict[str, Any] = {"variable": "air_temp", "device": ["d1", "d2", "d3"]}
    try:
        for _ in range(25):
            got = collect(server, {**params, "since": cursor}, 7)
            data = [o["cursor"] for o in got if "cursor" in o]
            seen += data
            cursor = data[-1]
    finally:
        stop.set()
        producer.join(30)
    # the rest, up to the head, after ingest stopped
    head = client.get("/healthz").json()["head"]
    hist = [
        o
        for o in client.get(
            "/api/v1/projects/p1/observations", params={"limit": 100000, **params}
        ).json()["observations"]
    ]
    expected_tail = [
        o["cursor"] for o in sorted(hist, key=lambda o: o["cursor"]) if o["cursor"] > cursor
    ]
    if expected_tail:
        got = collect(server, {**params, "since": cursor}, len(expected_tail))
        seen += [o["cursor"] for o in got if "cursor" in o]
    expected = sorted(o["cursor"] for o in hist)
    assert len(seen) == len(set(seen)), "duplicates delivered"
    assert seen == expected, "missing or out of order"
    assert seen[-1] <= head


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
def test_live_rounds_are_written_directly_and_exactly(
    server: Server, client: httpx.Client, accept: str
) -> None:
    """A live stream on uvicorn's httptools protocol is written by the fan-out itself (the
    chunk writer in the scope, ``faces/limits.ChunkWriter``): the rows arrive once each, in
    order, in the framing asked, and the hub counts them as written directly."""
    make_station(client, devices=2)
    before = server.engine.hub.direct_items
    got: list[int] = []
    ready = threading.Event()

    def consume() -> None:
        with (
            server.client(timeout=httpx.Timeout(10, read=10)) as c,
            c.stream("GET", STREAM, headers={"Accept": accept}) as resp,
        ):
            assert resp.status_code == 200
            assert resp.headers["transfer-encoding"] == "chunked"
            for line in resp.iter_lines():
                ready.set()
                text = line.removeprefix("data: ").strip()
                if not text.startswith("{"):
                    continue
                obj = orjson.loads(text)
                if "cursor" in obj and "value" in obj:
                    got.append(obj["cursor"])
                    if len(got) >= 200:
                        return

    t = threading.Thread(target=consume)
    t.start()
    assert ready.wait(10)
    wait_live(server)
    cursors: list[int] = []
    for k in range(10):
        reply = post(client, rows(20, start_ms=1_700_000_000_000 + k * 20_000, devices=2))
        cursors += list(range(reply["first_cursor"], reply["last_cursor"] + 1))
    t.join(30)
    assert got == cursors
    assert server.engine.hub.direct_items > before


def test_a_stacked_round_is_written_in_one_call_and_exactly(
    server: Server, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enough live streams for a stacked round (``STACK_MIN``; NDJSON and SSE, some filtered)
    are written by the native round delivery (``deliver_chunks``: every ready stream's chunk
    made in one call): each gets its rows once, in order."""
    make_station(client, devices=2)
    written: list[int] = []
    original = ChunkWriter.write_chunk

    def counted(self: ChunkWriter, chunk: bytes) -> None:
        written.append(len(chunk))
        original(self, chunk)

    monkeypatch.setattr(ChunkWriter, "write_chunk", counted)
    streams = STACK_MIN + 2
    got: list[list[int]] = [[] for _ in range(streams)]
    one = [k % 3 == 0 for k in range(streams)]  # every third: device d1 only
    ready = threading.Barrier(streams + 1, timeout=20)

    def consume(k: int) -> None:
        accept = "text/event-stream" if k % 2 else "application/x-ndjson"
        params = {"device": "d1"} if one[k] else {}
        expected = 100 if one[k] else 200
        with (
            server.client(timeout=httpx.Timeout(10, read=10)) as c,
            c.stream("GET", STREAM, params=params, headers={"Accept": accept}) as resp,
        ):
            assert resp.status_code == 200
            lines = resp.iter_lines()
            next(lines)  # the opening line: the stream is subscribed
            ready.wait()
            for line in lines:
                text = line.removeprefix("data: ").strip()
                if text.startswith("{"):
                    obj = orjson.loads(text)
                    if "cursor" in obj and "value" in obj:
                        got[k].append(obj["cursor"])
                        if len(got[k]) >= expected:
                            return

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    ready.wait()
    deadline = time.monotonic() + 10
    while sum(s.sink is not None for subs in server.engine.hub._subs.values() for s in subs) < (
        streams
    ):
        assert time.monotonic() < deadline, "the streams never went live"
        time.sleep(0.01)
    everything: list[int] = []
    of_d1: list[int] = []
    for k in range(10):
        batch = rows(20, start_ms=1_700_000_000_000 + k * 20_000, devices=2)
        reply = post(client, batch)
        cursors = range(reply["first_cursor"], reply["last_cursor"] + 1)
        everything += cursors
        of_d1 += [c for row, c in zip(batch, cursors, strict=True) if row["device"] == "d1"]
    for t in threads:
        t.join(30)
    for k in range(streams):
        assert got[k] == (of_d1 if one[k] else everything), k
    assert written  # the round delivery wrote


def wait_live(server: Server) -> None:
    """Until the hub holds a subscriber with a sink (the stream is live, nothing queued)."""
    deadline = time.monotonic() + 10
    while not any(
        sub.sink is not None for subs in server.engine.hub._subs.values() for sub in subs
    ):
        assert time.monotonic() < deadline, "the stream never went live"
        time.sleep(0.01)


def test_slow_consumer_is_closed_with_its_resume_cursor(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "d", subscriber_queue_bytes=64 * 1024)
    try:
        with srv.client(timeout=httpx.Timeout(30, read=10)) as c:
            make_station(c, devices=4)
            with c.stream("GET", STREAM) as resp:
                while srv.engine.hub.subscribers == 0:
                    threading.Event().wait(MS)
                # do not read while ~25 MB of frames are produced: socket buffers fill up,
                # then the subscriber's queue overflows
                with srv.client() as p:
                    for k in range(20):
                        post(
                            p, rows(10_000, start_ms=1_600_000_000_000 + k * 10_000_000, devices=4)
                        )
                got = list(lines(resp))
            closed = got[-1]["closed"]
            data = [o["cursor"] for o in got if "cursor" in o]
            assert "slow consumer" in closed["reason"]
            assert closed["resume"] == data[-1]
            assert data == list(range(1, data[-1] + 1))
            rest = collect(srv, {"since": closed["resume"]}, 200_000 - closed["resume"])
            assert [o["cursor"] for o in rest if "cursor" in o] == list(
                range(closed["resume"] + 1, 200_001)
            )
    finally:
        srv.stop()


def test_bad_cursors(server: Server, client: httpx.Client) -> None:
    make_station(client)
    post(client, rows(2))
    for bad in ("abc", "-1", "99", "1.5"):
        r = client.get(STREAM, params={"since": bad})
        assert r.status_code == 400, bad
        assert r.json()["error"]["details"][0]["field"] == "since"


def test_shutdown_closes_streams_with_resume_cursor(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "d")
    with srv.client() as c:
        make_station(c)
        post(c, rows(3))
        with c.stream("GET", STREAM, params={"since": 0}) as resp:
            it = (o for o in lines(resp) if "units" not in o)
            first = [next(it) for _ in range(3)]
            threading.Thread(target=srv.stop).start()
            rest = list(it)
    assert [o["cursor"] for o in first] == [1, 2, 3]
    assert rest[-1]["closed"] == {"reason": "server shutting down", "resume": 3}


def test_resume_after_restart(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "d")
    with srv.client() as c:
        make_station(c)
        post(c, rows(5))
    srv.stop()
    srv = start_server(tmp_path / "d")
    try:
        got = collect(srv, {"since": 2}, 3)
        assert [o["cursor"] for o in got if "cursor" in o] == [3, 4, 5]
        with srv.client() as c:
            assert post(c, rows(1, start_ms=1_750_000_000_000))["first_cursor"] == 6
    finally:
        srv.stop()


def test_units_are_warmed_before_the_stream_is_live(server: Server, client: httpx.Client) -> None:
    """A stream in English units has its conversions made (pint's registry built once per
    process) before its response starts: a client that has its headers is live, and the
    build must not hold up the fan-out round or the loop that serves it (``units.warm``)."""
    from streamgauge.core import units

    make_station(client)
    units._WARM.discard(units.ENGLISH)
    with (
        server.client(timeout=httpx.Timeout(10, read=5)) as c,
        c.stream("GET", STREAM, params={"units": "english"}) as resp,
    ):
        assert resp.status_code == 200
        assert units.ENGLISH in units._WARM  # before a byte of the body was read
        first = next(lines(resp))
        assert first["units"]["temp"] == "Fahrenheit"
