"""``Client.stream()`` across a real server restart: a ``streamgauge serve`` subprocess is
killed (SIGKILL) while a consumer follows the stream, and started again on the same port and
data; every observation arrives once, in order."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from streamgauge.client import Client
from tests.conftest import MS, free_port, rows
from tests.test_cli import clean_env, started, wait_healthy

TOKEN = "restart-test-token"


def test_stream_loses_and_repeats_nothing_across_a_server_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "streamgauge", "serve", "--port", str(port), "--data", str(data)]
    env = clean_env(STREAMGAUGE_ADMIN_TOKEN=TOKEN)
    got: list[int] = []
    done = threading.Event()

    def consume(c: Client) -> None:
        for o in c.stream("p1", since=0):
            got.append(o.cursor)
            if len(got) >= 2000:
                break
        done.set()

    with started(cmd, tmp_path / "first.log", env) as proc:
        wait_healthy(proc, url, tmp_path / "first.log")
        with Client(url, token=TOKEN) as c:
            c.create_project(id="p1")
            c.create_device(
                "p1",
                [
                    {"id": f"d{i}", "variables": [{"name": "air_temp"}, {"name": "wind_speed"}]}
                    for i in range(2)
                ],
            )
            c.ingest("p1", rows(1000))
        consumer = Client(url, token=TOKEN)
        reader = threading.Thread(target=consume, args=(consumer,), daemon=True)
        reader.start()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with started(cmd, tmp_path / "second.log", env) as proc:
        wait_healthy(proc, url, tmp_path / "second.log")
        with Client(url, token=TOKEN) as c:
            c.ingest("p1", rows(1000, start_ms=1_750_000_000_000))
        assert done.wait(timeout=120_000 * MS), f"got {len(got)} of 2000"
        consumer.close()
    assert got == list(range(1, 2001))
