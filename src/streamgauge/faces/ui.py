"""The dashboard, ``/ui/``: a static single page (built from ``ui/`` at the repository root
with Vite into ``faces/ui_static/``) that calls the native API from the browser; ``/`` leads
there.

Nothing here reads data: the page signs in with the caller's token or key and uses
``/api/v1`` like any other client. Every asset comes from this server (the page works on a
network with no internet); the page's Content-Security-Policy says so to the browser, which
refuses (and logs) anything from another origin. Hashed assets (``assets/*``) are cached for
good, the page itself is revalidated on every load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

__all__ = ["CSP", "STATIC_DIR", "UI_URL", "add_ui"]

UI_URL: Final = "/ui"
STATIC_DIR: Final = Path(__file__).with_name("ui_static")

CSP: Final = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "frame-ancestors 'none'; form-action 'self'"
)


class DashboardFiles(StaticFiles):
    """The built page and its assets, with cache and security headers."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        hashed = Path(full_path).parent.name == "assets"
        response.headers["Cache-Control"] = (
            "public, max-age=31536000, immutable" if hashed else "no-cache"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        if not hashed:
            response.headers["Content-Security-Policy"] = CSP
            response.headers["Referrer-Policy"] = "no-referrer"
        return response


def add_ui(app: FastAPI) -> None:
    """Mount the dashboard at ``/ui/`` and redirect ``/`` to it."""

    @app.get("/", include_in_schema=False)
    async def home(request: Request) -> RedirectResponse:
        root = request.scope.get("root_path", "")
        return RedirectResponse(f"{root}{UI_URL}/", status_code=307)

    app.mount(UI_URL, DashboardFiles(directory=STATIC_DIR, html=True), name="ui")
