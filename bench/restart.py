"""``python -m bench restart``: how long a restart takes, and the memory a big network holds.

One data folder, grown in steps: a project with ``--stations`` stations x 6 variables (30,000:
180,000 series), then ``--rows`` observations ingested in ``--steps`` equal parts (default 3.2
million in two: 1.6M and 3.2M). After each part the server is stopped (SIGTERM, or SIGKILL with
``--kill``) and started again on the same folder, and the bench times, from the start of the
process, until ``GET /healthz`` answers 200 and then until a history read (one series' newest
rows) answers 200. The restart time must not grow with the log's length: compare the steps.

Memory: the server's resident memory right after it started on an empty folder, after the
network and the ingest, and after each restart (the registry loaded from the database, no
ingest buffers): bytes per series above the empty server, of the writer process and of every
process of the server (the writer and its fan-out workers, ``serve --workers``: the sum of
their proportional set sizes, shared pages counted once). Prints the core count and the load
average; the figures depend on both.

``--quick``: 5,000 stations and 400,000 rows (a minute). ``--reuse DIR`` (a folder kept with
``--keep``): no network or ingest, ``--repeat`` restarts of a fresh copy of DIR each, with the
memory above an empty server (to compare two versions of the code on the same data).

A clean stop (SIGTERM) leaves the registry snapshot (``registry.snapshot``,
store/sqlite/snapshot.py) that the next start takes instead of building the registry from the
tables; each restart says whether one was there. ``--no-snapshot`` removes it before each start
(the registry is then built from the tables, as after a kill or an upgrade). With ``--reuse``,
the kept folder's snapshot is used if it was left by a stop of this code (else it is ignored).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from .common import (
    free_port,
    machine_speed,
    make_mesonet,
    node_mb,
    proc_cpu_seconds,
    proc_rss_mb,
)
from .harness import HOST, PROJECT, TOKEN, Ingestor, log, setup_mesonet

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


class Server:
    """``streamgauge serve`` on a data folder that outlives it (stop and start again)."""

    def __init__(self, data: Path, logs: Path, durability: str, workers: int = 0) -> None:
        self.exe = Path(
            os.environ.get("STREAMGAUGE_BENCH_EXE") or Path(sys.executable).parent / "streamgauge"
        )
        self.data = data
        self.durability = durability
        self.workers = workers  # serve --workers (0: its default, the number of cores)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.logf = open(logs, "ab")  # noqa: SIM115 - closed in stop()

    def start(self) -> float:
        """Start the server; return when it started (``time.perf_counter``)."""
        env = dict(
            os.environ, STREAMGAUGE_ADMIN_TOKEN=TOKEN, STREAMGAUGE_DURABILITY=self.durability
        )
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(self.exe), "serve", "--host", HOST, "--port", str(self.port)]
            + ["--data", str(self.data)]
            + (["--workers", str(self.workers)] if self.workers else []),
            env=env,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
        )
        return started

    def wait(self, path: str, deadline_s: float = 600) -> float:
        """Poll ``path`` until it answers 200; return when it did (``time.perf_counter``)."""
        assert self.proc is not None
        deadline = time.perf_counter() + deadline_s
        with httpx.Client(base_url=f"http://{HOST}:{self.port}", headers=HEADERS) as c:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"streamgauge exited: see {self.logf.name}")
                try:
                    if c.get(path, timeout=deadline_s).status_code == 200:
                        return time.perf_counter()
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
        raise RuntimeError(f"{path} did not answer 200 in {deadline_s:.0f} s")

    def cpu_s(self) -> float:
        """The server's CPU time so far (user + system, all threads): less swayed by the
        machine's load than the wall time."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        assert self.proc is not None
        return proc_rss_mb(self.proc.pid)

    def node_mb(self) -> float:
        """The writer and its fan-out workers together (sum of PSS)."""
        assert self.proc is not None
        return node_mb(self.proc.pid)[0]

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        self.logf.close()


SNAPSHOT = "registry.snapshot"  # what a clean stop leaves (store/sqlite/snapshot.py)


def _snapshot(data: Path, keep: bool) -> str:
    """Whether the next start finds a registry snapshot in ``data`` (removed unless ``keep``)."""
    path = data / SNAPSHOT
    if not path.exists():
        return "none"
    if not keep:
        path.unlink()
        return "removed (--no-snapshot)"
    return "kept by the stop"


def _restart(srv: Server, kill: bool, history: str, keep: bool = True) -> dict[str, Any]:
    srv.stop(kill=kill)
    snap = _snapshot(srv.data, keep)
    started = srv.start()
    healthy = srv.wait("/healthz")
    read = srv.wait(history)
    return {
        "healthz_s": healthy - started,
        "history_s": read - started,
        "cpu_s": srv.cpu_s(),
        "rss_mb": srv.rss_mb(),
        "node_mb": srv.node_mb(),
        "snapshot": snap,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stations", type=int, default=30_000, help="stations (x 6 variables)")
    ap.add_argument("--rows", type=int, default=3_200_000, help="observations in all")
    ap.add_argument("--steps", type=int, default=2, help="restarts, after equal parts of --rows")
    ap.add_argument("--kill", action="store_true", help="stop with SIGKILL instead of SIGTERM")
    ap.add_argument("--batch", type=int, default=10_000, help="rows per ingest request")
    ap.add_argument("--producers", type=int, default=2, help="concurrent ingest requests")
    ap.add_argument("--durability", default="normal", choices=["full", "normal"])
    ap.add_argument("--keep", default=None, help="keep the data folder here (must not exist)")
    ap.add_argument("--quick", action="store_true", help="5,000 stations, 400,000 rows")
    ap.add_argument("--reuse", default=None, help="restart copies of this kept data folder")
    ap.add_argument("--repeat", type=int, default=3, help="restarts with --reuse")
    ap.add_argument(
        "--no-snapshot",
        action="store_true",
        help="remove the registry snapshot a clean stop leaves before each start (the registry "
        "is then built from the tables, as after a kill)",
    )
    ap.add_argument(
        "--workers", type=int, default=0, help="serve --workers (default: serve's, the cores)"
    )
    a = ap.parse_args(argv)
    if a.quick:
        a.stations, a.rows = 5_000, 400_000
    if a.reuse:
        reuse(Path(a.reuse), a.stations, a.repeat, a.durability, a.workers, not a.no_snapshot)
        return

    log(
        f"streamgauge restart bench  workers={a.workers or 'default'}  "
        f"cpu_count={os.cpu_count()}  load average {os.getloadavg()[0]:.2f}  "
        f"python={sys.version.split()[0]}  durability={a.durability}  {machine_speed()}"
    )
    root = Path(tempfile.mkdtemp(prefix="sg-bench-restart-"))
    data = Path(a.keep) if a.keep else root / "data"
    srv = Server(data, root / "server.log", a.durability, a.workers)
    m = make_mesonet(a.stations)
    history = f"/api/v1/projects/{PROJECT}/observations?device={m.ids[-1]}&variable=air_temp"
    out: dict[str, Any] = {"steps": []}
    try:
        started = srv.start()
        srv.wait("/healthz")
        log(f"  empty server up in {time.perf_counter() - started:.2f} s")
        time.sleep(1)
        rss_empty, node_empty = srv.rss_mb(), srv.node_mb()
        t = time.perf_counter()
        setup_mesonet(srv.port, m)
        rss_setup = srv.rss_mb()
        log(
            f"  network: {a.stations:,} stations, {m.nseries:,} series in "
            f"{time.perf_counter() - t:.1f} s; server rss {rss_empty:.0f} MB empty, "
            f"{rss_setup:.0f} MB with the network"
        )
        assert srv.proc is not None
        ing = Ingestor(m, "streamgauge", HOST, srv.port, srv.proc.pid, TOKEN)
        part = a.rows // a.steps
        for _ in range(a.steps):
            t = time.perf_counter()
            for chunk in range(0, part, 400_000):
                ing.run(min(400_000, part - chunk), a.batch, a.producers)
            rss_ingest = srv.rss_mb()
            log(
                f"  ingested {ing.row:,} rows ({part:,} in {time.perf_counter() - t:.1f} s); "
                f"server rss {rss_ingest:.0f} MB = "
                f"{(rss_ingest - rss_empty) * 2**20 / m.nseries:,.0f} B a series above empty"
            )
            load = os.getloadavg()[0]
            r = _restart(srv, a.kill, history, not a.no_snapshot)
            per_series = (r["rss_mb"] - rss_empty) * 2**20 / m.nseries
            node_series = (r["node_mb"] - node_empty) * 2**20 / m.nseries
            log(
                f"  restart with {ing.row:,} rows ({'SIGKILL' if a.kill else 'SIGTERM'}, load "
                f"{load:.2f}, registry snapshot: {r['snapshot']}): /healthz "
                f"{r['healthz_s']:.2f} s, history read "
                f"{r['history_s']:.2f} s (CPU {r['cpu_s']:.2f} s); rss {r['rss_mb']:.0f} MB = "
                f"{per_series:,.0f} B a series above empty; every process: {r['node_mb']:.0f} MB"
                f" = {node_series:,.0f} B a series above empty ({node_empty:.0f} MB)"
            )
            out["steps"].append(
                {"rows": ing.row, **r, "per_series_b": per_series, "node_series_b": node_series}
            )
        if srv.proc is not None:
            # the restarted server's upkeep (index the tail, fold the summaries) done
            at, writer_mb, every_mb = _settle(srv)[-1]
            log(
                f"  at rest ({at:.0f} s later): writer rss {writer_mb:.0f} MB = "
                f"{(writer_mb - rss_empty) * 2**20 / m.nseries:,.0f} B a series above empty; "
                f"every process {every_mb:.0f} MB = "
                f"{(every_mb - node_empty) * 2**20 / m.nseries:,.0f} B a series"
            )
    finally:
        srv.close()
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    log(
        "\nrows        /healthz   history read   CPU to read   above empty / series: writer"
        "   every process"
    )
    for s in out["steps"]:
        log(
            f"{s['rows']:>9,d}   {s['healthz_s']:6.2f} s   {s['history_s']:8.2f} s   "
            f"{s['cpu_s']:8.2f} s   {s['per_series_b']:>10,.0f} B   {s['node_series_b']:>10,.0f} B"
        )
    log(f"cpu_count={os.cpu_count()}  load average now {os.getloadavg()[0]:.2f}  {machine_speed()}")


SETTLE_S = 20.0  # the 180,000-series folder's upkeep after a restart takes 15 to 20 s
SETTLE_MAX_S = 90.0
QUIET_CORES = 0.03  # "at rest": the server used less than this much of a core for 2 s


def _settle(srv: Server) -> list[tuple[float, float, float]]:
    """(seconds since now, writer RSS MB, every process MB) once a second for at least
    ``SETTLE_S`` and then until the server (every process) is at rest: two seconds running
    with less than ``QUIET_CORES`` of a core used (a plateau of memory while the writer folds
    is no sign of being done; a slower machine takes longer), at most ``SETTLE_MAX_S``."""
    assert srv.proc is not None
    t0 = time.monotonic()
    samples: list[tuple[float, float, float]] = []
    quiet = 0
    cpu = proc_cpu_seconds(srv.proc.pid)
    while time.monotonic() - t0 < SETTLE_MAX_S:
        time.sleep(1.0)
        now = proc_cpu_seconds(srv.proc.pid)
        quiet = quiet + 1 if now - cpu < QUIET_CORES else 0
        cpu = now
        samples.append((time.monotonic() - t0, srv.rss_mb(), srv.node_mb()))
        if quiet >= 2 and time.monotonic() - t0 >= SETTLE_S:
            break
    return samples


def reuse(
    kept: Path, stations: int, repeat: int, durability: str, workers: int = 0, keep: bool = True
) -> None:
    """Restart ``repeat`` fresh copies of a kept data folder (the network of ``stations``)."""
    log(
        f"streamgauge restart bench (reuse {kept.name})  cpu_count={os.cpu_count()}  load "
        f"average {os.getloadavg()[0]:.2f}  python={sys.version.split()[0]}  {machine_speed()}"
    )
    root = Path(tempfile.mkdtemp(prefix="sg-bench-restart-"))
    m = make_mesonet(stations)
    history = f"/api/v1/projects/{PROJECT}/observations?device={m.ids[-1]}&variable=air_temp"
    try:
        empty = Server(root / "empty", root / "empty.log", durability, workers)
        empty.start()
        empty.wait("/healthz")
        time.sleep(1)
        rss_empty, node_empty = empty.rss_mb(), empty.node_mb()
        empty.close()
        results = []
        for i in range(repeat):
            data = root / f"data{i}"
            shutil.copytree(kept, data)
            snap = _snapshot(data, keep)
            srv = Server(data, root / "server.log", durability, workers)
            try:
                load = os.getloadavg()[0]
                started = srv.start()
                healthy = srv.wait("/healthz")
                read = srv.wait(history)
                r = {
                    "healthz_s": healthy - started,
                    "history_s": read - started,
                    "cpu_s": srv.cpu_s(),
                    "rss_mb": srv.rss_mb(),
                }
                per = (r["rss_mb"] - rss_empty) * 2**20 / m.nseries
                log(
                    f"  restart {i + 1} (load {load:.2f}, registry snapshot: "
                    f"{snap.replace('kept by the stop', 'in the folder')}): "
                    f"/healthz {r['healthz_s']:.2f} s, "
                    f"history read {r['history_s']:.2f} s (CPU {r['cpu_s']:.2f} s); rss "
                    f"{r['rss_mb']:.0f} MB = "
                    f"{per:,.0f} B a series above empty ({rss_empty:.0f} MB)"
                )
                # Then once a second: 6 s later (the writer indexes the tail and folds the
                # summaries' backlog meanwhile), the peak, and settled (``SETTLE_S`` later, the
                # upkeep done and its page cache given back).
                samples = _settle(srv)
                at6 = min(samples, key=lambda x: abs(x[0] - 6.0))
                settled_at, settled_mb, settled_node_mb = samples[-1]

                def above(mb: float, empty_mb: float) -> float:
                    return (mb - empty_mb) * 2**20 / m.nseries

                six = above(at6[1], rss_empty)
                peak = above(max(x[1] for x in samples), rss_empty)
                settled = above(settled_mb, rss_empty)
                node6 = above(at6[2], node_empty)
                node = above(settled_node_mb, node_empty)
                log(
                    f"    6 s later: {six:,.0f} B a series above empty, every process (sum of "
                    f"PSS) {node6:,.0f} B; peak {peak:,.0f} B; settled ({settled_at:.0f} s "
                    f"later): {settled:,.0f} B, every process {node:,.0f} B a series above "
                    f"empty ({node_empty:.0f} MB)"
                )
                results.append(
                    (r["healthz_s"], r["history_s"], per, six, r["cpu_s"], node6, settled, node)
                )
            finally:
                srv.close()
                shutil.rmtree(data, ignore_errors=True)
        med = [sorted(col)[len(col) // 2] for col in zip(*results, strict=True)]
        log(
            f"median of {repeat}: /healthz {med[0]:.2f} s, history read {med[1]:.2f} s "
            f"(CPU {med[4]:.2f} s), "
            f"{med[2]:,.0f} B a series above empty (6 s later {med[3]:,.0f} B, every process "
            f"{med[5]:,.0f} B; settled {med[6]:,.0f} B, every process {med[7]:,.0f} B); load "
            f"average now {os.getloadavg()[0]:.2f}"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
