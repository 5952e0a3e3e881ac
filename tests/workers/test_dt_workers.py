"""The DT face with ``streamgauge serve --workers 2``: ``devices:stream`` (NDJSON and SSE) served
by the worker as by the writer, every event once in cursor order, resumed on the other process
with nothing lost or doubled; a DT account's ``enableBasicAuth`` changed on the writer holds on
the worker within a second (a ``DTAccountSettingsPut`` event over the local bus)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import orjson

from tests.test_dt_auth_security import basic, dt_account
from tests.workers.test_serve_workers import HEADER, TOKEN, WAIT, Served, ingest, served

__all__ = ["served"]  # the fixture

STREAM = "/v2/projects/p1/devices:stream"
T0 = 1_700_000_000_000


class DTReader:
    """A DT ``devices:stream`` read on a thread: which process serves it, and (SSE) each
    event's cursor (``id:``) or (NDJSON) each event's temperature, pings left out."""

    def __init__(self, served: Served, *, sse: bool, since: int | None = None) -> None:
        self.sse = sse
        self.cursors: list[int] = []
        self.values: list[float] = []
        self.worker: str | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._open = threading.Event()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        params: dict[str, str] = {}
        if sse:
            headers["Accept"] = "text/event-stream"
            if since is not None:
                headers["Last-Event-ID"] = str(since)
        elif since is not None:
            params["since"] = str(since)
        self._thread = threading.Thread(
            target=self._run, args=(served, headers, params), daemon=True
        )
        self._thread.start()
        assert self._open.wait(WAIT), "the stream did not open"
        assert self.error is None, repr(self.error)

    def _run(self, served: Served, headers: dict[str, str], params: dict[str, str]) -> None:
        try:
            with (
                httpx.Client(base_url=served.base, timeout=60) as c,
                c.stream("GET", STREAM, params=params, headers=headers) as s,
            ):
                assert s.status_code == 200, s.read()
                self.worker = s.headers.get(HEADER)
                self._open.set()
                current: int | None = None
                for line in s.iter_lines():
                    if self._stop.is_set():
                        return
                    if not line:
                        continue
                    if self.sse:
                        if line.startswith("id: "):
                            current = int(line[4:])
                        elif line.startswith("data: ") and current is not None:
                            self.cursors.append(current)
                            current = None
                        continue
                    event = orjson.loads(line).get("result", {}).get("event")
                    if event is not None and event.get("eventType") == "temperature":
                        self.values.append(event["data"]["temperature"]["value"])
        except BaseException as e:  # noqa: BLE001 - reported by wait
            self.error = e
        finally:
            self._open.set()

    def count(self) -> int:
        return len(self.cursors if self.sse else self.values)

    def wait(self, n: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.count() < n:
            assert self.error is None, repr(self.error)
            assert time.monotonic() < deadline, f"{self.count()} of {n} events arrived"
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()


def dt_on(served: Served, worker: str, *, sse: bool, since: int | None = None) -> DTReader:
    """A DT stream served by process ``worker`` (the kernel picks: open until it does)."""
    deadline = time.monotonic() + WAIT
    while True:
        r = DTReader(served, sse=sse, since=since)
        if r.worker == worker:
            return r
        r.close()
        assert time.monotonic() < deadline, f"no DT stream landed on process {worker}"


def thermometer(served: Served) -> None:
    with served.client() as c:
        r = c.post(
            "/api/v1/projects/p1/devices",
            json=[{"id": "th1", "site": "s1", "variables": [{"name": "temperature"}]}],
        )
        assert r.status_code == 201, r.text


def temperatures(served: Served, k: int, n: int = 10) -> tuple[list[int], list[float]]:
    """Batch ``k``: weather rows (no DT event) and ``n`` thermometer rows; the thermometer
    rows' cursors and values."""
    body: list[dict[str, Any]] = [
        {"device": "th1", "variable": "temperature", "time": T0 + k * 100_000 + i * 1000}
        | {"value": float(k * 100 + i) / 10}
        for i in range(n)
    ]
    first, _, _ = ingest(served, k, 40)  # weather rows between
    with served.client() as c:
        r = c.post("/api/v1/projects/p1/observations", json=body)
        assert r.status_code == 200, r.text
        lo = r.json()["first_cursor"]
    assert lo > first
    return list(range(lo, lo + n)), [row["value"] for row in body]


def test_dt_streams_on_both_processes_get_every_event_once_and_resume_on_the_other(
    served: Served,
) -> None:
    thermometer(served)
    live = [dt_on(served, w, sse=sse) for w in ("0", "1") for sse in (False, True)]
    cursors: list[int] = []
    values: list[float] = []
    for k in range(4):
        got = temperatures(served, k)
        cursors += got[0]
        values += got[1]
    for r in live:
        r.wait(len(cursors))
    time.sleep(0.2)  # nothing more may come
    for r in live:
        if r.sse:
            assert r.cursors == cursors, (r.worker, r.cursors[:5])
        else:
            assert r.values == values, (r.worker, r.values[:5])
        r.close()
    # A cursor one process handed out resumes on the other: the rest, then live.
    mid = cursors[14]
    for first, then in (("0", "1"), ("1", "0")):
        resumed = [dt_on(served, then, sse=sse, since=mid) for sse in (False, True)]
        assert all(r.worker == then for r in resumed), first
        more_cursors, more_values = temperatures(served, 10 + int(then))
        for r in resumed:
            want = len(cursors) - 15 + len(more_cursors)
            r.wait(want)
        time.sleep(0.2)
        sse_reader = next(r for r in resumed if r.sse)
        nd_reader = next(r for r in resumed if not r.sse)
        assert sse_reader.cursors == cursors[15:] + more_cursors
        assert nd_reader.values == values[15:] + more_values
        for r in resumed:
            r.close()
        cursors += more_cursors
        values += more_values


def until_on_worker(served: Served, headers: dict[str, str], status: int) -> float:
    """Seconds until a request served by the worker (process 1) answers ``status``: a
    native live stream, which the worker serves itself, authenticated with ``headers``."""
    started = time.monotonic()
    while True:
        with (
            httpx.Client(base_url=served.base, headers=headers, timeout=30) as c,
            c.stream("GET", "/api/v1/projects/p1/stream") as s,
        ):
            if s.headers.get(HEADER) == "1" and s.status_code == status:
                if status == 401:
                    assert b"enableBasicAuth" in s.read()
                return time.monotonic() - started
        assert time.monotonic() - started < WAIT, f"the worker never answered {status}"
        time.sleep(0.005)


def test_enable_basic_auth_changed_on_the_writer_holds_on_the_worker_at_once(
    served: Served,
) -> None:
    with served.client() as c:
        sa, key_id, secret = dt_account(c, basic_auth=True)
    creds = basic(key_id, secret)
    until_on_worker(served, creds, 200)
    for allow, status in ((False, 401), (True, 200)):
        with served.client() as c:
            r = c.patch(f"/v2/projects/p1/serviceaccounts/{sa}", json={"enableBasicAuth": allow})
            assert r.status_code == 200, r.text
        took = until_on_worker(served, creds, status)
        print(f"enableBasicAuth={allow} held on the worker after {took * 1000:.0f} ms")
        assert took < 1.0
