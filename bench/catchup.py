"""Catch-up beside a busy project: how long a small project's stream takes to catch up from
cursor 0 when another project fills the log around it, against the same small project alone.

    .venv/bin/python -m bench catchup                        # about 1 minute
    .venv/bin/python -m bench catchup --before-src OLD/src   # the same against older sources

Two servers (subprocesses on loopback, durability=normal), each given the same "small" project
(10 devices, one row each per batch). The second also gets a "busy" project: ``--busy-rows``
observations in batches of 5,000, a small batch after each busy one. Measured (median of
``--repeat``), on each server: a native NDJSON stream of the small project from ``since=0``,
from the request to its last stored row (the catch-up), and a history read of the small
project (``limit=1000``). The yardstick is the small project alone: a catch-up that reads only
the project's rows takes about as long beside the busy project as alone (ratio near 1); one
that reads every project's rows grows with the neighbour's traffic. With ``--before-src`` the
same is run against a server from other sources (e.g. ``git archive`` of an older commit),
printed side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import httpx

from .common import build_request, machine_speed_ms, post_all
from .harness import HOST, TOKEN, StreamgaugeServer, log, run_async

SMALL, BUSY = "small", "busy"
T0 = 1_700_000_000_000
SMALL_DEVICES = 10
BUSY_DEVICES = 1000
BUSY_BATCH = 5000
VARIABLES = ["air_temp", "relative_humidity"]


def _client(port: int) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://{HOST}:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=600,
    )


def setup(c: httpx.Client, busy: bool) -> None:
    projects = [(SMALL, SMALL_DEVICES)] + ([(BUSY, BUSY_DEVICES)] if busy else [])
    for project, devices in projects:
        assert c.post("/api/v1/projects", json={"id": project}).status_code == 201
        body = [
            {"id": f"{project}{i}", "variables": [{"name": v} for v in VARIABLES]}
            for i in range(devices)
        ]
        r = c.post(f"/api/v1/projects/{project}/devices", json=body)
        assert r.status_code == 201, r.text


def _ndjson(project: str, devices: int, rows: int, first: int, t: int) -> bytes:
    """``rows`` rows of ``project``, row r (counting from ``first``) on device r % devices,
    variable r // devices % 2, at a time that makes every key unique."""
    out = []
    for r in range(first, first + rows):
        d = r % devices
        v = VARIABLES[(r // devices) % len(VARIABLES)]
        tick = r // (devices * len(VARIABLES))
        out.append(
            b'{"device":"%s%d","variable":"%s","time":%d,"value":%d.5}\n'
            % (project.encode(), d, v.encode(), t + tick * 1000, r % 50)
        )
    return b"".join(out)


def fill(port: int, busy_rows: int, busy: bool) -> int:
    """Ingest the workload; returns the small project's row count."""
    batches = busy_rows // BUSY_BATCH
    path = "/api/v1/projects/{}/observations"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
    reqs = []
    for k in range(batches):
        if busy:
            body = _ndjson(BUSY, BUSY_DEVICES, BUSY_BATCH, k * BUSY_BATCH, T0)
            reqs.append(build_request("POST", HOST, port, path.format(BUSY), headers, body))
        body = _ndjson(SMALL, SMALL_DEVICES, SMALL_DEVICES, k * SMALL_DEVICES, T0)
        reqs.append(build_request("POST", HOST, port, path.format(SMALL), headers, body))
    # one connection: the busy and small batches interleave in the log as sent
    run_async(post_all(HOST, port, reqs, 1, (200,)))
    return batches * SMALL_DEVICES


def catch_up_ms(c: httpx.Client, expect: int) -> float:
    """A stream of the small project from cursor 0: ms until its ``expect`` stored rows came."""
    t = time.perf_counter()
    seen = 0
    with c.stream(
        "GET", f"/api/v1/projects/{SMALL}/stream", params={"since": 0, "qc": "none"}
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith('{"cursor"'):
                seen += 1
                if seen == expect:
                    break
    return (time.perf_counter() - t) * 1000


def history_ms(c: httpx.Client) -> float:
    t = time.perf_counter()
    r = c.get(f"/api/v1/projects/{SMALL}/observations", params={"limit": 1000, "qc": "none"})
    assert r.status_code == 200, r.text
    return (time.perf_counter() - t) * 1000


def measure(busy: bool, busy_rows: int, repeat: int, src: str | None) -> dict[str, Any]:
    env = {"STREAMGAUGE_CATCHUP_PAGE_ROWS": "5000"}
    if src:
        env["PYTHONPATH"] = src
    with StreamgaugeServer("normal", env) as srv, _client(srv.port) as c:
        setup(c, busy)
        t = time.perf_counter()
        small = fill(srv.port, busy_rows, busy)
        fill_s = time.perf_counter() - t
        head = int(
            next(
                ln.split()[1]
                for ln in c.get("/metrics").text.splitlines()
                if ln.startswith("streamgauge_log_head ")
            ).split(".")[0]
        )
        time.sleep(1.0)  # let the writer index the tail while idle, as a quiet server would
        catch = [catch_up_ms(c, small) for _ in range(repeat)]
        hist = [history_ms(c) for _ in range(repeat)]
    return {
        "busy": busy,
        "log_rows": head,
        "small_rows": small,
        "fill_s": fill_s,
        "catchup_ms": catch,
        "history_ms": hist,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--busy-rows", type=int, default=600_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--before-src",
        default=None,
        help="a src/ folder of other streamgauge sources to run the same workload against",
    )
    a = ap.parse_args()
    log(
        f"streamgauge bench catchup  cpu_count={os.cpu_count()}  "
        f"python={sys.version.split()[0]}  load average {os.getloadavg()[0]:.2f}  "
        f"machine speed {machine_speed_ms():.0f} ms (lower is faster)"
    )
    sides: list[tuple[str, str | None]] = [("this code", os.environ.get("PYTHONPATH"))]
    if a.before_src:
        sides.append(("before", a.before_src))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, src in sides:
        results[name] = {}
        for busy in (False, True):
            label = "beside busy" if busy else "alone"
            r = measure(busy, a.busy_rows, a.repeat, src)
            results[name][label] = r
            log(
                f"  {name:9s} {label:11s}: log {r['log_rows']:,} rows ({r['small_rows']:,} "
                f"small), filled in {r['fill_s']:.1f} s; catch-up ms "
                + " ".join(f"{x:.0f}" for x in r["catchup_ms"])
                + "; history ms "
                + " ".join(f"{x:.0f}" for x in r["history_ms"])
            )
    log("\n" + "=" * 78)
    log(f"SUMMARY (median of {a.repeat}; busy project: {a.busy_rows:,} rows beside the small one)")
    log(f"{'measure':44s}" + "".join(f"{n:>12s}" for n, _ in sides))

    def line(name: str, fn: Any, fmt: str = ",.0f") -> None:
        log(f"{name:44s}" + "".join(f"{format(fn(results[n]), fmt):>12s}" for n, _ in sides))

    def med(key: str, label: str) -> Any:
        return lambda r: statistics.median(r[label][key])

    line("small catch-up ms, alone (yardstick)", med("catchup_ms", "alone"))
    line("small catch-up ms, beside busy", med("catchup_ms", "beside busy"))
    line(
        "ratio beside busy / alone",
        lambda r: med("catchup_ms", "beside busy")(r) / med("catchup_ms", "alone")(r),
        ".2f",
    )
    line("small history read ms (limit 1000), alone", med("history_ms", "alone"))
    line("small history read ms, beside busy", med("history_ms", "beside busy"))
    log("the machine may be busy with other work: compare the ratio, measured in one run")


if __name__ == "__main__":
    main()
