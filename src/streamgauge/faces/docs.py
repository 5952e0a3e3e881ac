"""The API documentation pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served offline.

FastAPI's own pages load their scripts, styles, fonts and favicon from CDNs, so they are blank
on a network without internet (a field station, an air-gapped lab). Here every asset comes from
the package ``fastapi-offline``, which ships the upstream dist files (``swagger-ui-bundle.js``
and ``swagger-ui.css`` of ``swagger-ui-dist`` 5, ``redoc.standalone.js`` of ``redoc`` 2, a
favicon) and is mounted at ``/docs/assets/``. The pages name no other host: no Google Fonts
for ReDoc, and no online validator for Swagger UI. ReDoc's bundle has one more CDN URL, the
logo of its "API docs by Redocly" link (``https://cdn.redoc.ly/redoc/logo-mini.svg``, fetched
on every page view, a console error offline): the bundle is served with that URL replaced by
an empty inline image, otherwise unchanged.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from typing import Final

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_URL", "DOCS_URL", "REDOC_URL", "add_docs"]

DOCS_URL: Final = "/docs"
REDOC_URL: Final = "/redoc"
ASSETS_URL: Final = "/docs/assets"
ASSETS_PACKAGE: Final = ("fastapi_offline", "static")  # (package, folder in it)

REDOC_JS: Final = "redoc.standalone.js"
REDOC_LOGO_URL: Final = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE: Final = (
    b"data:image/svg+xml,%3Csvg%20xmlns='http://www.w3.org/2000/svg'%20width='1'%20height='1'/%3E"
)

# Swagger UI options on top of FastAPI's defaults: never ask validator.swagger.io about the spec.
SWAGGER_UI_PARAMETERS: Final = {"validatorUrl": None}


def add_docs(app: FastAPI) -> None:
    """Add ``/docs``, its OAuth2 redirect page, ``/redoc`` and their assets to ``app``.

    ``app`` must be made with ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages off); the
    pages load ``app.openapi_url`` relative to the ASGI ``root_path``, as FastAPI's do.
    """
    assert app.docs_url is None and app.redoc_url is None, "turn FastAPI's CDN pages off"
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_url = app.swagger_ui_oauth2_redirect_url
    redoc_js = _offline_redoc_js()
    redoc_etag = f'"{hashlib.sha256(redoc_js).hexdigest()[:32]}"'

    @app.get(f"{ASSETS_URL}/{REDOC_JS}", include_in_schema=False)
    async def redoc_bundle(request: Request) -> Response:
        headers = {"ETag": redoc_etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == redoc_etag:
            return Response(status_code=304, headers=headers)
        return Response(redoc_js, media_type="text/javascript; charset=utf-8", headers=headers)

    # After the route above, which takes the ReDoc bundle's path.
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=f"{root}{oauth2_url}" if oauth2_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters={**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})},
        )

    if oauth2_url:

        @app.get(oauth2_url, include_in_schema=False)
        async def swagger_ui_oauth2_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def _offline_redoc_js() -> bytes:
    """ReDoc's bundle, its one CDN image (the attribution's logo) replaced by an empty one."""
    package, folder = ASSETS_PACKAGE
    bundle = files(package).joinpath(folder, REDOC_JS).read_bytes()
    return bundle.replace(REDOC_LOGO_URL, EMPTY_IMAGE)
