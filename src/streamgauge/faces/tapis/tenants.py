"""The Tenants API's two lists (``GET /v3/tenants``, ``GET /v3/sites``), so that ``tapipy`` can be
built from a ``base_url`` alone.

``Tapis(base_url=..., username=..., password=...)`` (or ``jwt=...``) without ``tenant_id`` lists
the sites and the tenants, then takes the ``tenant_id`` of the tenant whose ``base_url`` equals
the ``base_url`` it was given, compared as plain strings. This server is one tenant
(``STREAMGAUGE_TAPIS_TENANT_ID``) at one site, and its ``base_url`` is the URL the client used to
reach it: the scheme, the ``Host`` header exactly as sent (host and port) and the mount point. A
client that reaches the server as ``http://127.0.0.1:8080`` or as ``http://sensors.lab:8080``
finds itself in both cases. No token is needed (tapipy sends none before it has logged in).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from streamgauge.domain.errors import NotFound
from streamgauge.faces.tapis.wire import EngineDep, TapisRoute, envelope

router = APIRouter(route_class=TapisRoute, tags=["tapis"])

SITE = "streamgauge"

Limit = Annotated[int | None, Query(ge=1, le=1000, description="Ignored: there is one.")]
Offset = Annotated[int | None, Query(ge=0, description="Ignored: there is one.")]


def base_url(request: Request) -> str:
    """The URL the client used for this server, as it wrote it: scheme, the ``Host`` header as
    sent (so ``localhost:8080`` stays ``localhost:8080``) and the mount point, no trailing
    slash."""
    host = request.headers.get("host")
    if not host:  # HTTP/1.0 without Host: the address the connection came in on
        server = request.scope.get("server") or ("127.0.0.1", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    root = str(request.scope.get("root_path") or "").rstrip("/")
    return f"{request.url.scheme}://{host}{root}"


def _tenant(tenant_id: str, url: str) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "base_url": url,
        "site_id": SITE,
        "token_service": f"{url}/v3/tokens",
        "security_kernel": f"{url}/v3/security",
        "authenticator": f"{url}/v3/oauth2",
        "owner": "admin@streamgauge.invalid",
        "admin_user": "admin",
        "token_gen_services": [],
        # tokens are HS256 (one server key), so there is no public key to validate them with
        "public_key": "",
        "status": "active",
        "description": "streamgauge: the one tenant of this server",
    }


def _site(tenant_id: str, url: str) -> dict[str, Any]:
    return {
        "site_id": SITE,
        "base_url": url,
        "primary": True,
        "services": ["streams", "authenticator", "tenants"],
        "tenant_base_url_template": url,
        "site_admin_tenant_id": tenant_id,
    }


@router.get("/tenants")
async def list_tenants(
    engine: EngineDep, request: Request, limit: Limit = None, offset: Offset = None
) -> Response:
    """The one tenant, its ``base_url`` the URL this request came to."""
    return envelope([_tenant(engine.settings.tapis_tenant_id, base_url(request))], "Tenants found")


@router.get("/tenants/{tenant_id}")
async def get_tenant(engine: EngineDep, request: Request, tenant_id: str) -> Response:
    mine = engine.settings.tapis_tenant_id
    if tenant_id != mine:
        raise NotFound(f"no tenant {tenant_id!r} (this server is tenant {mine!r})")
    return envelope(_tenant(tenant_id, base_url(request)), "Tenant found")


@router.get("/sites")
async def list_sites(
    engine: EngineDep, request: Request, limit: Limit = None, offset: Offset = None
) -> Response:
    """The one site, holding the one tenant."""
    return envelope([_site(engine.settings.tapis_tenant_id, base_url(request))], "Sites found")


@router.get("/sites/{site_id}")
async def get_site(engine: EngineDep, request: Request, site_id: str) -> Response:
    if site_id != SITE:
        raise NotFound(f"no site {site_id!r} (this server is site {SITE!r})")
    return envelope(_site(engine.settings.tapis_tenant_id, base_url(request)), "Site found")
