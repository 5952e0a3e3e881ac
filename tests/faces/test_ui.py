"""The dashboard at ``/ui/`` (issue 14) in a real browser, and the routes behind it.

Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) opens the page of a real
server on loopback with every other host name unresolvable, so an asset fetched from anywhere
but the server would fail and show as a console error. Without Chromium the browser tests skip,
except under CI (``CI`` set), where they fail.

Waits are hang guards (``WAIT_S``), never performance bounds: how long a live value took to
appear is printed, not asserted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from streamgauge.faces.ui import CSP, STATIC_DIR
from tests.browser import WAIT_S, chromium
from tests.conftest import Server, expect_error, start_server

P = "/api/v1/projects"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    yield from chromium(tmp_path / "chromium-profile", window="1400,1100")


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Server]:
    """A server with project ``p1``: two stations (sites with coordinates), a device at each
    (air_temp, wind_speed), and twenty values per series over the last twenty minutes."""
    srv = start_server(tmp_path / "data", alert_flush_seconds=0.0)
    try:
        with srv.client() as c:
            seed(c, "p1")
        yield srv
    finally:
        srv.stop()


def now_ms() -> int:
    return int(time.time() * 1000)


def seed(c: httpx.Client, project: str) -> None:
    assert c.post(P, json={"id": project, "name": f"Project {project}"}).status_code == 201
    sites = [
        {"id": "s1", "name": "Alta", "lat": 40.59, "lon": -111.64, "state": "UT"},
        {"id": "s2", "name": "Brighton", "lat": 40.60, "lon": -111.58, "state": "UT"},
    ]
    assert c.post(f"{P}/{project}/sites", json=sites).status_code == 201
    variables = [{"name": "air_temp", "unit": "degC"}, {"name": "wind_speed", "unit": "m/s"}]
    devices = [
        {"id": "d1", "site": "s1", "type": "weather_station", "variables": variables},
        {"id": "d2", "site": "s2", "type": "weather_station", "variables": variables},
    ]
    assert c.post(f"{P}/{project}/devices", json=devices).status_code == 201
    t0 = now_ms() - 20 * 60_000
    rows = [
        {"device": d, "variable": v, "time": t0 + i * 60_000, "value": 10.0 + i / 2}
        for d in ("d1", "d2")
        for v in ("air_temp", "wind_speed")
        for i in range(20)
    ]
    r = c.post(f"{P}/{project}/observations", json=rows)
    assert r.status_code == 200 and r.json()["accepted"] == 80, r.text


def ingest(srv: Server, project: str, *rows: tuple[str, str, float]) -> None:
    t = now_ms()
    body = [{"device": d, "variable": v, "time": t, "value": x} for d, v, x in rows]
    with srv.client() as c:
        r = c.post(f"{P}/{project}/observations", json=body)
        assert r.status_code == 200 and r.json()["accepted"] == len(body), r.text


# -- browser helpers ----------------------------------------------------------------------------


def wait(driver: Any, predicate: Any, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(lambda d: predicate(d))
    except TimeoutException:
        logs = driver.get_log("browser")
        raise AssertionError(f"timed out waiting for {what}; console: {logs}") from None


def css(driver: Any, selector: str) -> list[Any]:
    found: list[Any] = driver.find_elements("css selector", selector)
    return found


def cell(driver: Any, device: str, variable: str, column: int) -> str:
    text: str = driver.execute_script(
        "const tr = document.querySelector(`#latest tr[data-device='${arguments[0]}']"
        "[data-variable='${arguments[1]}']`);"
        "return tr ? tr.cells[arguments[2]].textContent : null",
        device,
        variable,
        column,
    )
    return text


def sign_in(driver: Any, server: Server, token: str) -> None:
    driver.get(f"{server.url}/")
    wait(driver, lambda d: css(d, "#signin:not([hidden])"), "the sign-in form")
    assert urlsplit(driver.current_url).path == "/ui/"
    css(driver, "#token")[0].send_keys(token)
    css(driver, "#signin-button")[0].click()


def ready(driver: Any, project: str) -> None:
    wait(
        driver,
        lambda d: d.execute_script("return document.body.dataset.ready") == project,
        f"project {project} open",
    )


def canvas_ink(driver: Any, selector: str) -> int:
    """How many pixels of the canvas are painted (not transparent)."""
    n: int = driver.execute_script(
        "const c = document.querySelector(arguments[0]); if (!c) return -1;"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;",
        selector,
    )
    return n


def console_errors(driver: Any, allowed: tuple[str, ...] = ()) -> list[Any]:
    return [
        e
        for e in driver.get_log("browser")
        if e["level"] in ("SEVERE", "ERROR") and not any(a in e["message"] for a in allowed)
    ]


def check_offline(driver: Any, server: Server) -> None:
    """Every resource the page loaded came from the server."""
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    origin = urlsplit(server.url).netloc
    assert [u for u in resources if urlsplit(u).netloc != origin] == []


# -- the browser tests --------------------------------------------------------------------------


def test_sign_in_shows_stations_latest_values_and_live_updates(
    network: Server, browser: Any
) -> None:
    """issue 14: ``/`` leads to the dashboard; after sign-in with a token the project's
    stations are on the map and in the table with each variable's latest value, unit and QC
    state; a value ingested after the page loaded appears; the chart draws; no console error,
    no asset from anywhere but the server."""
    sign_in(browser, network, network.token)
    ready(browser, "p1")
    assert browser.find_element("css selector", "#project").get_attribute("value") == "p1"
    # The map: one marker per station over the countries' shapes, no tile image anywhere.
    wait(browser, lambda d: len(css(d, "path.station")) == 2, "two station markers")
    wait(browser, lambda d: css(d, "#map[data-background='countries']"), "the countries")
    assert len(css(browser, "#map path")) > 50
    assert not css(browser, "img.leaflet-tile")
    # The table: four series with their latest stored value, unit and QC state.
    wait(browser, lambda d: len(css(d, "#latest tbody tr[data-device]")) == 4, "four rows")
    wait(browser, lambda d: cell(d, "d1", "air_temp", 3) == "19.5", "the latest stored value")
    wait(browser, lambda d: cell(d, "d1", "air_temp", 4) == "Celsius", "the unit")
    assert cell(browser, "d2", "wind_speed", 3) == "19.5"
    assert cell(browser, "d1", "air_temp", 5) == "ok"
    assert cell(browser, "d1", "air_temp", 0) == "Alta"
    wait(browser, lambda d: cell(d, "d2", "wind_speed", 4) == "m/s", "the unit of wind_speed")
    wait(browser, lambda d: d.find_element("id", "live").text == "live", "the stream live")

    # The first station's chart: its first series' history, drawn on a canvas.
    assert "Alta" in browser.find_element("id", "station-title").text
    wait(browser, lambda d: d.find_element("id", "chart").get_attribute("data-points") == "20",
         "the chart's history")  # fmt: skip
    assert canvas_ink(browser, "#chart canvas") > 500

    # A value ingested now appears in the table and on the chart.
    t = time.monotonic()
    ingest(network, "p1", ("d1", "air_temp", 23.456), ("d2", "wind_speed", -999.0))
    wait(browser, lambda d: cell(d, "d1", "air_temp", 3) == "23.456", "the live value")
    print(f"live value shown {time.monotonic() - t:.3f} s after the ingest was sent")
    wait(browser, lambda d: d.find_element("id", "chart").get_attribute("data-points") == "21",
         "the live point on the chart")  # fmt: skip
    # A range-check failure shows as such (the stream keeps flagged rows: qc=none).
    wait(browser, lambda d: cell(d, "d2", "wind_speed", 3) == "-999", "the flagged value")
    assert cell(browser, "d2", "wind_speed", 5) == "sl_range_check"

    # A click on the other station's marker charts its series.
    browser.execute_script(
        "document.querySelector('path.station-s2').dispatchEvent("
        "new MouseEvent('click', {bubbles: true}))"
    )
    wait(browser, lambda d: "Brighton" in d.find_element("id", "station-title").text, "station 2")
    wait(browser, lambda d: d.find_element("id", "series").get_attribute("value").startswith("d2"),
         "station 2's series")  # fmt: skip
    assert canvas_ink(browser, "#chart canvas") > 500

    assert console_errors(browser) == []
    check_offline(browser, network)


def test_a_wrong_token_is_refused_clearly(network: Server, browser: Any) -> None:
    """issue 14: a wrong token shows a clear message and no dashboard. The one console entry
    is the browser's own note of the refused request (401); no script error."""
    sign_in(browser, network, "not-the-token")
    err = wait(browser, lambda d: css(d, "#signin-error:not([hidden])"), "the refusal")[0]
    assert "Sign-in refused" in err.text and "invalid bearer token" in err.text, err.text
    assert css(browser, "#dashboard[hidden]")
    assert console_errors(browser, allowed=("status of 401",)) == []


def test_a_link_with_token_and_project_in_the_fragment(network: Server, browser: Any) -> None:
    """issue 14: ``/ui/#token=...&project=...`` signs in and opens that project; the token is
    dropped from the address bar."""
    with network.client() as c:
        seed(c, "p2")
    browser.get(f"{network.url}/ui/#token={network.token}&project=p2")
    ready(browser, "p2")
    assert browser.find_element("css selector", "#project").get_attribute("value") == "p2"
    assert network.token not in browser.current_url
    assert browser.current_url.endswith("#project=p2")
    wait(browser, lambda d: len(css(d, "#latest tbody tr[data-device]")) == 4, "p2's rows")
    assert console_errors(browser) == []


def test_the_stream_resumes_after_the_server_closes_it(network: Server, browser: Any) -> None:
    """issue 14: the page follows the resumable stream: when the server closes it (closing
    frame with the resume cursor) the page reconnects from its last cursor and later values
    still appear; a value committed while it reconnected is not lost."""
    browser.get(f"{network.url}/ui/#token={network.token}&project=p1")
    ready(browser, "p1")
    wait(browser, lambda d: d.find_element("id", "live").text == "live", "the stream live")
    wait(browser, lambda d: cell(d, "d1", "air_temp", 3) == "19.5", "the catch-up")
    network.engine.hub.close_all("test: streams closed")
    ingest(network, "p1", ("d1", "wind_speed", 31.5))
    wait(browser, lambda d: cell(d, "d1", "wind_speed", 3) == "31.5", "the value after the close")
    network.engine.hub.close_all("test: streams closed again")
    ingest(network, "p1", ("d2", "air_temp", -3.25))
    wait(browser, lambda d: cell(d, "d2", "air_temp", 3) == "-3.25", "the value after 2 closes")
    assert console_errors(browser) == []


def test_a_value_older_than_5000_cursors_is_shown(network: Server, browser: Any) -> None:
    """Regression (issue 14): the table filled its latest values from the stream's last 5,000
    cursors, so a series whose newest value was older showed "no data yet". It reads them
    from ``GET .../latest`` now, then follows the stream from the log's head."""
    with network.client() as c:
        r = c.post(f"{P}/p1/devices", json={"id": "busy", "site": "s2", "variables": [{"id": "n"}]})
        assert r.status_code == 201, r.text
        t0 = now_ms() - 60_000
        rows = [
            {"device": "busy", "variable": "n", "time": t0 + 10 * i, "value": float(i)}
            for i in range(5100)
        ]
        r = c.post(f"{P}/p1/observations", json=rows)
        assert r.status_code == 200 and r.json()["accepted"] == 5100, r.text
    browser.get(f"{network.url}/ui/#token={network.token}&project=p1")
    ready(browser, "p1")
    wait(browser, lambda d: len(css(d, "#latest tbody tr[data-device]")) == 5, "five rows")
    # d1's newest value is 5,100 cursors behind the head: it is shown all the same, with its
    # unit (from the latest read's units map) and QC state.
    wait(browser, lambda d: cell(d, "d1", "air_temp", 3) == "19.5", "the old latest value")
    wait(browser, lambda d: cell(d, "d1", "air_temp", 4) == "Celsius", "its unit")
    assert cell(browser, "d1", "air_temp", 5) == "ok"
    assert cell(browser, "d2", "wind_speed", 3) == "19.5"
    assert cell(browser, "busy", "n", 3) == "5099"
    # Then live from the head.
    wait(browser, lambda d: d.find_element("id", "live").text == "live", "the stream live")
    ingest(network, "p1", ("d1", "wind_speed", 7.25))
    wait(browser, lambda d: cell(d, "d1", "wind_speed", 3) == "7.25", "a live value")
    assert console_errors(browser) == []


def test_alerts_feed_tokens_and_connected_sessions(network: Server, browser: Any) -> None:
    """issue 14: the page lists the alert channels and recent alerts, the feed tokens and the
    feed sessions connected now."""
    with network.client() as c:
        r = c.post(
            f"{P}/p1/channels",
            json={
                "id": "hot",
                "name": "Too hot",
                "triggers": [
                    {"device": "d1", "variable": "air_temp", "operator": ">", "value": 30}
                ],
            },
        )
        assert r.status_code == 201, r.text
        r = c.post(f"{P}/p1/feedtokens", json={"name": "field laptop"})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
    browser.get(f"{network.url}/ui/#token={network.token}&project=p1")
    ready(browser, "p1")
    wait(browser, lambda d: "Too hot" in d.find_element("id", "channels").text, "the channel")
    wait(browser, lambda d: "field laptop" in d.find_element("id", "feedtokens").text, "token")
    ingest(network, "p1", ("d1", "air_temp", 35.0))
    wait(browser, lambda d: "d1/air_temp" in d.find_element("id", "alerts").text, "the alert")
    alerts = browser.find_element("id", "alerts").text
    assert "35" in alerts and "air_temp > 30" in alerts and "Too hot" in alerts, alerts
    host = urlsplit(network.url).netloc
    with ws_connect(f"ws://{host}/feed/{token}/?vars=air_temp", open_timeout=WAIT_S) as ws:
        ws.recv(timeout=WAIT_S)  # the auth message: the session is open
        with network.client() as c:
            session = c.get(f"{P}/p1/feedsessions").json()["sessions"][0]["id"]
        wait(browser, lambda d: session in d.find_element("id", "sessions").text, "the session")
        assert "vars=air_temp" in browser.find_element("id", "sessions").text
    wait(browser, lambda d: session not in d.find_element("id", "sessions").text, "its end")
    assert console_errors(browser) == []


# -- the routes, without a browser --------------------------------------------------------------


def test_root_redirects_to_the_dashboard(server: Server) -> None:
    """issue 14: ``/`` leads to ``/ui/`` (no more JSON 404 at the root)."""
    r = httpx.get(f"{server.url}/", timeout=30)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    r = httpx.get(f"{server.url}/", timeout=30, follow_redirects=True)
    assert r.status_code == 200 and "streamgauge dashboard" in r.text
    assert httpx.get(f"{server.url}/ui", timeout=30, follow_redirects=True).status_code == 200


def test_the_page_names_only_its_own_assets(server: Server) -> None:
    """issue 14: every asset is served by the server; the page's Content-Security-Policy lets
    the browser load nothing from elsewhere; hashed assets are cached for good."""
    r = httpx.get(f"{server.url}/ui/", timeout=30)
    assert r.status_code == 200 and r.headers["content-security-policy"] == CSP
    assert r.headers["cache-control"] == "no-cache"
    assert "http://" not in r.text and "https://" not in r.text
    assets = re.findall(r'(?:src|href)="\./(assets/[^"]+)"', r.text)
    assert {a.rsplit(".", 1)[1] for a in assets} == {"js", "css"}, assets
    for asset in assets:
        got = httpx.get(f"{server.url}/ui/{asset}", timeout=30)
        assert got.status_code == 200 and len(got.content) > 1000, asset
        assert "immutable" in got.headers["cache-control"]
        assert (STATIC_DIR / asset).read_bytes() == got.content
    assert httpx.get(f"{server.url}/ui/assets/nothing.js", timeout=30).status_code == 404


def test_feed_sessions_lists_connected_sessions_only(server: Server, client: httpx.Client) -> None:
    """The dashboard's connected sessions: ``GET .../feedsessions`` lists the sessions a
    connection serves now (token, arguments, position), not detached ones, for managers."""
    assert client.post(P, json={"id": "p1"}).status_code == 201
    r = client.post(f"{P}/p1/feedtokens", json={"name": "laptop"})
    token, token_id = r.json()["token"], r.json()["id"]
    assert client.get(f"{P}/p1/feedsessions").json() == {"sessions": [], "next": None}
    host = urlsplit(server.url).netloc
    with ws_connect(f"ws://{host}/feed/{token}/?units=english", open_timeout=WAIT_S) as ws:
        ws.recv(timeout=WAIT_S)
        got = client.get(f"{P}/p1/feedsessions").json()
        assert got["next"] is None and len(got["sessions"]) == 1
        s = got["sessions"][0]
        assert s["token"] == token_id and s["token_name"] == "laptop" and s["project"] == "p1"
        assert s["args"] == "units=english" and isinstance(s["position"], int)
    deadline = time.monotonic() + WAIT_S
    while client.get(f"{P}/p1/feedsessions").json()["sessions"]:
        assert time.monotonic() < deadline, "the closed session is still listed"
        time.sleep(0.05)
    expect_error(client.get(f"{P}/nope/feedsessions"), 404)
    err = expect_error(client.get(f"{P}/p1/feedsessions", params={"x": "1"}), 400)
    assert err["details"][0]["field"] == "x"
    # A user (read-only role) may not see them, like the feed tokens.
    r = client.post(f"{P}/p1/serviceaccounts", json={"id": "viewer", "role": "user"})
    assert r.status_code == 201, r.text
    key = client.post(f"{P}/p1/serviceaccounts/viewer/keys").json()
    with httpx.Client(
        base_url=server.url, auth=(key["key_id"], key["secret"]), timeout=30
    ) as viewer:
        assert viewer.get(f"{P}/p1").status_code == 200
        expect_error(viewer.get(f"{P}/p1/feedsessions"), 403)


def test_the_build_output_is_the_committed_one() -> None:
    """The page served is the committed build of ``ui/`` (``npm ci && npm run build``): an
    index that loads one script and one stylesheet from ``assets/``; the script names the
    map's background (the countries of world-atlas)."""
    index = (STATIC_DIR / "index.html").read_text()
    names = sorted(p.name for p in (STATIC_DIR / "assets").iterdir())
    scripts = [n for n in names if n.endswith(".js")]
    styles = [n for n in names if n.endswith(".css")]
    maps = [n for n in names if n.startswith("countries-") and n.endswith(".json")]
    assert len(scripts) == len(styles) == len(maps) == 1 and len(names) == 3, names
    assert scripts[0] in index and styles[0] in index
    assert maps[0] in (STATIC_DIR / "assets" / scripts[0]).read_text()
