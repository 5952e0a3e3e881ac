"""The app's start: the routes' first-request work is done while the engine starts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamgauge.app import WARM_PATH, _warm_routes, create_app
from streamgauge.config import Settings


async def test_the_warm_up_is_a_request_no_route_answers(tmp_path: Path) -> None:
    app = create_app(Settings(data=tmp_path / "data"), admin_token="token")
    assert await _warm_routes(app) == 404
    async with app.router.lifespan_context(app):  # the start runs it too, then serves
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get(WARM_PATH)).status_code == 404


async def test_a_failed_warm_up_is_logged_and_the_start_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            raise RuntimeError("no routes today")

    with caplog.at_level(logging.ERROR, logger="streamgauge"):
        assert await _warm_routes(Broken()) is None  # type: ignore[arg-type]
    assert "warming the routes failed" in caplog.text
