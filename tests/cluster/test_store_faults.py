"""PostgreSQL unreachable under a running cluster: two real nodes reach the machine's PostgreSQL
through a TCP proxy in the test (asyncio, loopback), which is cut (every connection closed at
once, new ones refused) and restored while a client ingests continuously.

While it is cut, ingest answers 503 with ``Retry-After`` within seconds (never a hang) and open
streams keep their connections; once it is back, ingest works again, the streams resume, and
every batch is in the log whole or not at all: a batch answered 503 and sent again is all new
or all duplicates, the cursors are gapless, and every stream has every row once, in order. A
node started while the store is unreachable says so and exits non-zero."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.cluster.nodes import (
    Node,
    eventually,
    history,
    native,
    new_cluster,
    node_env,
    running,
    visible,
)
from tests.conftest import free_port, make_station, rows
from tests.pg import fresh_database

T0 = 1_600_000_000_000


class Proxy:
    """A TCP proxy on a loopback port to PostgreSQL, on an event loop of its own (a thread):
    ``cut`` closes every connection and the listener (new connections are refused),
    ``restore`` listens again on the same port; ``freeze`` keeps every connection open and
    accepts new ones but forwards nothing (a server or network that stopped answering while
    something on the way still acknowledges the packets), ``thaw`` forwards again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        dst.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # tracked from the first moment, so that ``cut`` and ``close`` reach a connection
        # still waiting to be forwarded (frozen) or still opening its upstream side
        self._conns.add(writer)
        up_w: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()
            try:
                up_r, up_w = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._conns.add(up_w)
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        finally:
            for w in (writer, up_w):
                if w is not None:
                    self._conns.discard(w)
                    w.transport.abort()

    def restore(self) -> None:
        async def listen() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        self._call(listen())

    def cut(self) -> None:
        async def cut() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for w in list(self._conns):
                w.transport.abort()
            self._conns.clear()

        self._call(cut())

    def freeze(self) -> None:
        self.loop.call_soon_threadsafe(self._flowing.clear)

    def thaw(self) -> None:
        self.loop.call_soon_threadsafe(self._flowing.set)

    def close(self) -> None:
        async def shutdown() -> None:
            self._flowing.set()
            if self._server is not None:
                self._server.close()
                self._server = None
            await asyncio.sleep(0.05)  # connections just accepted reach _handle
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in list(self._conns):
                w.transport.abort()
            self._conns.clear()
            await asyncio.sleep(0)  # the aborted transports' connection_lost callbacks

        self._call(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Proxy, Node, Node]]:
    with fresh_database("sg_storefault") as url:
        parts = urlsplit(url)
        proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        proxy.restore()
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        via = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
        env = node_env()
        a = Node("a", tmp_path / "a", free_port(), env)
        b = Node("b", tmp_path / "b", free_port(), env)
        try:
            with running([a, b], via, new_cluster()):
                yield proxy, a, b
        finally:
            proxy.close()
            gc.collect()  # a transport the proxy left open warns here, in this test, not later


class Producer:
    """Posts batches of 50 rows to ``node`` one after the other on a thread, remembering each
    batch and its answer (status, Retry-After, seconds it took)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.sent: list[tuple[list[dict[str, Any]], int, str | None, float, dict[str, Any]]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self.node.client(timeout=60) as c:
                k = 0
                while not self._stop.is_set():
                    batch = rows(50, start_ms=T0 + k * 50_000)
                    k += 1
                    started = time.monotonic()
                    r = c.post("/api/v1/projects/p1/observations", json=batch)
                    took = time.monotonic() - started
                    body = r.json()
                    self.sent.append(
                        (batch, r.status_code, r.headers.get("retry-after"), took, body)
                    )
                    if r.status_code == 503:
                        time.sleep(0.1)  # a client honouring Retry-After would wait longer
        except BaseException as e:  # noqa: BLE001 - checked by the test
            self.error = e

    def count(self, status: int) -> int:
        return sum(1 for s in self.sent if s[1] == status)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert self.error is None, repr(self.error)


def test_postgres_cut_and_restored_under_ingest(proxied: tuple[Proxy, Node, Node]) -> None:
    proxy, a, b = proxied
    with a.client() as ca:
        make_station(ca)
    visible(b, "/api/v1/projects/p1/devices/d1")
    on_b, on_a = native(b, 0), native(a, 0)
    producer = Producer(a)
    try:
        eventually(lambda: producer.count(200) >= 10, "acknowledged batches before the cut")
        assert producer.error is None
        proxy.cut()
        cut_at = len(producer.sent)
        eventually(lambda: producer.count(503) >= 5, "503 answers while PostgreSQL is cut")
        # B answers 503 too, in its face's error shape, with Retry-After
        with b.client(timeout=60) as cb:
            started = time.monotonic()
            r = cb.post("/api/v1/projects/p1/observations", json=rows(5, start_ms=T0 - 10_000))
            took_b = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) > 0 and r.json()["error"]["status"] == 503
        # the streams keep their connections while the store is away
        for reader in (on_a, on_b):
            assert reader.error is None and not reader.ended
        proxy.restore()
        restored_at = len(producer.sent)
        eventually(
            lambda: sum(1 for s in producer.sent[restored_at:] if s[1] == 200) >= 10,
            "acknowledged batches after the store is back",
        )
    finally:
        producer.stop()
    during = producer.sent[cut_at:restored_at]
    refused = [s for s in producer.sent if s[1] != 200]
    assert refused, "nothing was refused while the store was cut"
    for _, status, retry_after, took, body in refused:
        assert status == 503, body
        assert retry_after is not None and int(retry_after) > 0
        assert took < 10.0, f"a 503 took {took:.1f} s"  # never a hang
    slowest = max(s[3] for s in refused)
    print(
        f"PostgreSQL cut: {len(refused)} batches answered 503 (slowest {slowest:.2f} s, B's "
        f"{took_b:.2f} s), {len(during)} sent while it was cut"
    )

    # Every refused batch, sent again, is all new or all duplicates: never half written.
    acked = [(batch, body) for batch, status, _, _, body in producer.sent if status == 200]
    with a.client() as ca:
        for batch, *_ in refused:
            r = ca.post("/api/v1/projects/p1/observations", json=batch)
            assert r.status_code == 200, r.text
            got = r.json()
            assert (got["accepted"], got["duplicates"]) in ((len(batch), 0), (0, len(batch)))
            if got["accepted"]:
                acked.append((batch, got))
    last = max(body["last_cursor"] for _, body in acked)
    stored = history(b)
    assert sorted(stored) == list(range(1, last + 1))  # gapless, nothing extra
    for batch, body in acked:
        for cursor, row in zip(
            range(body["first_cursor"], body["last_cursor"] + 1), batch, strict=True
        ):
            assert (stored[cursor]["device"], stored[cursor]["value"]) == (
                row["device"],
                row["value"],
            )
    # and the streams opened before the cut resumed: every row once, in order
    try:
        for reader in (on_a, on_b):
            reader.wait_for(last)
            assert reader.cursors == list(range(1, last + 1))
    finally:
        on_a.close()
        on_b.close()

    # A node started while the store is unreachable says so and exits non-zero.
    proxy.cut()
    late = Node("late", a.data.parent / "late", free_port(), a.env)
    said = late.fails_to_start(a.store, a.cluster)
    assert "cannot reach the store" in said and f"127.0.0.1:{proxy.port}" in said, said
    assert "cannot reach the bus" not in said
    proxy.restore()
    with httpx.Client(timeout=30) as c:
        assert c.get(f"{a.base}/healthz").status_code == 200


def test_postgres_that_stops_answering_gets_503_not_a_hang(
    proxied: tuple[Proxy, Node, Node],
) -> None:
    """The path to PostgreSQL goes silent (the proxy keeps every connection and accepts new
    ones, but forwards nothing): neither the server's statement timeout nor TCP's timeouts
    can end the statement. The node notices (a busy connection, a probe the server does not
    answer), ends it, and answers 503 with Retry-After within seconds; the streams stay open;
    when the path answers again everything resumes, nothing lost or doubled."""
    proxy, a, b = proxied
    with a.client() as ca:
        make_station(ca)
        r = ca.post("/api/v1/projects/p1/observations", json=rows(50, start_ms=T0))
        assert r.status_code == 200, r.text
    visible(b, "/api/v1/projects/p1/devices/d1")
    on_b = native(b, 0)
    acked: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [(rows(50, T0), r.json())]
    refused: list[list[dict[str, Any]]] = []
    try:
        proxy.freeze()
        took = []
        for node, k in ((a, 1), (a, 2), (b, 3)):
            batch = rows(50, start_ms=T0 + k * 50_000)
            with node.client(timeout=120) as c:
                started = time.monotonic()
                r = c.post("/api/v1/projects/p1/observations", json=batch)
                took.append(time.monotonic() - started)
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) > 0
            refused.append(batch)
        print("PostgreSQL silent: 503 after " + ", ".join(f"{t:.1f} s" for t in took))
        assert max(took) < 15.0  # seconds, never a hang
        assert on_b.error is None and not on_b.ended  # the stream keeps its connection
        proxy.thaw()
        with a.client(timeout=60) as c:
            for batch in refused:  # sent again: each all new or all duplicates
                deadline = time.monotonic() + 30
                while True:
                    r = c.post("/api/v1/projects/p1/observations", json=batch)
                    if r.status_code != 503 or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                assert r.status_code == 200, r.text
                got = r.json()
                assert (got["accepted"], got["duplicates"]) in ((50, 0), (0, 50))
                if got["accepted"]:
                    acked.append((batch, got))
        last = max(body["last_cursor"] for _, body in acked)
        on_b.wait_for(last)
        assert on_b.cursors == list(range(1, last + 1))
    finally:
        on_b.close()
    assert sorted(history(a)) == list(range(1, last + 1))
