"""``streamgauge serve --workers 2`` as a real process: the writer and one fan-out worker on one
port. Streams land on both (``X-Streamgauge-Worker``); every stream gets every matching
observation exactly once in cursor order; a stream resumes on the other process with nothing
lost or doubled; metadata made after the worker started reaches it; a worker killed with
SIGKILL is restarted and its clients resume with nothing acknowledged lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import free_port, make_station, rows

TOKEN = "workers-admin-token"
WAIT = 30.0  # the longest a poll waits before the test fails (never the figure checked)
HEADER = "x-streamgauge-worker"


@dataclass
class Served:
    data: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data.parent / "serve.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout
        )

    def start(self, workers: int) -> None:
        env = {**os.environ, "STREAMGAUGE_ADMIN_TOKEN": TOKEN, "STREAMGAUGE_WORKERS": "1"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streamgauge",
                    "serve",
                    "--port",
                    str(self.port),
                    "--data",
                    str(self.data),
                    "--workers",
                    str(workers),
                ],
                env=env,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        """The fan-out worker processes (children of the writer running streamgauge.workers)."""
        assert self.proc is not None
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and b"streamgauge.workers" in cmd:
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Reader:
    """A native NDJSON stream read on a thread: which process serves it, and the cursors of
    the observations in the order they arrived."""

    def __init__(self, served: Served, since: int | None, **params: str) -> None:
        self.cursors: list[int] = []
        self.worker: str | None = None
        self.closed: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._open = threading.Event()
        query = dict(params)
        if since is not None:
            query["since"] = str(since)
        self._thread = threading.Thread(target=self._run, args=(served, query), daemon=True)
        self._thread.start()
        assert self._open.wait(WAIT), "the stream did not open"
        assert self.error is None, repr(self.error)

    def _run(self, served: Served, query: dict[str, str]) -> None:
        try:
            with (
                served.client(timeout=60) as c,
                c.stream("GET", "/api/v1/projects/p1/stream", params=query) as s,
            ):
                assert s.status_code == 200, s.read()
                self.worker = s.headers.get(HEADER)
                self._open.set()
                for line in s.iter_lines():
                    if self._stop.is_set():
                        return
                    if not line:
                        continue
                    obj = orjson.loads(line)
                    if "cursor" in obj and "value" in obj:
                        self.cursors.append(obj["cursor"])
                    elif "closed" in obj or "resume" in obj:
                        self.closed = obj
        except BaseException as e:  # noqa: BLE001 - reported by wait_for
            self.error = e
        finally:
            self._open.set()
            self.ended.set()

    @property
    def last(self) -> int | None:
        return self.cursors[-1] if self.cursors else None

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while len(self.cursors) < count:
            assert self.error is None, repr(self.error)
            assert not self.ended.is_set(), f"the stream ended: {self.closed}"
            assert time.monotonic() < deadline, f"{len(self.cursors)} of {count} arrived"
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()


def open_on(served: Served, worker: str, since: int | None, **params: str) -> Reader:
    """A stream served by process ``worker`` (the kernel picks: open until it does)."""
    deadline = time.monotonic() + WAIT
    while True:
        r = Reader(served, since, **params)
        if r.worker == worker:
            return r
        r.close()
        assert time.monotonic() < deadline, f"no stream landed on process {worker}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path / "data", free_port())
    s.start(workers=2)
    try:
        with s.client() as c:
            make_station(c)
        open_on(s, "1", None).close()  # the worker is up and serving
        yield s
    finally:
        s.stop()


def ingest(served: Served, k: int, n: int = 100) -> tuple[int, int, list[dict[str, Any]]]:
    """Batch ``k`` of ``n`` new rows: (first cursor, last cursor, the rows)."""
    body = rows(n, start_ms=1_700_000_000_000 + k * 1_000_000)
    with served.client() as c:
        r = c.post("/api/v1/projects/p1/observations", json=body)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["accepted"] == n, reply
    return reply["first_cursor"], reply["last_cursor"], body


def test_streams_on_both_processes_get_every_match_once_in_order(served: Served) -> None:
    readers = [Reader(served, None) for _ in range(10)]
    filtered = [Reader(served, None, variable="air_temp") for _ in range(10)]
    everyone = readers + filtered
    workers = {r.worker for r in everyone}
    assert workers == {"0", "1"}, workers
    every: list[int] = []
    air: list[int] = []
    for k in range(6):
        first, last, body = ingest(served, k)
        every += list(range(first, last + 1))
        air += [first + i for i, row in enumerate(body) if row["variable"] == "air_temp"]
    for r in readers:
        r.wait_for(len(every))
    for r in filtered:
        r.wait_for(len(air))
    time.sleep(0.2)  # nothing more may come
    for r in readers:
        assert r.cursors == every, (r.worker, r.cursors[:5])
    for r in filtered:
        assert r.cursors == air, (r.worker, r.cursors[:5])
    for r in everyone:
        r.close()


@pytest.mark.parametrize(("first", "then"), [("1", "0"), ("0", "1")])
def test_a_stream_resumes_on_the_other_process(served: Served, first: str, then: str) -> None:
    a = open_on(served, first, 0)
    lo, hi, _ = ingest(served, 0)
    a.wait_for(hi - lo + 1)
    a.close()
    resume = a.cursors[49]  # part way: the rest comes from the log, then live
    b = open_on(served, then, resume)
    lo2, hi2, _ = ingest(served, 1)
    expected = list(range(resume + 1, hi + 1)) + list(range(lo2, hi2 + 1))
    b.wait_for(len(expected))
    time.sleep(0.2)
    assert b.cursors == expected
    b.close()


def test_metadata_made_after_the_worker_started_is_streamed(served: Served) -> None:
    with served.client() as c:
        r = c.post(
            "/api/v1/projects/p1/devices",
            json=[{"id": "late", "site": "s1", "variables": [{"name": "air_temp"}]}],
        )
        assert r.status_code == 201, r.text
    made = time.monotonic()
    # A stream on the worker that names the new device: refused until the worker knows it.
    deadline = made + WAIT
    while True:
        reader = Reader(served, None, device="late")
        if reader.worker == "1" and reader.error is None:
            break
        reader.close()
        assert time.monotonic() < deadline
    seen_after = time.monotonic() - made
    print(f"a device made on the writer streamed on the worker after {seen_after * 1000:.0f} ms")
    with served.client() as c:
        r = c.post(
            "/api/v1/projects/p1/observations",
            json=[
                {"device": "late", "variable": "air_temp", "time": 1_750_000_000_000, "value": 1}
            ],
        )
        assert r.status_code == 200, r.text
        cursor = r.json()["first_cursor"]
    reader.wait_for(1)
    assert reader.cursors == [cursor]
    reader.close()


def test_a_killed_worker_is_restarted_and_its_streams_resume(served: Served) -> None:
    on_worker = [open_on(served, "1", 0) for _ in range(3)]
    (pid,) = served.worker_pids()
    acked: list[int] = []
    stop = threading.Event()

    def produce() -> None:
        k = 0
        while not stop.is_set():
            lo, hi, _ = ingest(served, k, 50)
            acked.extend(range(lo, hi + 1))
            k += 1
            time.sleep(0.01)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        deadline = time.monotonic() + WAIT
        while len(acked) < 500:
            assert time.monotonic() < deadline and producer.is_alive()
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        for r in on_worker:
            assert r.ended.wait(WAIT), "a stream on the killed worker stayed open"
        # Each client resumes from its last cursor, on whichever process the kernel picks.
        resumed = [Reader(served, r.last or 0) for r in on_worker]
        time.sleep(0.3)
    finally:
        stop.set()
        producer.join(WAIT)
    for before, after in zip(on_worker, resumed, strict=True):
        after.wait_for(len(acked) - len(before.cursors))
        time.sleep(0.1)
        assert before.cursors + after.cursors == acked
        after.close()
    deadline = time.monotonic() + WAIT
    while not served.worker_pids() or served.worker_pids() == [pid]:
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.05)
    open_on(served, "1", 0).close()  # the new worker serves streams


def test_a_restart_starts_its_worker_before_the_app_and_both_serve(served: Served) -> None:
    """On an existing database ``serve`` starts its workers before it imports the app
    (``workers/spawn.py``): the restarted writer adopts them, relays to them from its first
    commit, and a stream resumed on either process gets the rows from before the restart, then
    the new ones, each once; the latest values and history answer for both."""
    lo, hi, _ = ingest(served, 0)
    served.stop()
    served.start(workers=2)
    assert len(served.worker_pids()) == 1
    readers = [open_on(served, "1", lo + 9), open_on(served, "0", lo + 9)]
    lo2, hi2, body = ingest(served, 1)
    expected = list(range(lo + 10, hi + 1)) + list(range(lo2, hi2 + 1))
    for r in readers:
        r.wait_for(len(expected))
    time.sleep(0.2)
    for r in readers:
        assert r.cursors == expected, (r.worker, r.cursors[:5])
        r.close()
    newest = {(row["device"], row["variable"]): row["value"] for row in body}
    with served.client() as c:
        r = c.get("/api/v1/projects/p1/latest", params={"qc": "none"})
    assert r.status_code == 200, r.text
    assert {(o["device"], o["variable"]): o["value"] for o in r.json()["latest"]} == newest


def test_a_resume_older_than_retention_is_refused_by_a_worker_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention runs in the writer; a stream resumed on a worker from a removed cursor gets
    the same 410 with ``earliest`` (never silent loss)."""
    monkeypatch.setenv("STREAMGAUGE_RETENTION_INTERVAL_SECONDS", "0.5")
    s = Served(tmp_path / "data", free_port())
    s.start(workers=2)
    try:
        now = int(time.time() * 1000)
        with s.client() as c:
            make_station(c)
            open_on(s, "1", None).close()  # the worker is up, its gone cursors read at start
            old = [
                {"device": "d0", "variable": "air_temp", "time": now - 5 * 86_400_000 + i}
                | {"value": 1.0}
                for i in range(5)
            ]
            fresh = [{"device": "d0", "variable": "air_temp", "time": now - 1000, "value": 2.0}]
            for body in (old, fresh):
                r = c.post("/api/v1/projects/p1/observations", json=body)
                assert r.status_code == 200, r.text
            kept = r.json()["last_cursor"]
            assert c.patch("/api/v1/projects/p1", json={"retention_days": 1}).status_code == 200
            deadline = time.monotonic() + WAIT
            while (
                c.get("/api/v1/projects/p1/observations", params={"limit": 10}).json()[
                    "observations"
                ][0]["cursor"]
                != kept
            ):
                assert time.monotonic() < deadline, "retention never ran"
                time.sleep(0.1)
        seen: set[str] = set()
        deadline = time.monotonic() + WAIT
        while seen != {"0", "1"}:
            assert time.monotonic() < deadline, f"410s only from processes {seen}"
            with (
                s.client() as c,
                c.stream("GET", "/api/v1/projects/p1/stream", params={"since": 0}) as st,
            ):
                assert st.status_code == 410, st.read()
                assert orjson.loads(st.read())["error"]["earliest"] == kept
                seen.add(st.headers[HEADER])
    finally:
        s.stop()
