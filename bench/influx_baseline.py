"""Ingest yardstick: InfluxDB 1.6 (Debian package `influxdb`), durable (WAL fsync on every write).

`InfluxServer` starts `influxd` on loopback with a temporary config and folder and stops it again.
The same observations as the streamgauge run are written as line protocol
(`obs,station=SG00001,variable=air_temp value=12.5 <ms>`, precision=ms) with the same batch size
and number of concurrent producers.

Run by `python -m bench ingest` (alone: `python -m bench ingest --skip sg-ingest,sg-fanout,ws`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from .common import free_port

CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  # durable: fsync the WAL on every write before answering
  wal-fsync-delay = "0s"
  index-version = "inmem"
  query-log-enabled = false
  trace-logging-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  auth-enabled = false
  log-enabled = false
  suppress-write-log = true
  pprof-enabled = false
  max-body-size = 0

[logging]
  level = "warn"
"""

INSTALL_HINT = (
    "influxd not found. Install InfluxDB 1.6 from Debian: "
    "`apt-get update && apt-get install -y influxdb` (as root), or run the bench as root."
)


def ensure_influxd(auto_install: bool = True) -> str | None:
    exe = shutil.which("influxd")
    if exe:
        return exe
    if auto_install and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing influxdb (apt-get) ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(
            ["apt-get", "update", "-qq"], env=env, check=False, stdout=subprocess.DEVNULL
        )
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "influxdb"],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
        )
        # the package may start a system service; we use our own instance on another port
        return shutil.which("influxd")
    return None


class InfluxServer:
    def __init__(self, exe: str):
        self.exe = exe
        self.root = Path(tempfile.mkdtemp(prefix="sg-bench-influx-"))
        self.port = free_port()
        self.rpc_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> InfluxServer:
        cfg = self.root / "influxdb.conf"
        cfg.write_text(CONFIG.format(root=self.root, port=self.port, rpc_port=self.rpc_port))
        self.log = open(self.root / "influxd.log", "wb")
        self.proc = subprocess.Popen(
            [self.exe, "-config", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("influxd exited: " + self.log_tail())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=1) as r:
                    if r.status == 204:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("influxd did not answer /ping: " + self.log_tail())
        self.query("CREATE DATABASE bench")
        return self

    def query(self, q: str) -> bytes:
        data = urllib.parse.urlencode({"q": q}).encode()
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.port}/query", data=data, timeout=30
        ) as r:
            return bytes(r.read())

    def log_tail(self) -> str:
        try:
            return (self.root / "influxd.log").read_text()[-2000:]
        except OSError:
            return ""

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def write_path(self) -> str:
        return "/write?db=bench&precision=ms"

