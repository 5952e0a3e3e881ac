"""schemathesis against /openapi.json of a real server with data (issue 11 items 13 and 16).

Part of the normal suite (marker ``fuzz``; ``-m "not fuzz"`` leaves it out while iterating).
Bounded: a few examples per operation and a request timeout; the seed is fixed so a failure
reproduces (``STREAMGAUGE_FUZZ_SEED`` picks another, ``STREAMGAUGE_FUZZ_EXAMPLES`` more
examples). Checks: ``not_a_server_error`` (no 5xx) and ``status_code_conformance`` (every
status answered is declared).

Left out: the endless streams (they never end a response), and the alert channels and DT data
connectors, whose fuzzed webhook targets would make the server send requests to whatever
address the fuzzer invents.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, make_station, rows, start_server

EXCLUDED = r"(/stream$|devices:stream$|channels|dataconnectors)"


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            make_station(c)
            r = c.post("/api/v1/projects/p1/observations", json=rows(200))
            assert r.status_code == 200, r.text
        yield srv
    finally:
        srv.stop()


@pytest.mark.fuzz
def test_schemathesis_finds_no_server_error_and_no_undeclared_status(
    seeded: Server, tmp_path: Path
) -> None:
    """issue 11 items 13 and 16: schemathesis (every phase: examples, coverage, fuzzing,
    stateful) against the live server finds no 5xx and no status the document does not
    declare."""
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        seeded.url + "/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance",
        "--max-examples",
        os.environ.get("STREAMGAUGE_FUZZ_EXAMPLES", "10"),
        "--seed",
        os.environ.get("STREAMGAUGE_FUZZ_SEED", "20261205"),
        "--header",
        f"Authorization: Bearer {seeded.token}",
        "--exclude-path-regex",
        EXCLUDED,
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--continue-on-failure",
        "--workers",
        "2",
        "--no-color",
    ]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert "API Operations" in out, out[-5000:]
    failures = out[out.find("FAILURES") :] if "FAILURES" in out else out[-5000:]
    assert done.returncode == 0, failures[:20000]
