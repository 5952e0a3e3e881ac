"""Durable outbound deliveries (``core/deliveries.py``) against real HTTP receivers on loopback.

The engine runs in the test's event loop; receivers are ``http.server`` servers in threads. Every
wait is "until this happened, within a generous deadline", never a fixed sleep; retry delays are
scaled by ``MS``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from streamgauge.config import Settings
from streamgauge.core.deliveries import (
    Item,
    Outcome,
    _private,
    check_resolved,
    check_target,
    percentile,
)
from streamgauge.core.engine import Engine
from streamgauge.core.signing import dt_signature, hmac_signature, verify_hmac_signature
from streamgauge.domain.errors import Invalid, NotFound
from streamgauge.store.sqlite import deliveries as table
from streamgauge.store.sqlite.store import Tx
from tests.conftest import MS, free_port
from tests.store.test_sqlite import cols, seed

DEADLINE = 20.0  # seconds any expected event may take on a loaded machine


# -- a receiver and a source ----------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def n(self) -> int:
        value: int = orjson.loads(self.body)["n"]
        return value


Reply = tuple[int, dict[str, str], bytes]


class Receiver:
    """A webhook receiver on loopback. ``reply`` decides each answer (it may block)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: list[Received] = []
        self.lock = threading.Lock()
        self.reply: Callable[[Received], Reply] = lambda r: (200, {}, b"{}")
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(size)
                rec = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.lock:
                    receiver.got.append(rec)
                status, headers, payload = receiver.reply(rec)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout tests)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def ns(self, path: str | None = None) -> list[int]:
        with self.lock:
            return [r.n for r in self.got if path is None or r.path == path]


class ListSource:
    """Items held in memory, as a test source (a real one reads the log or the alert log)."""

    def __init__(self, url: str, born_ms: int | None = None) -> None:
        self.url = url
        self.items: list[Item] = []
        self.born_ms = born_ms
        self.fetches = 0

    def append(self, count: int, url: str | None = None) -> None:
        for _ in range(count):
            n = len(self.items) + 1
            self.items.append(
                Item(
                    cursor=n * 10,  # cursors need not be dense
                    url=url or self.url,
                    body=orjson.dumps({"n": n}),
                    headers={"X-Item": str(n)},
                    born_ms=self.born_ms if self.born_ms is not None else int(time.time() * 1000),
                )
            )

    async def fetch(self, after: int, limit: int) -> Sequence[Item]:
        self.fetches += 1
        return [i for i in self.items if i.cursor > after][:limit]


async def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(5 * MS)


async def until_async(cond: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(5 * MS)


def settings(data: Path, **kw: Any) -> Settings:
    kw.setdefault("delivery_retry_first_seconds", 20 * MS)
    kw.setdefault("delivery_retry_max_seconds", 100 * MS)
    kw.setdefault("delivery_poll_seconds", 3600)  # only notify() wakes idle workers in tests
    kw.setdefault("allow_private_targets", True)  # the test receivers listen on loopback
    return Settings(data=data, **kw)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    e = Engine(settings(tmp_path / "data"), "token")
    await e.start()
    try:
        yield e
    finally:
        await e.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


# -- delivery -------------------------------------------------------------------------------------


async def test_items_arrive_in_order_and_the_cursor_is_saved(
    engine: Engine, receiver: Receiver
) -> None:
    source = ListSource(receiver.url + "/hook")
    source.append(25)
    engine.deliveries.add("k", source, start_after=0)
    await until(lambda: len(receiver.got) == 25, "25 deliveries")
    assert receiver.ns() == list(range(1, 26))
    first = receiver.got[0]
    assert first.path == "/hook" and first.headers["x-item"] == "1"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["user-agent"].startswith("streamgauge/")
    await until_async(lambda: _is(engine.deliveries.cursor("k"), 250), "cursor 250 saved")

    source.append(3)
    engine.deliveries.notify()  # the idle worker polls only hourly here: notify wakes it
    await until(lambda: engine.deliveries.stats("k").delivered == 28, "3 more deliveries")
    assert receiver.ns() == list(range(1, 29))
    stats = engine.deliveries.stats("k")
    assert stats.delivered == 28 and stats.failed_attempts == 0 and stats.dead_lettered == 0
    assert stats.cursor == 280 and stats.last_status == 200 and stats.last_error is None
    assert stats.last_success_ms is not None and stats.recent_delivered == 28
    assert stats.latency_ms_p50 is not None and stats.latency_ms_p99 is not None
    assert stats.latency_ms_p50 <= stats.latency_ms_p99
    text = engine.metrics.render().decode()
    assert 'streamgauge_outbound_attempts_total{outcome="delivered"} 28.0' in text
    assert "streamgauge_outbound_attempt_seconds_count 28.0" in text


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_receiver_down_then_up_loses_nothing(engine: Engine) -> None:
    receiver = Receiver()  # its port is chosen but nothing listens yet
    source = ListSource(receiver.url)
    source.append(10)
    engine.deliveries.add("k", source, start_after=0)
    await until(lambda: engine.deliveries.stats("k").failed_attempts >= 3, "failed attempts")
    stats = engine.deliveries.stats("k")
    assert stats.delivered == 0 and stats.last_status is None
    assert stats.last_error is not None and "Connect" in stats.last_error
    assert await engine.deliveries.cursor("k") == 0
    receiver.start()
    try:
        await until(lambda: len(receiver.got) >= 10, "all 10 after the receiver came up")
        assert receiver.ns() == list(range(1, 11))  # in order, none lost, none twice
    finally:
        receiver.stop()


async def test_5xx_and_timeouts_are_retried(engine: Engine, receiver: Receiver) -> None:
    release = threading.Event()
    calls: dict[int, int] = {}

    def reply(r: Received) -> Reply:
        calls[r.n] = calls.get(r.n, 0) + 1
        if r.n == 1 and calls[1] <= 2:
            return 503, {}, b"busy, come back"
        if r.n == 2 and calls[2] == 1:
            release.wait(10)  # far beyond the delivery timeout
        return 200, {}, b""

    receiver.reply = reply
    outcomes: list[tuple[int, Outcome]] = []

    async def hook(item: Item, outcome: Outcome) -> None:
        outcomes.append((item.cursor, outcome))

    source = ListSource(receiver.url)
    source.append(3)
    engine.deliveries.add("k", source, start_after=0, timeout_seconds=0.5, on_outcome=hook)
    try:
        await until(lambda: engine.deliveries.stats("k").delivered == 3, "item 3")
    finally:
        release.set()
    assert receiver.ns() == [1, 1, 1, 2, 2, 3]
    by_item = [(c, o.attempt, o.status, o.delivered) for c, o in outcomes]
    assert by_item == [
        (10, 1, 503, False),
        (10, 2, 503, False),
        (10, 3, 200, True),
        (20, 1, None, False),
        (20, 2, 200, True),
        (30, 1, 200, True),
    ]
    assert outcomes[0][1].error == "HTTP 503 Service Unavailable"  # never the body (item 18)
    assert outcomes[3][1].error == "no response within 0.5 s"
    stats = engine.deliveries.stats("k")
    assert stats.delivered == 3 and stats.failed_attempts == 3 and stats.recent_failed == 3
    assert stats.last_error == "no response within 0.5 s"  # kept after later successes


async def test_an_integer_retry_after_is_honoured(tmp_path: Path, receiver: Receiver) -> None:
    """With the schedule's first retry an hour away, only the receiver's ``Retry-After: 0``
    can bring the second attempt within the deadline."""
    e = Engine(settings(tmp_path / "data", delivery_retry_first_seconds=3600), "token")
    await e.start()
    try:
        calls = itertools.count(1)
        receiver.reply = lambda r: (
            (429, {"Retry-After": "0"}, b"")
            if next(calls) == 1
            else (
                200,
                {},
                b"",
            )
        )
        source = ListSource(receiver.url)
        source.append(2)
        e.deliveries.add("k", source, start_after=0)
        await until(lambda: receiver.ns() == [1, 1, 2], "retry after 0 s, then item 2")
        assert e.deliveries.stats("k").failed_attempts == 1
    finally:
        await e.stop()


# -- durability -----------------------------------------------------------------------------------


async def test_at_least_once_across_an_engine_restart(tmp_path: Path, receiver: Receiver) -> None:
    """Stop the engine while item 10 is in flight: after a restart the same key resumes from its
    saved cursor. Everything arrives; only the un-acknowledged item 10 may come twice."""
    stuck = threading.Event()
    release = threading.Event()
    calls = itertools.count(1)

    def reply(r: Received) -> Reply:
        if r.n == 10 and next(calls) == 1:
            stuck.set()
            release.wait(10)
        return 200, {}, b""

    receiver.reply = reply
    source = ListSource(receiver.url)  # the source's own durability is not under test
    source.append(40)
    data = tmp_path / "data"
    first = Engine(settings(data), "token")
    await first.start()
    try:
        first.deliveries.add("conn", source, start_after=0)
        await until(stuck.is_set, "item 10 in flight")
    finally:
        await first.stop()
    release.set()
    assert receiver.ns() == list(range(1, 11))

    second = Engine(settings(data), "token")
    await second.start()
    try:
        # start_after=None would mean "from the end" for a new key; this key resumes
        second.deliveries.add("conn", source)
        await until(lambda: receiver.ns()[-1:] == [40], "everything after the restart")
    finally:
        await second.stop()
    got = receiver.ns()
    assert sorted(set(got)) == list(range(1, 41))
    assert got == list(range(1, 11)) + list(range(10, 41))  # item 10 twice, nothing else


async def test_a_new_key_without_start_after_begins_at_the_end(
    engine: Engine, receiver: Receiver
) -> None:
    source = ListSource(receiver.url + "/paged")
    source.append(5)

    class HeadSource(ListSource):
        async def head(self) -> int:
            return self.items[-1].cursor if self.items else 0

    with_head = HeadSource(receiver.url + "/head")
    with_head.append(5)
    engine.deliveries.add("paged", source)
    engine.deliveries.add("head", with_head)
    await until_async(lambda: _is(engine.deliveries.cursor("paged"), 50), "paged to the end")
    await until_async(lambda: _is(engine.deliveries.cursor("head"), 50), "head read")
    assert with_head.fetches <= 2  # no paging through the source
    source.append(1)
    with_head.append(1)
    engine.deliveries.notify()
    await until(lambda: len(receiver.got) == 2, "only the new items")
    assert receiver.ns("/paged") == [6] and receiver.ns("/head") == [6]


async def test_the_engine_wakes_deliveries_on_every_committed_batch(
    engine: Engine, receiver: Receiver
) -> None:
    """A source over the observation log: an ingest commit notifies the idle worker."""
    store = engine.store

    class LogSource:
        async def head(self) -> int:
            return store.head

        async def fetch(self, after: int, limit: int) -> Sequence[Item]:
            batch = await store.read_log(after, store.head, limit)
            return [
                Item(int(c), receiver.url, orjson.dumps({"n": int(c)}), {}, int(t))
                for c, t in zip(batch.cursors, batch.times, strict=True)
            ]

    project_pk, var_pks = await seed(store)
    engine.deliveries.add("log", LogSource())
    await until_async(lambda: _is(engine.deliveries.cursor("log"), 0), "started at the end")
    await store.append(cols(project_pk, var_pks[:2], [1_000, 1_000], [1.0, 2.0]))
    await until(lambda: receiver.ns() == [1, 2], "the committed batch delivered")


# -- dead letters, pause, remove ------------------------------------------------------------------


async def test_items_failing_past_their_retention_are_dead_lettered(
    engine: Engine, receiver: Receiver
) -> None:
    receiver.reply = lambda r: (500, {}, b"cannot take it") if r.n == 2 else (200, {}, b"")
    source = ListSource(receiver.url, born_ms=int(time.time() * 1000) - 10_000)
    source.append(3)
    outcomes: list[Outcome] = []
    engine.deliveries.add(
        "k", source, start_after=0, retention_seconds=5, on_outcome=lambda i, o: outcomes.append(o)
    )
    await until(lambda: engine.deliveries.stats("k").delivered == 2, "3 after 2 was given up")
    assert receiver.ns() == [1, 2, 3]
    assert [o.dead_lettered for o in outcomes] == [False, True, False]
    [dead] = await engine.deliveries.dead_letters("k")
    assert dead["cursor"] == 20 and dead["last_status"] == 500 and dead["attempts"] == 1
    assert dead["last_error"] == "HTTP 500 Internal Server Error"
    assert dead["body"] == b'{"n":2}' and dead["headers"] == {"X-Item": "2"}
    assert dead["url"] == receiver.url and dead["method"] == "POST"
    stats = engine.deliveries.stats("k")
    assert stats.dead_lettered == 1 and stats.delivered == 2 and stats.cursor == 30
    await until_async(lambda: _is(engine.deliveries.cursor("k"), 30), "cursor past it")
    text = engine.metrics.render().decode()
    assert 'streamgauge_outbound_attempts_total{outcome="dead_lettered"} 1.0' in text


async def test_young_items_are_retried_not_dead_lettered(
    engine: Engine, receiver: Receiver
) -> None:
    receiver.reply = lambda r: (500, {}, b"") if len(receiver.got) <= 4 else (200, {}, b"")
    source = ListSource(receiver.url)
    source.append(1)
    engine.deliveries.add("k", source, start_after=0, retention_seconds=3600)
    await until(lambda: engine.deliveries.stats("k").delivered == 1, "delivered at last")
    assert receiver.ns() == [1] * 5
    assert await engine.deliveries.dead_letters("k") == []


async def test_pause_keeps_the_cursor_and_resume_continues(
    engine: Engine, receiver: Receiver
) -> None:
    paused = ListSource(receiver.url + "/paused")
    witness = ListSource(receiver.url + "/witness")  # proves the loop had every chance to send
    for s in (paused, witness):
        s.append(3)
    engine.deliveries.add("paused", paused, start_after=0)
    engine.deliveries.add("witness", witness, start_after=0)
    await until(
        lambda: all(engine.deliveries.stats(k).delivered == 3 for k in ("paused", "witness")),
        "first 3 on each",
    )
    engine.deliveries.pause("paused")
    assert engine.deliveries.stats("paused").paused
    await until_async(lambda: _is(engine.deliveries.cursor("paused"), 30), "cursor saved")
    for s in (paused, witness):
        s.append(3)
    engine.deliveries.notify()
    await until(lambda: receiver.ns("/witness") == [1, 2, 3, 4, 5, 6], "witness got 3 more")
    assert receiver.ns("/paused") == [1, 2, 3]
    engine.deliveries.resume("paused")
    await until(lambda: receiver.ns("/paused") == [1, 2, 3, 4, 5, 6], "resumed")
    assert not engine.deliveries.stats("paused").paused


async def test_pause_cuts_a_retry_wait_short_and_keeps_the_item(
    tmp_path: Path, receiver: Receiver
) -> None:
    e = Engine(settings(tmp_path / "data", delivery_retry_first_seconds=3600), "token")
    await e.start()
    try:
        receiver.reply = lambda r: (500, {}, b"") if len(receiver.got) == 1 else (200, {}, b"")
        source = ListSource(receiver.url)
        source.append(2)
        e.deliveries.add("k", source, start_after=0)
        await until(lambda: e.deliveries.stats("k").failed_attempts == 1, "first failure")
        e.deliveries.pause("k")  # the worker waits an hour to retry: pausing interrupts it
        e.deliveries.resume("k")  # and resuming retries at once
        await until(lambda: receiver.ns() == [1, 1, 2], "retried after resume")
    finally:
        await e.stop()


async def test_remove_keeps_or_forgets_the_cursor(engine: Engine, receiver: Receiver) -> None:
    d = engine.deliveries
    source = ListSource(receiver.url)
    source.append(3)
    d.add("k", source, start_after=0)
    await until(lambda: d.stats("k").delivered == 3, "3 delivered")
    d.remove("k", forget=False)
    assert "k" not in d
    with pytest.raises(NotFound):
        d.stats("k")
    await until_async(lambda: _is(d.cursor("k"), 30), "cursor kept")
    source.append(1)
    d.add("k", source)  # resumes from the kept cursor: only item 4
    await until(lambda: receiver.ns() == [1, 2, 3, 4], "item 4 once")

    d.remove("k")  # forget
    await until_async(lambda: _is(d.cursor("k"), None), "cursor forgotten")
    d.add("k", source, start_after=0)  # a new consumer under the same key
    await until(lambda: receiver.ns() == [1, 2, 3, 4, 1, 2, 3, 4], "everything again")


async def test_add_on_a_running_key_replaces_it_and_keeps_the_cursor(
    engine: Engine, receiver: Receiver
) -> None:
    d = engine.deliveries
    source = ListSource(receiver.url + "/a")
    source.append(2)
    d.add("k", source, start_after=0)
    await until(lambda: d.stats("k").delivered == 2, "2 delivered")
    source.append(2, url=receiver.url + "/b")
    d.add("k", source, start_after=0)  # start_after only applies to a brand-new key
    await until(lambda: len(receiver.got) == 4, "2 more")
    assert receiver.ns("/a") == [1, 2] and receiver.ns("/b") == [3, 4]


async def test_an_edit_while_an_attempt_waits_for_its_answer_sends_the_item_once(
    engine: Engine, receiver: Receiver
) -> None:
    """Replacing a running key (every edit of an alert channel does) lets an attempt in flight
    finish: cancelled after the target got the item but before its answer moved the cursor,
    the item went out again from the worker that replaced it (a duplicate Slack message)."""
    d = engine.deliveries
    got_first = threading.Event()
    answer = threading.Event()

    def slow_first(r: Received) -> Reply:
        if r.n == 1:
            got_first.set()
            answer.wait(10)
        return 200, {}, b"{}"

    receiver.reply = slow_first
    source = ListSource(receiver.url)
    source.append(1)
    d.add("k", source, start_after=0)
    await until(got_first.is_set, "item 1 at the target")
    d.add("k", source, start_after=0)  # an edit: the worker is replaced mid-attempt
    await asyncio.sleep(0.2)
    answer.set()
    await until_async(lambda: _is(d.cursor("k"), 10), "the cursor past item 1")
    source.append(1)
    d.notify()
    await until(lambda: receiver.ns() == [1, 2], "item 2 once, item 1 not again")
    await asyncio.sleep(0.3)
    assert receiver.ns() == [1, 2]


# -- signatures and targets -----------------------------------------------------------------------


async def test_signature_headers_are_computed_at_each_attempt(
    engine: Engine, receiver: Receiver
) -> None:
    receiver.reply = lambda r: (502, {}, b"") if len(receiver.got) <= 2 else (200, {}, b"")
    attempts = itertools.count(1)
    secret = "a-connector-signature-secret-of-40-chars!"

    def sign(item: Item) -> dict[str, str]:
        return {
            "X-Dt-Signature": dt_signature(secret, item.body, jti=f"jti{next(attempts)}"),
            "X-Streamgauge-Signature": hmac_signature(secret, item.body),
        }

    source = ListSource(receiver.url)
    source.append(1)
    engine.deliveries.add("k", source, start_after=0, sign=sign)
    await until(lambda: engine.deliveries.stats("k").delivered == 1, "delivered")
    assert len(receiver.got) == 3
    jtis = []
    for r in receiver.got:
        claims = jwt.decode(r.headers["x-dt-signature"], secret, algorithms=["HS256"])
        assert claims["checksum_sha256"] == hashlib.sha256(r.body).hexdigest()
        assert verify_hmac_signature(secret, r.body, r.headers["x-streamgauge-signature"])
        assert r.headers["x-item"] == "1"
        jtis.append(claims["jti"])
    assert jtis == ["jti1", "jti2", "jti3"]  # a fresh signature per attempt


async def test_a_failing_signer_or_hook_does_not_stop_the_worker(
    engine: Engine, receiver: Receiver
) -> None:
    calls = itertools.count(1)

    def sign(item: Item) -> dict[str, str]:
        if next(calls) == 1:
            raise RuntimeError("signer bug")
        return {}

    def hook(item: Item, outcome: Outcome) -> None:
        raise RuntimeError("hook bug")

    source = ListSource(receiver.url)
    source.append(2)
    engine.deliveries.add("k", source, start_after=0, sign=sign, on_outcome=hook)
    await until(lambda: receiver.ns() == [1, 2], "both delivered")
    stats = engine.deliveries.stats("k")
    assert stats.failed_attempts == 1 and stats.last_error == "RuntimeError: signer bug"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "scheme must be http or https, not 'ftp'"),
        ("example.com/x", "scheme must be http or https, not 'missing'"),
        ("http:///path", "no host"),
        ("http://example.com:99999/", "not a URL"),
    ],
)
def test_check_target_refuses_malformed_urls(url: str, reason: str) -> None:
    for allow in (True, False):
        with pytest.raises(Invalid) as info:
            check_target(url, allow_private=allow)
        assert reason in info.value.message
        assert info.value.details[0]["field"] == "url"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://localhost/x",
        "http://api.localhost/x",
        "http://10.1.2.3/",
        "http://192.168.0.5/",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9000/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ],
)
def test_check_target_refuses_private_hosts_only_when_asked(url: str) -> None:
    check_target(url, allow_private=True)
    with pytest.raises(Invalid, match="private targets are not allowed"):
        check_target(url, allow_private=False)


def test_check_target_accepts_public_hosts() -> None:
    for url in ("https://example.com/hook", "http://93.184.216.34:8080/", "HTTPS://Example.COM"):
        check_target(url, allow_private=False)


async def test_names_resolving_to_private_addresses_are_refused_before_sending() -> None:
    """``check_target`` does not resolve names; the worker's check does. This machine's own name
    passes the pure check and resolves to its own (loopback or private) addresses."""
    name = socket.gethostname()
    addrs = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    check_target(f"http://{name}/x", allow_private=False)
    await check_resolved(f"http://{name}/x", allow_private=True)
    if all(_private(ipaddress.ip_address(str(a).split("%")[0])) for a in addrs):
        with pytest.raises(Invalid, match="resolves to"):
            await check_resolved(f"http://{name}/x", allow_private=False)
    else:  # a host whose name resolves to a public address: nothing to refuse
        await check_resolved(f"http://{name}/x", allow_private=False)
    with pytest.raises(Invalid, match="cannot resolve"):
        await check_resolved("http://no-such-host.invalid/x", allow_private=False)


async def test_a_private_target_is_never_sent_to_when_forbidden(
    tmp_path: Path, receiver: Receiver
) -> None:
    e = Engine(settings(tmp_path / "data", allow_private_targets=False), "token")
    await e.start()
    try:
        source = ListSource(receiver.url, born_ms=int(time.time() * 1000) - 10_000)
        source.append(1)
        e.deliveries.add("k", source, start_after=0, retention_seconds=5)
        await until(lambda: e.deliveries.stats("k").dead_lettered == 1, "dead-lettered")
        [dead] = await e.deliveries.dead_letters("k")
        assert "private targets are not allowed" in dead["last_error"]
        assert dead["last_status"] is None
        assert receiver.got == []
    finally:
        await e.stop()


# -- pure helpers ---------------------------------------------------------------------------------


def test_percentile_by_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(list(reversed(values)), 1.0) == 100.0


async def test_dead_letters_are_bounded_per_key(engine: Engine) -> None:
    def write(tx: Tx) -> None:
        for n in range(1, table.MAX_DEAD_LETTERS + 6):
            for key in ("a", "b") if n <= 3 else ("a",):
                table.dead_letter(
                    tx,
                    key,
                    cursor=n,
                    method="POST",
                    url="http://127.0.0.1:9/",
                    headers={},
                    body=b"{}",
                    born_ms=0,
                    now_ms=1,
                    attempts=1,
                    last_status=500,
                    last_error="HTTP 500",
                )

    await engine.store.write(write)
    kept = await engine.deliveries.dead_letters("a", limit=5000)
    assert len(kept) == table.MAX_DEAD_LETTERS
    assert kept[0]["cursor"] == table.MAX_DEAD_LETTERS + 5 and kept[-1]["cursor"] == 6
    assert [d["cursor"] for d in await engine.deliveries.dead_letters("b")] == [3, 2, 1]
    assert await engine.deliveries.cursor("a") == table.MAX_DEAD_LETTERS + 5
