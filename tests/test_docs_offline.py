"""``/docs`` and ``/redoc`` render in a real browser with no internet (issue 11 item 24).

Headless Chromium (Debian's ``chromium`` and ``chromium-driver``; ``.ci/install-browser``
installs them) opens the pages of a real server. Every host name but the loopback address
fails to resolve in that browser, so an asset still fetched from a CDN would fail to load and
show up as a console error. Without Chromium the tests skip, except under CI (``CI`` set),
where they fail: CI must install it.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from streamgauge.faces.docs import EMPTY_IMAGE, REDOC_LOGO_URL
from tests.browser import WAIT_S, chromium
from tests.conftest import Server


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    yield from chromium(tmp_path / "chromium-profile")


def _wait_for(driver: Any, css: str, minimum: int = 1) -> list[Any]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    found: list[Any] = WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
        lambda d: (els := d.find_elements(By.CSS_SELECTOR, css)) and len(els) >= minimum and els
    )
    return found


def _check_offline(driver: Any, server: Server) -> None:
    """No console error, and every resource the page loaded came from the server."""
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    origin = urlsplit(server.url).netloc
    foreign = [u for u in resources if urlsplit(u).netloc != origin]
    assert not foreign, foreign
    assert not [u for u in resources if "cdn" in u or "googleapis" in u]


def _operations(server: Server) -> int:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    methods = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
    return sum(1 for ops in spec["paths"].values() for m in ops if m in methods)


def test_swagger_ui_renders_offline(server: Server, browser: Any) -> None:
    """issue 11 item 24: /docs renders every operation of the API with no internet: its
    scripts, styles and favicon come from the server, and the browser logs no error."""
    browser.get(f"{server.url}/docs")
    blocks = _wait_for(browser, ".opblock", minimum=_operations(server))
    assert len(blocks) == _operations(server)
    assert browser.find_element("css selector", ".info .title").text.startswith("streamgauge")
    assert not browser.find_elements("css selector", ".errors-wrapper")
    _check_offline(browser, server)


def test_redoc_renders_offline(server: Server, browser: Any) -> None:
    """issue 11 item 24: /redoc renders the API's operations with no internet (its script from
    the server, no Google Fonts), and the browser logs no error."""
    browser.get(f"{server.url}/redoc")
    sections = _wait_for(browser, "[data-section-id^='operation/']")
    assert len(sections) >= 1
    title = _wait_for(browser, ".api-info h1")[0]
    assert title.text.startswith("streamgauge")
    _check_offline(browser, server)


def test_docs_assets_are_served_by_the_app(server: Server) -> None:
    """issue 11 item 24: the pages name only the server's own assets, and those are served."""
    for page, assets in (
        ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")),
        ("/redoc", ("redoc.standalone.js", "favicon.png")),
    ):
        html = httpx.get(f"{server.url}{page}", timeout=30).text
        assert "http://" not in html and "https://" not in html, html
        for asset in assets:
            assert f"/docs/assets/{asset}" in html
            r = httpx.get(f"{server.url}/docs/assets/{asset}", timeout=30)
            assert r.status_code == 200 and len(r.content) > 1000, asset
    assert httpx.get(f"{server.url}/docs/assets/nothing.js", timeout=30).status_code == 404
    assert httpx.get(f"{server.url}/openapi.json", timeout=30).status_code == 200


def test_redoc_bundle_names_no_cdn(server: Server) -> None:
    """issue 11 item 24: ReDoc's bundle is served without its one CDN URL (the attribution's
    logo, fetched on every page view), otherwise as shipped, with an ETag for revalidation."""
    url = f"{server.url}/docs/assets/redoc.standalone.js"
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert b"cdn.redoc.ly" not in r.content
    shipped = files("fastapi_offline").joinpath("static", "redoc.standalone.js").read_bytes()
    assert b"https://cdn.redoc.ly/redoc/logo-mini.svg" in shipped  # so the test means something
    assert len(r.content) == len(shipped) - len(REDOC_LOGO_URL) + len(EMPTY_IMAGE)
    again = httpx.get(url, headers={"If-None-Match": r.headers["etag"]}, timeout=30)
    assert again.status_code == 304 and not again.content
