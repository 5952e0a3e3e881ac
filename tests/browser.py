"""Headless Chromium for the browser tests (the docs pages offline, the dashboard): Debian's
``chromium`` and ``chromium-driver``, installed by ``.ci/install-browser``. Every host name but
the loopback address fails to resolve in it, so an asset fetched from anywhere but the server
fails and shows as a console error. Without Chromium a test skips, except under CI (``CI``
set), where it fails: CI must install it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MS

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WAIT_S = max(60.0, 60_000 * MS)  # hang guard for a page, not a performance bound


def need(what: str) -> None:
    """Skip for want of ``what``; under CI, fail."""
    message = f"{what} not found: run .ci/install-browser"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def chromium(profile: Path, window: str = "1280,900") -> Iterator[Any]:
    """A Selenium driver of a headless, offline Chromium (for a fixture to yield from)."""
    binary = next((p for p in map(shutil.which, BROWSERS) if p), None)
    if binary is None:
        need("chromium")
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        need("chromedriver")
    assert binary is not None and driver_path is not None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need("selenium (the test extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={window}",
        f"--user-data-dir={profile}",
        # Offline: any host but the loopback address fails to resolve (a CDN asset would fail).
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
