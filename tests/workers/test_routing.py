"""Which process serves a connection, from its first request line (``workers/routing.py``)."""

from __future__ import annotations

import hashlib

import pytest

from streamgauge.workers.routing import (
    MAX_LINE,
    complete,
    owner,
    request_target,
    serves_locally,
    target,
)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/v1/projects/p1/stream HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/projects/p1/stream?since=12&variable=air_temp HTTP/1.1\r\n",
        b"GET /api/v1/projects/a-b_c.d/stream HTTP/1.0\n",
        b"GET /v2/projects/p1/devices:stream HTTP/1.1\r\n",
        b"GET /v2/projects/p1/devices:stream?since=5&event_types=temperature HTTP/1.1\r\n",
        b"GET /v2/projects/p1/devices%3Astream?ping_interval=2s HTTP/1.1\r\n",
        b"GET /v2/projects/p1/devices%3astream HTTP/1.1\r\n",
    ],
)
def test_a_native_live_is_served_by_the_worker(head: bytes) -> None:
    assert serves_locally(head)


@pytest.mark.parametrize(
    "head",
    [
        b"POST /api/v1/projects/p1/observations HTTP/1.1\r\n",
        b"POST /api/v1/projects/p1/stream HTTP/1.1\r\n",  # not a GET: the writer answers
        b"GET /api/v1/projects/p1/observations HTTP/1.1\r\n",
        b"GET /api/v1/projects/p1/stream/extra HTTP/1.1\r\n",
        b"GET /api/v1/projects//stream HTTP/1.1\r\n",
        b"GET /feed/ft_token/ HTTP/1.1\r\n",  # the push feed's sessions are the writer's
        b"POST /v2/projects/p1/devices:stream HTTP/1.1\r\n",
        b"GET /v2/projects/p1/devices HTTP/1.1\r\n",
        b"GET /v2/projects/p1/devices:streamx HTTP/1.1\r\n",
        b"GET /v2/projects/p1/devices/d1:stream HTTP/1.1\r\n",
        b"GET /healthz HTTP/1.1\r\n",
        b"GET /api/v1/projects/p1/stream",  # no whole line yet
        b"garbage\r\n",
        b"",
    ],
)
def test_everything_else_goes_to_the_writer(head: bytes) -> None:
    assert not serves_locally(head)


def test_request_target_drops_the_query() -> None:
    assert request_target(b"GET /a/b?x=1#f HTTP/1.1\r\n") == (b"GET", b"/a/b")
    assert request_target(b"GET /a/b HTTP/1.1") is None


def test_complete_once_the_line_is_there_or_too_long() -> None:
    assert not complete(b"GET /api/v1/pro")
    assert complete(b"GET / HTTP/1.1\r\n")
    assert complete(b"G" * MAX_LINE)


def test_target_a_live_stream_here_a_feed_token_at_its_owner_the_rest_at_the_writer() -> None:
    def owner_of(token: bytes) -> int:
        return owner(hashlib.sha256(token).digest(), 3)

    stream = b"GET /api/v1/projects/p1/stream HTTP/1.1\r\n"
    assert [target(stream, me, 3, feed=True) for me in (0, 1, 2)] == [0, 1, 2]
    tokens = [b"ft_%d" % i for i in range(40)]
    assert {owner_of(t) for t in tokens} == {0, 1, 2}  # spread over every process
    for t in tokens:
        for path in (b"/feed/" + t + b"/?state=ut", b"/feed/" + t, b"/feed/" + t + b"/sess-1"):
            head = b"GET " + path + b" HTTP/1.1\r\n"
            assert target(head, 1, 3, feed=True) == owner_of(t)
            assert target(head, 1, 3, feed=False) == 0  # the writer's, as before
    # as the app decodes the path: the same token percent-encoded has the same owner
    quoted = b"GET /feed/ft%5F7/ HTTP/1.1\r\n"
    assert target(quoted, 2, 3, feed=True) == owner_of(b"ft_7")
    for other in (
        b"POST /feed/ft_1/ HTTP/1.1\r\n",
        b"GET /feed/ HTTP/1.1\r\n",
        b"GET /api/v1/projects/p1/feedtokens HTTP/1.1\r\n",
        b"garbage\r\n",
    ):
        assert target(other, 1, 3, feed=True) == 0
