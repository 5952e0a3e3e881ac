"""``STREAMGAUGE_WRITER_SUBSCRIBERS=false`` with ``serve --workers 2``: the writer serves no
live subscriber. Every native stream, whichever process the kernel gave its connection to, is
served by the worker (the writer passes the ones it accepted), gets every observation once and
in order, and ingest (the writer's) answers as usual; with the push feed in workers, every feed
token is a worker's (``routing.owner``), so its sessions are served there too."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamgauge.workers import routing
from tests.conftest import free_port, make_station
from tests.test_feed import API, Feed, make_network
from tests.test_feed_resume import CASE
from tests.workers.test_serve_workers import HEADER, Reader, Served, ingest


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("STREAMGAUGE_WRITER_SUBSCRIBERS", "false")
    monkeypatch.setenv("STREAMGAUGE_WORKERS_FEED", "true")
    s = Served(tmp_path / "data", free_port())
    s.start(workers=2)
    try:
        with s.client() as c:
            make_station(c)
            make_network(c, "p2")
        yield s
    finally:
        s.stop()


def test_every_stream_is_served_by_the_worker_and_gets_every_row_once(served: Served) -> None:
    readers = [Reader(served, None) for _ in range(16)]
    assert {r.worker for r in readers} == {"1"}
    every: list[int] = []
    for k in range(4):
        first, last, _ = ingest(served, k)
        every += list(range(first, last + 1))
    for r in readers:
        r.wait_for(len(every))
    time.sleep(0.2)  # nothing more may come
    for r in readers:
        assert r.cursors == every, r.cursors[:5]
        r.close()
    with served.client() as c:
        r = c.get("/api/v1/projects/p1/observations", params={"limit": 5})
    assert r.status_code == 200, r.text
    assert r.headers.get(HEADER) == "0"


def test_feed_tokens_are_the_workers_only() -> None:
    for n in range(200):
        digest = hashlib.sha256(b"token-%d" % n).digest()
        assert routing.owner(digest, 2, writer=False) == 1
        assert routing.owner(digest, 3, writer=False) in (1, 2)
    owners = {routing.owner(hashlib.sha256(b"t%d" % n).digest(), 3, False) for n in range(50)}
    assert owners == {1, 2}
    stream = b"GET /api/v1/projects/p1/stream HTTP/1.1\r\n"
    assert routing.target(stream, 0, 3, feed=False, writer=False, turn=0) == 1
    assert routing.target(stream, 0, 3, feed=False, writer=False, turn=1) == 2
    assert routing.target(stream, 2, 3, feed=False, writer=False, turn=0) == 2
    assert routing.target(stream, 0, 3, feed=False) == 0
    ingest_line = b"POST /api/v1/projects/p1/observations HTTP/1.1\r\n"
    assert routing.target(ingest_line, 1, 3, feed=True, writer=False) == 0


async def test_feed_sessions_are_served_by_the_worker(served: Served) -> None:
    with served.client() as c:
        r = c.post(f"{API}/p2/feedtokens", json={"name": "t"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    deadline = time.monotonic() + 30
    for _ in range(6):  # whichever process the kernel gives the connection to
        while True:  # the worker hears of a new token a moment after the writer's reply
            feed = await Feed.open(SimpleNamespace(url=served.base), token, CASE.query)
            if feed.auth["code"] == "success":
                break
            await feed.close()
            assert time.monotonic() < deadline, feed.auth
        response = feed.ws.response
        assert response is not None
        assert response.headers.get(HEADER) == "1"
        await feed.close()
