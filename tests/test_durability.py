"""A server killed with SIGKILL during ingest loses no acknowledged observation, and restarts
cleanly on the same data folder. A real ``streamgauge serve`` subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, make_station, rows

TOKEN = "kill-test-token"


def spawn(data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "STREAMGAUGE_ADMIN_TOKEN": TOKEN}
    log = data.parent / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamgauge",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data",
                str(data),
            ],
            env=env,
            stdout=out,
            stderr=out,
        )
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)


def batch_of(producer: int, k: int, size: int) -> list[dict[str, Any]]:
    """Producer ``producer``'s ``k``-th batch: its own two devices (so two producers' batches
    share no series and a bulk load's writer may commit them together)."""
    out = rows(size, start_ms=1_600_000_000_000 + k * 1000 * size, devices=2)
    for row in out:
        row["device"] = f"d{2 * producer + int(row['device'][1:])}"
    return out


@pytest.mark.parametrize(
    ("size", "producers"),
    [(500, 1), (2000, 2)],  # live batches; a bulk load (big batches, group commits)
)
def test_sigkill_during_ingest_loses_nothing_acknowledged(
    tmp_path: Path, size: int, producers: int
) -> None:
    data = tmp_path / "data"
    port = free_port()
    proc = spawn(data, port)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    acked: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
            make_station(c, devices=4)

        def produce(producer: int) -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
                for k in range(10_000):
                    batch = batch_of(producer, k, size)
                    try:
                        r = c.post("/api/v1/projects/p1/observations", json=batch)
                    except httpx.HTTPError:
                        return  # the server died mid-request: this batch was not acknowledged
                    assert r.status_code == 200, r.text
                    acked.append((r.json(), batch))

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        for t in threads:
            t.start()
        while len(acked) < 20:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 20

    proc = spawn(data, port)  # restarts cleanly on the same folder
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
            stored: dict[int, dict[str, Any]] = {}
            page = None
            while True:
                params: dict[str, Any] = {"limit": 100_000}
                if page:
                    params["page"] = page
                body = c.get("/api/v1/projects/p1/observations", params=params).json()
                stored.update({o["cursor"]: o for o in body["observations"]})
                page = body["next"]
                if not page:
                    break
            for reply, batch in acked:
                cursors = range(reply["first_cursor"], reply["last_cursor"] + 1)
                assert len(cursors) == len(batch)
                for cursor, row in zip(cursors, batch, strict=True):
                    got = stored[cursor]
                    assert (got["device"], got["variable"], got["value"]) == (
                        row["device"],
                        row["variable"],
                        row["value"],
                    )
            head = c.get("/healthz").json()["head"]
            assert head >= max(reply["last_cursor"] for reply, _ in acked)
            assert sorted(stored) == list(range(1, len(stored) + 1))  # gapless
            # cursors continue after the head; re-sending an acknowledged batch stores nothing
            again = c.post("/api/v1/projects/p1/observations", json=acked[-1][1]).json()
            assert (again["accepted"], again["duplicates"]) == (0, size)
            more = c.post(
                "/api/v1/projects/p1/observations",
                json=rows(10, start_ms=1_500_000_000_000, devices=4),
            ).json()
            assert more["first_cursor"] == head + 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
