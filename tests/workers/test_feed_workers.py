"""The push feed served in fan-out workers (``serve --workers 2`` with
``STREAMGAUGE_WORKERS_FEED=true``): every connection of a feed token is served by one process
(``routing.owner``, whichever process the kernel gave it to; the others pass it on), which
keeps the token's sessions. A session of a worker's token: served there, exact under ingest
after an abrupt drop resumed with ``cursor``, taken over by a second connection (the first
closes with 1000), closed with 1008 when the writer revokes its token, and resumed exactly
on the restarted worker after a kill -9 of the worker."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streamgauge.workers.routing import owner
from tests.conftest import free_port
from tests.test_feed import API, STATIONS, Feed, Obs, key_of, make_network, minute_ms, report
from tests.test_feed_resume import CASE, assert_exact, keys
from tests.workers.test_serve_workers import HEADER, WAIT, Served

BASE = minute_ms(int(time.time() * 1000)) - 30 * 3_600_000


@pytest.fixture
def feed_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("STREAMGAUGE_WORKERS_FEED", "true")
    s = Served(tmp_path / "data", free_port())
    s.start(workers=2)
    try:
        with s.client() as c:
            make_network(c)
        yield s
    finally:
        s.stop()


def token_of(served: Served, process: int) -> tuple[str, str]:
    """A new feed token served by ``process``: (token, its id)."""
    with served.client() as c:
        while True:
            r = c.post(f"{API}/p1/feedtokens", json={"name": "t"})
            assert r.status_code == 201, r.text
            token, id_ = r.json()["token"], r.json()["id"]
            if owner(hashlib.sha256(token.encode()).digest(), 2) == process:
                return token, id_


def at(served: Served) -> Any:
    return SimpleNamespace(url=served.base)


def process_of(feed: Feed) -> str | None:
    response = feed.ws.response
    assert response is not None
    return response.headers.get(HEADER)


async def until_known(served: Served, token: str) -> Feed:
    """A connection of ``token`` once its process knows the token (it hears of a new token
    from the writer a moment after the writer's reply)."""
    deadline = time.monotonic() + WAIT
    while True:
        feed = await Feed.open(at(served), token, CASE.query)
        if feed.auth["code"] == "success":
            return feed
        await feed.close()
        assert time.monotonic() < deadline, feed.auth
        await asyncio.sleep(0.02)


class Ingest:
    """Every station's report, one minute a batch, posted in the background until stopped."""

    def __init__(self, served: Served, first_tick: int = 0) -> None:
        self.served = served
        self.tick = first_tick
        self.posted: list[Obs] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with self.served.client() as c:
            while not self._stop.is_set():
                t = BASE + self.tick * 60_000
                batch = [
                    o
                    for i, st in enumerate(STATIONS)
                    for o in report(i, st, self.tick, t, self.tick)
                ]
                r = await asyncio.to_thread(
                    c.post, f"{API}/p1/observations", json=[o.row() for o in batch]
                )
                assert r.status_code == 200, r.text
                self.posted += batch
                self.tick += 1
                await asyncio.sleep(0.005)

    async def until_posted(self, ticks: int) -> None:
        goal = self.tick + ticks
        while self.tick < goal:
            assert not self._task.done()
            await asyncio.sleep(0.005)

    async def finish(self) -> list[Obs]:
        self._stop.set()
        await self._task
        return self.posted


async def test_a_tokens_connections_are_served_by_its_process_and_resume_exactly(
    feed_served: Served,
) -> None:
    s = feed_served
    on_worker, _ = token_of(s, 1)
    on_writer, _ = token_of(s, 0)
    first = await until_known(s, on_worker)
    for token, process in ((on_worker, "1"), (on_writer, "0")):
        for _ in range(6):  # whichever process the kernel gives the connection to
            f = await Feed.open(at(s), token, CASE.query)
            assert f.auth["code"] == "success", f.auth
            assert process_of(f) == process
            await f.close()
    assert process_of(first) == "1"
    ingest = Ingest(s)
    await first.until_count(100)
    processed = first.cursors[-1]
    first.ws.transport.abort()  # the network drops: no close frame, unread data lost
    await ingest.until_posted(5)
    second = await Feed.open(at(s), on_worker, f"cursor={processed}", session=first.session)
    assert second.auth["messages"] == ["Restarting from provided session id."], second.auth
    assert process_of(second) == "1"
    await second.until_count(100)
    posted = await ingest.finish()
    await second.until({o.key for o in CASE.expect(posted)} - keys(first))
    await second.close()
    assert_exact([first, second], posted)


def token_not_heard_of(served: Served, process: int) -> str:
    """A feed token of ``process`` stored as the writer stores one, but whose event no process
    has had yet (as for a client connecting the moment the writer replied, before the owner
    heard of the token): written to the table directly."""
    while True:
        token = "ft_" + secrets.token_urlsafe(32)
        dig = hashlib.sha256(token.encode()).digest()
        if owner(dig, 2) == process:
            break
    with contextlib.closing(sqlite3.connect(served.data / "streamgauge.db", timeout=30)) as db:
        with db:
            (project_pk,) = db.execute("SELECT pk FROM projects WHERE id = 'p1'").fetchone()
            (pk,) = db.execute("SELECT coalesce(max(pk), 0) + 1000 FROM feed_tokens").fetchone()
            db.execute(
                "INSERT INTO feed_tokens VALUES (?, ?, ?, 'direct', ?, '2026-01-01T00:00:00Z')",
                (pk, f"ft{pk:012x}", project_pk, dig),
            )
    return token


async def test_a_token_is_served_by_its_worker_the_moment_it_is_created(
    feed_served: Served,
) -> None:
    """A client that connects right after creating a token is not refused while the worker
    owning it has not heard of it yet: the worker looks an unknown token up in the table."""
    s = feed_served
    for _ in range(3):
        feed = await Feed.open(at(s), token_not_heard_of(s, 1), CASE.query)
        try:
            assert feed.auth["code"] == "success", feed.auth
            assert process_of(feed) == "1"
        finally:
            await feed.close()
    unknown = await Feed.open(at(s), "ft_" + secrets.token_urlsafe(32), CASE.query)
    try:
        assert unknown.auth["code"] == "failed" and unknown.auth["messages"] == ["invalid token"]
    finally:
        await unknown.close()


async def test_the_connected_sessions_of_every_process_are_listed(feed_served: Served) -> None:
    """``GET .../feedsessions`` (the dashboard's list) is served by the writer and lists the
    sessions its workers serve too, each with its token, arguments and position."""
    s = feed_served
    (on_worker, worker_id), (on_writer, writer_id) = token_of(s, 1), token_of(s, 0)
    feeds = [await until_known(s, on_worker), await until_known(s, on_writer)]
    try:
        assert [process_of(f) for f in feeds] == ["1", "0"]
        with s.client() as c:
            r = c.get(f"{API}/p1/feedsessions")
        assert r.status_code == 200, r.text
        listed = {d["id"]: d for d in r.json()["sessions"]}
        assert set(listed) == {f.session for f in feeds}
        assert listed[feeds[0].session]["token"] == worker_id
        assert listed[feeds[1].session]["token"] == writer_id
        assert all(d["args"] == CASE.query and d["project"] == "p1" for d in listed.values())
        with s.client() as c:
            paged = c.get(f"{API}/p1/feedsessions", params={"limit": 1}).json()
            rest = c.get(f"{API}/p1/feedsessions", params={"page": paged["next"]}).json()
        assert [d["id"] for d in paged["sessions"] + rest["sessions"]] == sorted(listed)
    finally:
        for f in feeds:
            await f.close()


async def test_a_worker_describes_stations_as_the_writer_does(feed_served: Served) -> None:
    """A worker keeps no site document: a round's new stations are described from the
    database, read at once. Sessions with the same arguments on the worker and on the writer
    get the same station metadata and the same rows."""
    s = feed_served
    feeds = [await until_known(s, token_of(s, n)[0]) for n in (1, 0)]
    try:
        assert [process_of(f) for f in feeds] == ["1", "0"]
        ingest = Ingest(s)
        await ingest.until_posted(2)
        posted = await ingest.finish()
        wanted = {o.key for o in CASE.expect(posted)}
        for f in feeds:
            await f.until(wanted)
        on_worker, on_writer = feeds
        assert on_worker.stations and on_worker.stations == on_writer.stations
        assert all(st["latitude"] is not None for st in on_worker.stations.values())
        assert on_worker.units == on_writer.units
        assert {key_of(r) for r in on_worker.rows} == {key_of(r) for r in on_writer.rows}
    finally:
        for f in feeds:
            await f.close()


async def test_a_burst_of_connections_passed_to_a_worker_is_served_whole(
    feed_served: Served,
) -> None:
    """800 sessions of a worker's token opened at once while the worker is busy (stopped for a
    second): those the kernel gives the writer wait for the handoff socket (its buffer holds a
    few hundred handoffs) instead of being closed unanswered, so every one is
    served, by the worker."""
    s = feed_served
    token, _ = token_of(s, 1)
    await (await until_known(s, token)).close()
    (pid,) = s.worker_pids()
    os.kill(pid, signal.SIGSTOP)
    try:
        opening = asyncio.gather(*(Feed.open(at(s), token, CASE.query) for _ in range(800)))
        await asyncio.sleep(1.0)
    finally:
        os.kill(pid, signal.SIGCONT)
    feeds = await opening
    try:
        assert [f.auth["code"] for f in feeds] == ["success"] * 800
        assert {process_of(f) for f in feeds} == {"1"}
    finally:
        await asyncio.gather(*(f.close() for f in feeds))
    assert "passing a connection" not in s.log.read_text()


async def test_a_session_on_a_worker_is_taken_over_and_its_token_revoked(
    feed_served: Served,
) -> None:
    s = feed_served
    token, token_id = token_of(s, 1)
    first = await until_known(s, token)
    assert process_of(first) == "1"
    ingest = Ingest(s)
    await first.until_count(40)
    # a half-open connection: the client is gone but the server has not noticed yet
    second = await Feed.open(at(s), token, session=first.session)
    assert second.auth["code"] == "success", second.auth
    assert await first.to_close() == 1000, first.close_reason
    assert "another connection" in first.close_reason
    await ingest.until_posted(3)
    posted = await ingest.finish()
    await second.until({o.key for o in CASE.expect(posted)} - keys(first))
    assert_exact([first, second], posted)
    # Revoked on the writer: the worker's connection closes with 1008, the token is refused.
    with s.client() as c:
        assert c.delete(f"{API}/p1/feedtokens/{token_id}").status_code == 204
    assert await second.to_close() == 1008
    assert "revoked" in second.close_reason
    again = await Feed.open(at(s), token, CASE.query)
    try:
        assert again.auth["code"] == "failed" and again.auth["messages"] == ["invalid token"]
        assert process_of(again) == "1"
    finally:
        await again.close()


async def test_sessions_on_a_killed_worker_resume_exactly_on_the_restarted_one(
    feed_served: Served,
) -> None:
    s = feed_served
    token, _ = token_of(s, 1)
    first = await until_known(s, token)
    ingest = Ingest(s)
    await first.until_count(100)
    (pid,) = s.worker_pids()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the connection drops, however it says so
        while True:
            await first.read()
    processed = first.cursors[-1]
    await ingest.until_posted(3)
    # The client reconnects until the restarted worker serves it (meanwhile its connections
    # are refused or closed: no other process may serve the worker's token).
    deadline = time.monotonic() + WAIT
    while True:
        try:
            second = await Feed.open(at(s), token, f"cursor={processed}", session=first.session)
            if second.auth["code"] == "success":
                break
            await second.close()
        except Exception:  # noqa: BLE001 - refused or reset while the worker restarts
            pass
        assert time.monotonic() < deadline, "the restarted worker never served the session"
        await asyncio.sleep(0.05)
    assert s.worker_pids() != [pid]
    assert process_of(second) == "1"
    await second.until_count(100)
    posted = await ingest.finish()
    await second.until({o.key for o in CASE.expect(posted)} - keys(first))
    await second.close()
    assert_exact([first, second], posted)
