"""Two nodes, one cluster: two real ``streamgauge serve`` processes on loopback with the same
PostgreSQL store (a fresh database per test, dropped after), the same NATS bus and a fresh
cluster name (its NATS stream deleted after), the same admin token and token-signing key
(``STREAMGAUGE_TOKEN_KEY``), and different data folders."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.bus.test_jetstream import NATS_URL
from tests.conftest import free_port, make_station, rows
from tests.pg import fresh_database

TOKEN = "two-nodes-admin-token"
WAIT = 30.0  # the longest a poll waits before the test fails (never the figure checked)


@dataclass
class Node:
    name: str
    data: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data.parent / f"{self.name}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout
        )

    def start(self, store: str, cluster: str) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streamgauge",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--data",
                    str(self.data),
                    "--store",
                    store,
                    "--bus",
                    NATS_URL,
                    "--cluster",
                    cluster,
                ],
                env=self.env,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"node {self.name} did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    from streamgauge.bus.jetstream import delete_cluster_stream

    cluster = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "STREAMGAUGE_ADMIN_TOKEN": TOKEN,  # no STREAMGAUGE_TOKEN_KEY: derived from the token
    }
    with fresh_database("sg_cluster") as url:
        a = Node("a", tmp_path / "a", free_port(), env)
        b = Node("b", tmp_path / "b", free_port(), env)
        try:
            a.start(url, cluster)
            b.start(url, cluster)
            yield a, b
        finally:
            for n in (a, b):
                if n.proc is not None and n.proc.poll() is None:
                    n.proc.terminate()
                    try:
                        n.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        n.kill()
            asyncio.run(delete_cluster_stream(NATS_URL, cluster))


class Reader:
    """A native NDJSON stream of ``node`` read on a thread: the observations' cursors in the
    order they arrived."""

    def __init__(self, node: Node, since: int, project: str = "p1") -> None:
        self.cursors: list[int] = []
        self.rows: dict[int, dict[str, Any]] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(node, since, project), daemon=True)
        self._thread.start()
        assert self._open.wait(WAIT), "the stream did not open"

    def _run(self, node: Node, since: int, project: str) -> None:
        try:
            with (
                node.client(timeout=60) as c,
                c.stream("GET", f"/api/v1/projects/{project}/stream", params={"since": since}) as s,
            ):
                assert s.status_code == 200, s.read()
                self._open.set()
                for line in s.iter_lines():
                    if self._stop.is_set():
                        return
                    if not line:
                        continue
                    obj = orjson.loads(line)
                    if "cursor" in obj and "value" in obj:
                        self.cursors.append(obj["cursor"])
                        self.rows[obj["cursor"]] = obj
        except BaseException as e:  # noqa: BLE001 - reported by wait_for
            self.error = e
            self._open.set()

    def wait_for(self, last: int) -> None:
        deadline = time.monotonic() + WAIT
        while not self.cursors or self.cursors[-1] < last:
            assert self.error is None, repr(self.error)
            assert time.monotonic() < deadline, f"stream reached {self.cursors[-1:]}, not {last}"
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()


def visible(node: Node, path: str) -> float:
    """Seconds until ``path`` answers 200 on ``node``."""
    started = time.monotonic()
    with node.client() as c:
        while True:
            r = c.get(path)
            if r.status_code == 200:
                return time.monotonic() - started
            assert r.status_code == 404, r.text
            assert time.monotonic() - started < WAIT, f"{path} never appeared on {node.name}"
            time.sleep(0.01)


def test_metadata_live_resume_duplicates_and_conflicts_across_nodes(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    with a.client() as ca:
        make_station(ca)
    took = visible(b, "/api/v1/projects/p1/devices/d1")
    print(f"device made on A visible on B after {took * 1000:.0f} ms")
    reader = Reader(b, since=0)
    try:
        replies = []
        with a.client() as ca:
            for k in range(5):
                r = ca.post(
                    "/api/v1/projects/p1/observations",
                    json=rows(100, start_ms=1_700_000_000_000 + k * 100_000),
                )
                assert r.status_code == 200, r.text
                replies.append(r.json())
        last = replies[-1]["last_cursor"]
        reader.wait_for(last)
        # in cursor order, exactly once, everything A acknowledged
        assert reader.cursors == list(range(1, last + 1))
    finally:
        reader.close()

    # a cursor given by A resumes on B: the rest, nothing lost or doubled
    mid = replies[2]["last_cursor"]
    resumed = Reader(b, since=mid)
    try:
        resumed.wait_for(last)
        assert resumed.cursors == list(range(mid + 1, last + 1))
    finally:
        resumed.close()

    with b.client() as cb:
        # a batch A stored, re-sent to B: all duplicates
        again = cb.post(
            "/api/v1/projects/p1/observations", json=rows(100, start_ms=1_700_000_000_000)
        )
        assert again.status_code == 200, again.text
        assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 100)
        # a conflicting value on B for a row A stored: 409, nothing written
        bad = rows(3, start_ms=1_700_000_100_000)
        bad[1]["value"] = 39.5
        r = cb.post("/api/v1/projects/p1/observations", json=bad)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["details"][0]["index"] == 1
        # B's own ingest continues the one log
        r = cb.post("/api/v1/projects/p1/observations", json=rows(10, start_ms=1_710_000_000_000))
        assert r.status_code == 200, r.text
        assert r.json()["first_cursor"] == last + 1

    # and A's streams see B's rows: a project made on B streams on A
    with b.client() as cb:
        make_station(cb, project="p2")
    visible(a, "/api/v1/projects/p2/devices/d0")
    on_a = Reader(a, since=0, project="p2")
    try:
        with b.client() as cb:
            r = cb.post("/api/v1/projects/p2/observations", json=rows(20))
            assert r.status_code == 200, r.text
        on_a.wait_for(r.json()["last_cursor"])
        assert on_a.cursors == list(range(r.json()["first_cursor"], r.json()["last_cursor"] + 1))
    finally:
        on_a.close()


def test_kill_9_of_a_node_during_ingest_loses_nothing_it_acknowledged(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    with a.client() as ca:
        make_station(ca, devices=4)
    visible(b, "/api/v1/projects/p1/devices/d3")
    reader = Reader(b, since=0)
    acked: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []

    def produce() -> None:
        with a.client(timeout=10) as c:
            for k in range(10_000):
                batch = rows(200, start_ms=1_600_000_000_000 + k * 200_000, devices=4)
                try:
                    r = c.post("/api/v1/projects/p1/observations", json=batch)
                except httpx.HTTPError:
                    return  # A died mid-request: this batch was not acknowledged
                assert r.status_code == 200, r.text
                acked.append((r.json(), batch))

    producer = threading.Thread(target=produce)
    producer.start()
    deadline = time.monotonic() + WAIT
    while len(acked) < 20:
        assert producer.is_alive() or len(acked) >= 20, "the producer stopped"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    a.kill()
    producer.join(30)
    assert len(acked) >= 20
    last = max(reply["last_cursor"] for reply, _ in acked)
    try:
        reader.wait_for(last)  # B's live stream has every acknowledged row, once, in order
        got = reader.cursors
        assert got == sorted(set(got)) and got[0] == 1
        assert set(range(1, last + 1)) <= set(got)
    finally:
        reader.close()
    with b.client() as cb:  # and B's history too
        stored: dict[int, dict[str, Any]] = {}
        page = None
        while True:
            params: dict[str, Any] = {"limit": 100_000}
            if page:
                params["page"] = page
            body = cb.get("/api/v1/projects/p1/observations", params=params).json()
            stored.update({o["cursor"]: o for o in body["observations"]})
            page = body["next"]
            if not page:
                break
    for reply, batch in acked:
        cursors = range(reply["first_cursor"], reply["last_cursor"] + 1)
        assert len(cursors) == len(batch)
        for cursor, row in zip(cursors, batch, strict=True):
            got_row = stored[cursor]
            assert (got_row["device"], got_row["variable"], got_row["value"]) == (
                row["device"],
                row["variable"],
                row["value"],
            )
            assert reader.rows[cursor]["value"] == row["value"]


def test_a_key_issued_on_one_node_works_on_the_other(nodes: tuple[Node, Node]) -> None:
    """A service account and its key made on A authenticate on B (the token key the nodes
    derive from their shared admin token; the key's hash is in the shared store)."""
    a, b = nodes
    with a.client() as ca:
        make_station(ca)
        r = ca.post("/api/v1/projects/p1/serviceaccounts", json={"id": "sa1", "role": "user"})
        assert r.status_code == 201, r.text
        r = ca.post("/api/v1/projects/p1/serviceaccounts/sa1/keys")
        assert r.status_code == 201, r.text
        key = r.json()
    visible(b, "/api/v1/projects/p1/serviceaccounts/sa1")
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(
            f"{b.base}/api/v1/projects/p1/devices", auth=(key["key_id"], key["secret"]), timeout=30
        )
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 200, r.text
    assert {d["id"] for d in r.json()["devices"]} >= {"d0", "d1"}
