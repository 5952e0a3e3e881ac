"""The push-feed client: data messages, and a checkpoint that resumes the same session right
after the last message yielded."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from streamgauge.client import Client, FeedClient, FeedError
from tests.conftest import Server, make_station, rows


def test_feed_client_resumes_its_session_from_a_checkpoint(server: Server, tmp_path: Path) -> None:
    with server.client() as http:
        make_station(http)
    with Client(server.url, token=server.token) as c:
        token = c.create_feed_token("p1", "test")["token"]
        c.ingest("p1", rows(40))
        cp = tmp_path / "feed.json"
        with FeedClient(server.url, token) as feed:
            it = feed.messages(vars="air_temp", rewind=60, timeformat="iso", checkpoint=cp)
            first = next(it)
            it.close()
            assert first.rows and first.session and first.stations["s1"]["stid"] == "s1"
            c.ingest("p1", rows(40, start_ms=1_750_000_000_000))
            it = feed.messages(checkpoint=cp)
            rest = list(itertools.islice(it, 1))
            it.close()
        assert rest[0].session == first.session
        assert rest[0].cursor > first.cursor
        dates = [r["date"] for m in (first, *rest) for r in m.rows]
        assert len(dates) == len(set(dates)) == 40  # 20 air_temp rows of each batch


def test_a_bad_feed_token_raises(server: Server) -> None:
    with FeedClient(server.url, "ft_nope") as feed:
        with pytest.raises(FeedError, match="invalid token"):
            next(feed.messages())
