"""The ``streamgauge`` command as a user runs it: help, serve (admin token), demo (Ctrl-C)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import free_port

EXE = [sys.executable, "-m", "streamgauge"]
START_S = 60  # deadline for a server subprocess to come up (imports, SQLite, uvicorn)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGAUGE_")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", **extra})
    return env


def run_cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}.txt"
    with out.open("wb") as f:
        proc = subprocess.run(
            [*EXE, *args], stdout=f, stderr=subprocess.STDOUT, env=clean_env(), timeout=120
        )
    return proc.returncode, out.read_text()


@contextmanager
def started(cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess in its own session, killed with its children if the test did not stop it."""
    with log.open("wb") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()}"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no /healthz within {START_S} s: {log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> bool:
    """SIGTERM; True if the server shut down by itself (uvicorn re-raises the signal after a
    graceful shutdown, so -SIGTERM counts as clean too)."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=20) in (0, -signal.SIGTERM)


def status(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{url}/api/v1/projects", headers=headers, timeout=10).status_code


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# -- help --------------------------------------------------------------------------------------


def test_help(tmp_path: Path) -> None:
    code, out = run_cli(tmp_path, "--help")
    assert code == 0, out
    for command in ("serve", "simulate", "demo"):
        assert command in out
    code, out = run_cli(tmp_path, "--version-does-not-exist")
    assert code != 0


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("serve", ["--host", "--port", "--data", "STREAMGAUGE_ADMIN_TOKEN"]),
        (
            "simulate",
            ["--url", "--token", "--stations", "--rate", "--duration", "--project", "--seed"],
        ),
        ("demo", ["--host", "--port", "--data", "--stations", "--rate", "Ctrl-C"]),
    ],
)
def test_subcommand_help(tmp_path: Path, command: str, options: list[str]) -> None:
    code, out = run_cli(tmp_path, command, "--help")
    assert code == 0, out
    for option in options:
        assert option in out, (option, out)


def test_simulate_without_token_fails_cleanly(tmp_path: Path) -> None:
    code, out = run_cli(tmp_path, "simulate", "--url", "http://127.0.0.1:9", "--duration", "1")
    assert code == 2 and "--token" in out


# -- serve -------------------------------------------------------------------------------------


def test_serve_generates_the_admin_token_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [*EXE, "serve", "--port", str(port), "--data", str(data)]
    first, second = tmp_path / "first.log", tmp_path / "second.log"

    with started(cmd, first, clean_env()) as proc:
        wait_healthy(proc, url, first)
        token = (data / "admin-token").read_text().strip()
        assert len(token) >= 32
        assert (data / "admin-token").stat().st_mode & 0o777 == 0o600
        assert status(url, token) == 200
        assert status(url, "wrong") == 401
        assert status(url, None) == 401
        assert stop(proc)
    assert first.read_text().count(token) == 1
    assert "Traceback" not in first.read_text()

    with started(cmd, second, clean_env()) as proc:
        wait_healthy(proc, url, second)
        assert status(url, token) == 200
        assert stop(proc)
    assert token not in second.read_text()
    assert (data / "admin-token").read_text().strip() == token
    assert port_is_free(port)


def test_serve_with_the_token_from_the_environment(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = clean_env(STREAMGAUGE_ADMIN_TOKEN="env-token-123")
    with started([*EXE, "serve", "--port", str(port), "--data", str(data)], log, env) as proc:
        wait_healthy(proc, url, log)
        assert status(url, "env-token-123") == 200
        assert status(url, "other") == 401
        assert stop(proc)
    assert not (data / "admin-token").exists()
    assert "env-token-123" not in log.read_text()
    assert "Traceback" not in log.read_text()


# -- demo --------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def read_observations(url: str, token: str, want: int, deadline: float) -> list[dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"}
    got: list[dict[str, object]] = []
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        while time.monotonic() < deadline:
            with client.stream("GET", "/api/v1/projects/demo/stream") as r:
                if r.status_code == 404:  # the simulator has not created the project yet
                    time.sleep(0.2)
                    continue
                assert r.status_code == 200, r.read()
                assert r.headers["content-type"].startswith("application/x-ndjson")
                for line in r.iter_lines():
                    if not line.strip():
                        continue
                    obj = orjson.loads(line)
                    if "cursor" in obj:
                        got.append(obj)
                    if len(got) >= want or time.monotonic() > deadline:
                        return got
    return got


STOP_S = 60  # hang guard for a stop (the demo's own graces are 10 s + 20 s at most)


def ctrl_c(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the process group of ``proc`` (started in its own session), as a terminal
    sends it to its foreground process group on Ctrl-C."""
    os.killpg(proc.pid, signal.SIGINT)


def wait_for_text(proc: subprocess.Popen[bytes], log: Path, text: str) -> None:
    deadline = time.monotonic() + START_S
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def assert_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + STOP_S
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)]


def assert_quiet(out: str) -> None:
    """No traceback and no error or warning line in a demo's output."""
    for bad in ("Traceback", "gave up", "CancelledError", "KeyboardInterrupt", "ERROR", "rror:"):
        assert bad not in out, out


def test_demo_end_to_end_and_ctrl_c(tmp_path: Path) -> None:
    """issue 11 item 23: Ctrl-C (SIGINT to the whole foreground process group, as a terminal
    sends it) stops the simulator first, then the server, with no traceback, no "gave up"
    lines, no CancelledError, and exit code 130."""
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "demo.log"
    cmd = [
        *EXE,
        "demo",
        "--port",
        str(port),
        "--data",
        str(data),
        "--stations",
        "3",
        "--rate",
        "50",
    ]
    with started(cmd, log, clean_env()) as proc:
        wait_healthy(proc, url, log)
        token = (data / "admin-token").read_text().strip()
        observations = read_observations(url, token, 5, time.monotonic() + START_S)
        assert len(observations) >= 5, log.read_text()
        cursors = [int(o["cursor"]) for o in observations]  # type: ignore[call-overload]
        assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
        assert all(
            {"device", "variable", "set", "time", "value", "qc"} <= o.keys() for o in observations
        )
        kids = children(proc.pid)
        assert len(kids) == 2, kids  # the server and the simulator
        wait_for_text(proc, log, "Press Ctrl-C to stop.")  # the banner follows the data

        ctrl_c(proc)
        assert proc.wait(timeout=STOP_S) in (0, 130)
        assert_gone(kids)
        assert port_is_free(port)
    out = log.read_text()
    assert "streamgauge demo is running" in out and token in out
    assert f"ws://127.0.0.1:{port}/feed/ft_" in out, out  # a working feed token was made
    assert_quiet(out)
