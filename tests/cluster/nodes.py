"""Real cluster nodes for the cluster tests: ``streamgauge serve`` processes on loopback with a
shared PostgreSQL store, a NATS bus and a cluster name, plus the clients the tests read them
with (streams read on threads, a webhook receiver, polling helpers).

Every wait here polls with a generous bound (``WAIT``): the bound is what makes a broken build
fail instead of hang, never the figure a test checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.js.errors
import orjson

from tests.bus.test_jetstream import NATS_URL
from tests.conftest import free_port

TOKEN = "cluster-admin-token"
WAIT = 30.0  # the longest a poll waits before the test fails (never the figure checked)
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def eventually(check: Callable[[], bool], what: str, wait: float = WAIT) -> float:
    """Poll ``check`` until it holds; the seconds it took (fails after ``wait``)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < wait, f"{what}: not within {wait:.0f} s"
        time.sleep(0.02)
    return time.monotonic() - started


@dataclass
class Node:
    name: str
    data: Path
    port: int
    env: dict[str, str]
    bus: str = NATS_URL
    proc: subprocess.Popen[bytes] | None = None
    store: str = ""  # what it was last started with
    cluster: str = ""
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

    def command(self, store: str, cluster: str) -> list[str]:
        return [
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
            self.bus,
            "--cluster",
            cluster,
        ]

    def start(self, store: str, cluster: str) -> None:
        self.store, self.cluster = store, cluster
        self.data.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(store, cluster), env=self.env, stdout=out, stderr=out
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

    def fails_to_start(self, store: str, cluster: str) -> str:
        """Run ``serve`` expecting it to exit non-zero at once; what it printed."""
        done = subprocess.run(
            self.command(store, cluster),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def node_env(**extra: str) -> dict[str, str]:
    """The environment of every node of a test cluster: the same admin token (the token key is
    derived from it), loopback webhook targets allowed (the tests' receivers listen there)."""
    return {
        **os.environ,
        "STREAMGAUGE_ADMIN_TOKEN": TOKEN,
        "STREAMGAUGE_ALLOW_PRIVATE_TARGETS": "true",
        **extra,
    }


def new_cluster() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def running(nodes: list[Node], store: str, cluster: str) -> Iterator[list[Node]]:
    """Start ``nodes`` one after the other; stop them (and delete what the cluster keeps on
    the bus) after."""
    from streamgauge.bus.jetstream import delete_cluster_stream

    try:
        for n in nodes:
            n.start(store, cluster)
        yield nodes
    finally:
        for n in nodes:
            n.stop()
        with contextlib.suppress(Exception):  # a private NATS server may be gone already
            asyncio.run(delete_cluster_stream(nodes[0].bus, cluster))


class Reader:
    """A stream of ``node`` read on a thread: what arrived, in order.

    ``kind``: ``ndjson`` (native NDJSON: observations with their cursors), ``sse`` (native or
    DT SSE: each event's ``id:`` and data), ``dt`` (DT NDJSON: events without cursors, pings
    left out)."""

    def __init__(
        self,
        node: Node,
        path: str,
        *,
        kind: str = "ndjson",
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.cursors: list[int] = []
        self.rows: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []  # kind "dt": the events, in order
        self.error: BaseException | None = None
        self.ended = False
        self.kind = kind
        self._stop = threading.Event()
        self._open = threading.Event()
        h = dict(headers or {})
        if kind == "sse":
            h["Accept"] = "text/event-stream"
        self._thread = threading.Thread(
            target=self._run, args=(node, path, params or {}, h), daemon=True
        )
        self._thread.start()
        assert self._open.wait(WAIT), "the stream did not open"
        assert self.error is None, repr(self.error)

    def _run(self, node: Node, path: str, params: dict[str, Any], headers: dict[str, str]) -> None:
        try:
            with (
                node.client(timeout=120) as c,
                c.stream("GET", path, params=params, headers=headers) as s,
            ):
                assert s.status_code == 200, s.read()
                self._open.set()
                current: int | None = None
                for line in s.iter_lines():
                    if self._stop.is_set():
                        return
                    if not line:
                        continue
                    if self.kind == "sse":
                        if line.startswith("id: "):
                            current = int(line[4:])
                        elif line.startswith("data: ") and current is not None:
                            self.cursors.append(current)
                            self.rows[current] = orjson.loads(line[6:])
                            current = None
                        continue
                    obj = orjson.loads(line)
                    if self.kind == "dt":
                        event = obj.get("result", {}).get("event")
                        if event is not None and event.get("eventType") != "ping":
                            self.events.append(event)
                    elif "cursor" in obj and "value" in obj:
                        self.cursors.append(obj["cursor"])
                        self.rows[obj["cursor"]] = obj
            self.ended = True
        except BaseException as e:  # noqa: BLE001 - reported by wait_for
            self.error = e
            self._open.set()

    def wait_for(self, last: int) -> None:
        """Until the stream has delivered cursor ``last`` (or beyond)."""
        deadline = time.monotonic() + WAIT
        while not self.cursors or self.cursors[-1] < last:
            assert self.error is None, repr(self.error)
            assert time.monotonic() < deadline, f"stream reached {self.cursors[-1:]}, not {last}"
            time.sleep(0.02)

    def wait_events(self, n: int) -> None:
        deadline = time.monotonic() + WAIT
        while len(self.events) < n:
            assert self.error is None, repr(self.error)
            assert time.monotonic() < deadline, f"{len(self.events)} events, not {n}"
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()


def native(node: Node, since: int, project: str = "p1", *, sse: bool = False) -> Reader:
    """The native stream of ``project`` on ``node`` from ``since`` (SSE: ``Last-Event-ID``)."""
    path = f"/api/v1/projects/{project}/stream"
    if sse:
        return Reader(node, path, kind="sse", headers={"Last-Event-ID": str(since)})
    return Reader(node, path, params={"since": since})


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


def history(node: Node, project: str = "p1") -> dict[int, dict[str, Any]]:
    """Every stored observation of ``project``, by cursor, as ``node`` serves them (a 503 is
    retried after its Retry-After, as a client does, for at most ``WAIT``)."""
    stored: dict[int, dict[str, Any]] = {}
    page = None
    deadline = time.monotonic() + WAIT
    with node.client() as c:
        while True:
            params: dict[str, Any] = {"limit": 100_000}
            if page:
                params["page"] = page
            r = c.get(f"/api/v1/projects/{project}/observations", params=params)
            if r.status_code == 503 and time.monotonic() < deadline:
                time.sleep(float(r.headers.get("retry-after", "1")))
                continue
            assert r.status_code == 200, r.text
            body = r.json()
            stored.update({o["cursor"]: o for o in body["observations"]})
            page = body["next"]
            if not page:
                return stored


class Receiver:
    """A webhook receiver on loopback: every POST body, in arrival order."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.got.append(orjson.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def messages(self) -> list[Any]:
        with self.lock:
            return [b.get("message") for b in self.got]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


async def _holder_pid(bus: str, cluster: str) -> int | None:
    """The process id of the node holding the cluster's work lease (the holder's id on the
    bus names its process: ``bus/jetstream.default_node_id``)."""
    nc = await asyncio.wait_for(
        nats.connect(servers=[bus], connect_timeout=5, allow_reconnect=False), 10
    )
    try:
        kv = await nc.jetstream().key_value(f"SG_{cluster}_leases")
        entry = await kv.get("work")
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        return None
    finally:
        await nc.close()
    if entry.value is None:
        return None
    return int(entry.value.decode().rsplit("-", 2)[1])


def holder(nodes: list[Node], cluster: str) -> Node | None:
    """The running node of ``nodes`` that holds the work lease, if any."""
    pid = asyncio.run(_holder_pid(nodes[0].bus, cluster))
    for n in nodes:
        if n.alive and n.proc is not None and n.proc.pid == pid:
            return n
    return None


class NatsServer:
    """A private ``nats-server`` with JetStream on a loopback port and a store folder of its
    own: stopped (SIGTERM or SIGKILL) and started again on the same port by the tests."""

    def __init__(self, store_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.store_dir = store_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    NATS_SERVER,
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-sd",
                    str(self.store_dir),
                ],
                stdout=out,
                stderr=out,
            )

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        eventually(answers, "nats-server listening")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
