"""Take the README's screenshot of the dashboard (``docs/img/dashboard.png``).

Starts a server on loopback with a fresh data directory, sets up the simulator's network
(``demo`` project: the Tapis tutorial station and a mesonet of weather stations), stores six
hours of simulated reports, adds an alert channel and a feed token, then opens ``/ui/`` in
headless Chromium (Debian's ``chromium`` and ``chromium-driver``) while the simulator posts
live values, and saves a screenshot of the page.

    python scripts/dashboard_screenshot.py [OUT.png]
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait
from websockets.sync.client import connect as ws_connect

from streamgauge.app import create_app, server_options
from streamgauge.config import Settings
from streamgauge.sim.network import ValueGenerator
from streamgauge.sim.runner import run_simulation, setup_network

TOKEN = "screenshot-admin-token"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"
HOURS = 6
STEP_MS = 5 * 60_000


async def seed() -> str:
    """The network, six hours of reports, a channel; returns a new feed token."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=BASE, headers=headers, timeout=60) as c:
        network = await setup_network(c, "demo", 12, seed=1)
        gen = ValueGenerator(network, bad_fraction=0.0)
        now = int(time.time() * 1000)
        rows = [
            {"device": st.device_id, "variable": var, "time": t, "value": value}
            for t in range(now - HOURS * 3_600_000, now, STEP_MS)
            for st in network.stations
            for var, value in gen.report(st, t).items()
        ]
        r = await c.post("/api/v1/projects/demo/observations", json=rows)
        r.raise_for_status()
        st = network.stations[1]
        channel = {
            "id": "frost",
            "name": "Frost warning",
            "triggers": [
                {"device": st.device_id, "variable": "air_temp", "operator": "<", "value": 40}
            ],
        }
        (await c.post("/api/v1/projects/demo/channels", json=channel)).raise_for_status()
        body = {"name": "operations wall display"}
        r = await c.post("/api/v1/projects/demo/feedtokens", json=body)
        r.raise_for_status()
        token: str = r.json()["token"]
        return token


def main(out: Path) -> None:
    data = Path(tempfile.mkdtemp(prefix="sg-screenshot-"))
    app = create_app(Settings(data=data / "data"), admin_token=TOKEN)
    options = server_options(app.state.engine.settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=PORT, log_level="warning", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    feed_token = asyncio.run(seed())
    feed = ws_connect(f"ws://127.0.0.1:{PORT}/feed/{feed_token}/?vars=air_temp&units=english")
    feed.recv(timeout=30)  # a connected feed session for the sessions table
    live = threading.Thread(
        target=lambda: asyncio.run(
            run_simulation(BASE, TOKEN, project="demo", stations=12, rate=40, duration=20)
        ),
        daemon=True,
    )
    live.start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1400,1500",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(f"{BASE}/ui/#token={TOKEN}&project=demo")
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script("return document.body.dataset.ready") == "demo"
        )
        time.sleep(8)  # let live values, the alert and the map background arrive
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, height + 200)
        time.sleep(1)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
        feed.close()
        server.should_exit = True
        thread.join(timeout=10)
        shutil.rmtree(data, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/dashboard.png"))
