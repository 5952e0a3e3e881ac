"""Stopping ``streamgauge demo`` and ``streamgauge simulate`` as a terminal does (issue 11 item
23); the end-to-end run of the demo is ``tests/test_cli.py::test_demo_end_to_end_and_ctrl_c``."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Server, free_port
from tests.test_cli import (
    EXE,
    START_S,
    STOP_S,
    alive,
    assert_gone,
    assert_quiet,
    children,
    clean_env,
    ctrl_c,
    port_is_free,
    started,
    wait_healthy,
)


def demo_cmd(port: int, data: Path) -> list[str]:
    return [*EXE, "demo", "--port", str(port), "--data", str(data), "--stations", "2"]


def wait_children(pid: int, n: int) -> list[int]:
    deadline = time.monotonic() + START_S
    while len(kids := children(pid)) < n:
        assert time.monotonic() < deadline, f"{len(kids)} children of the demo"
        time.sleep(0.05)
    return kids


def test_ctrl_c_while_the_demo_starts(tmp_path: Path) -> None:
    """issue 11 item 23: Ctrl-C while the server is still starting (importing, opening its
    database) stops it silently too: no KeyboardInterrupt traceback from a child that has no
    handler yet."""
    port = free_port()
    log = tmp_path / "demo.log"
    with started(demo_cmd(port, tmp_path / "data"), log, clean_env()) as proc:
        kids = wait_children(proc.pid, 1)  # the server process exists, not yet serving
        ctrl_c(proc)
        assert proc.wait(timeout=STOP_S) in (0, 130), log.read_text()
        assert_gone(kids)
    assert_quiet(log.read_text())
    assert port_is_free(port)


def test_second_ctrl_c_hurries_the_stop(tmp_path: Path) -> None:
    """issue 11 item 23: a second Ctrl-C while the demo stops kills what is left, still without
    a traceback."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "demo.log"
    with started(demo_cmd(port, tmp_path / "data"), log, clean_env()) as proc:
        wait_healthy(proc, url, log)
        kids = wait_children(proc.pid, 2)
        ctrl_c(proc)
        deadline = time.monotonic() + STOP_S
        while "stopping the simulator" not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        if proc.poll() is None:
            ctrl_c(proc)  # while the demo waits for its children: they are killed
        assert proc.wait(timeout=STOP_S) in (0, 130), log.read_text()
        assert_gone(kids)
    assert_quiet(log.read_text())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_demo_children_do_not_outlive_it(tmp_path: Path) -> None:
    """issue 11 item 23: the children run in process groups of their own (out of reach of the
    terminal's Ctrl-C), so they are tied to the demo instead: SIGKILL of the demo alone stops
    the server and the simulator, and frees the port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "demo.log"
    with started(demo_cmd(port, tmp_path / "data"), log, clean_env()) as proc:
        wait_healthy(proc, url, log)
        kids = wait_children(proc.pid, 2)
        proc.kill()  # the demo only, not its process group
        proc.wait(timeout=STOP_S)
        assert_gone(kids)
    deadline = time.monotonic() + STOP_S
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert port_is_free(port)
    assert "Traceback" not in log.read_text()


def test_ctrl_c_on_simulate_stops_it_gracefully(server: Server, tmp_path: Path) -> None:
    """issue 11 item 23: Ctrl-C on ``streamgauge simulate`` ends it after the batch in flight,
    with its summary, exit code 130 and no traceback."""
    log = tmp_path / "simulate.log"
    cmd = [*EXE, "simulate", "--url", server.url, "--stations", "1", "--rate", "20"]
    with started(cmd, log, clean_env(STREAMGAUGE_TOKEN=server.token)) as proc:
        with server.client() as client:
            deadline = time.monotonic() + START_S
            while True:
                r = client.get("/api/v1/projects/demo/observations", params={"limit": 1})
                if r.status_code == 200 and r.json()["observations"]:
                    break
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        ctrl_c(proc)
        assert proc.wait(timeout=STOP_S) == 128 + signal.SIGINT, log.read_text()
    out = log.read_text()
    assert "simulate: " in out and " accepted" in out, out
    assert_quiet(out)
    assert not alive(proc.pid)
