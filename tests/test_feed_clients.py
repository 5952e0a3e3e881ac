"""What public push-feed clients do, against a real server with the real ``websockets`` client
(issue 11 item 11): ``recent`` as the reference's own spelling of ``rewind``, a policy close
after a failed ``auth`` (so a client that reconnects after a normal close stops), and
``timeformat=iso`` for clients that want the ``date`` as an ISO 8601 string."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from tests.conftest import Server, start_server
from tests.test_feed import (
    STATIONS,
    TIMEOUT,
    Case,
    Feed,
    Obs,
    assert_rows,
    feed_token,
    feed_url,
    make_network,
    minute_batch,
    minute_ms,
    post,
    report,
)


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path / "data")
    try:
        with s.client() as c:
            make_network(c)
        yield s
    finally:
        s.stop()


def token_of(srv: Server) -> str:
    with srv.client() as c:
        return feed_token(c)


# -- (a) recent, the reference's example spelling of rewind -------------------------------------


@pytest.mark.parametrize("store_mode", ["sqlite"], indirect=True)  # reads the SQLite file
async def test_recent_is_rewind_by_another_name(tmp_path: Path) -> None:
    """issue 11 item 11: the reference's example ``recent=5`` replays exactly what ``rewind=5``
    replays (what arrived in the last five minutes), then both go live; a resumed ``recent``
    session keeps its arguments."""
    srv = start_server(tmp_path / "data")
    now = minute_ms(int(time.time() * 1000))
    with srv.client() as c:
        make_network(c)
        token = feed_token(c)
        old = minute_batch(0, now - 30 * 60_000, 0)
        post(c, old)
    srv.stop()
    # the first batch arrived ten minutes ago (the log keeps arrival times)
    with closing(sqlite3.connect(tmp_path / "data" / "streamgauge.db")) as db:
        db.execute("UPDATE obs SET received = received - 600000")
        db.commit()
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            fresh = minute_batch(1, now - 20 * 60_000, 1)
            post(c, fresh)
            recent = await Feed.open(srv, token, "recent=5")
            rewind = await Feed.open(srv, token, "rewind=5")
            wider = await Feed.open(srv, token, "recent=15&stid=KDEN")
            assert recent.auth["code"] == rewind.auth["code"] == "success", recent.auth
            live = minute_batch(2, now - 10 * 60_000, 2)
            post(c, live)
            every = Case({})
            for feed in (recent, rewind):
                await feed.until({o.key for o in every.expect(fresh + live)})
                assert_rows(every, feed, every.expect(fresh + live))
            assert recent.rows == rewind.rows
            kden = Case({"stid": "KDEN"}, {"KDEN"})
            await wider.until({o.key for o in kden.expect(old + fresh + live)})
            assert_rows(kden, wider, kden.expect(old + fresh + live))
            # a resume re-reads the stored arguments, recent included
            await wider.close()
            later = minute_batch(3, now - 5 * 60_000, 3)
            post(c, later)
        again = await Feed.open(srv, token, session=wider.session)
        assert again.auth["code"] == "success", again.auth
        await again.until({o.key for o in kden.expect(later)})
        assert_rows(kden, again, kden.expect(later))
        for feed in (recent, rewind, again):
            await feed.close()
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("recent=5&rewind=5", "not both"),
        ("rewind=5&recent=10", "not both"),
        ("recent=soon", "number of minutes"),
        ("recent=0", "minutes in"),
        ("recent=-5", "minutes in"),
        ("recent=nan", "minutes in"),
        ("recent=100000", "minutes in"),
        ("recent=5&recent=6", "more than once"),
        ("start={start}&recent=5", "start/end"),
    ],
)
async def test_recent_is_checked_like_rewind_and_errors_name_it(
    srv: Server, query: str, says: str
) -> None:
    """issue 11 item 11: ``recent`` gets rewind's checks, errors name ``recent`` as the client
    spelt it, and ``recent`` with ``rewind`` is refused."""
    start = time.strftime("%Y%m%d%H%M", time.gmtime(time.time() - 3600))
    feed = await Feed.open(srv, token_of(srv), query.format(start=start))
    assert feed.auth["code"] == "failed", feed.auth
    assert feed.auth["session"] == ""
    assert any("recent" in m and says in m for m in feed.auth["messages"]), feed.auth
    assert await feed.to_close() == 1008


# -- (b) a failed auth closes with a policy code ------------------------------------------------


async def reconnecting_client(url: str, attempts: int) -> tuple[int, list[dict[str, Any]]]:
    """A client of the common shape: read until the server closes, then connect again. A
    normal close (1000) ends ``async for`` quietly and the loop reconnects; any other code
    raises ``ConnectionClosedError`` and ends it. Returns the connections made and the
    messages read."""
    made = 0
    seen: list[dict[str, Any]] = []
    try:
        while made < attempts:
            made += 1
            async with connect(url, open_timeout=TIMEOUT) as ws:
                async with asyncio.timeout(TIMEOUT):
                    async for raw in ws:
                        seen.append(orjson.loads(raw))
    except ConnectionClosedError as exc:
        assert exc.rcvd is not None
        assert exc.rcvd.code == 1008, exc.rcvd
    return made, seen


async def test_a_failed_auth_closes_with_1008_so_clients_stop_reconnecting(srv: Server) -> None:
    """issue 11 item 11: after the failed ``auth`` message the server closes with 1008 (policy
    violation), not 1000, for every kind of failure: a reconnect-on-close client connects once
    and stops, instead of looping at hundreds of connections a second."""
    token = token_of(srv)
    failures = [
        (feed_url(srv, "ft_not-a-token"), ["invalid token"]),
        (feed_url(srv, token, "colour=red"), None),
        (feed_url(srv, token, "recent=5&rewind=5"), None),
        (feed_url(srv, token, session="no-such-session"), ["invalid session id"]),
    ]
    for url, messages in failures:
        made, seen = await reconnecting_client(url, attempts=20)
        assert made == 1, (url, made)
        assert len(seen) == 1 and seen[0]["type"] == "auth", seen
        assert seen[0]["code"] == "failed" and seen[0]["session"] == "", seen
        if messages is not None:
            assert seen[0]["messages"][: len(messages)] == messages
    # the close carries a reason a person can read
    feed = await Feed.open(srv, "ft_not-a-token")
    assert await feed.to_close() == 1008
    assert "invalid token" in feed.close_reason
    # a good session still closes normally after a stop
    good = await Feed.open(srv, token)
    assert good.auth["code"] == "success"
    await good.ws.send('{"feed_action": "stop"}')
    assert await good.to_close() == 1000


# -- (c) timeformat=iso -------------------------------------------------------------------------


def iso_ms(text: str) -> int:
    assert text.endswith("Z"), text
    when = datetime.fromisoformat(text)
    assert when.utcoffset() is not None and not when.utcoffset()
    return round(when.timestamp() * 1000)


def odd_times(now: int) -> list[Obs]:
    """Every station's report at a time with seconds and milliseconds, and one on the second."""
    with_ms = now - 60_000 + 7_250
    on_second = now - 60_000 + 31_000
    return [
        o
        for i, st in enumerate(STATIONS)
        for o in report(i, st, 0, with_ms if i % 2 else on_second, 0)
    ]


def minute_key(row: dict[str, Any]) -> tuple[str, str, int, int]:
    """An ISO row's key in the default form (``yyyymmddhhmm``), to compare with ``Obs.key``."""
    ms = iso_ms(row["date"])
    return (
        row["stid"],
        row["sensor"],
        row["set"],
        int(time.strftime("%Y%m%d%H%M", time.gmtime(ms // 1000))),
    )


async def test_timeformat_iso_writes_dates_as_iso_strings_and_the_default_stays(
    srv: Server,
) -> None:
    """issue 11 item 11: ``timeformat=iso`` writes each ``date`` as an ISO 8601 UTC string
    with the observation's exact time; the default (and ``timeformat=yyyymmddhhmm``) stays the
    reference's integer. Sessions of both kinds on the same data each get their own form (the
    hub shares encoded rows only between sessions whose dates are written alike), live, in a
    period, and after a resume."""
    token = token_of(srv)
    plain = await Feed.open(srv, token, "stid=WBB,KSLC,KLAX")
    explicit = await Feed.open(srv, token, "stid=WBB,KSLC,KLAX&timeformat=yyyymmddhhmm")
    iso = await Feed.open(srv, token, "stid=WBB,KSLC,KLAX&timeformat=iso")
    for feed in (plain, explicit, iso):
        assert feed.auth["code"] == "success", feed.auth
    now = minute_ms(int(time.time() * 1000))
    obs = odd_times(now)
    with srv.client() as c:
        post(c, obs)
    case = Case({"stid": "WBB,KSLC,KLAX"}, {"WBB", "KSLC", "KLAX"})
    expected = case.expect(obs)
    for feed in (plain, explicit):
        await feed.until({o.key for o in expected})
        assert_rows(case, feed, expected)
        assert all(isinstance(r["date"], int) for r in feed.rows)
    while len(iso.rows) < len(expected):
        await iso.read()
    assert [minute_key(r) for r in iso.rows] == [o.key for o in expected]
    assert [iso_ms(r["date"]) for r in iso.rows] == [o.time for o in expected]
    shown = {r["date"] for r in iso.rows}
    assert any(d.endswith(":07.250Z") for d in shown), shown  # milliseconds when there are some
    assert any(d.endswith(":31Z") for d in shown), shown  # none when there are none
    assert [(r["value"], r["qc"]) for r in iso.rows] == [(r["value"], r["qc"]) for r in plain.rows]
    for feed in (plain, explicit):
        await feed.close()
    # a resumed session keeps its time format
    await iso.close()
    later = [o for i, st in enumerate(STATIONS) for o in report(i, st, 1, now - 30_500, 1)]
    with srv.client() as c:
        post(c, later)
    again = await Feed.open(srv, token, session=iso.session)
    more = case.expect(later)
    while len(again.rows) < len(more):
        await again.read()
    assert [iso_ms(r["date"]) for r in again.rows] == [o.time for o in more]
    await again.close()
    # a period, too
    start = time.strftime("%Y%m%d%H%M", time.gmtime(now // 1000 - 120))
    period = await Feed.open(
        srv, token, urlencode({"start": start, "stid": "WBB", "timeformat": "ISO"})
    )
    assert await period.to_close() == 1000
    wbb = [o for o in obs + later if o.stid == "WBB" and not o.qc & case.remove]
    assert sorted(iso_ms(r["date"]) for r in period.rows) == sorted(o.time for o in wbb)


@pytest.mark.parametrize("value", ["", "unix", "%Y-%m-%d", "iso&timeformat=iso"])
async def test_a_bad_timeformat_fails_naming_it(srv: Server, value: str) -> None:
    """issue 11 item 11: an unknown ``timeformat`` (or one given twice) is a failed ``auth``
    that names the argument and the forms it accepts."""
    query = "timeformat=" + value if "&" in value else urlencode({"timeformat": value})
    feed = await Feed.open(srv, token_of(srv), query)
    assert feed.auth["code"] == "failed", feed.auth
    assert any("timeformat" in m for m in feed.auth["messages"]), feed.auth
    assert await feed.to_close() == 1008
